"""The answer of /api/status (and so of the status page's data): snapshots of the fleet,
shared by workers, and one page of them for a status query (no Flask)."""
import hashlib
from typing import TYPE_CHECKING, Mapping, Optional, Tuple

from werkzeug.http import parse_etags

from bridge.status import (
    HAYSTACK,
    fleet_snapshot,
    problem_snapshot,
    row_json,
    strict_json,
    thresholds,
)
from bridge.status_cache import SnapshotCache
from bridge.status_query import pages, parse_query, select

if TYPE_CHECKING:
    from bridge.config import Settings
    from bridge.store import Store


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
