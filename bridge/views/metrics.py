"""GET /metrics: prometheus_client's WSGI app over the app's own registry."""
import json

from prometheus_client import make_wsgi_app

from bridge.store import StoreUnavailableError
from bridge.views import log


def metrics_wsgi(registry, bridge_state):
    """prometheus_client does negotiation and gzip; a store outage answers 503, not stale data."""
    exposition = make_wsgi_app(registry)

    def app(environ, start_response):
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _json(start_response, "405 METHOD NOT ALLOWED", "method_not_allowed",
                         "use GET", [("Allow", "GET, HEAD")])
        try:
            bridge_state.housekeeping()
            return exposition(environ, start_response)
        except StoreUnavailableError as exc:
            log.error("/metrics: store unavailable: %s", exc)
            return _json(start_response, "503 SERVICE UNAVAILABLE", "store_unavailable",
                         "the store is unreachable; no metrics rather than stale ones",
                         [("Retry-After", "5")])

    return app


def _json(start_response, status, reason, message, headers):
    body = json.dumps({"error": reason, "message": message}).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))] + headers)
    return [body]
