"""The CLI's operations on a bridge it cannot open the store of, through its admin API.

RemoteAdmin implements bridge.admin.Admin as StoreAdmin does: servers as Server values
built from the API's JSON, and the API's error answers ({"error", "message"}) raised as the
exceptions the store and the validators raise, so `heartbeat-bridge` prints the same lines
whichever way it reached the bridge.
"""
from typing import Any, Dict, List, NoReturn, Optional, Tuple
from urllib.parse import quote, urlsplit

from bridge.config import mask_url
from bridge.server_view import ServerJSON, server_from_json
from bridge.store import (
    BeatPolicy,
    Server,
    ServerExistsError,
    ServerLimitError,
    UnknownServerError,
)
from bridge.validate import InvalidInputError, check_server_id

TIMEOUT = 10.0
# API statuses that mean "your input was refused": the CLI exits 2 for them, as for its own.
_INPUT_STATUSES = frozenset({400, 413, 415, 422})


class RemoteError(RuntimeError):
    """The bridge could not be reached, or refused the request for a reason that is not
    the input's (bad admin token, admin API off, store unavailable)."""


class RemoteAdmin:
    """Admin operations on the bridge at `url` with its admin token (sent as Bearer only)."""

    def __init__(self, url: str, admin_token: str, timeout: float = TIMEOUT,
                 session: Any = None) -> None:
        import requests  # here, not at the top: `serve` and `healthcheck` never need it
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {admin_token}"
        self.session.headers["User-Agent"] = "heartbeat-bridge-cli"
        # The bridge's own default, as its answers show it (the interval of a server that
        # has none of its own); until one does, no server shown needs it.
        self.default_interval = BeatPolicy.default_interval

    def list(self) -> List[Server]:
        return [self._server(s) for s in self._call("GET")["servers"]]

    def get(self, server_id: str) -> Server:
        return self._server(self._call("GET", server_id)["server"])

    def register(self, server_id: str, interval: Optional[float] = None,
                 labels: Optional[Dict[str, str]] = None, with_token: bool = False
                 ) -> Tuple[Server, Optional[str]]:
        check_server_id(server_id)  # the API's own message, before any request
        body: Dict[str, Any] = {"server_id": server_id, "labels": labels or {}}
        if interval is not None:
            body["interval"] = interval
        if with_token:
            body["token"] = True
        answer = self._call("POST", body=body, about=server_id)
        return self._server(answer["server"]), answer.get("token")

    def relabel(self, server_id: str, labels: Dict[str, str]) -> Server:
        return self._server(self._call("PATCH", server_id, body={"labels": labels})["server"])

    def set_interval(self, server_id: str, interval: Optional[float]) -> Server:
        return self._server(
            self._call("PATCH", server_id, body={"interval": interval})["server"])

    def pause(self, server_id: str, duration: Optional[str] = None,
              until: Optional[float] = None, reason: Optional[str] = None) -> Server:
        body = {k: v for k, v in (("for", duration), ("until", until), ("reason", reason))
                if v is not None}
        return self._server(self._call("POST", server_id, "pause", body)["server"])

    def resume(self, server_id: str) -> Server:
        return self._server(self._call("POST", server_id, "resume")["server"])

    def retire(self, server_id: str, retired: bool = True) -> Server:
        action = "retire" if retired else "unretire"
        return self._server(self._call("POST", server_id, action)["server"])

    def remove(self, server_id: str) -> None:
        self._call("DELETE", server_id)

    def rotate_token(self, server_id: str, keep_previous_for: Optional[str] = None) -> str:
        body = {} if keep_previous_for is None else {"keep_previous_for": keep_previous_for}
        return self._call("POST", server_id, "token", body)["token"]

    def revoke_token(self, server_id: str) -> None:
        self._call("DELETE", server_id, "token")

    def _server(self, shown: ServerJSON) -> Server:
        server = server_from_json(shown)
        if server.registered_interval is None and server.declared_interval is None and \
                isinstance(shown.get("interval"), (int, float)):
            self.default_interval = float(shown["interval"])
        return server

    def forget_silent(self, days: float) -> int:
        raise RemoteError("servers forget has no admin API: run it where the store is "
                          "reachable, with --database-url or HEARTBEAT_DATABASE_URL")

    def _call(self, method: str, server_id: Optional[str] = None, action: Optional[str] = None,
              body: Optional[Dict[str, Any]] = None, about: Optional[str] = None
              ) -> Dict[str, Any]:
        """JSON answer of one admin API request; raises what the local operation would."""
        import requests
        url = f"{self.url}/api/servers"
        if server_id is not None:
            # Checked here too: the id is a path segment, so '..' must not reach another URL.
            url += "/" + quote(check_server_id(server_id), safe="")
        if action:
            url += "/" + action
        try:
            response = self.session.request(method, url, json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            reason = network_reason(exc, urlsplit(self.url).hostname or "", self.timeout)
            raise RemoteError(f"{mask_url(self.url)}: {reason}") from None
        if response.status_code == 204:
            return {}
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise RemoteError(f"{method} {url}: HTTP {response.status_code}, not an answer "
                              f"of the bridge's admin API (is --url the bridge's base URL?)")
        if response.ok:
            return answer
        _raise(response.status_code, answer, about or server_id)


def _raise(status: int, answer: Dict[str, Any], server_id: Optional[str]) -> NoReturn:
    """Raise the exception the local operation raises for this API error answer."""
    reason = answer.get("error", "error")
    message = answer.get("message", "")
    if reason == "unknown_server":
        raise UnknownServerError(server_id or "")
    if reason == "server_exists":
        raise ServerExistsError(server_id or "")
    if reason == "server_limit":
        raise ServerLimitError(message)
    if status in _INPUT_STATUSES:
        raise InvalidInputError(reason, message, status)
    raise RemoteError(f"the bridge answered {status} {reason}: {message}")


def network_reason(exc: BaseException, host: str, timeout: float) -> str:
    """One plain line for a failed exchange with `host`, as the agent words it ("connection
    refused", "cannot resolve HOST: ...", "TLS error: ..."): requests nests the cause
    several levels deep, in exception chains and urllib3's `reason`."""
    import http.client
    import socket
    import ssl

    import requests
    if isinstance(exc, requests.ConnectTimeout):
        return f"no connection within {timeout:g}s"
    if isinstance(exc, requests.Timeout):
        return f"no answer within {timeout:g}s"
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve {host}: {cause.strerror}"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate rejected: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {cause.reason or cause}"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, (http.client.RemoteDisconnected, ConnectionResetError)):
            return "the bridge closed the connection without answering"
    return type(exc).__name__


def _causes(exc: BaseException) -> List[BaseException]:
    """`exc` and every exception behind it, nearest first (a bounded walk)."""
    found: List[BaseException] = []
    queue = [exc]
    while queue and len(found) < 20:
        current = queue.pop(0)
        if current in found:
            continue
        found.append(current)
        queue += [e for e in (current.__cause__, current.__context__,
                              getattr(current, "reason", None), *current.args)
                  if isinstance(e, BaseException)]
    return found
