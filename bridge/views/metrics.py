"""GET /metrics: one store snapshot per scrape, rendered by bridge.exposition."""
import json

from bridge.exposition import render
from bridge.store import StoreUnavailableError
from bridge.views import log


def metrics_wsgi(bridge_state):
    """WSGI app for /metrics; a store outage answers 503, never stale data."""
    settings = bridge_state.settings

    def app(environ, start_response):
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _json(start_response, "405 METHOD NOT ALLOWED", "method_not_allowed",
                         "use GET", [("Allow", "GET, HEAD")])
        try:
            bridge_state.housekeeping()
            headers, body = render(bridge_state.store, environ, bridge_state.registry,
                                   settings.default_interval, settings.max_servers)
        except StoreUnavailableError as exc:
            log.error("/metrics: store unavailable: %s", exc)
            return _json(start_response, "503 SERVICE UNAVAILABLE", "store_unavailable",
                         "the store is unreachable; no metrics rather than stale ones",
                         [("Retry-After", "5")])
        start_response("200 OK", headers + [("Content-Length", str(len(body)))])
        return [body] if environ["REQUEST_METHOD"] == "GET" else [b""]

    return app


def _json(start_response, status, reason, message, headers):
    body = json.dumps({"error": reason, "message": message}).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))] + headers)
    return [body]
