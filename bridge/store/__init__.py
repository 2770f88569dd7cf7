"""The store: the source of truth for every server's heartbeat state.

One interface (`Store`), one module per backend. Views, collector and CLI talk to
the interface only; persistence details stay private to each backend. Every method
is safe to call concurrently from several threads, processes and replicas.
"""
import math
import time
from dataclasses import dataclass
from typing import NamedTuple, Optional

SCHEMA_VERSION = 3


class StoreError(RuntimeError):
    """Base of store failures."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached or written right now; nothing was changed."""


class UnknownServerError(LookupError):
    """No server with that id is registered."""


class ServerExistsError(ValueError):
    """A server with that id is registered already."""


class ServerLimitError(RuntimeError):
    """Registering one more server would pass the cardinality cap."""


class OperatorPausedError(RuntimeError):
    """A host asked to start, change or end maintenance while an operator's pause holds."""


class IntervalTooLongError(ValueError):
    """An agent declared a longer interval than hosts may (and no operator pinned one)."""

    def __init__(self, interval, limit):
        super().__init__(f"interval {interval:g} s is over the {limit:g} s hosts may declare")
        self.limit = limit


class RateLimitedError(RuntimeError):
    """The server beats far faster than its interval; `retry_after` is in seconds."""

    def __init__(self, retry_after):
        super().__init__(f"rate limited, retry after {retry_after:.1f}s")
        self.retry_after = retry_after


class Credentials(NamedTuple):
    """A server's token hashes valid now, and whether the current one was confirmed."""

    hashes: list
    confirmed: bool


class Server(NamedTuple):
    """One server's state as stored; lateness is never stored, it is decided when read.

    A NamedTuple: a snapshot builds one per server, 100,000 per scrape on a large fleet.
    """

    server_id: str
    labels: dict
    registered_interval: Optional[float] = None
    declared_interval: Optional[float] = None
    last_seen: float = 0.0
    beats_total: int = 0
    paused: bool = False
    paused_until: Optional[float] = None
    pause_reason: Optional[str] = None
    created_at: float = 0.0
    hostname: Optional[str] = None
    agent_version: Optional[str] = None
    boot_time: Optional[float] = None
    clock_skew: Optional[float] = None
    seq: Optional[int] = None
    has_token: bool = False
    expected_back: Optional[float] = None
    retired_at: Optional[float] = None
    token_confirmed: bool = False
    paused_by: Optional[str] = None
    retired_by: Optional[str] = None

    def interval(self, default):
        """The promised interval: registered, else agent-declared, else the default."""
        return self.registered_interval or self.declared_interval or default

    def is_paused(self, now):
        """Paused with no end, or paused until a time still to come."""
        return self.paused and (self.paused_until is None or self.paused_until > now)

    def is_away(self, now):
        """Said goodbye and is not yet due back."""
        return self.expected_back is not None and self.expected_back > now

    @property
    def enrolment(self):
        """'open' (no own token: the fleet token may enrol it), 'pending' (a token was issued
        and not yet used) or 'enrolled' (only its own token speaks for it)."""
        if not self.has_token:
            return "open"
        return "enrolled" if self.token_confirmed else "pending"

    def as_dict(self, now, default_interval):
        """The server as JSON-ready values; a stored NaN or infinity reads as None, so no
        answer ever carries a value strict JSON cannot hold."""
        return {key: None if isinstance(value, float) and not math.isfinite(value) else value
                for key, value in self._values(now, default_interval).items()}

    def _values(self, now, default_interval):
        return {
            "server_id": self.server_id,
            "labels": self.labels,
            "interval": self.interval(default_interval),
            "registered_interval": self.registered_interval,
            "declared_interval": self.declared_interval,
            "last_seen": self.last_seen or None,
            "beats_total": self.beats_total,
            "paused": self.is_paused(now),
            "paused_until": self.paused_until if self.is_paused(now) else None,
            "pause_reason": self.pause_reason if self.is_paused(now) else None,
            "registered_at": self.created_at,
            "hostname": self.hostname,
            "agent_version": self.agent_version,
            "boot_time": self.boot_time,
            "clock_skew": self.clock_skew,
            "seq": self.seq,
            "has_token": self.has_token,
            "enrolment": self.enrolment,
            "paused_by": self.paused_by if self.is_paused(now) else None,
            "retired_by": self.retired_by if self.retired_at is not None else None,
            "expected_back": self.expected_back,
            "away": self.is_away(now),
            "retired": self.retired_at is not None,
            "retired_at": self.retired_at,
        }


@dataclass(frozen=True)
class Snapshot:
    """Everything /metrics shows, read in one consistent transaction."""

    servers: list
    rejected: dict
    taken_at: float


@dataclass(frozen=True)
class BeatPolicy:
    """What record_beat enforces, from the settings."""

    auto_register: bool = True
    max_servers: int = 100000
    rate_limit_burst: int = 10
    default_interval: float = 30.0
    max_agent_interval: float = 3600.0


def open_store(url, clock=time.time, **options):
    """A Store for a database URL: sqlite:///path or postgresql://..."""
    if url.startswith("sqlite:///"):
        from bridge.store.sqlite import SQLiteStore
        return SQLiteStore(url[len("sqlite:///"):], clock=clock, **options)
    if url.startswith(("postgresql://", "postgres://")):
        from bridge.store.postgres import PostgresStore
        return PostgresStore(url, clock=clock, **options)
    raise ValueError(f"unsupported database URL: {url!r}")


def rate_limit(tat, now, interval, burst):
    """GCRA over one stored timestamp: (new_tat, None) if allowed, (tat, retry_after) if not.

    A server may beat `burst` times per promised interval on average, with bursts of up to
    `burst` beats; `burst` 0 turns the limit off.
    """
    if burst <= 0:
        return tat, None
    emission = interval / burst
    tat = tat or 0.0
    if tat > now + interval:
        # Allowed beats never leave the TAT more than one interval ahead: only a bridge
        # clock that went back (or a shorter interval) can. Start afresh rather than
        # refuse the server until the clock catches up, hours later.
        tat = now
    tat = max(tat, now)
    if tat - now > interval - emission:
        return tat, tat - now - (interval - emission)
    return tat + emission, None
