"""The Flask app: an adapter of the worker's state (bridge.state) for admin, status, health,
/metrics, and the beat endpoint as WSGI (the ASGI app, bridge.asgi, serves beats itself)."""
from typing import Any, Optional

from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from bridge.config import Settings
from bridge.state import BridgeState, build_state
from bridge.views import admin, errors, health, openapi, request_timing, status
from bridge.views.beat import PREFIX as BEAT_PREFIX
from bridge.views.beat import BeatEndpoint
from bridge.views.metrics import metrics_wsgi


def create_app(settings: Optional[Settings] = None, **options: Any) -> Flask:
    """Build the bridge as a WSGI app; options as for bridge.state.build_state()."""
    return flask_app(build_state(settings, **options))


def flask_app(bridge_state: BridgeState) -> Flask:
    """The Flask app over a worker's state; builds nothing of its own."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    app.json.sort_keys = False  # type: ignore[attr-defined]  # DefaultJSONProvider's
    app.extensions["heartbeat"] = bridge_state
    errors.init_app(app)
    request_timing.init_app(app, bridge_state.observe)
    for blueprint in (admin.bp, health.bp, openapi.bp, status.bp):
        app.register_blueprint(blueprint)

    # Flask's documented way to mount WSGI apps beside it (typeshed calls it a method).
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {  # type: ignore[method-assign]
        "/metrics": metrics_wsgi(bridge_state),
        BEAT_PREFIX: BeatEndpoint(bridge_state),
    })
    return app
