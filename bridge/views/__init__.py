"""The HTTP edge: Flask blueprints. Nothing below this package imports Flask."""
import logging

from flask import current_app, jsonify

log = logging.getLogger("bridge")


def state():
    """The BridgeState of the running app (settings, store, auth, counters)."""
    return current_app.extensions["heartbeat"]


def error(reason, status, message, headers=None):
    """A JSON error answer: {"error": reason, "message": message}."""
    response = jsonify(error=reason, message=message)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
