"""Housekeeping on scrape: pending rejection counts written, and (at most once a minute)
silent servers retired and retired ones forgotten, as the settings say (no Flask here)."""
import logging

from bridge.config import Settings
from bridge.rejections import RejectionCounter
from bridge.store import Store

log = logging.getLogger("bridge")
EVERY = 60.0
DAY = 86400.0


class Housekeeping:
    """Run by each /metrics scrape; the store's clock spaces the retire/forget passes.

    A clock that went back runs a pass at once rather than waiting for it to catch up.
    Several workers and replicas may run passes at once: each is one idempotent statement.
    """

    def __init__(self, store: Store, settings: Settings, rejections: RejectionCounter,
                 every: float = EVERY) -> None:
        self.store = store
        self.settings = settings
        self.rejections = rejections
        self.every = every
        self._last = float("-inf")

    def __call__(self) -> None:
        self.rejections.flush()
        now = self.store.clock()
        if 0 <= now - self._last < self.every:
            return
        self._last = now
        settings = self.settings
        for days, action, what in (
                (settings.auto_retire_after_days, self.store.retire_silent, "retired silent"),
                (settings.retired_retention_days, self.store.forget_retired, "forgot retired"),
                (settings.forget_after_days, self.store.forget_silent, "forgot silent")):
            count = action(days * DAY) if days else 0
            if count:
                log.info("%s servers: %d (after %g days)", what, count, days)
