"""Rejected-beat counters shared by all workers through the store, written in batches."""
import logging
import threading
from collections import Counter
from typing import Optional

from bridge.store import Store, StoreUnavailableError

log = logging.getLogger(__name__)


class RejectionCounter:
    """Counts rejections in memory and adds them to the store within `flush_every` seconds.

    Batching keeps a flood of bad requests from turning into a flood of store writes;
    `flush_every=0` writes at once. Safe to call from several threads.
    """

    def __init__(self, store: Store, flush_every: float = 1.0) -> None:
        self.store = store
        self.flush_every = flush_every
        self._pending: "Counter[str]" = Counter()
        self._lock = threading.Lock()
        self._timer: Optional[threading.Timer] = None

    def add(self, reason: str) -> None:
        with self._lock:
            self._pending[reason] += 1
            if self.flush_every and self._timer is None:
                self._timer = threading.Timer(self.flush_every, self.flush)
                self._timer.daemon = True
                self._timer.start()
        if not self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write pending counts; on a store outage keep them for the next try."""
        with self._lock:
            self._timer = None
            pending, self._pending = self._pending, Counter()
        if not pending:
            return
        try:
            self.store.add_rejections(dict(pending))
        except StoreUnavailableError as exc:
            log.warning("could not record %d rejections, will retry: %s",
                        sum(pending.values()), exc)
            with self._lock:
                self._pending.update(pending)
