"""Status snapshots computed at most once per `max_age` and shared by every worker.

gunicorn's workers are processes, each with its own memory, and a viewer's refreshes land
on any of them; a cache in each worker alone would compute the same snapshot once per
worker. So a worker that needs a fresh snapshot first looks in a directory shared by the
workers of one bridge (made by `heartbeat-bridge serve`): a snapshot file younger than
`max_age` is read, not computed. Otherwise it takes an exclusive flock() on the kind's lock
file, looks again (another worker may have just written it) and only then computes it
and replaces the file atomically. The others wait on the lock and read the result.

Within a worker the last snapshot of each kind stays in memory; the file is read only
when it changed. The store's clock dates every snapshot, so a clock that jumps either way
makes it stale. Without a directory (tests, another WSGI server) each process has its own.

Kinds named in `serve_stale` (the whole fleet, over a second to compute at 100,000
servers) are answered from the last snapshot while it is younger than STALE_FOR times
`max_age`, and computed again in a background thread meanwhile: a viewer typing a
filter waits for the filter, not for the database. Answers say when their snapshot was
taken (`generated_at`).
"""
import fcntl
import logging
import marshal
import os
import threading
import time
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from bridge.status import FleetSnapshot

Identity = Optional[Tuple[int, int]]  # (inode, mtime) of a snapshot file, None: none read

STALE_FOR = 6
log = logging.getLogger("bridge")

class SnapshotCache:
    """`get(kind)`: the snapshot `build(kind)` made at most `max_age` seconds ago.

    Safe to call from many threads and processes; `max_age` 0 builds on every call.
    """

    def __init__(self, build: Callable[[str], FleetSnapshot], kinds: Iterable[str],
                 max_age: float, directory: str = "", clock: Callable[[], float] = time.time,
                 serve_stale: Iterable[str] = ()) -> None:
        self.build = build
        self.max_age = max_age
        self.directory = directory
        self.clock = clock
        self.serve_stale = frozenset(serve_stale)
        # kind -> (snapshot, (inode, mtime_ns) of the file it came from)
        self._memory: Dict[str, Tuple[Any, Any]] = {}
        self._locks = {kind: threading.Lock() for kind in kinds}

    def get(self, kind: str) -> FleetSnapshot:
        snapshot, seen = self._memory.get(kind, (None, None))
        if self._fresh(snapshot):
            return snapshot
        if kind in self.serve_stale and self._fresh(snapshot, STALE_FOR * self.max_age):
            if not self._locks[kind].locked():  # reads another worker's, or computes
                threading.Thread(target=self._refresh_logged, args=(kind,), daemon=True,
                                 name=f"status-{kind}").start()
            return snapshot
        if self.directory and self.max_age > 0:  # another worker may have a fresh one
            shared, seen = self._read(self._path(kind), snapshot, seen)
            if shared is not None and self._fresh(shared):
                self._memory[kind] = (shared, seen)
                return shared
        return self._refresh(kind)

    def _refresh_logged(self, kind: str) -> None:
        try:
            self._refresh(kind)
        except Exception:  # a thread's edge: the next request tries again
            log.exception("status snapshot %r not refreshed", kind)

    def _refresh(self, kind: str) -> Any:  # a FleetSnapshot
        with self._locks[kind]:  # one thread of this worker computes or reads
            snapshot, seen = self._memory.get(kind, (None, None))
            if self._fresh(snapshot):
                return snapshot
            if self.directory and self.max_age > 0:
                snapshot, seen = self._shared(kind, snapshot, seen)
            else:
                snapshot, seen = self.build(kind), None
            self._memory[kind] = (snapshot, seen)
            return snapshot

    def _fresh(self, snapshot: Optional[FleetSnapshot], max_age: Optional[float] = None
               ) -> bool:
        max_age = self.max_age if max_age is None else max_age
        return snapshot is not None and 0 <= self.clock() - snapshot.generated_at < max_age

    def _path(self, kind: str) -> str:
        return os.path.join(self.directory, f"{kind}.snapshot")

    def _shared(self, kind: str, snapshot: Optional[FleetSnapshot], seen: Identity
                ) -> Tuple[Optional[FleetSnapshot], Identity]:
        path = self._path(kind)
        snapshot, seen = self._read(path, snapshot, seen)
        if self._fresh(snapshot):
            return snapshot, seen
        fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another worker computing it: wait, then read it
            snapshot, seen = self._read(path, snapshot, seen)
            if self._fresh(snapshot):
                return snapshot, seen
            snapshot = self.build(kind)
            temporary = f"{path}.{os.getpid()}.{threading.get_ident()}"
            with open(temporary, "wb") as out:
                marshal.dump(snapshot.dump(), out)
            os.replace(temporary, path)
            return snapshot, _identity(path)
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def _read(path: str, snapshot: Optional[FleetSnapshot], seen: Identity
              ) -> Tuple[Optional[FleetSnapshot], Identity]:
        """The snapshot in `path`, unless it is the one already held (or unreadable)."""
        identity = _identity(path)
        if identity is None or identity == seen:
            return snapshot, seen
        try:
            with open(path, "rb") as src:
                return FleetSnapshot.load(marshal.load(src)), identity
        except (OSError, EOFError, ValueError, TypeError):
            return snapshot, seen  # half-written by a crashed worker: computed again


def _identity(path: str) -> Identity:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns
