"""Since when a replica has been able to hear beats: silence before that is not the server's."""
from typing import Optional

from bridge.store import Snapshot, Store, StoreUnavailableError


class Serving:
    """The start of this replica's current unbroken stretch of hearing beats (store clock).

    It starts at the replica's start (`started`: `heartbeat-bridge serve` stamps it once for
    all workers; None: when this object is made) and moves to the end of every store
    outage this process runs into, since no beat could be recorded during it.
    """

    def __init__(self, store_clock_now: float, started: Optional[float] = None) -> None:
        self.since = store_clock_now if not started else started
        self._down = False

    def snapshot(self, store: Store) -> Snapshot:
        """The store's snapshot; an outage (StoreUnavailableError, re-raised) moves `since`
        to the first snapshot after it."""
        try:
            snapshot = store.snapshot()
        except StoreUnavailableError:
            self._down = True
            raise
        if self._down:
            self._down = False
            self.since = max(self.since, snapshot.taken_at)
        return snapshot
