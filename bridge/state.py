"""What a worker holds, built once: store, settings, auth, counters, request metrics and
the renderer. The Flask app (bridge.app) and the ASGI app (bridge.asgi) only adapt it;
nothing sets a field on it later."""
import logging
import time
from dataclasses import dataclass
from typing import Optional

from prometheus_client import CollectorRegistry

from bridge import http_metrics
from bridge.auth import Authenticator
from bridge.config import Settings
from bridge.housekeeping import Housekeeping
from bridge.http_metrics import Observe
from bridge.rejections import RejectionCounter
from bridge.render import HostRenderer
from bridge.renderer import InlineRenderer, Renderer, SizedRenderer
from bridge.store import BeatPolicy, Clock, Store, open_store

log = logging.getLogger("bridge")


@dataclass(frozen=True)
class BridgeState:
    """What the endpoints need, built once per worker process by build_state()."""

    settings: Settings
    store: Store
    auth: Authenticator
    rejections: RejectionCounter
    policy: BeatPolicy
    registry: CollectorRegistry  # the bridge's own request metrics
    observe: Observe  # observe(handler, code, seconds) into `registry`
    housekeeping: Housekeeping  # run on each scrape
    renderer: Renderer  # computes /metrics and /api/status

    @property
    def max_host_silence(self) -> float:
        """The longest silence a host may plan for itself, in seconds."""
        return self.settings.max_host_silence_hours * 3600.0

    def close(self) -> None:
        """At the worker's end: pending rejection counts written, the renderer let go."""
        self.renderer.close()
        self.rejections.flush()


def build_state(settings: Optional[Settings] = None, store: Optional[Store] = None,
                clock: Clock = time.time, rejection_flush_every: float = 1.0,
                multiproc_dir: Optional[str] = None) -> BridgeState:
    """Build a worker's state; settings from the environment unless given."""
    settings = settings or Settings.from_env()
    if store is None:
        store = open_store(settings.database_url, clock=clock, pool_size=settings.pool_size,
                           max_host_silence=settings.max_host_silence_hours * 3600.0)
    if settings.allow_unauthenticated:
        log.warning("HEARTBEAT_ALLOW_UNAUTHENTICATED is on: ANYONE who can reach this port "
                    "can send beats for any server id. Use it for development only.")
    registry = CollectorRegistry(auto_describe=False)
    observe = http_metrics.request_metrics(registry,
                                           multiproc_dir or settings.metrics_multiproc_dir)
    rejections = RejectionCounter(store, flush_every=rejection_flush_every)
    return BridgeState(
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
        observe=observe,
        housekeeping=Housekeeping(store, settings, rejections),
        renderer=build_renderer(settings, store, registry),
    )


def build_renderer(settings: Settings, store: Store, registry: CollectorRegistry) -> Renderer:
    """In the worker, unless `serve` gave a run directory and the render process is on:
    then the host's render process from render_process_from servers on."""
    inline = InlineRenderer(store, settings, registry)
    if not (settings.render_process and settings.run_dir):
        return inline
    return SizedRenderer(inline, HostRenderer(settings), settings.render_process_from,
                         store.count)
