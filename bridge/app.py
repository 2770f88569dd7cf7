"""The Flask app factory: wiring only."""
import logging
import time
from dataclasses import dataclass, field

from flask import Flask, jsonify
from prometheus_client import CollectorRegistry
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from bridge import __version__, http_metrics
from bridge.auth import Authenticator
from bridge.config import Settings
from bridge.rejections import RejectionCounter
from bridge.store import BeatPolicy, Store, open_store
from bridge.views import admin, errors, health, openapi, status
from bridge.views.beat import PREFIX as BEAT_PREFIX
from bridge.views.beat import BeatEndpoint
from bridge.views.metrics import metrics_wsgi

log = logging.getLogger("bridge")
HOUSEKEEPING_EVERY = 60.0


@dataclass
class BridgeState:
    """What the views need, built once per app (per worker process)."""

    settings: Settings
    store: Store
    auth: Authenticator
    rejections: RejectionCounter
    policy: BeatPolicy
    registry: CollectorRegistry
    _last_housekeeping: float = field(default=float("-inf"), repr=False)

    @property
    def max_host_silence(self):
        """The longest silence a host may plan for itself, in seconds."""
        return self.settings.max_host_silence_hours * 3600.0

    def housekeeping(self):
        """On scrape: write pending rejection counts; at most once a minute, retire and
        forget servers as the settings say."""
        self.rejections.flush()
        now = time.monotonic()
        if now - self._last_housekeeping < HOUSEKEEPING_EVERY:
            return
        self._last_housekeeping = now
        settings, day = self.settings, 86400.0
        for days, action, what in (
                (settings.auto_retire_after_days, self.store.retire_silent, "retired silent"),
                (settings.retired_retention_days, self.store.forget_retired, "forgot retired"),
                (settings.forget_after_days, self.store.forget_silent, "forgot silent")):
            count = action(days * day) if days else 0
            if count:
                log.info("%s servers: %d (after %g days)", what, count, days)


def create_app(settings=None, store=None, clock=time.time, rejection_flush_every=1.0,
               multiproc_dir=None):
    """Build the bridge; settings from the environment unless given."""
    settings = settings or Settings.from_env()
    if store is None:
        store = open_store(settings.database_url, clock=clock, pool_size=settings.pool_size)
    if settings.allow_unauthenticated:
        log.warning("HEARTBEAT_ALLOW_UNAUTHENTICATED is on: ANYONE who can reach this port "
                    "can send beats for any server id. Use it for development only.")

    registry = CollectorRegistry(auto_describe=False)  # the bridge's own request metrics
    bridge_state = BridgeState(
        settings=settings,
        store=store,
        auth=Authenticator(settings.fleet_tokens, settings.admin_token,
                           settings.allow_unauthenticated, enrolment=settings.enrolment),
        rejections=RejectionCounter(store, flush_every=rejection_flush_every),
        policy=BeatPolicy(auto_register=settings.auto_register,
                          max_servers=settings.max_servers,
                          rate_limit_burst=settings.rate_limit_burst,
                          default_interval=settings.default_interval,
                          max_agent_interval=settings.max_agent_interval),
        registry=registry,
    )

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    app.json.sort_keys = False
    app.extensions["heartbeat"] = bridge_state
    errors.init_app(app)
    observe = http_metrics.init_app(app, registry,
                                    multiproc_dir or settings.metrics_multiproc_dir)
    for blueprint in (admin.bp, health.bp, openapi.bp, status.bp):
        app.register_blueprint(blueprint)

    @app.get("/api")
    def index():
        return jsonify(name="heartbeat-bridge", version=__version__,
                       endpoints=["/", "/api/status", "/api/heartbeat/<server_id>/",
                                  "/api/servers", "/metrics", "/healthz", "/readyz",
                                  "/openapi.yaml"])

    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {
        "/metrics": metrics_wsgi(bridge_state),
        BEAT_PREFIX: BeatEndpoint(bridge_state, observe),
    })
    return app
