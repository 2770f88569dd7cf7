"""GET /metrics: one store snapshot per scrape, rendered by the worker's renderer
(bridge.renderer: in the worker for a small fleet, in the host's render process for a
large one)."""
from typing import Any, Callable, Dict, List

from bridge.errors import error_body, wsgi_answer
from bridge.render import RenderError
from bridge.state import BridgeState
from bridge.store import StoreUnavailableError
from bridge.views import log

WSGIApp = Callable[[Dict[str, Any], Callable[..., Any]], List[bytes]]


def metrics_wsgi(bridge_state: BridgeState) -> WSGIApp:
    """WSGI app for /metrics; a store outage answers 503, never stale data."""

    def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return wsgi_answer(start_response, 405, error_body("method_not_allowed", "use GET"),
                               [("Allow", "GET, HEAD")])
        try:
            try:
                bridge_state.housekeeping()
            except StoreUnavailableError:
                pass  # the render below meets the outage too: it answers, and is told
            headers, body = bridge_state.renderer.metrics(
                environ.get("HTTP_ACCEPT") or "", environ.get("HTTP_ACCEPT_ENCODING") or "")
        except StoreUnavailableError as exc:
            log.error("/metrics: store unavailable: %s", exc)
            return wsgi_answer(start_response, exc.status, error_body(
                exc.reason, "the store is unreachable; no metrics rather than stale ones"),
                exc.headers())
        except RenderError as exc:
            log.error("/metrics: %s", exc)
            return wsgi_answer(start_response, exc.status, error_body(exc.reason, exc.message),
                               exc.headers())
        start_response("200 OK", headers + [("Content-Length", str(len(body)))])
        return [body] if environ["REQUEST_METHOD"] == "GET" else [b""]

    return app
