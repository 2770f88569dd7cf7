"""The Flask app factory: wiring only."""
import logging
import time
from dataclasses import dataclass
from typing import Optional

from flask import Flask
from prometheus_client import CollectorRegistry
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from bridge import http_metrics
from bridge.auth import Authenticator
from bridge.config import Settings
from bridge.housekeeping import Housekeeping
from bridge.rejections import RejectionCounter
from bridge.render import Renderer
from bridge.store import BeatPolicy, Clock, Store, open_store
from bridge.views import admin, errors, health, openapi, request_timing, status
from bridge.views.beat import PREFIX as BEAT_PREFIX
from bridge.views.beat import BeatEndpoint
from bridge.views.metrics import metrics_wsgi

log = logging.getLogger("bridge")


@dataclass
class BridgeState:
    """What the views need, built once per app (per worker process)."""

    settings: Settings
    store: Store
    auth: Authenticator
    rejections: RejectionCounter
    policy: BeatPolicy
    registry: CollectorRegistry
    housekeeping: Housekeeping  # run on each scrape
    # Computes /metrics and /api/status in a child process (bridge.render); None: here.
    renderer: Optional[Renderer] = None

    @property
    def max_host_silence(self) -> float:
        """The longest silence a host may plan for itself, in seconds."""
        return self.settings.max_host_silence_hours * 3600.0


def create_app(settings: Optional[Settings] = None, store: Optional[Store] = None,
               clock: Clock = time.time, rejection_flush_every: float = 1.0,
               multiproc_dir: Optional[str] = None) -> Flask:
    """Build the bridge; settings from the environment unless given."""
    settings = settings or Settings.from_env()
    if store is None:
        store = open_store(settings.database_url, clock=clock, pool_size=settings.pool_size,
                           max_host_silence=settings.max_host_silence_hours * 3600.0)
    if settings.allow_unauthenticated:
        log.warning("HEARTBEAT_ALLOW_UNAUTHENTICATED is on: ANYONE who can reach this port "
                    "can send beats for any server id. Use it for development only.")

    registry = CollectorRegistry(auto_describe=False)  # the bridge's own request metrics
    rejections = RejectionCounter(store, flush_every=rejection_flush_every)
    bridge_state = BridgeState(
        settings=settings,
        store=store,
        auth=Authenticator(settings.fleet_tokens, settings.admin_token,
                           settings.allow_unauthenticated, enrolment=settings.enrolment,
                           status_token=settings.status_token),
        rejections=rejections,
        policy=BeatPolicy(auto_register=settings.auto_register,
                          max_servers=settings.max_servers,
                          rate_limit_burst=settings.rate_limit_burst,
                          default_interval=settings.default_interval,
                          max_agent_interval=settings.max_agent_interval),
        registry=registry,
        housekeeping=Housekeeping(store, settings, rejections),
    )

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    app.json.sort_keys = False  # type: ignore[attr-defined]  # DefaultJSONProvider's
    app.extensions["heartbeat"] = bridge_state
    errors.init_app(app)
    observe = http_metrics.request_metrics(registry,
                                           multiproc_dir or settings.metrics_multiproc_dir)
    request_timing.init_app(app, observe)
    for blueprint in (admin.bp, health.bp, openapi.bp, status.bp):
        app.register_blueprint(blueprint)

    # Flask's documented way to mount WSGI apps beside it (typeshed calls it a method).
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {  # type: ignore[method-assign]
        "/metrics": metrics_wsgi(bridge_state),
        BEAT_PREFIX: BeatEndpoint(bridge_state, observe),
    })
    return app
