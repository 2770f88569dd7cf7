"""Prometheus collector over one store snapshot per scrape.

Produces (one line each per server; operator labels ride along with server_id):

    heartbeat_last_seen_seconds{server_id="web-1",team="web"} 1.7e+09
    heartbeat_interval_seconds{server_id="web-1",team="web"} 30.0
    heartbeat_beats_total{server_id="web-1",team="web"} 42.0
    heartbeat_paused{server_id="web-1",team="web"} 0.0
    heartbeat_maintenance_until_seconds{server_id="web-1",team="web"} 0.0
    heartbeat_registered_timestamp_seconds{server_id="web-1",team="web"} 1.7e+09
    heartbeat_boot_time_seconds{server_id="web-1",team="web"} 1.7e+09
    heartbeat_clock_skew_seconds{server_id="web-1",team="web"} -0.2
    heartbeat_agent_info{agent_version="0.1.0",hostname="web-1.example",server_id="web-1"} 1.0

and bridge-level heartbeat_registered_servers, heartbeat_paused_servers,
heartbeat_max_servers, heartbeat_rejected_total{reason}, heartbeat_store_up,
heartbeat_scrape_duration_seconds and heartbeat_bridge_build_info.
"""
import platform
import time

from prometheus_client.core import Metric

from bridge import __version__

_PER_SERVER = (
    # name, type, help, value(server, now, default_interval); None value = no sample
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
)
_COUNTER_SUFFIX = {"counter": "_total", "gauge": ""}


class HeartbeatCollector:
    """Reads one store snapshot per collect(); safe to share between threads."""

    def __init__(self, store, default_interval=30.0, max_servers=100000, clock=time.time):
        self.store = store
        self.default_interval = default_interval
        self.max_servers = max_servers
        self.clock = clock

    def describe(self):
        return []  # registering must not read the store

    def collect(self):
        started = time.perf_counter()
        snapshot = self.store.snapshot()  # StoreUnavailableError propagates: /metrics fails
        now, d = snapshot.taken_at, self.default_interval
        families = [Metric(name, doc, typ) for name, typ, doc, _ in _PER_SERVER]
        info = Metric("heartbeat_agent", "Facts the agent reported about itself.", "info")
        paused = 0
        for server in snapshot.servers:
            labels = dict(server.labels, server_id=server.server_id)
            for family, (name, typ, _, value) in zip(families, _PER_SERVER):
                v = value(server, now, d)
                if v is not None:
                    family.add_sample(name + _COUNTER_SUFFIX[typ], labels, v)
            info.add_sample("heartbeat_agent_info", {
                "server_id": server.server_id, "hostname": server.hostname or "",
                "agent_version": server.agent_version or ""}, 1.0)
            paused += server.is_paused(now)
        yield from families
        yield info
        yield _gauge("heartbeat_registered_servers", "Servers in the store.",
                     len(snapshot.servers))
        yield _gauge("heartbeat_paused_servers", "Servers paused right now.", paused)
        yield _gauge("heartbeat_max_servers", "The cardinality cap (HEARTBEAT_MAX_SERVERS).",
                     self.max_servers)
        rejected = Metric("heartbeat_rejected", "Rejected beats by reason.", "counter")
        for reason, count in sorted(snapshot.rejected.items()):
            rejected.add_sample("heartbeat_rejected_total", {"reason": reason}, count)
        yield rejected
        yield _gauge("heartbeat_store_up", "1 when this scrape read the store.", 1)
        yield _gauge("heartbeat_scrape_duration_seconds",
                     "Time this scrape took to read the store snapshot.",
                     time.perf_counter() - started)
        build = Metric("heartbeat_bridge_build", "Build facts of the bridge.", "info")
        build.add_sample("heartbeat_bridge_build_info", {
            "version": __version__, "python_version": platform.python_version()}, 1.0)
        yield build


def _gauge(name, doc, value):
    metric = Metric(name, doc, "gauge")
    metric.add_sample(name, {}, value)
    return metric
