"""The bridge's own request metrics: ordinary process metrics, merged across workers.

Under `heartbeat-bridge serve`, PROMETHEUS_MULTIPROC_DIR is set: each gunicorn worker
counts into its own files there (prometheus_client's multiprocess mode) and a scrape sums
the files of every worker, so any worker answers the same totals. Without it the metrics
are per-process.

The files are read while other workers write them, so WorkerFiles reads them defensively
instead of prometheus_client's MultiProcessCollector, which fails the whole scrape on one
file it cannot read. A worker creates its file on its first request and sizes it a moment
later (under load that moment is long enough to hit); read in it the file is 0 bytes, and
a worker killed in it leaves the empty file behind for good (client_python issue #1199).
Here an empty file is what it is, nothing recorded yet; any other file that does not
parse is left out of the scrape whole (its worker's counts are missing rather than half
counted), named once in the log and counted in heartbeat_bridge_metrics_files_skipped.
Should collecting still raise, bridge.exposition leaves these metrics out of that one
scrape (heartbeat_bridge_collector_success{collector="http_requests"} 0).

Reading defensively rather than having each worker write a snapshot (temp file + rename)
for the scraper: the multiprocess files are exact at every scrape (a snapshot lags by its
period, so a scrape right after a beat would not count it), no worker needs a timer thread,
and a file another worker is extending is still consistent, because the writer appends an
entry before it moves the header's "used" mark over it. What a defensive reader cannot
avoid, a damaged or foreign file, costs that file's counts only.
"""
import glob
import json
import logging
import os
from typing import Any, Callable, Dict, Iterator, Optional, Set, Tuple

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger("bridge")


class WorkerFiles:
    """Collector summing every worker's multiprocess files; never raises for one file.

    Yields the merged families, then
        heartbeat_bridge_metrics_files_skipped 0.0
    Safe to call from several threads at once.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._reported: Set[tuple] = set()  # (file name, error) this process has logged

    def collect(self) -> Iterator[Metric]:
        readable, skipped = [], 0
        keys: Set[str] = set()
        for path in sorted(glob.glob(os.path.join(self.path, "*.db"))):
            state = _check(path, keys)
            if state == _OK:
                readable.append(path)
            elif state not in (_EMPTY, _GONE):
                skipped += 1
                self._report(path, state)
        # Files grow and are never cut, so one that parsed a moment ago parses again.
        yield from MultiProcessCollector.merge(readable, accumulate=True)
        yield GaugeMetricFamily(
            "heartbeat_bridge_metrics_files_skipped",
            "Workers' metrics files this scrape could not read and left out (request "
            "metrics only; an empty file has nothing yet and is not skipped).", skipped)

    def _report(self, path: str, error: str) -> None:
        key = (os.path.basename(path), error)
        level = logging.DEBUG if key in self._reported else logging.WARNING
        self._reported.add(key)
        log.log(level, "/metrics: left %s out of the request metrics, it does not parse "
                "(%s); counted in heartbeat_bridge_metrics_files_skipped", path, error)


_OK, _EMPTY, _GONE = "ok", "empty", "gone"
_TYPES = {"counter", "gauge", "histogram", "summary"}


def _check(path: str, keys: Set[str]) -> str:
    """_OK, _EMPTY (created, not yet sized), _GONE (removed since the listing: shutdown),
    or what is wrong with the file, checked as MultiProcessCollector.merge will read it.

    `keys` holds the entry keys checked already in this scrape (workers share most keys,
    and decoding them is what costs)."""
    name = os.path.basename(path)
    parts = name[:-len(".db")].split("_")
    if parts[0] not in _TYPES or len(parts) < (3 if parts[0] == "gauge" else 2):
        return "not a metrics file name"
    try:
        if os.stat(path).st_size == 0:
            return _EMPTY
        for key, _value, _timestamp, _pos in MmapedDict.read_all_values_from_file(path):
            if key not in keys:
                _check_key(key)
                keys.add(key)
    except FileNotFoundError:
        return _GONE
    except Exception as exc:  # damage shows up as struct, JSON, type or value errors
        return f"{type(exc).__name__}: {exc}"
    return _OK


def _check_key(key: str) -> None:
    """Raise unless `key` is an entry key as prometheus_client writes and merges them."""
    metric, name, labels, help_text = json.loads(key)
    if not all(isinstance(v, str) for v in (metric, name, help_text, *labels.values())):
        raise ValueError(f"an entry key is not a metric: {key[:100]!r}")
    if "le" in labels:
        float(labels["le"])


Observe = Callable[[str, int, float], None]


def request_metrics(registry: CollectorRegistry, multiproc_dir: Optional[str] = None) -> Observe:
    """observe(handler, code, seconds): counts and times one answered request, into
    `registry`, or into this worker's files under `multiproc_dir` (merged on scrape)."""
    target = None if multiproc_dir else registry
    if multiproc_dir:
        registry.register(WorkerFiles(multiproc_dir))
    requests_total = Counter("heartbeat_bridge_http_requests", "HTTP requests answered.",
                             ["handler", "code"], registry=target)
    duration = Histogram("heartbeat_bridge_http_request_duration_seconds",
                         "Time to answer an HTTP request.", ["handler"], registry=target,
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                  1.0, 2.5))
    reported = set()  # exception types this process has logged already
    children: Dict[Tuple[str, int], Tuple[Any, Any]] = {}  # labels() once per pair

    def observe(handler: str, code: int, seconds: float) -> None:
        try:
            pair = children.get((handler, code))
            if pair is None:
                pair = children[handler, code] = (requests_total.labels(handler, str(code)),
                                                  duration.labels(handler))
            pair[0].inc()
            pair[1].observe(seconds)
        except Exception as exc:  # counting a request must never fail the request counted
            level = logging.DEBUG if type(exc) in reported else logging.ERROR
            reported.add(type(exc))
            log.log(level, "request metrics not recorded (%s %s)", handler, code,
                    exc_info=True)

    return observe
