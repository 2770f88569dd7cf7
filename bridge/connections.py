"""A worker's open connections: counted, bounded below its file limit, the longest-idle shed.

Agents keep their connection between beats (HEARTBEAT_KEEPALIVE), so a fleet of N servers
holds about N idle connections, each one file descriptor. Past the file limit accept() fails
with EMFILE, and the event loop (libuv) then resets every waiting connection without an
answer. So each worker keeps its open connections at most at a bound below its limit, with
room kept for what else it opens (FileReserve). A connection that arrives at the bound is
served all the same: the connection idle the longest (kept alive between two requests) is
closed for it, as nginx does with keep-alive connections; its agent simply reconnects at
its next beat. Only when no connection is idle is the newcomer refused, with an answer: 503
and Retry-After (health, readiness and /metrics are answered even then).

Gauges of open connections and of the bound, one series per worker process summed across
workers, and a counter of connections shed by reason show it on /metrics; a WARNING at most
once a minute says so in the log while it lasts.
"""
import ctypes
import logging
import resource
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Set, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger("bridge")
NR_OPEN = "/proc/sys/fs/nr_open"
# Reasons a connection was shed (heartbeat_bridge_connections_shed_total{reason}).
IDLE, REFUSED = "idle", "refused"
# Answered even by a worker at its bound: what probes and Prometheus ask.
ALWAYS_ANSWERED = frozenset({"/healthz", "/readyz", "/metrics"})
# A burst of at least this many connections that then halves gives freed memory back.
RELEASE_AFTER = 1000


def release_memory() -> None:
    """Hand freed heap pages back to the system: glibc's malloc keeps them otherwise (after
    10,000 idle connections closed, a worker kept 27 MB of the 38 they took; trimmed, 11)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the C library's, if glibc
    if trim is not None:
        trim(0)


@dataclass(frozen=True)
class FileReserve:
    """File descriptors a worker keeps back from connections; measured on a 2-worker bridge
    (a worker holds about 35 descriptors that are not connections once it served a scrape)."""

    base: int = 32       # stdio, listening sockets, event loop, logs, metrics files
    render: int = 8      # the host's render process: a socket per kind of answer, and
                         # two pipes and a lock file while a worker starts it
    per_store: int = 4   # a SQLite connection holds 3-4 (db, -wal, -shm, lock), PostgreSQL 1
    newcomers: int = 64  # accepted in one burst past the bound before the worker sheds

    def total(self, pool_size: int) -> int:
        return self.base + self.render + self.per_store * pool_size + self.newcomers


def raise_file_limit(nr_open: str = NR_OPEN) -> Tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; (soft before, soft now).

    An unlimited hard limit is not a valid soft one: the kernel's nr_open caps it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        try:
            with open(nr_open, encoding="ascii") as handle:
                hard = int(handle.read())
        except (OSError, ValueError):
            hard = 1 << 20  # Linux's default nr_open
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(
                resource.RLIMIT_NOFILE)[1]))
        except (OSError, ValueError) as exc:  # a sandbox may forbid it: keep what we have
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_bound(file_limit: int, pool_size: int,
                     reserve: FileReserve = FileReserve()) -> int:
    """The most connections a worker with this file limit keeps open."""
    return max(file_limit // 2, file_limit - reserve.total(pool_size))


def describe_limit(before: int, limit: int, pool_size: int, workers: int) -> str:
    """The start-up log line: the file limit and the kept-alive agents it allows."""
    bound = connection_bound(limit, pool_size)
    raised = f"raised from {before}" if limit > before else "not raised: the hard limit"
    plural = "s" if workers > 1 else ""
    return (f"open-file limit {limit} per process ({raised}): up to {bound} kept-alive agents "
            f"per worker, {bound * workers} in all with {workers} worker{plural}")


class ConnectionMetrics:
    """The three families, per worker process; into `registry`, or into this process's files
    under `multiproc_dir` (merged with the other workers' on scrape, bridge.http_metrics)."""

    def __init__(self, registry: Optional[CollectorRegistry] = None,
                 multiproc_dir: Optional[str] = None) -> None:
        target = None if multiproc_dir else registry
        self.open = Gauge("heartbeat_bridge_connections_open",
                          "Open client connections, summed over the workers.",
                          registry=target, multiprocess_mode="livesum")
        self.bound = Gauge("heartbeat_bridge_connections_limit",
                           "The most client connections the workers keep open (each worker's "
                           "bound below its open-file limit, summed).",
                           registry=target, multiprocess_mode="livesum")
        shed = Counter("heartbeat_bridge_connections_shed",
                       "Connections shed at the bound: idle = a kept-alive connection closed "
                       "for a newcomer, refused = a newcomer answered 503.",
                       ["reason"], registry=target)
        self.shed = {reason: shed.labels(reason) for reason in (IDLE, REFUSED)}


class Connections:
    """One worker's open connections; call from its event loop only.

    A connection is any object with a `shed()` method that closes it. opened() on connect,
    closed() when gone, idle() when it waits between two requests, busy() when it reads one.
    """

    def __init__(self, bound: int, metrics: ConnectionMetrics,
                 clock: Callable[[], float] = time.monotonic, warn_every: float = 60.0,
                 release: Callable[[], None] = release_memory) -> None:
        self.bound = bound
        self.release = release
        self._peak = 0  # the most open since memory was last released
        self.metrics = metrics
        self.clock = clock
        self.warn_every = warn_every
        self._open: Set[Any] = set()
        self._idle: "OrderedDict[Any, None]" = OrderedDict()  # the longest idle first
        self._unreported: Dict[str, int] = {IDLE: 0, REFUSED: 0}
        self._warned_at: Optional[float] = None
        metrics.bound.set(bound)
        metrics.open.set(0)

    @property
    def count(self) -> int:
        return len(self._open)

    def opened(self, conn: Any) -> bool:
        """Count a new connection; True when it may be served (room was made if needed),
        False when the worker is at its bound and none is idle: refuse its requests."""
        self._open.add(conn)
        self.metrics.open.set(len(self._open))
        self._peak = max(self._peak, len(self._open))
        return self.admit()

    def admit(self) -> bool:
        """True if the open connections fit the bound, after closing the longest-idle one
        if need be; asked again by a refused connection when its request arrives."""
        if len(self._open) <= self.bound:
            return True
        if not self._idle:
            return False
        oldest, _ = self._idle.popitem(last=False)
        self._open.discard(oldest)  # gone for the bound's sake now, closed a moment later
        self.metrics.open.set(len(self._open))
        oldest.shed()
        self._count(IDLE)
        return True

    def refused(self) -> None:
        """A request answered 503 because the worker is at its bound."""
        self._count(REFUSED)

    def closed(self, conn: Any) -> None:
        self._idle.pop(conn, None)
        if conn in self._open:
            self._open.discard(conn)
            self.metrics.open.set(len(self._open))
        if self._peak >= RELEASE_AFTER and len(self._open) <= self._peak // 2:
            self._peak = len(self._open)
            self.release()

    def idle(self, conn: Any) -> None:
        """`conn` answered its last request and waits, kept alive: the newest idle one."""
        if conn in self._open:
            self._idle.pop(conn, None)
            self._idle[conn] = None

    def busy(self, conn: Any) -> None:
        self._idle.pop(conn, None)

    def _count(self, reason: str) -> None:
        self.metrics.shed[reason].inc()
        self._unreported[reason] += 1
        now = self.clock()
        if self._warned_at is not None and now - self._warned_at < self.warn_every:
            return
        since = ("" if self._warned_at is None
                 else f" in the last {now - self._warned_at:.0f} s")
        self._warned_at = now
        log.warning("at its bound of %d open connections: %d idle kept-alive connections "
                    "closed for newcomers, %d new requests answered 503%s; raise the open-file "
                    "limit (LimitNOFILE, ulimits) or add workers (docs/scaling.md, Connections)",
                    self.bound, self._unreported[IDLE], self._unreported[REFUSED], since)
        self._unreported = {IDLE: 0, REFUSED: 0}
