"""The Flask app: an adapter of the worker's state (bridge.state) for admin, status, health
and /metrics. Beats never reach it: the served ASGI app (bridge.asgi) answers them."""
from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from bridge.state import BridgeState
from bridge.views import admin, errors, health, openapi, request_timing, status
from bridge.views.metrics import metrics_wsgi


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

    # Flask's documented way to mount a WSGI app beside it (typeshed calls it a method).
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {  # type: ignore[method-assign]
        "/metrics": metrics_wsgi(bridge_state),
    })
    return app
