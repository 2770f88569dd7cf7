"""Fleet status for people: each server's state, decided when read (no Flask here).

The thresholds are the shipped alert rules' (`prometheus/rules.yml`), expressed in
intervals so that one rule serves every interval; a test keeps the two in step.
"""

# A server is late once silent for more than LATE_AFTER of its intervals: the
# `heartbeat:late:bool` recording rule in prometheus/rules.yml (`> bool 1.5 * interval`).
LATE_AFTER = 1.5
# ...and down once silent for more than DOWN_AFTER intervals: the condition of the
# HeartbeatMissing alert (and `heartbeat:missing:bool`) in prometheus/rules.yml,
# `> 3 * interval`; the alert itself pages after its `for:` on top.
DOWN_AFTER = 3.0

# Worst first: the default order of the page and of the JSON list. Retired servers
# are out of service, so they come last.
STATES = ("down", "late", "never_seen", "away", "paused", "up", "retired")
# The order of the counts, with the names people read on the page.
STATE_NAMES = {"up": "Up", "late": "Late", "down": "Down", "never_seen": "Never seen",
               "paused": "Paused", "away": "Away", "retired": "Retired"}


def server_state(server, now, default_interval):
    """One of STATES for a Server at Unix time now (see docs/states.md).

    Retired, paused and away servers are the ones the alert rules excuse
    (`heartbeat:excused:max`); the others are judged by their silence.
    """
    if server.retired_at is not None:
        return "retired"
    if server.is_paused(now):
        return "paused"  # an operator's decision outranks what the silence would say
    if server.is_away(now):
        return "away"  # said goodbye and is not yet due back
    if not server.last_seen:
        return "never_seen"
    silent = now - server.last_seen
    interval = server.interval(default_interval)
    if silent > DOWN_AFTER * interval:
        return "down"
    if silent > LATE_AFTER * interval:
        return "late"
    return "up"


def server_status(server, now, default_interval):
    """One server as the status page and /api/status show it."""
    paused = server.is_paused(now)
    return {
        "server_id": server.server_id,
        "state": server_state(server, now, default_interval),
        "last_seen": server.last_seen or None,
        # Clamped: another replica's clock may be a little ahead of this one's.
        "seconds_since_last_seen": (round(max(0.0, now - server.last_seen), 3)
                                    if server.last_seen else None),
        "interval": server.interval(default_interval),
        "labels": server.labels,
        "hostname": server.hostname,
        "agent_version": server.agent_version,
        "boot_time": server.boot_time,
        "paused_until": server.paused_until if paused else None,
        "pause_reason": server.pause_reason if paused else None,
        "expected_back": server.expected_back if server.is_away(now) else None,
        "retired_at": server.retired_at,
    }


def fleet_status(servers, now, default_interval):
    """Counts per state, every server worst first, and the thresholds used."""
    rows = [server_status(s, now, default_interval) for s in servers]
    rows.sort(key=lambda row: (STATES.index(row["state"]), row["server_id"]))
    counts = dict.fromkeys(STATE_NAMES, 0)
    for row in rows:
        counts[row["state"]] += 1
    counts["total"] = len(rows)
    return {
        "generated_at": now,
        "thresholds": {"late_after_intervals": LATE_AFTER, "down_after_intervals": DOWN_AFTER,
                       "default_interval": default_interval},
        "counts": counts,
        "servers": rows,
    }
