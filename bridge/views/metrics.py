"""GET /metrics: one store snapshot per scrape, rendered by bridge.exposition (under
`heartbeat-bridge serve`, in the worker's render process: bridge.render)."""
from typing import TYPE_CHECKING, Any, Callable, Dict, List

from bridge.errors import error_body, wsgi_answer
from bridge.exposition import render
from bridge.render import RenderError
from bridge.serving import Serving
from bridge.store import StoreUnavailableError
from bridge.views import log

if TYPE_CHECKING:
    from bridge.app import BridgeState

WSGIApp = Callable[[Dict[str, Any], Callable[..., Any]], List[bytes]]


def metrics_wsgi(bridge_state: "BridgeState") -> WSGIApp:
    """WSGI app for /metrics; a store outage answers 503, never stale data."""
    settings = bridge_state.settings
    # In-process (no `serve`): the replica starts with this app.
    serving = Serving(settings.started_at or bridge_state.store.clock(),
                      settings.heard_until or None)

    def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return wsgi_answer(start_response, 405, error_body("method_not_allowed", "use GET"),
                               [("Allow", "GET, HEAD")])
        try:
            try:
                bridge_state.housekeeping()
            except StoreUnavailableError:
                pass  # the snapshot below meets the outage too: it answers, and is told
            renderer = bridge_state.renderer
            if renderer is not None:  # under `serve`: in the worker's render process
                headers, body = renderer.metrics(environ.get("HTTP_ACCEPT") or "",
                                                 environ.get("HTTP_ACCEPT_ENCODING") or "")
            else:
                headers, body = render(bridge_state.store, environ, bridge_state.registry,
                                       settings.default_interval, settings.max_servers,
                                       settings.metric_set, serving)
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
