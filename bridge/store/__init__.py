"""The store: the source of truth for every server's heartbeat state.

One interface (the `Store` Protocol below), one module per backend. Views, collector and
CLI talk to the interface only; persistence details stay private to each backend. Every
method is safe to call concurrently from several threads, processes and replicas.
"""
import math
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Protocol,
    Sequence,
    Tuple,
)

from bridge.errors import BridgeError, Headers

if TYPE_CHECKING:
    from bridge.validate import Beat

SCHEMA_VERSION = 3


class StoreError(BridgeError, RuntimeError):
    """Base of store failures; answered as the class (or the instance) says.

    A plain StoreError (the schema is newer than this bridge) is a 500 whose detail goes to
    the log and the terminal, never to a client."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached or written right now; nothing was changed.
    str() is the backend's detail, for the log."""

    reason = "store_unavailable"
    status = 503
    message = "the store is unavailable; retry shortly"
    retry_after = 5

    def headers(self) -> Headers:
        return [("Retry-After", str(self.retry_after))]


class UnknownServerError(StoreError, LookupError):
    """No server with that id is registered."""

    reason = "unknown_server"
    status = 404

    def __init__(self, server_id: str, message: Optional[str] = None) -> None:
        self.server_id = server_id
        text = message or f"no server {server_id!r}"
        super().__init__(text, message=text)


class ServerExistsError(StoreError, ValueError):
    """A server with that id is registered already."""

    reason = "server_exists"
    status = 409

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        text = f"server {server_id!r} is registered already"
        super().__init__(text, message=text)


class ServerLimitError(StoreError):
    """Registering one more server would pass the cardinality cap."""

    reason = "server_limit"
    status = 403
    message = "the bridge has reached its server limit (HEARTBEAT_MAX_SERVERS)"

    def __init__(self, detail: Optional[str] = None, message: Optional[str] = None) -> None:
        super().__init__(detail, message=message)


class OperatorPausedError(StoreError):
    """A host asked to start, change or end maintenance while an operator's pause holds."""

    reason = "operator_pause"
    status = 409
    message = "an operator paused this server; only an operator can change or end that pause"

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        super().__init__()


class IntervalTooLongError(StoreError, ValueError):
    """An agent declared a longer interval than hosts may (and no operator pinned one)."""

    reason = "invalid_field"
    status = 422

    def __init__(self, interval: float, limit: float) -> None:
        self.limit = limit
        detail = f"interval {interval:g} s is over the {limit:g} s hosts may declare"
        super().__init__(detail, message=f"{detail}; an operator can pin a longer one "
                                         "(set-interval)")


class RateLimitedError(StoreError):
    """The server beats far faster than its interval; `retry_after` is in seconds."""

    reason = "rate_limited"
    status = 429
    message = "beating far faster than the promised interval"

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"rate limited, retry after {retry_after:.1f}s")

    def headers(self) -> Headers:
        return [("Retry-After", str(max(1, math.ceil(self.retry_after))))]


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

    def interval(self, default: float) -> float:
        """The promised interval: registered, else agent-declared, else the default."""
        return self.registered_interval or self.declared_interval or default

    def is_paused(self, now: float) -> bool:
        """Paused with no end, or paused until a time still to come."""
        return self.paused and (self.paused_until is None or self.paused_until > now)

    def is_away(self, now: float) -> bool:
        """Said goodbye and is not yet due back."""
        return self.expected_back is not None and self.expected_back > now

    @property
    def enrolment(self) -> str:
        """'open' (no own token: the fleet token may enrol it), 'pending' (a token was issued
        and not yet used) or 'enrolled' (only its own token speaks for it)."""
        if not self.has_token:
            return "open"
        return "enrolled" if self.token_confirmed else "pending"


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


Clock = Callable[[], float]
# Not given: update() leaves that field as it is (None is a value: "follow the agent").
UNSET: Any = object()


class Store(Protocol):
    """What every backend promises; the app, the CLI and the views name only this type.

    Unless a method says otherwise: it is safe to call concurrently from several threads,
    processes and replicas sharing one database; it runs in one transaction (all or
    nothing); it raises StoreUnavailableError when the database cannot be reached or
    refuses the write, having changed nothing; times are Unix seconds from `clock`.
    """

    clock: Clock
    where: str  # where the data lives, for people (a path, or host/database)

    def create_schema(self) -> None:
        """Create or upgrade the tables; safe when several workers or replicas start at
        once. An upgrade runs in one transaction and is logged (bridge.store.upgrade); a
        SQLite file is copied next to itself first. Raises StoreError if the database's
        schema is newer than this bridge's."""

    def schema_version(self) -> int:
        """The schema version the database is at."""

    def ping(self) -> None:
        """Return when the database answers; raise StoreUnavailableError otherwise."""

    def close(self) -> None:
        """Release connections; the store is not used afterwards."""

    def batch(self) -> "AbstractContextManager[None]":
        """One write transaction on this thread that every call made inside joins, each in a
        savepoint of its own (a failing call undoes only itself); committed on leaving.
        A failed commit raises StoreUnavailableError and keeps nothing. Batches do not
        nest (RuntimeError). Other threads are unaffected."""

    # -- the beat path -------------------------------------------------------------------
    def record_beat(self, server_id: str, beat: "Beat", policy: "BeatPolicy"
                    ) -> Tuple[float, float]:
        """Commit one accepted beat; return (received_at, the interval in force).

        Registers an unknown server when `policy.auto_register` (ServerLimitError past
        `policy.max_servers`; UnknownServerError when it is off). Raises
        IntervalTooLongError for a declared interval over `policy.max_agent_interval` (unless
        an operator pinned one) and RateLimitedError past the server's rate limit. Two
        replicas registering one id at once make one row; concurrent beats of one server
        are serialized on its row, so none is lost from beats_total."""

    def add_rejections(self, counts: Mapping[str, int]) -> None:
        """Add {reason: n} to the shared rejection counters (atomic increments)."""

    def credentials(self, server_id: str) -> "Credentials":
        """The server's token hashes valid now (current first, then the previous one during
        a rotation or a pending enrolment) and whether the current one is confirmed; none for
        an unknown server. Read under the server's row lock: inside a batch, a decision
        taken on it holds until the batch commits."""

    def token_hashes(self, server_id: str) -> List[str]:
        """credentials(server_id).hashes."""

    def enrol(self, server_id: str, token_hash: str, keep_pending_for: float) -> bool:
        """Issue an unconfirmed token unless the current one is confirmed (then False, and
        nothing changes); a pending token issued before stays valid `keep_pending_for` s."""

    def confirm_token(self, server_id: str, token_hash: str) -> None:
        """The first use of an issued token (the current one, or a pending one still valid)
        makes it the only token; nothing changes once a token is confirmed."""

    def host_pause(self, server_id: str, until: float, reason: Optional[str],
                   policy: "BeatPolicy") -> "Server":
        """A host's own maintenance until `until`; return the server. Raises
        UnknownServerError, OperatorPausedError while an operator's pause holds, and
        RateLimitedError (the rate limit beats use)."""

    def host_resume(self, server_id: str, policy: "BeatPolicy") -> "Server":
        """A host ends its own maintenance; errors as host_pause."""

    def goodbye(self, server_id: str, back_within: float, retire: bool = False,
                policy: Optional["BeatPolicy"] = None) -> float:
        """A host's clean stop: seen now, expected back within `back_within` s (or retired by
        itself); return when it is due back. An operator's retirement stays. Raises
        UnknownServerError and RateLimitedError."""

    # -- reads ---------------------------------------------------------------------------
    def snapshot(self) -> "Snapshot":
        """Every server and the rejection counters, from one consistent read."""

    def list(self) -> "List[Server]":
        """Every server, by id."""

    def count(self) -> int:
        """How many servers there are (retired ones included): the fleet's size."""

    def list_unsettled(self, now: float, silent_intervals: float, default_interval: float
                       ) -> "Tuple[int, List[Server]]":
        """(count of all servers, a superset of those that may not be up at `now`), from one
        read scanned in the database: retired, paused, away, never seen, and silent for more
        than `silent_intervals` intervals less a second."""

    def get(self, server_id: str) -> "Server":
        """One server; UnknownServerError if there is none."""

    # -- the operator's changes (each returns the server as it is afterwards) -------------
    def register(self, server_id: str, interval: Optional[float] = None,
                 labels: Optional[Dict[str, str]] = None, token_hash: Optional[str] = None,
                 max_servers: int = BeatPolicy.max_servers) -> "Server":
        """Add a server that has never beaten. Raises ServerExistsError if the id is known
        (also when another replica registers it at the same moment) and ServerLimitError
        past `max_servers`."""

    def update(self, server_id: str, labels: Dict[str, str] = UNSET,
               interval: Optional[float] = UNSET) -> "Server":
        """Replace the labels and/or the registered interval (None: the agent's) given, in
        one transaction. UnknownServerError if there is no such server."""

    def pause(self, server_id: str, until: Optional[float] = None,
              reason: Optional[str] = None) -> "Server":
        """An operator pauses alerting until `until` (None: until resumed); no host can end
        it. UnknownServerError."""

    def resume(self, server_id: str) -> "Server":
        """End any pause. UnknownServerError."""

    def set_retired(self, server_id: str, retired: bool) -> "Server":
        """An operator retires a server (a host cannot undo it) or brings it back.
        UnknownServerError."""

    def set_token(self, server_id: str, token_hash: Optional[str],
                  keep_previous_for: float = 0.0, confirmed: bool = True) -> "Server":
        """Set a server's token hash (None: revoke, which re-opens enrolment); the previous
        one stays valid `keep_previous_for` s. UnknownServerError."""

    def remove(self, server_id: str) -> None:
        """Delete a server. UnknownServerError if there is none."""

    # -- housekeeping (each returns how many servers it changed) -------------------------
    def retire_silent(self, silent_for: float) -> int:
        """Retire servers not heard from (nor registered) for `silent_for` seconds."""

    def forget_retired(self, retired_for: float) -> int:
        """Delete servers retired more than `retired_for` seconds ago."""

    def forget_silent(self, silent_for: float) -> int:
        """Delete servers not heard from (nor registered) for `silent_for` seconds."""

    # -- moving state between stores -----------------------------------------------------
    def export_rows(self) -> Tuple[List[Sequence[Any]], Dict[str, int]]:
        """Every server row (a tuple in sql.ALL_COLUMNS order) and the rejection counters,
        from one read."""

    def import_rows(self, rows: Sequence[Sequence[Any]], rejected: Mapping[str, int]) -> None:
        """Insert or overwrite the servers of export_rows(); add the counters."""


class DriverMissingError(StoreError):
    """A postgresql:// URL, and the PostgreSQL driver is not installed."""

    exit_code = 2

    def __init__(self) -> None:
        super().__init__("a postgresql:// database URL needs the PostgreSQL driver (psycopg), "
                         "which is not installed: pip install 'heartbeat-bridge[postgres]'")


def require_postgres_driver() -> None:
    """Return if psycopg and its pool can be imported; DriverMissingError otherwise."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise DriverMissingError() from None


SQLITE_PREFIX = "sqlite:///"
POSTGRESQL_PREFIXES = ("postgresql://", "postgres://")


def database_kind(url: str) -> Optional[str]:
    """'sqlite' for sqlite:///PATH (a PATH given), 'postgresql' for postgresql://... or
    postgres://..., None for anything else: the one place a database URL is recognised."""
    if url.startswith(SQLITE_PREFIX) and len(url) > len(SQLITE_PREFIX):
        return "sqlite"
    if url.startswith(POSTGRESQL_PREFIXES):
        return "postgresql"
    return None


def sqlite_path(url: str) -> Optional[str]:
    """The file of a sqlite:///PATH URL; None for any other."""
    return url[len(SQLITE_PREFIX):] if database_kind(url) == "sqlite" else None


def open_store(url: str, clock: Clock = time.time, **options: Any) -> Store:
    """A Store for a database URL: sqlite:///path or postgresql://...

    `max_host_silence` (seconds, HEARTBEAT_MAX_HOST_SILENCE_HOURS) is how a migration from
    schema 2 tells a host's maintenance window from an operator's pause (bridge.store.sql)."""
    path = sqlite_path(url)
    if path:
        from bridge.store.sqlite import SQLiteStore
        return SQLiteStore(path, clock=clock, **options)
    if database_kind(url) == "postgresql":
        require_postgres_driver()
        from bridge.store.postgres import PostgresStore
        return PostgresStore(url, clock=clock, **options)
    from bridge.config import mask_url
    raise ValueError(f"unsupported database URL: {mask_url(url)!r}")


def rate_limit(tat: Optional[float], now: float, interval: float, burst: int
               ) -> Tuple[Optional[float], Optional[float]]:
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
