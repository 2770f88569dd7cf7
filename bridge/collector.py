"""Metric families over one store snapshot.

Per server (operator labels ride along with server_id):

    heartbeat_last_seen_seconds{server_id="web-1",team="web"} 1.7e+09
    heartbeat_interval_seconds{server_id="web-1",team="web"} 30.0
    heartbeat_beats_total{server_id="web-1",team="web"} 42.0
    heartbeat_paused{server_id="web-1",team="web"} 0.0
    heartbeat_maintenance_until_seconds{server_id="web-1",team="web"} 0.0
    heartbeat_registered_timestamp_seconds{server_id="web-1",team="web"} 1.7e+09
    heartbeat_boot_time_seconds{server_id="web-1",team="web"} 1.7e+09
    heartbeat_clock_skew_seconds{server_id="web-1",team="web"} -0.2
    heartbeat_expected_back_seconds{server_id="web-1",team="web"} 0.0
    heartbeat_retired{server_id="web-1",team="web"} 0.0
    heartbeat_agent_info{agent_version="0.1.0",hostname="web-1.example",server_id="web-1"} 1.0
    heartbeat_maintenance_info{reason="disk swap",server_id="db-1"} 1.0   (paused ones only)

and bridge-level heartbeat_registered_servers, heartbeat_paused_servers,
heartbeat_max_servers, heartbeat_rejected_total{reason}, heartbeat_store_up,
heartbeat_scrape_duration_seconds, heartbeat_bridge_build_info and

    heartbeat_bridge_time_seconds 1.7e+09

the store's clock when it took this scrape's snapshot: the clock that stamps beats, so
the rules measure silence as this minus heartbeat_last_seen_seconds, on one clock.

`PER_SERVER` is the one table of per-server metrics: server_families() turns it into
prometheus_client families, and bridge.exposition renders the same table fast for
/metrics (tested to be byte-identical).
"""
import platform
import time
from typing import Dict, Iterator, Optional

from prometheus_client.core import Metric

from bridge import __version__
from bridge.store import Server, Snapshot

PER_SERVER = (
    # family name, type, help, value(server, now, default_interval); None = no sample
    ("heartbeat_last_seen_seconds", "gauge",
     "Unix time (bridge clock) of the last accepted beat; 0 = registered, never seen.",
     lambda s, now, d: s.last_seen),
    ("heartbeat_interval_seconds", "gauge",
     "The beat interval the server promises (registered, else agent-declared, else default).",
     lambda s, now, d: s.interval(d)),
    ("heartbeat_beats", "counter", "Accepted beats.",
     lambda s, now, d: s.beats_total),
    ("heartbeat_paused", "gauge", "1 while the server is paused for maintenance.",
     lambda s, now, d: 1.0 if s.is_paused(now) else 0.0),
    ("heartbeat_maintenance_until_seconds", "gauge",
     "Unix time a timed pause ends; 0 when not paused or paused without an end.",
     lambda s, now, d: (s.paused_until or 0.0) if s.is_paused(now) else 0.0),
    ("heartbeat_registered_timestamp_seconds", "gauge",
     "Unix time the server was registered.",
     lambda s, now, d: s.created_at),
    ("heartbeat_boot_time_seconds", "gauge", "Boot time the agent reported (Unix time).",
     lambda s, now, d: s.boot_time),
    ("heartbeat_clock_skew_seconds", "gauge",
     "Agent clock minus bridge clock at the last beat that carried sent_at.",
     lambda s, now, d: s.clock_skew),
    ("heartbeat_expected_back_seconds", "gauge",
     "Unix time by which a server that said goodbye promised to beat again; 0 = no goodbye.",
     lambda s, now, d: s.expected_back or 0.0),
    ("heartbeat_retired", "gauge", "1 when the server is retired: it never alerts.",
     lambda s, now, d: 0.0 if s.retired_at is None else 1.0),
)
AGENT_INFO = ("heartbeat_agent", "Facts the agent reported about itself.")
MAINTENANCE_INFO = ("heartbeat_maintenance", "Why a paused server is paused.")
SAMPLE_SUFFIX = {"counter": "_total", "gauge": "", "info": "_info"}


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


def server_families(snapshot: Snapshot, default_interval: float) -> Iterator[Metric]:
    """The per-server families as prometheus_client Metrics (the reference rendering)."""
    now = snapshot.taken_at
    for name, typ, doc, value in PER_SERVER:
        family = Metric(name, doc, typ)
        for server in snapshot.servers:
            v = value(server, now, default_interval)
            if v is not None:
                family.add_sample(name + SAMPLE_SUFFIX[typ], server_labels(server), v)
        yield family
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


def bridge_families(snapshot: Snapshot, max_servers: int, started: float
                    ) -> Iterator[Metric]:
    """Fleet-wide families; `started` is the perf_counter() when the scrape began."""
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
