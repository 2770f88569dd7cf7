"""POST /api/heartbeat/<server_id>/: validate, authenticate, commit, answer."""
import math

from flask import Blueprint, jsonify, request

from bridge.store import (RateLimitedError, ServerLimitError, StoreUnavailableError,
                          UnknownServerError)
from bridge.validate import MAX_BODY_BYTES, InvalidInputError, check_server_id, parse_beat
from bridge.views import error, log, state

bp = Blueprint("beat", __name__)

# Store outcomes that reject a beat: reason, status, message, extra headers.
_STORE_REJECTIONS = {
    UnknownServerError: ("unknown_server", 404,
                         "this server is not registered and auto-registration is off"),
    ServerLimitError: ("server_limit", 403,
                       "the bridge has reached its server limit (HEARTBEAT_MAX_SERVERS)"),
    StoreUnavailableError: ("store_unavailable", 503,
                            "the store is unavailable; nothing was recorded, retry"),
}


@bp.post("/api/heartbeat/", defaults={"server_id": ""})
@bp.post("/api/heartbeat/<path:server_id>")
def beat(server_id):
    """Record a beat; the answer is sent only after the store has committed it."""
    hb = state()
    if server_id.endswith("/"):
        server_id = server_id[:-1]
    try:
        check_server_id(server_id)
        if (request.content_length or 0) > MAX_BODY_BYTES:
            raise _too_large()
        hb.auth.check_beat(hb.store, server_id, request.headers.get("Authorization"))
        payload = parse_beat(_read_body(), request.content_type)
        received_at, interval = hb.store.record_beat(server_id, payload, hb.policy)
    except InvalidInputError as exc:
        return _reject(hb, server_id, exc.reason, exc.status, exc.message)
    except RateLimitedError as exc:
        return _reject(hb, server_id, "rate_limited", 429,
                       "beating far faster than the promised interval",
                       {"Retry-After": str(max(1, math.ceil(exc.retry_after)))})
    except tuple(_STORE_REJECTIONS) as exc:
        reason, status, message = _STORE_REJECTIONS[type(exc)]
        if isinstance(exc, StoreUnavailableError):
            log.error("beat for %r not recorded: %s", server_id, exc)
        return _reject(hb, server_id, reason, status, message,
                       {"Retry-After": "5"} if status == 503 else None)
    return jsonify(server_id=server_id, received_at=received_at, interval=interval)


def _too_large():
    return InvalidInputError("body_too_large", f"the body is over {MAX_BODY_BYTES} bytes", 413)


def _read_body():
    """Read at most MAX_BODY_BYTES + 1 bytes, so a chunked flood is cut off early."""
    body = request.stream.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise _too_large()
    return body


def _reject(hb, server_id, reason, status, message, headers=None):
    hb.rejections.add(reason)
    log.debug("rejected beat for %r: %s", server_id[:128], reason)
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="heartbeat-bridge"'
    response = error(reason, status, message, headers)
    if status == 413:
        response.headers["Connection"] = "close"  # the rest of the body is not read
    return response
