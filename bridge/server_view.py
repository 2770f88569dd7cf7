"""A server as people and programs outside see it: the JSON object of the admin API and of
the CLI's output (server_json), and back (server_from_json, for the CLI through the API).

The store's Server holds what is stored; what a server shows (its interval in force,
whether it is paused now, its enrolment) is decided here, at the edge, when it is read.
"""
import math
from typing import Any, Dict

from bridge.store import Server

ServerJSON = Dict[str, Any]


def server_json(server: Server, now: float, default_interval: float) -> ServerJSON:
    """The server as JSON-ready values at `now`; a stored NaN or infinity reads as None, so
    no answer ever carries a value strict JSON cannot hold."""
    paused = server.is_paused(now)
    retired = server.retired_at is not None
    values = {
        "server_id": server.server_id,
        "labels": server.labels,
        "interval": server.interval(default_interval),
        "registered_interval": server.registered_interval,
        "declared_interval": server.declared_interval,
        "last_seen": server.last_seen or None,
        "beats_total": server.beats_total,
        "paused": paused,
        "paused_until": server.paused_until if paused else None,
        "pause_reason": server.pause_reason if paused else None,
        "registered_at": server.created_at,
        "hostname": server.hostname,
        "agent_version": server.agent_version,
        "boot_time": server.boot_time,
        "clock_skew": server.clock_skew,
        "seq": server.seq,
        "has_token": server.has_token,
        "enrolment": server.enrolment,
        "paused_by": server.paused_by if paused else None,
        "retired_by": server.retired_by if retired else None,
        "expected_back": server.expected_back,
        "away": server.is_away(now),
        "retired": retired,
        "retired_at": server.retired_at,
    }
    return {key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in values.items()}


def server_from_json(shown: ServerJSON) -> Server:
    """The Server that server_json() showed: what it leaves out (an expired pause, who
    retired a server that is back) is what no reader of the server can tell apart."""
    return Server(
        server_id=shown["server_id"], labels=shown.get("labels") or {},
        registered_interval=shown.get("registered_interval"),
        declared_interval=shown.get("declared_interval"),
        last_seen=shown.get("last_seen") or 0.0, beats_total=shown.get("beats_total") or 0,
        paused=bool(shown.get("paused")), paused_until=shown.get("paused_until"),
        pause_reason=shown.get("pause_reason"), created_at=shown.get("registered_at") or 0.0,
        hostname=shown.get("hostname"), agent_version=shown.get("agent_version"),
        boot_time=shown.get("boot_time"), clock_skew=shown.get("clock_skew"),
        seq=shown.get("seq"), has_token=bool(shown.get("has_token")),
        expected_back=shown.get("expected_back"), retired_at=shown.get("retired_at"),
        token_confirmed=shown.get("enrolment") == "enrolled",
        paused_by=shown.get("paused_by"), retired_by=shown.get("retired_by"))
