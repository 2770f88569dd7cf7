"""Fleet status for people: each server's state, decided when read (no Flask here).

The thresholds are the shipped alert rules' (`prometheus/rules.yml`), expressed in
intervals so that one rule serves every interval; a test keeps the two in step.
"""
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

if TYPE_CHECKING:
    from bridge.store import Server, Store

Row = Tuple[Any, ...]  # a status row: the fields FIELDS names, in that order

# A server is late once silent for more than LATE_AFTER of its intervals: the
# `heartbeat:late:bool` recording rule in prometheus/rules.yml (`> bool 1.5 * interval`).
LATE_AFTER = 1.5
# ...and down once silent for more than DOWN_AFTER intervals: the condition of the
# HeartbeatMissing alert (and `heartbeat:missing:bool`) in prometheus/rules.yml,
# `> 3.05 * interval` (three intervals plus the agent's 5% jitter); the alert has no `for`.
DOWN_AFTER = 3.05

# Worst first: the default order of the page and of the JSON list. Retired servers
# are out of service, so they come last.
STATES = ("down", "late", "never_seen", "away", "paused", "up", "retired")
RANK = {state: rank for rank, state in enumerate(STATES)}
# What the page opens on: every server that is not up (nor retired), worst first.
PROBLEM_STATES = ("down", "late", "never_seen", "away", "paused")
# The order of the counts, with the names people read on the page.
STATE_NAMES = {"up": "Up", "late": "Late", "down": "Down", "never_seen": "Never seen",
               "paused": "Paused", "away": "Away", "retired": "Retired"}

# A status row is a plain tuple, cheap to build, sort and hand to another process for
# 100,000 servers; these name its fields. Numbers are finite or None (see _finite).
FIELDS = ("state", "server_id", "last_seen", "interval", "labels", "hostname", "agent_version",
          "boot_time", "paused_until", "pause_reason", "expected_back", "retired_at",
          "haystack")
(STATE, SERVER_ID, LAST_SEEN, INTERVAL, LABELS, HOSTNAME, AGENT_VERSION, BOOT_TIME,
 PAUSED_UNTIL, PAUSE_REASON, EXPECTED_BACK, RETIRED_AT, HAYSTACK) = range(len(FIELDS))


def _number(value: Any) -> Optional[float]:
    """A stored number as a float (infinities kept: they still decide a state); None for
    NULL, NaN or anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _finite(value: Optional[float]) -> Optional[float]:
    """What the JSON may carry: a finite number or None (never NaN or Infinity)."""
    return value if value is None or math.isfinite(value) else None


def _decide(now: float, last_seen: Optional[float], interval: float, paused: Any,
            paused_until: Optional[float], expected_back: Optional[float],
            retired_at: Optional[float]) -> str:
    """The state from cleaned numbers (see docs/states.md)."""
    if retired_at is not None:
        return "retired"
    if paused and (paused_until is None or paused_until > now):
        return "paused"  # an operator's decision outranks what the silence would say
    if expected_back is not None and expected_back > now:
        return "away"  # said goodbye and is not yet due back
    if not last_seen:
        return "never_seen"
    silent = now - last_seen
    if silent > DOWN_AFTER * interval:
        return "down"
    if silent > LATE_AFTER * interval:
        return "late"
    return "up"


def status_row(server: "Server", now: float, default_interval: float) -> Row:
    """One server as a status row (see FIELDS), whatever odd numbers its row holds."""
    last_seen = _number(server.last_seen)
    interval = (_number(server.registered_interval) or _number(server.declared_interval)
                or default_interval)
    paused_until = _number(server.paused_until)
    expected_back = _number(server.expected_back)
    retired_at = _number(server.retired_at)
    state = _decide(now, last_seen, interval, server.paused, paused_until, expected_back,
                    retired_at)
    labels = server.labels if isinstance(server.labels, dict) else {}
    pairs = "\n".join(f"{k}={v}" for k, v in sorted(labels.items()))
    haystack = "\n".join((server.server_id, STATE_NAMES[state], state, server.hostname or "",
                          server.agent_version or "", server.pause_reason or "", pairs)).lower()
    paused = state == "paused"
    return (state, server.server_id, _finite(last_seen) or None, _finite(interval), labels,
            server.hostname, server.agent_version, _finite(_number(server.boot_time)),
            _finite(paused_until) if paused else None,
            server.pause_reason if paused else None,
            _finite(expected_back) if state == "away" else None,
            _finite(retired_at), haystack)


def row_json(row: Row, now: float) -> Dict[str, Any]:
    """A status row as /api/status shows it."""
    last_seen = row[LAST_SEEN]
    return {
        "server_id": row[SERVER_ID],
        "state": row[STATE],
        "last_seen": last_seen,
        # Clamped: another replica's clock may be a little ahead of this one's.
        "seconds_since_last_seen": (round(max(0.0, now - last_seen), 3)
                                    if last_seen is not None else None),
        "interval": row[INTERVAL],
        "labels": row[LABELS],
        "hostname": row[HOSTNAME],
        "agent_version": row[AGENT_VERSION],
        "boot_time": row[BOOT_TIME],
        "paused_until": row[PAUSED_UNTIL],
        "pause_reason": row[PAUSE_REASON],
        "expected_back": row[EXPECTED_BACK],
        "retired_at": row[RETIRED_AT],
    }


def thresholds(default_interval: float) -> Dict[str, float]:
    return {"late_after_intervals": LATE_AFTER, "down_after_intervals": DOWN_AFTER,
            "default_interval": default_interval}


@dataclass(frozen=True)
class FleetSnapshot:
    """Counts per state and status rows worst first, then by id, at `generated_at`.

    `complete` False: `rows` holds only the servers that are not up (the up ones are
    counted, not listed), which is all the opening view of the page needs.
    """

    generated_at: float
    counts: dict
    rows: list
    complete: bool

    def dump(self) -> Tuple[float, dict, list, bool]:
        """Plain values only (marshal-able), for another process; see load()."""
        return (self.generated_at, self.counts, self.rows, self.complete)

    @classmethod
    def load(cls, values: Tuple[float, dict, list, bool]) -> "FleetSnapshot":
        return cls(*values)


def _sorted_counted(rows: List[Any]) -> Dict[str, int]:
    rows.sort(key=lambda row: (RANK[row[STATE]], row[SERVER_ID]))
    counts = dict.fromkeys(STATE_NAMES, 0)
    for row in rows:
        counts[row[STATE]] += 1
    return counts


def fleet_snapshot(store: "Store", default_interval: float) -> FleetSnapshot:
    """Every server of the store, with its state."""
    servers = store.list()
    now = store.clock()  # after the read, so no beat read is newer than `now`
    rows = [status_row(s, now, default_interval) for s in servers]
    counts = _sorted_counted(rows)
    counts["total"] = len(rows)
    return FleetSnapshot(now, counts, rows, complete=True)


def problem_snapshot(store: "Store", default_interval: float) -> FleetSnapshot:
    """The counts of every state, and rows for the servers that are not up only.

    The store hands over a superset of them (every server silent for LATE_AFTER
    intervals less a second, paused, away, never seen or retired), a scan done in the
    database; the state of each is decided here, the same way as for the whole fleet.
    """
    now = store.clock()
    total, servers = store.list_unsettled(now, LATE_AFTER, default_interval)
    rows = [status_row(s, now, default_interval) for s in servers]
    rows = [row for row in rows if row[STATE] != "up"]
    counts = _sorted_counted(rows)
    counts["up"] = total - len(rows)
    counts["total"] = total
    return FleetSnapshot(now, counts, rows, complete=False)


def strict_json(value: Any) -> str:
    """JSON text with no NaN or Infinity: ValueError rather than invalid JSON."""
    return json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
