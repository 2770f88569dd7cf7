"""Who computes the heavy answers, /metrics and /api/status: one interface, two ways.

- InlineRenderer: in the calling thread of the worker, over the worker's own store. Right
  for a small fleet: a 1,000-server scrape takes a few ms of CPU.
- HostRenderer (bridge.render): in the host's one render process, shared by every worker.
  Right for a large fleet: a 100,000-server scrape takes about 2 s of CPU, which in a
  worker would hold the GIL its event loop needs to answer beats.
- SizedRenderer picks one of them per request by the fleet's size, so a small bridge never
  starts a render process and a large one never renders in a worker.
"""
import threading
import time
from typing import Callable, Dict, List, Optional, Protocol, Tuple

from prometheus_client import CollectorRegistry

from bridge.config import Settings
from bridge.exposition import render
from bridge.serving import Serving
from bridge.status_answer import status_answer, status_snapshots
from bridge.status_cache import SnapshotCache
from bridge.store import Store

Headers = List[Tuple[str, str]]


class Renderer(Protocol):
    """Computes the two heavy answers; safe to call from several threads at once."""

    def metrics(self, accept: str, accept_encoding: str) -> Tuple[Headers, bytes]:
        """(headers, body) of one scrape, as bridge.exposition.render() gives them.
        Raises StoreUnavailableError, or RenderError (503) when it could not compute."""

    def status(self, args: Dict[str, str], if_none_match: str) -> Tuple[str, Optional[str]]:
        """(etag, JSON text or None when `if_none_match` already names that etag); raises
        BridgeError for a bad query, as bridge.status_query judges it."""

    def close(self) -> None:
        """Let go of what it holds (processes, connections); safe to call twice."""


class InlineRenderer:
    """Renders in the calling thread, from `store`; request metrics from `registry`."""

    def __init__(self, store: Store, settings: Settings, registry: CollectorRegistry) -> None:
        self.store = store
        self.settings = settings
        self.registry = registry
        self._snapshots: Optional[SnapshotCache] = None
        self._lock = threading.Lock()
        # This replica's stretch of hearing beats: from `serve`'s start (or now, in-process)
        self.serving = Serving(settings.started_at or store.clock(),
                               settings.heard_until or None)

    def metrics(self, accept: str, accept_encoding: str) -> Tuple[Headers, bytes]:
        environ = {"HTTP_ACCEPT": accept, "HTTP_ACCEPT_ENCODING": accept_encoding}
        return render(self.store, environ, self.registry, self.settings.default_interval,
                      self.settings.max_servers, self.settings.metric_set, self.serving)

    def status(self, args: Dict[str, str], if_none_match: str) -> Tuple[str, Optional[str]]:
        return status_answer(self.snapshots(), args, self.settings.default_interval,
                             if_none_match)

    def snapshots(self) -> SnapshotCache:
        """The status snapshots, made on first use (shared through status_cache_dir)."""
        with self._lock:
            if self._snapshots is None:
                self._snapshots = status_snapshots(self.store, self.settings)
            return self._snapshots

    def close(self) -> None:
        pass


class SizedRenderer:
    """`small` for a fleet under `threshold` servers, `large` from it on.

    The size is the store's count, asked at most once per `recount` seconds: a fleet that
    grows past the threshold moves to `large` within that time."""

    def __init__(self, small: Renderer, large: Renderer, threshold: int,
                 count: Callable[[], int], recount: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.small, self.large = small, large
        self.threshold = threshold
        self._count = count
        self.recount = recount
        self._clock = clock
        self._size: Optional[int] = None
        self._counted_at = 0.0

    def choose(self) -> Renderer:
        """The renderer for a request now."""
        now = self._clock()
        if self._size is None or now - self._counted_at >= self.recount:
            self._size, self._counted_at = self._count(), now
        return self.large if self._size >= self.threshold else self.small

    def metrics(self, accept: str, accept_encoding: str) -> Tuple[Headers, bytes]:
        return self.choose().metrics(accept, accept_encoding)

    def status(self, args: Dict[str, str], if_none_match: str) -> Tuple[str, Optional[str]]:
        return self.choose().status(args, if_none_match)

    def close(self) -> None:
        self.small.close()
        self.large.close()
