"""SQLite backend: one file in WAL mode, shared safely by several gunicorn workers."""
import fcntl
import os
import sqlite3
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

from bridge.store import SCHEMA_VERSION, Clock, StoreUnavailableError, upgrade
from bridge.store.batch import Batches
from bridge.store.sql import DEFAULT_MAX_HOST_SILENCE, SQLStore


class SQLiteStore(Batches, SQLStore):
    """A store in one SQLite file; one connection per thread and process.

    Writes take the database lock at BEGIN IMMEDIATE, so read-modify-write is atomic
    across workers; `synchronous=NORMAL` in WAL mode keeps every committed beat through
    a process crash (a power loss may drop the last transactions; see docs).

    Writers of this store queue on a blocking flock() of `<file>.lock` first: the kernel
    wakes the next writer the moment the lock is free, where SQLite's own busy handler
    would sleep and retry in millisecond steps. Other programs (the CLI) still meet
    SQLite's busy timeout as usual.
    """

    read_savepoints = False  # a failed read leaves a SQLite transaction usable (Batches)
    backend_migrations = upgrade.SQLITE_WRITER_LOCKOUT

    def __init__(self, path: str, clock: Clock = time.time, busy_timeout: float = 5.0,
                 synchronous: str = "NORMAL", max_host_silence: float = DEFAULT_MAX_HOST_SILENCE,
                 **_: Any) -> None:
        super().__init__(clock, max_host_silence)
        self.path = os.path.abspath(path)
        self.where = self.path
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous
        self._local = threading.local()
        self._thread_lock = threading.Lock()
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(f"cannot create {directory}: {exc.strerror}") from None
        with self._translate_errors():
            conn = self._connection()
            conn.execute("PRAGMA journal_mode=WAL")
        self.create_schema()

    def create_schema(self) -> None:
        """Create or upgrade the tables; before an upgrade, a copy of the file is made next
        to it (there is no way back to an older bridge without it)."""
        version = upgrade.stored_version(f"sqlite:///{self.path}")
        if version is not None and version < SCHEMA_VERSION:
            with self._translate_errors():
                upgrade.back_up_sqlite(self._connection(), self.path, version)
        super().create_schema()

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        # Says which schema this code writes: the lockout lets only such writers through.
        conn.create_function(upgrade.WRITER_FUNCTION, 0, _writer_schema, deterministic=True)
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        self._local.conn, self._local.pid = conn, os.getpid()
        self._local.lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        return conn

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        """One writer at a time per process (threads), then per file (processes)."""
        with self._thread_lock:
            fd = self._local.lock_fd
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(f"sqlite {self.path}: {exc}") from exc

    @contextmanager
    def _begin(self, write: bool) -> Iterator[sqlite3.Cursor]:
        """A transaction of its own on this thread's connection (see Batches)."""
        with self._translate_errors():
            conn = self._connection()
            with self._write_lock() if write else nullcontext():
                cur = conn.cursor()
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield cur
                except BaseException:
                    conn.rollback()
                    raise
                else:
                    cur.execute("COMMIT")
                finally:
                    cur.close()

    def integrity_check(self) -> str:
        """SQLite's own consistency check: 'ok' when the file is sound."""
        with self._transaction(write=False) as cur:
            cur.execute("PRAGMA integrity_check")
            return cur.fetchone()[0]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            os.close(self._local.lock_fd)
            self._local.conn = None


def _writer_schema() -> int:
    return SCHEMA_VERSION
