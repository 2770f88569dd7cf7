"""The HTTP edge: Flask blueprints. Nothing below this package imports Flask."""
import logging
from typing import Mapping, Optional

from flask import Response, current_app

from bridge.errors import encode, error_body
from bridge.state import BridgeState

log = logging.getLogger("bridge")


def state() -> BridgeState:
    """The BridgeState of the running app (settings, store, auth, counters)."""
    return current_app.extensions["heartbeat"]


def error(reason: str, status: int, message: str,
          headers: Optional[Mapping[str, str]] = None) -> Response:
    """A JSON error answer: {"error": reason, "message": message}, as the raw endpoints
    send it (bridge.errors)."""
    response = current_app.response_class(encode(error_body(reason, message)), status,
                                          mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
