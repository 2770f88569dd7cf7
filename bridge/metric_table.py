"""The table of metrics over one store snapshot (what each series is, and when it is
shown), and prometheus_client families built from it.

Per server, in the default `lean` set (HEARTBEAT_METRICS; operator labels ride along with
server_id), at most 4 series a server:

    heartbeat_last_seen_seconds{server_id="web-1",team="web"} 1.7e+09
    heartbeat_interval_seconds{server_id="web-1",team="web"} 30.0

and only while they matter:

    heartbeat_excused_until_seconds{server_id="db-1",team="db"} +Inf   (excused: paused,
        retired or away; the time the excuse ends, +Inf without an end)
    heartbeat_maintenance_info{reason="disk swap",server_id="db-1"} 1.0   (paused)
    heartbeat_registered_timestamp_seconds{server_id="new-1",team="web"} 1.7e+09
        (registered, never seen, not excused)
    heartbeat_boot_time_seconds{server_id="web-1",team="web"} 1.7e+09
        (booted less than REBOOT_WINDOW ago, not excused)
    heartbeat_clock_skew_seconds{server_id="web-1",team="web"} -75.2
        (off by more than SKEW_SHOWN, not excused)

The `full` set adds heartbeat_beats_total, heartbeat_paused,
heartbeat_maintenance_until_seconds, heartbeat_expected_back_seconds, heartbeat_retired and
heartbeat_agent_info{agent_version,hostname,server_id}, and exports the registration and
boot times and the clock skew for every server that has them.

Bridge-level: heartbeat_registered_servers, heartbeat_paused_servers, heartbeat_max_servers,
heartbeat_rejected_total{reason}, heartbeat_store_up, heartbeat_scrape_duration_seconds,
heartbeat_bridge_build_info and

    heartbeat_bridge_time_seconds 1.7e+09
    heartbeat_bridge_serving_since_seconds 1.7e+09
    heartbeat_bridge_unheard_seconds 300.0

the store's clock when it took this scrape's snapshot (the clock that stamps beats, so
the rules measure silence on one clock), since when this replica has heard beats without
a break, and how long it heard none before that (the rules leave that out of silence).

`per_server(metric_set)` is the one table of per-server metrics: server_families() turns it
into prometheus_client families, and bridge.exposition renders the same table fast for
/metrics (tested to be byte-identical).
"""
import math
import platform
import time
from typing import Callable, Dict, Iterator, NamedTuple, Optional, Tuple

from prometheus_client.core import Metric

from bridge import __version__
from bridge.store import Server, Snapshot

METRIC_SETS = ("lean", "full")
# The boot time is exported this long after the boot: HeartbeatServerRebooted needs it only
# then (it compares it with the beats of the same 15 minutes).
REBOOT_WINDOW = 900.0
# A skew is exported only beyond this: NTP keeps healthy hosts well inside it, and
# HeartbeatClockSkew pages at 60 s.
SKEW_SHOWN = 10.0

# value(server, now, default interval); None = no sample for that server
Value = Callable[[Server, float, float], Optional[float]]


class Family(NamedTuple):
    """One per-server family: its name, type, help and value."""
    name: str
    typ: str
    doc: str
    value: Value


def excused_until(server: Server, now: float) -> Optional[float]:
    """When the server's excuse ends (+Inf: no end), or None when it is not excused."""
    if server.retired_at is not None:
        return math.inf
    if server.is_paused(now):
        return server.paused_until or math.inf
    if server.is_away(now):
        return server.expected_back
    return None


def _watched(server: Server, now: float) -> bool:
    """Seen at least once and not excused: the rules look at its reboots and clock."""
    return bool(server.last_seen) and excused_until(server, now) is None


def _recent_boot(s: Server, now: float, d: float) -> Optional[float]:
    if s.boot_time is None or not _watched(s, now):
        return None
    # the boot on the bridge's clock: the agent's clock is off by the skew it last showed
    if now - (s.boot_time - (s.clock_skew or 0.0)) >= REBOOT_WINDOW:
        return None
    return s.boot_time


def _large_skew(s: Server, now: float, d: float) -> Optional[float]:
    if s.clock_skew is None or abs(s.clock_skew) <= SKEW_SHOWN or not _watched(s, now):
        return None
    return s.clock_skew


def _unseen_registration(s: Server, now: float, d: float) -> Optional[float]:
    if s.last_seen or excused_until(s, now) is not None:
        return None
    return s.created_at


LAST_SEEN = Family("heartbeat_last_seen_seconds", "gauge",
                   "Unix time (bridge clock) of the last accepted beat; 0 = registered, "
                   "never seen.",
                   lambda s, now, d: s.last_seen)
INTERVAL = Family("heartbeat_interval_seconds", "gauge",
                  "The beat interval the server promises (registered, else agent-declared, else "
                  "default).",
                  lambda s, now, d: s.interval(d))
EXCUSED_UNTIL = Family("heartbeat_excused_until_seconds", "gauge",
                       "Unix time (bridge clock) an excuse from alerting ends (a pause's end, a "
                       "promised return; +Inf without an end or while retired); only while "
                       "excused.",
                       lambda s, now, d: excused_until(s, now))
REGISTERED_DOC = "Unix time the server was registered."
BOOT_DOC = "Boot time the agent reported (Unix time)."
SKEW_DOC = "Agent clock minus bridge clock at the last beat that carried sent_at."
LEAN = (
    LAST_SEEN, INTERVAL, EXCUSED_UNTIL,
    Family("heartbeat_registered_timestamp_seconds", "gauge",
           REGISTERED_DOC + " Only while never seen.", _unseen_registration),
    Family("heartbeat_boot_time_seconds", "gauge",
           BOOT_DOC + " Only in the 15 minutes after a boot.", _recent_boot),
    Family("heartbeat_clock_skew_seconds", "gauge",
           SKEW_DOC + " Only beyond 10 seconds.", _large_skew),
)
FULL = (
    LAST_SEEN, INTERVAL,
    Family("heartbeat_beats", "counter", "Accepted beats.", lambda s, now, d: s.beats_total),
    Family("heartbeat_paused", "gauge", "1 while the server is paused for maintenance.",
           lambda s, now, d: 1.0 if s.is_paused(now) else 0.0),
    Family("heartbeat_maintenance_until_seconds", "gauge",
           "Unix time a timed pause ends; 0 when not paused or paused without an end.",
           lambda s, now, d: (s.paused_until or 0.0) if s.is_paused(now) else 0.0),
    Family("heartbeat_registered_timestamp_seconds", "gauge", REGISTERED_DOC,
           lambda s, now, d: s.created_at),
    Family("heartbeat_boot_time_seconds", "gauge", BOOT_DOC, lambda s, now, d: s.boot_time),
    Family("heartbeat_clock_skew_seconds", "gauge", SKEW_DOC, lambda s, now, d: s.clock_skew),
    Family("heartbeat_expected_back_seconds", "gauge",
           "Unix time by which a server that said goodbye promised to beat again; 0 = no "
           "goodbye.",
           lambda s, now, d: s.expected_back or 0.0),
    Family("heartbeat_retired", "gauge", "1 when the server is retired: it never alerts.",
           lambda s, now, d: 0.0 if s.retired_at is None else 1.0),
    EXCUSED_UNTIL,
)
AGENT_INFO = ("heartbeat_agent", "Facts the agent reported about itself.")
MAINTENANCE_INFO = ("heartbeat_maintenance", "Why a paused server is paused.")
SAMPLE_SUFFIX = {"counter": "_total", "gauge": "", "info": "_info"}


def per_server(metric_set: str) -> Tuple[Tuple[Family, ...], bool]:
    """(value families, whether heartbeat_agent_info is exported) of a metric set."""
    if metric_set == "full":
        return FULL, True
    if metric_set == "lean":
        return LEAN, False
    raise ValueError(f"unknown metric set {metric_set!r}; one of {', '.join(METRIC_SETS)}")


def server_labels(server: Server) -> Dict[str, str]:
    return dict(server.labels, server_id=server.server_id)


def agent_labels(server: Server) -> Dict[str, str]:
    return {"server_id": server.server_id, "hostname": server.hostname or "",
            "agent_version": server.agent_version or ""}


def maintenance_labels(server: Server, now: float) -> Optional[Dict[str, str]]:
    """Labels of heartbeat_maintenance_info, or None when the server is not paused."""
    if not server.is_paused(now):
        return None
    return {"server_id": server.server_id, "reason": server.pause_reason or ""}


def server_families(snapshot: Snapshot, default_interval: float, metric_set: str = "lean"
                    ) -> Iterator[Metric]:
    """The per-server families as prometheus_client Metrics (the reference rendering)."""
    now = snapshot.taken_at
    families, agent_info = per_server(metric_set)
    for name, typ, doc, value in families:
        family = Metric(name, doc, typ)
        for server in snapshot.servers:
            v = value(server, now, default_interval)
            if v is not None:
                family.add_sample(name + SAMPLE_SUFFIX[typ], server_labels(server), v)
        yield family
    if agent_info:
        info = Metric(*AGENT_INFO, "info")
        for server in snapshot.servers:
            info.add_sample(AGENT_INFO[0] + "_info", agent_labels(server), 1.0)
        yield info
    maintenance = Metric(*MAINTENANCE_INFO, "info")
    for server in snapshot.servers:
        labels = maintenance_labels(server, now)
        if labels is not None:
            maintenance.add_sample(MAINTENANCE_INFO[0] + "_info", labels, 1.0)
    yield maintenance


def bridge_families(snapshot: Snapshot, max_servers: int, started: float,
                    serving: Optional[Tuple[float, float]] = None) -> Iterator[Metric]:
    """Fleet-wide families; `started` is the perf_counter() when the scrape began,
    `serving` (since, unheard) as bridge.serving.Serving keeps them (None: not exported)."""
    now = snapshot.taken_at
    yield _gauge("heartbeat_registered_servers", "Servers in the store.",
                 len(snapshot.servers))
    yield _gauge("heartbeat_paused_servers", "Servers paused right now.",
                 sum(1 for s in snapshot.servers if s.is_paused(now)))
    yield _gauge("heartbeat_max_servers", "The cardinality cap (HEARTBEAT_MAX_SERVERS).",
                 max_servers)
    rejected = Metric("heartbeat_rejected", "Rejected beats by reason.", "counter")
    for reason, count in sorted(snapshot.rejected.items()):
        rejected.add_sample("heartbeat_rejected_total", {"reason": reason}, count)
    yield rejected
    yield _gauge("heartbeat_bridge_time_seconds",
                 "Unix time (bridge clock, the one that stamps beats) of this scrape's snapshot.",
                 now)
    if serving is not None:
        yield _gauge("heartbeat_bridge_serving_since_seconds",
                     "Unix time (bridge clock) since which this replica has heard beats "
                     "without a break (its start, or the end of a store outage).",
                     min(serving[0], now))
        yield _gauge("heartbeat_bridge_unheard_seconds",
                     "How long before serving_since this replica heard no beat (it was down or "
                     "could not reach its store): left out of the silence of every server "
                     "last heard before serving_since.", serving[1])
    yield _gauge("heartbeat_store_up", "1 when this scrape read the store.", 1)
    yield _gauge("heartbeat_scrape_duration_seconds",
                 "Time this scrape took to read the store snapshot.",
                 time.perf_counter() - started)
    build = Metric("heartbeat_bridge_build", "Build facts of the bridge.", "info")
    build.add_sample("heartbeat_bridge_build_info", {
        "version": __version__, "python_version": platform.python_version()}, 1.0)
    yield build


def _gauge(name: str, doc: str, value: float) -> Metric:
    metric = Metric(name, doc, "gauge")
    metric.add_sample(name, {}, value)
    return metric
