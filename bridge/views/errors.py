"""JSON answers for routing and HTTP errors, for every BridgeError as it describes itself,
and a last-resort handler that logs."""
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from bridge.errors import BridgeError
from bridge.views import error, log


def init_app(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        reason = (exc.name or "error").lower().replace(" ", "_")
        # Keep what the exception says beyond its body: `Allow` on a 405, for one.
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return error(reason, exc.code or 500, exc.description or exc.name, headers)

    @app.errorhandler(BridgeError)
    def bridge_error(exc: BridgeError) -> Response:
        if exc.status >= 500:  # the detail goes to the log, never to the client
            log.error("%s: %s", type(exc).__name__, exc, exc_info=exc.status == 500)
        return error(exc.reason, exc.status, exc.message, dict(exc.headers()))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:  # the edge: log with context, no details
        log.exception("unhandled error: %s", type(exc).__name__)
        return error("internal_error", 500, "internal error; see the bridge log")
