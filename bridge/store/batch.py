"""Group commit for the SQL stores: many operations, one transaction, one COMMIT.

`store.batch()` opens one write transaction on the calling thread. While it is open, every
store operation on that thread (a beat, a token read, a goodbye) joins it inside its own
SAVEPOINT: released when the operation succeeds, rolled back to when it raises, so an
operation that fails undoes only itself (on SQLite a read, which has nothing to undo,
joins without one). Leaving the batch commits everything at once;
a failed COMMIT raises StoreUnavailableError and nothing of the batch is kept. Other
threads are not affected: they run their own transactions as usual (and on SQLite wait
for the batch's write lock like any writer).

Nothing in the individual operations knows about batches: they all go through
`_transaction()`, which is where the joining happens.
"""
import threading
from contextlib import contextmanager
from typing import Any, ContextManager, Iterator

from bridge.store import StoreError, StoreUnavailableError

_SAVEPOINT = "op"


class Batches:
    """Mixin for a SQLStore whose backend opens its own transactions in `_begin(write)`."""

    # Whether a read inside a batch takes a SAVEPOINT of its own. A read changes nothing to
    # undo, but on PostgreSQL any failed statement aborts the whole transaction unless it is
    # rolled back to a savepoint; SQLite keeps the transaction usable, so it skips them.
    read_savepoints = True

    def _begin(self, write: bool) -> ContextManager[Any]:
        """A transaction of the backend's own (the backend overrides this)."""
        raise NotImplementedError

    def _translate_errors(self) -> ContextManager[None]:
        """Driver errors as StoreUnavailableError (the backend overrides this)."""
        raise NotImplementedError

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One write transaction on this thread that every operation run inside joins."""
        local = self._batch_local()
        if getattr(local, "cur", None) is not None:
            raise RuntimeError("batches do not nest")
        committing = False
        try:
            with self._begin(write=True) as cur:
                local.cur = cur
                try:
                    yield
                finally:
                    local.cur = None
                committing = True
        except StoreError:
            raise
        except Exception as exc:
            if not committing:
                raise  # from the batch's own body: not the store's to explain
            # A deferred check, a full disk: whatever the database refused at COMMIT.
            raise StoreUnavailableError(f"the commit failed: {exc}") from exc

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Any]:
        """A cursor in a transaction of its own, or inside this thread's open batch."""
        cur = getattr(self._batch_local(), "cur", None)
        if cur is None:
            with self._begin(write) as own:
                yield own
            return
        if not write and not self.read_savepoints:
            with self._translate_errors():
                yield cur
            return
        with self._translate_errors():
            cur.execute(f"SAVEPOINT {_SAVEPOINT}")
            try:
                yield cur
            except BaseException:
                discard = getattr(cur, "discard", None)
                if discard is not None:
                    discard()  # statements held back for a pipeline (PostgreSQL)
                cur.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
                cur.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
                raise
            cur.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")

    def _batch_local(self) -> threading.local:
        # Per store instance (two stores in one process never share a batch); setdefault
        # is atomic, so racing threads end up with the same object.
        return self.__dict__.get("_batches") or self.__dict__.setdefault(
            "_batches", threading.local())
