"""Since when a replica has heard beats, and how long it heard none before that: silence
the bridge could not hear is not the server's."""
from typing import Optional

from bridge.store import Snapshot, Store, StoreUnavailableError


class Serving:
    """This replica's current unbroken stretch of hearing beats, on the store's clock.

    `since` is when the stretch began: the replica's start (`started`, stamped once for all
    workers by `heartbeat-bridge serve`; None: the first snapshot), then the first snapshot
    after each store outage this process runs into. `unheard` is how long before `since`
    nothing was heard: from the last beat recorded before the gap (`heard_until` at the
    start; None: read from the first snapshot) to `since`. The rules leave that time out of
    the silence of every server last heard before `since`.
    """

    def __init__(self, started: Optional[float] = None,
                 heard_until: Optional[float] = None) -> None:
        self.since = started
        self.unheard = max(0.0, started - heard_until) if started and heard_until else 0.0
        self._heard_until = heard_until
        self._begin = heard_until is None  # unheard is read from the first snapshot
        self._down = False

    def snapshot(self, store: Store) -> Snapshot:
        """The store's snapshot; an outage (StoreUnavailableError, re-raised) starts a new
        stretch at the first snapshot after it."""
        try:
            snapshot = store.snapshot()
        except StoreUnavailableError:
            self._down = True
            raise
        if self._begin or self._down:
            if self._down or self.since is None:
                self.since = snapshot.taken_at
            heard = self._heard_until if not self._begin else last_beat(snapshot, self.since)
            self.unheard = max(0.0, self.since - heard) if heard else 0.0
            self._begin = self._down = False
        self._heard_until = last_beat(snapshot)
        return snapshot


def last_beat(snapshot: Snapshot, before: float = float("inf")) -> Optional[float]:
    """The latest beat of the fleet (before `before`); None without one."""
    return max((s.last_seen for s in snapshot.servers if s.last_seen < before),
               default=0.0) or None
