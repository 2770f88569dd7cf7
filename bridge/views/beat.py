"""POST /api/heartbeat/<server_id>/: validate, authenticate, commit, answer.

The busiest endpoint by far, so it is a plain WSGI app mounted beside Flask (as
/metrics is): Flask's request and response machinery cost about 170 us of the 240 us a
beat took in-process, and this path needs none of it.
"""
import json
import math
import time
from http import HTTPStatus

from bridge.store import (RateLimitedError, ServerLimitError, StoreUnavailableError,
                          UnknownServerError)
from bridge.validate import MAX_BODY_BYTES, InvalidInputError, check_server_id, parse_beat
from bridge.views import log

PREFIX = "/api/heartbeat"

# Store outcomes that reject a beat: reason, status, message.
_STORE_REJECTIONS = {
    UnknownServerError: ("unknown_server", 404,
                         "this server is not registered and auto-registration is off"),
    ServerLimitError: ("server_limit", 403,
                       "the bridge has reached its server limit (HEARTBEAT_MAX_SERVERS)"),
    StoreUnavailableError: ("store_unavailable", 503,
                            "the store is unavailable; nothing was recorded, retry"),
}
_STATUS_LINES = {code.value: f"{code.value} {code.phrase}" for code in HTTPStatus}


class BeatEndpoint:
    """WSGI app for PREFIX/<server_id>[/]; the answer is sent only after the store commit."""

    def __init__(self, bridge_state, observe):
        self.state = bridge_state
        self.observe = observe  # observe(handler, code, seconds): request metrics

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        status, body, headers = self.handle(environ)
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers = [("Content-Type", "application/json"),
                   ("Content-Length", str(len(payload)))] + headers
        start_response(_STATUS_LINES[status], headers)
        self.observe("beat", status, time.perf_counter() - started)
        return [payload]

    def handle(self, environ):
        """(status, JSON body, extra headers) for one request."""
        server_id = environ.get("PATH_INFO", "")[1:]
        if server_id.endswith("/"):
            server_id = server_id[:-1]
        if environ["REQUEST_METHOD"] != "POST":
            return 405, {"error": "method_not_allowed", "message": "use POST"}, [
                ("Allow", "POST")]
        hb = self.state
        try:
            check_server_id(server_id)
            if _content_length(environ) > MAX_BODY_BYTES:
                raise _too_large()
            hb.auth.check_beat(hb.store, server_id, environ.get("HTTP_AUTHORIZATION"))
            beat = parse_beat(_read_body(environ), environ.get("CONTENT_TYPE"))
            received_at, interval = hb.store.record_beat(server_id, beat, hb.policy)
        except InvalidInputError as exc:
            return self._reject(server_id, exc.reason, exc.status, exc.message)
        except RateLimitedError as exc:
            return self._reject(server_id, "rate_limited", 429,
                                "beating far faster than the promised interval",
                                [("Retry-After", str(max(1, math.ceil(exc.retry_after))))])
        except tuple(_STORE_REJECTIONS) as exc:
            reason, status, message = _STORE_REJECTIONS[type(exc)]
            if status == 503:
                log.error("beat for %r not recorded: %s", server_id, exc)
            return self._reject(server_id, reason, status, message,
                                [("Retry-After", "5")] if status == 503 else [])
        return 200, {"server_id": server_id, "received_at": received_at,
                     "interval": interval}, []

    def _reject(self, server_id, reason, status, message, headers=()):
        self.state.rejections.add(reason)
        log.debug("rejected beat for %r: %s", server_id[:128], reason)
        headers = list(headers)
        if status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="heartbeat-bridge"'))
        if status == 413:
            headers.append(("Connection", "close"))  # the rest of the body is not read
        return status, {"error": reason, "message": message}, headers


def _content_length(environ):
    try:
        return int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise InvalidInputError("invalid_request", "Content-Length is not a number") from None


def _too_large():
    return InvalidInputError("body_too_large", f"the body is over {MAX_BODY_BYTES} bytes", 413)


def _read_body(environ):
    """Read at most MAX_BODY_BYTES + 1 bytes, so a chunked flood is cut off early."""
    stream = environ.get("wsgi.input")
    length = _content_length(environ)
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if stream is None or (not length and not chunked):
        return b""
    body = stream.read(MAX_BODY_BYTES + 1 if chunked else min(length, MAX_BODY_BYTES + 1))
    if len(body) > MAX_BODY_BYTES:
        raise _too_large()
    return body
