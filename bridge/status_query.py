"""The status query language: which servers a view shows, by state, filter text, sort
order and page (no Flask).

`/api/status` (and so the status page: bridge/status_answer.py) and the CLI's `servers
list` (bridge/server_list.py) read the same parameters and filter alike:

    state     all | problems | a comma-separated list of states   (default: all)
    q         space-separated terms, all must match: `name=value` matches an operator
              label exactly (case-insensitive), any other term is looked for in the id,
              state, host name, agent version, pause reason and labels
    sort      state (worst first) | server_id | last_seen (most recent first)
    order     asc | desc
    page      1, 2, ...   per_page  1-1000 (default 100)
"""
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

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
)
from bridge.validate import InvalidInputError

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
