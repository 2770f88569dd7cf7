"""POST /api/heartbeat/<server_id>/: validate, authenticate, commit, answer.

Also, with the same tokens, what a host says about itself: `POST .../<id>/goodbye`
(clean stop, back within a time, or retired) and `POST|DELETE .../<id>/maintenance`.

The busiest endpoint by far, so it is served natively in the worker's event loop
(bridge.asgi), not through Flask: Flask's request and response machinery cost about
170 us of the 240 us a beat took in-process, and this path needs none of it.
"""
from typing import Any, Dict, Iterable, List, Optional, Tuple

from bridge import admin
from bridge.auth import Caller
from bridge.errors import BridgeError, error_body
from bridge.state import BridgeState
from bridge.store import StoreUnavailableError
from bridge.validate import (
    MAX_BODY_BYTES,
    InvalidInputError,
    check_server_id,
    parse_beat,
    parse_object,
)
from bridge.views import log

# (status, JSON body, extra headers)
Answer = Tuple[int, Dict[str, Any], List[Tuple[str, str]]]

PREFIX = "/api/heartbeat"

# On every answer: an enrolment answer carries a token, and no answer is for a cache or
# for content sniffing.
PRIVATE = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))

# What a host is told when the store is down: its beat was not kept (the errors' own
# words everywhere else: bridge.errors).
NOT_RECORDED = "the store is unavailable; nothing was recorded, retry"


class BeatEndpoint:
    """The answers of PREFIX/<server_id>[/...] from plain values; bridge.asgi reads the
    request in the event loop, runs handle() in the group commit, and sends the answer only
    after the commit."""

    def __init__(self, bridge_state: BridgeState) -> None:
        self.state = bridge_state
        self.observe = bridge_state.observe  # observe(handler, code, seconds)

    def handle(self, method: str, server_id: str, action: str, authorization: Optional[str],
               content_type: Optional[str], body: bytes) -> Answer:
        """(status, JSON body, extra headers) for one request, from plain values.

        `body` is what the server read, at most MAX_BODY_BYTES + 1 bytes: a longer body is
        refused with 413 (readers stop at one byte past the limit). Safe to call from any
        thread; the store calls it makes are the request's only side effects."""
        methods = _ACTIONS[action]
        if method not in methods:
            allowed = ", ".join(sorted(methods))
            return 405, error_body("method_not_allowed", f"use {allowed}"), [("Allow", allowed),
                                                                             *PRIVATE]
        hb = self.state
        try:
            check_server_id(server_id)
            if len(body) > MAX_BODY_BYTES:
                raise _too_large()
            caller = hb.auth.check_beat(hb.store, server_id, authorization)
            answer = methods[method](hb, caller, server_id, body, content_type)
            if caller.confirm and caller.token_hash is not None:
                hb.store.confirm_token(server_id, caller.token_hash)
            elif caller.kind == "fleet" and hb.auth.enrolment:
                # Until the server uses a token of its own, every fleet-token request is
                # answered with a new one: a lost answer never locks the host out.
                answer["token"] = admin.enrol(hb.store, server_id,
                                              hb.policy.max_agent_interval)
            return 200, answer, list(PRIVATE)
        except StoreUnavailableError as exc:
            log.error("beat for %r not recorded: %s", server_id, exc)
            return self.unavailable(server_id)
        except BridgeError as exc:  # input, token and store refusals, as each describes itself
            if exc.status == 500:
                raise  # not a refusal: the server's last-resort handler answers and logs it
            return self._reject(server_id, exc.reason, exc.status, exc.message, exc.headers())

    def unavailable(self, server_id: str) -> Answer:
        """The answer to a request the store did not commit: nothing was acknowledged."""
        exc = StoreUnavailableError()
        return self._reject(server_id, exc.reason, exc.status, NOT_RECORDED, exc.headers())


    def _reject(self, server_id: str, reason: str, status: int, message: str,
                headers: Iterable[Tuple[str, str]] = ()) -> Answer:
        self.state.rejections.add(reason)
        if reason == "enrolled":  # names the id HeartbeatEnrolmentConflict is about
            log.warning("the fleet token was refused for %r, which uses its own token: that "
                        "host lost its token file, or another host enrolled the id",
                        server_id[:128])
        else:
            log.debug("rejected beat for %r: %s", server_id[:128], reason)
        extra = [*headers, *PRIVATE]
        if status == 401:
            extra.append(("WWW-Authenticate", 'Bearer realm="heartbeat-bridge"'))
        if status == 413:
            extra.append(("Connection", "close"))  # the rest of the body is not read
        return status, error_body(reason, message), extra


def _beat(hb: BridgeState, caller: Caller, server_id: str, body: bytes,
          content_type: Optional[str]) -> Dict[str, Any]:
    beat = parse_beat(body, content_type)
    received_at, interval = hb.store.record_beat(server_id, beat, hb.policy)
    return {"server_id": server_id, "received_at": received_at, "interval": interval}


def _goodbye(hb: BridgeState, caller: Caller, server_id: str, body: bytes,
             content_type: Optional[str]) -> Dict[str, Any]:
    """A clean stop: the rules stay silent until `back_within` (default 15 min) has passed.
    Retiring has no end (the server is forgotten after retention), so only the server's own
    token may: the fleet token could otherwise retire every id without a confirmed token,
    servers an operator registered without one included."""
    data = parse_object(body, content_type)
    if data.get("retire") is True and caller.kind != "server":
        raise InvalidInputError("own_token_required", "retiring a server needs its own token; "
                                "the fleet token only enrols (an operator can retire it)", 403)
    expected_back = admin.goodbye(hb.store, server_id, hb.policy, hb.max_host_silence,
                                  data.get("back_within"), data.get("retire", False))
    server = hb.store.get(server_id)
    return {"server_id": server_id, "expected_back": expected_back,
            "retired": server.retired_at is not None}


def _maintenance_start(hb: BridgeState, caller: Caller, server_id: str, body: bytes,
                       content_type: Optional[str]) -> Dict[str, Any]:
    data = parse_object(body, content_type)
    server = admin.host_maintenance(hb.store, server_id, hb.policy, hb.max_host_silence,
                                    duration=data.get("for"), until=data.get("until"),
                                    reason=data.get("reason"))
    return {"server_id": server_id, "paused_until": server.paused_until,
            "reason": server.pause_reason}


def _maintenance_end(hb: BridgeState, caller: Caller, server_id: str, body: bytes,
                     content_type: Optional[str]) -> Dict[str, Any]:
    admin.host_resume(hb.store, server_id, hb.policy)
    return {"server_id": server_id, "paused_until": None, "reason": None}


# action (the path part after the server id) -> {method: handler}
_ACTIONS = {
    "": {"POST": _beat},
    "goodbye": {"POST": _goodbye},
    "maintenance": {"POST": _maintenance_start, "DELETE": _maintenance_end},
}


def route(path: str) -> Tuple[str, str]:
    """(server_id, action) of '/<id>[/]' or '/<id>/<action>[/]'; an unknown action leaves the
    whole path as the id, which then fails validation."""
    path = path[1:]
    if path.endswith("/"):
        path = path[:-1]
    server_id, _, action = path.partition("/")
    return (server_id, action) if action in _ACTIONS else (path, "")


def _too_large() -> InvalidInputError:
    return InvalidInputError("body_too_large", f"the body is over {MAX_BODY_BYTES} bytes", 413)
