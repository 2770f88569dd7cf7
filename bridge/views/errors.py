"""JSON answers for routing and HTTP errors, and a last-resort handler that logs."""
from werkzeug.exceptions import HTTPException

from bridge.store import StoreUnavailableError
from bridge.views import error, log


def init_app(app):
    @app.errorhandler(HTTPException)
    def http_error(exc):
        reason = (exc.name or "error").lower().replace(" ", "_")
        # Keep what the exception says beyond its body: `Allow` on a 405, for one.
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return error(reason, exc.code or 500, exc.description or exc.name, headers)

    @app.errorhandler(StoreUnavailableError)
    def store_unavailable(exc):
        log.error("store unavailable: %s", exc)
        return error("store_unavailable", 503, "the store is unavailable; retry shortly",
                     {"Retry-After": "5"})

    @app.errorhandler(Exception)
    def unexpected(exc):  # the edge: log with context, answer without details
        log.exception("unhandled error: %s", type(exc).__name__)
        return error("internal_error", 500, "internal error; see the bridge log")
