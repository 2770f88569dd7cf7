"""The CLI's `servers list`: the status query language (bridge/status_query.py) over the
servers an Admin returns, so the CLI filters and sorts as /api/status does."""
from typing import List, Tuple

from bridge.status import RANK, SERVER_ID, STATE, status_row
from bridge.status_query import StatusQuery, select
from bridge.store import Server


def select_servers(servers: List[Server], query: StatusQuery, now: float,
                   default_interval: float) -> List[Tuple[Server, str]]:
    """(server, its state) of the servers that `query` selects, in its order."""
    rows = [status_row(s, now, default_interval) for s in servers]
    rows.sort(key=lambda row: (RANK[row[STATE]], row[SERVER_ID]))
    _, chosen = select(rows, query)
    by_id = {s.server_id: s for s in servers}
    return [(by_id[row[SERVER_ID]], row[STATE]) for row in chosen]
