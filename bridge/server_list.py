"""The CLI's `servers list`: the status query language (bridge/status_query.py) over the
servers an Admin returns, so the CLI filters and sorts as /api/status does."""
from typing import List

from bridge.admin import ServerJSON
from bridge.status import RANK, SERVER_ID, STATE, status_row
from bridge.status_query import StatusQuery, select
from bridge.store import Server


def select_servers(servers: List[ServerJSON], query: StatusQuery, now: float,
                   default_interval: float) -> List[ServerJSON]:
    """The servers (dicts as the admin API and `Server.as_dict` show them) that `query`
    selects, in its order, each with its "state" added: the CLI's `servers list`."""
    rows = [status_row(_as_server(s), now, default_interval) for s in servers]
    rows.sort(key=lambda row: (RANK[row[STATE]], row[SERVER_ID]))
    _, chosen = select(rows, query)
    by_id = {s["server_id"]: s for s in servers}
    return [dict(by_id[row[SERVER_ID]], state=row[STATE]) for row in chosen]


def _as_server(shown: ServerJSON) -> Server:
    """The Server status_row reads, from its admin view. The interval shown is the one in
    force, so it is taken as pinned: the bridge's default decides it, not the CLI's."""
    return Server(
        server_id=shown["server_id"], labels=shown.get("labels") or {},
        registered_interval=shown.get("interval"), declared_interval=None,
        last_seen=shown.get("last_seen") or 0.0, paused=bool(shown.get("paused")),
        paused_until=shown.get("paused_until"), pause_reason=shown.get("pause_reason"),
        hostname=shown.get("hostname"), agent_version=shown.get("agent_version"),
        boot_time=shown.get("boot_time"), expected_back=shown.get("expected_back"),
        retired_at=shown.get("retired_at"))
