"""PostgreSQL backend: several bridge replicas share one database through a connection pool."""
import functools
import hashlib
import logging
import os
import select
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Deque, Dict, Iterator, List, Optional, Tuple, Type, cast

import psycopg
from psycopg.abc import Params
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from bridge import __version__
from bridge.config import mask_url
from bridge.store import SCHEMA_VERSION, Clock, StoreError, StoreUnavailableError, upgrade
from bridge.store.batch import Batches
from bridge.store.sql import DEFAULT_MAX_HOST_SILENCE, SQLStore

log = logging.getLogger("bridge")

# Every wait is bounded, so an outage answers 503 within seconds instead of hanging a
# worker thread: connecting, and unacknowledged data on a silently dead network path.
# A URL may set any of these itself; these are only defaults.
CONNECT_DEFAULTS = {
    "connect_timeout": "3",
    "tcp_user_timeout": "5000",  # ms
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "2",
    # with the release, so pg_stat_activity shows which replicas an upgrade still waits for
    "application_name": f"heartbeat-bridge/{__version__}",
}
# Every write transaction says which schema its code writes (a custom setting, sent in the
# write's first pipeline: no round trip of its own); upgrade.POSTGRES_WRITER_LOCKOUT refuses
# the writes of sessions that do not.
_WRITER = f"SET LOCAL heartbeat_bridge.writer_schema = '{SCHEMA_VERSION}'"
# One consistent snapshot for reads that take several statements (snapshot()).
_READ_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
# Statements held back by _QmarkCursor until one that is read (their answers never are);
# savepoints too, so an operation inside a batch (bridge/store/batch.py) adds no round trip.
_HELD_VERBS = ("INSERT", "UPDATE", "DELETE", "SAVEPOINT", "RELEASE")
# server_id sorts by code point, as in SQLite, whatever the database's default collation.
_COLUMN_REWRITES = (("server_id TEXT PRIMARY KEY", 'server_id TEXT COLLATE "C" PRIMARY KEY'),)


@functools.lru_cache(maxsize=512)
def _to_pyformat(sql: str) -> str:
    """sql.py's `?` placeholders as psycopg's `%s` (its SQL holds no literal `?` or `%`)."""
    for old, new in _COLUMN_REWRITES:
        sql = sql.replace(old, new)
    return sql.replace("?", "%s")


class _QmarkCursor(psycopg.Cursor):
    """A cursor that takes the portable SQL of sql.py, and saves round trips.

    Statements whose answer is not read (BEGIN, a lock, writes) are held back and sent in
    one pipeline with the next statement that is read, or with COMMIT: a beat takes two
    round trips (BEGIN + SELECT ... FOR UPDATE, then UPDATE + COMMIT) instead of four.
    Reading `rowcount` sends what is held first.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: List[Tuple[str, Optional[Params]]] = []

    def hold(self, query: str, params: Optional[Params] = None) -> None:
        self._held.append((_to_pyformat(query), params or None))

    def execute(  # type: ignore[override]  # str only: the SQL of sql.py
        self, query: str, params: Optional[Params] = None, **kwargs: Any
    ) -> "_QmarkCursor":
        self.hold(query, params)
        if not query.startswith(_HELD_VERBS):
            self._send(**kwargs)
        return self

    @property
    def rowcount(self) -> int:
        self._send()
        return super().rowcount

    def discard(self) -> None:
        """Forget what is held (the transaction is being rolled back)."""
        self._held = []

    def _send(self, **kwargs: Any) -> None:
        statements, self._held = self._held, []
        if len(statements) == 1:
            super().execute(*statements[0], **kwargs)
        elif statements:
            with self.connection.pipeline():
                for query, params in statements:
                    super().execute(query, params)


class PostgresStore(Batches, SQLStore):
    """A store in one PostgreSQL database (or schema), shared by every replica.

    Safe for the threads of a worker (one pool per process) and across forks: a process
    that inherits a store opens its own pool on first use and never touches the parent's
    connections. Writes run at READ COMMITTED with row locks (FOR UPDATE), so concurrent
    beats for one server from several replicas count exactly; reads run as one
    REPEATABLE READ snapshot. Schema creation and registration under the server cap are
    serialized by transaction-scoped advisory locks.
    """

    for_update = " FOR UPDATE"
    backend_migrations = upgrade.POSTGRES_WRITER_LOCKOUT

    def __init__(self, url: str, clock: Clock = time.time, pool_size: int = 4,
                 timeout: float = 5.0, max_host_silence: float = DEFAULT_MAX_HOST_SILENCE,
                 **_: Any) -> None:
        super().__init__(clock, max_host_silence)
        self.conninfo, self.where = _conninfo(url)
        self.pool_size = pool_size
        self.timeout = timeout
        # pools of a parent process: kept, never closed, in a child
        self._inherited: List[ConnectionPool] = []
        self._pool: Optional[ConnectionPool] = None
        self._pid: Optional[int] = None
        # why the last connection attempt failed
        self._connect_errors: "deque[Exception]" = deque(maxlen=1)
        self._connection_class = _recording_connection(self._connect_errors)
        self._setup_lock = threading.RLock()
        self._schema_ready = self._schema_busy = False
        try:
            self._ensure_schema()
        except StoreUnavailableError as exc:
            # Start anyway: a gunicorn worker that cannot boot takes its whole replica
            # down, and this one would not come back when the database does. Every call
            # answers StoreUnavailableError (503, /readyz too) until the database is back.
            log.warning("%s; starting anyway, the schema is checked at the first "
                        "connection", exc)
        except BaseException:
            self.close()  # a schema newer than this code, for one
            raise

    # -- connections ---------------------------------------------------------------------
    def _ensure_schema(self) -> None:
        """Create or check the schema once, at the first transaction that reaches the database."""
        if self._schema_ready:
            return
        with self._setup_lock:
            if self._schema_ready or self._schema_busy:
                return  # done meanwhile, or re-entered from create_schema's own transaction
            self._schema_busy = True
            try:
                # One direct connection first: libpq's own message at once (wrong password,
                # database down) rather than after a pool timeout.
                with self._translate_errors():
                    self._connection_class.connect(self.conninfo).close()
                self.create_schema()
                self._schema_ready = True
            finally:
                self._schema_busy = False

    def _current_pool(self) -> ConnectionPool:
        # _pool is set whenever _pid is this process's (the two change together)
        if self._pid == os.getpid():
            return cast(ConnectionPool, self._pool)
        with self._setup_lock:
            if self._pid == os.getpid():
                return cast(ConnectionPool, self._pool)  # another thread opened it meanwhile
            self._forget_inherited()
            self._pool = ConnectionPool(
                self.conninfo, min_size=1, max_size=self.pool_size, timeout=self.timeout,
                # A failing connection attempt backs off exponentially; give up after a
                # few seconds so that the next request after an outage connects at once.
                reconnect_timeout=self.timeout,
                connection_class=self._connection_class,
                kwargs={"autocommit": True, "cursor_factory": _QmarkCursor},
                name=f"heartbeat-bridge-{os.getpid()}", open=True)
            self._pid = os.getpid()
            return self._pool

    def _forget_inherited(self) -> None:
        """Set aside a parent process's pool without closing it: closing (or finalizing) its
        connections here would end the parent's sessions, which share the sockets."""
        if self._pool is not None and self._pid != os.getpid():
            self._inherited.append(self._pool)
            self._pool = None

    @contextmanager
    def _checked_out(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection. One whose server end has closed (a database restart, a
        network cut) is replaced before use, so the first request after an outage does
        not fail on it; a live idle connection costs no round trip to check."""
        pool = self._current_pool()
        deadline = time.monotonic() + self.timeout
        while True:
            conn = pool.getconn(timeout=max(0.1, deadline - time.monotonic()))
            if _has_input(conn):  # idle: only a closed socket (or a stray notice) is readable
                try:
                    conn.execute("")
                except psycopg.OperationalError:
                    pool.putconn(conn)  # broken: discarded, and a new one is asked for
                    if time.monotonic() >= deadline:
                        raise
                    continue
            try:
                yield conn
            finally:
                pool.putconn(conn)
            return

    @contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # PoolTimeout and lost connections included; the transaction was rolled back.
            reason = _first_line(exc)
            last_failure = list(self._connect_errors)
            if isinstance(exc, PoolTimeout) and last_failure:
                reason += f" (last connection attempt: {_first_line(last_failure[0])})"
            raise StoreUnavailableError(f"postgresql {self.where}: {reason}") from exc

    @contextmanager
    def _begin(self, write: bool) -> Iterator[_QmarkCursor]:
        """A transaction of its own on a pooled connection (see Batches)."""
        self._ensure_schema()
        # a _QmarkCursor: the pool's connections are made with cursor_factory=_QmarkCursor
        with self._translate_errors(), self._checked_out() as conn, \
                cast(_QmarkCursor, conn.cursor()) as cur:
            cur.hold("BEGIN" if write else _READ_BEGIN)
            if write:
                cur.hold(_WRITER)
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                cur.discard()
                _rollback(conn)
                raise

    def _lock(self, cur: _QmarkCursor, name: str) -> None:
        """A transaction-scoped advisory lock, per name and per schema."""
        cur.hold("SELECT pg_advisory_xact_lock(?::integer, "
                 "hashtext(COALESCE(current_schema(), '')))", (_lock_key(name),))

    def close(self) -> None:
        self._forget_inherited()
        if self._pool is not None:
            self._pool.close(timeout=self.timeout)
            self._pool, self._pid = None, None


def _conninfo(url: str) -> Tuple[str, str]:
    """(libpq connection string with CONNECT_DEFAULTS, host:port/dbname for messages)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise StoreError(f"invalid PostgreSQL URL: {mask_url(str(exc).strip())}") from None
    for key, value in CONNECT_DEFAULTS.items():
        params.setdefault(key, value)
    return make_conninfo("", **params), _describe(params)


def read_only_rows(url: str, sql: str) -> List[Any]:
    """The rows of one query, in a read-only transaction of a connection of its own (no
    schema is created or checked: check-config)."""
    conninfo, where = _conninfo(url)
    try:
        with psycopg.connect(conninfo) as conn:
            conn.read_only = True
            return conn.execute(sql).fetchall()
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise StoreUnavailableError(f"postgresql {where}: {_first_line(exc)}") from exc


def _recording_connection(errors: Deque[Exception]) -> Type[psycopg.Connection[Any]]:
    """psycopg's Connection class, noting in `errors` why the pool could not connect."""

    class Connection(psycopg.Connection):
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> "Connection":
            try:
                conn = super().connect(conninfo, **kwargs)
            except psycopg.OperationalError as exc:
                errors.append(exc)
                raise
            errors.clear()
            return conn

    return Connection


def _lock_key(name: str) -> int:
    """A stable 32-bit key for a lock name (Python's hash() changes per process)."""
    digest = hashlib.blake2b(f"heartbeat-bridge:{name}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def _has_input(conn: psycopg.Connection[Any]) -> bool:
    """True when the connection's socket has something to read (or has closed)."""
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, psycopg.Error):
        return True


def _rollback(conn: psycopg.Connection[Any]) -> None:
    if conn.broken or conn.info.transaction_status == TransactionStatus.IDLE:
        return  # nothing was sent, or the server ended the transaction itself
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error as exc:  # the pool discards or resets the connection anyway
        log.debug("rollback failed: %s", exc)


def _describe(params: Dict[str, Any]) -> str:
    """host:port/dbname of a connection, for messages (never the password)."""
    host = params.get("host") or params.get("hostaddr") or "localhost"
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or params.get('user') or ''}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
