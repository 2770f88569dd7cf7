"""Which servers a status view shows: states, filter text, sort order and page (no Flask).

One module for `/api/status` (and so the status page) and the CLI's `servers list`, so
both read the same parameters and filter alike:

    state     all | problems | a comma-separated list of states   (default: all)
    q         space-separated terms, all must match: `name=value` matches an operator
              label exactly (case-insensitive), any other term is looked for in the id,
              state, host name, agent version, pause reason and labels
    sort      state (worst first) | server_id | last_seen (most recent first)
    order     asc | desc
    page      1, 2, ...   per_page  1-1000 (default 100)
"""
import hashlib
import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from werkzeug.http import parse_etags

from bridge.status import (
    HAYSTACK,
    LABELS,
    LAST_SEEN,
    PROBLEM_STATES,
    RANK,
    SERVER_ID,
    STATE,
    STATES,
    Row,
    fleet_snapshot,
    problem_snapshot,
    row_json,
    status_row,
    strict_json,
    thresholds,
)
from bridge.status_cache import SnapshotCache
from bridge.validate import InvalidInputError

if TYPE_CHECKING:
    from bridge.config import Settings
    from bridge.store import Store

_ONE_STATE = "(?:" + "|".join(STATES) + ")"
STATE_LIST = re.compile(f"{_ONE_STATE}(?:,{_ONE_STATE})*\\Z")
SORTS = ("state", "server_id", "last_seen")
ORDERS = ("asc", "desc")
STATE_SETS = {"all": STATES, "problems": PROBLEM_STATES}
DEFAULT_PER_PAGE = 100
MAX_PER_PAGE = 1000
MAX_TEXT = 256


@dataclass(frozen=True)
class StatusQuery:
    """A view of the fleet; `per_page` None means every match on one page (CLI only)."""

    states: tuple = STATES
    text: str = ""
    sort: str = "state"
    order: str = "asc"
    page: int = 1
    per_page: Optional[int] = DEFAULT_PER_PAGE

    @property
    def terms(self) -> Tuple[str, ...]:
        return tuple(self.text.lower().split())

    def params(self) -> Dict[str, Any]:
        """The query parameters that give this view, defaults left out."""
        names = next((name for name, states in STATE_SETS.items() if states == self.states),
                     ",".join(self.states))
        values = {"state": names, "q": " ".join(self.text.split()), "sort": self.sort,
                  "order": self.order, "page": self.page, "per_page": self.per_page}
        defaults = StatusQuery()
        return {k: v for k, v in values.items() if v != {
            "state": "all", "q": "", "sort": defaults.sort, "order": defaults.order,
            "page": 1, "per_page": defaults.per_page}[k]}


def parse_query(args: Mapping[str, str], per_page: Optional[int] = DEFAULT_PER_PAGE,
                max_per_page: int = MAX_PER_PAGE) -> StatusQuery:
    """A StatusQuery from a mapping of parameter -> text; InvalidInputError (400) if bad.

    `per_page` is the default (None: every match on one page)."""
    unknown = sorted(set(args) - {"state", "q", "sort", "order", "page", "per_page"})
    if unknown:
        raise _bad(f"unknown parameter {unknown[0]!r}")
    state = args.get("state", "all")
    if state in STATE_SETS:
        states = STATE_SETS[state]
    else:
        wanted = set(state.split(","))
        if not STATE_LIST.match(state):
            raise _bad(f"state: all, problems or a comma-separated list of {', '.join(STATES)}")
        states = tuple(s for s in STATES if s in wanted)
    text = args.get("q", "")
    if len(text) > MAX_TEXT:
        raise _bad(f"q: at most {MAX_TEXT} characters")
    sort = args.get("sort", "state")
    if sort not in SORTS:
        raise _bad(f"sort: one of {', '.join(SORTS)}")
    order = args.get("order", "asc")
    if order not in ORDERS:
        raise _bad("order: asc or desc")
    page = _integer(args.get("page"), "page", 1, 1, 10**9)
    per_page = _integer(args.get("per_page"), "per_page", per_page, 1, max_per_page)
    return StatusQuery(states, text, sort, order, page, per_page)


def _integer(text: Optional[str], name: str, default: Any, low: int, high: int) -> int:
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise _bad(f"{name}: a whole number from {low} to {high}")
    return int(text)


def _bad(message: str) -> InvalidInputError:
    return InvalidInputError("invalid_query", message, 400)


def matches(row: Row, terms: Sequence[str]) -> bool:
    """True when every term matches the status row (see the module docstring)."""
    for term in terms:
        if term not in row[HAYSTACK]:  # the haystack holds every label as name=value too
            return False
        name, eq, value = term.partition("=")
        if eq and name and not any(k.lower() == name and str(v).lower() == value
                                   for k, v in row[LABELS].items()):
            return False
    return True


def _silence_order(row: Sequence[Any]) -> float:
    """Most recently seen first, never seen last."""
    last_seen = row[LAST_SEEN]
    return float("inf") if last_seen is None else -last_seen


SORT_KEYS = {"state": lambda row: RANK[row[STATE]], "server_id": lambda row: row[SERVER_ID],
             "last_seen": _silence_order}


def select(rows: List[Row], query: StatusQuery) -> Tuple[int, List[Row]]:
    """(how many rows match, the rows of the asked page) for status rows that come worst
    first, then by id; ties in any order keep the ids ascending."""
    terms = query.terms
    if set(query.states) != set(STATES) or terms:
        wanted = set(query.states)
        rows = [row for row in rows if row[STATE] in wanted and matches(row, terms)]
    descending = query.order == "desc"
    if query.sort != "state" or descending:
        # Stable, also in reverse: equal keys keep the ascending ids they came in.
        rows = sorted(rows, key=SORT_KEYS[query.sort], reverse=descending)
    if query.per_page is None:
        return len(rows), list(rows)
    start = (query.page - 1) * query.per_page
    return len(rows), rows[start:start + query.per_page]


def pages(matched: int, per_page: Optional[int]) -> int:
    """How many pages `matched` rows make (at least one, maybe empty)."""
    return max(1, -(-matched // per_page)) if per_page else 1


def select_servers(servers: List[Dict[str, Any]], query: StatusQuery, now: float,
                   default_interval: float) -> List[Dict[str, Any]]:
    """The servers (dicts as the admin API and `Server.as_dict` show them) that `query`
    selects, in its order, each with its "state" added: the CLI's `servers list`."""
    rows = [status_row(_as_server(s), now, default_interval) for s in servers]
    rows.sort(key=lambda row: (RANK[row[STATE]], row[SERVER_ID]))
    _, chosen = select(rows, query)
    by_id = {s["server_id"]: s for s in servers}
    return [dict(by_id[row[SERVER_ID]], state=row[STATE]) for row in chosen]


def _as_server(shown: Dict[str, Any]) -> Any:
    """What status_row reads of a Server, from its admin view (whose interval is the one
    in force, whatever the bridge's default)."""
    return SimpleNamespace(
        server_id=shown["server_id"], labels=shown.get("labels") or {},
        registered_interval=shown.get("interval"), declared_interval=None,
        last_seen=shown.get("last_seen") or 0.0, paused=bool(shown.get("paused")),
        paused_until=shown.get("paused_until"), pause_reason=shown.get("pause_reason"),
        hostname=shown.get("hostname"), agent_version=shown.get("agent_version"),
        boot_time=shown.get("boot_time"), expected_back=shown.get("expected_back"),
        retired_at=shown.get("retired_at"))


def status_snapshots(store: "Store", settings: "Settings") -> SnapshotCache:
    """The SnapshotCache behind /api/status: the whole fleet, and the problem servers only."""
    builders = {"fleet": fleet_snapshot, "problems": problem_snapshot}
    return SnapshotCache(
        lambda kind: builders[kind](store, settings.default_interval), builders,
        settings.status_max_age, settings.status_cache_dir, clock=store.clock,
        serve_stale=("fleet",))


def status_answer(snapshots: SnapshotCache, args: Mapping[str, str], default_interval: float,
                  if_none_match: str = "") -> Tuple[str, Optional[str]]:
    """(ETag, JSON text) of /api/status for the query in `args`; the text is None (a 304)
    when the `If-None-Match` header value names that ETag.

    The ETag covers the counts, rows and paging; only the times relative to
    `generated_at` may move under one ETag."""
    query = parse_query(args)
    snapshot = snapshots.get("fleet" if "up" in query.states else "problems")
    matched, rows = select(snapshot.rows, query)
    params = {"state": list(query.states), "q": query.text, "sort": query.sort,
              "order": query.order, "page": query.page, "per_page": query.per_page}
    paging = {"matched": matched, "pages": pages(matched, query.per_page)}
    validator = strict_json([default_interval, snapshot.counts, paging, params,
                             [row[:HAYSTACK] for row in rows]])
    etag = hashlib.blake2b(validator.encode(), digest_size=12).hexdigest()
    if parse_etags(if_none_match or None).contains_weak(etag):
        return etag, None
    return etag, strict_json({
        "generated_at": snapshot.generated_at, "thresholds": thresholds(default_interval),
        "counts": snapshot.counts, "query": params, **paging,
        "servers": [row_json(row, snapshot.generated_at) for row in rows]})
