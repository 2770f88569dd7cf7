"""Thousands of kept-alive agents against a live bridge started with a low open-file limit, as
a service manager starts it (prlimit on the bridge's own process; this test raises only its
own limit, for its client's sockets): the limit raised and logged, the longest-idle
connection shed for a newcomer, 503 when none is idle, never a reset, and the metrics."""
import json
import socket
import sys

import pytest
import requests
from prometheus_client import CollectorRegistry

from bench.agents import Fleet, beat_request, get_request, once, parse_answer, raise_own_limit
from bridge.config import Settings
from bridge.connections import ConnectionMetrics, Connections, connection_bound
from tests.tools import FLEET_TOKEN, Bridge, FakeClock, require_binary, total, wait_until

POOL = Settings().pool_size


class Conn:
    """A connection as the registry sees one: something it can shed."""

    def __init__(self, name):
        self.name, self.was_shed = name, False

    def shed(self):
        self.was_shed = True


def registry_of(bound, **options):
    registry = CollectorRegistry()
    return Connections(bound, ConnectionMetrics(registry), **options), registry


def test_the_connection_idle_the_longest_makes_room_and_is_counted():
    conns, registry = registry_of(2)
    a, b, c, d, e = (Conn(n) for n in "abcde")
    assert conns.opened(a) and conns.opened(b)
    conns.idle(a)
    conns.idle(b)
    conns.busy(a)   # a reads its next request
    conns.idle(a)   # and is answered: idle since now, after b
    assert conns.opened(c)
    assert (a.was_shed, b.was_shed) == (False, True)
    conns.closed(b)  # its close arrives a moment later: counted once
    assert registry.get_sample_value("heartbeat_bridge_connections_open") == 2
    assert conns.opened(d) and a.was_shed
    # c and d are not idle: nothing to shed, e is refused (and counted when answered 503)
    assert not conns.opened(e)
    conns.refused()
    assert registry.get_sample_value("heartbeat_bridge_connections_open") == 3
    conns.idle(c)
    assert conns.admit() and c.was_shed  # e's request arrives once c waits idle
    for reason, count in (("idle", 3), ("refused", 1)):
        assert registry.get_sample_value("heartbeat_bridge_connections_shed_total",
                                         {"reason": reason}) == count
    assert registry.get_sample_value("heartbeat_bridge_connections_limit") == 2


def test_shedding_is_logged_at_most_once_a_minute_with_what_happened(caplog):
    clock = FakeClock()
    conns, _ = registry_of(1, clock=clock)
    conns.opened(Conn("first"))
    with caplog.at_level("WARNING", logger="bridge"):
        for i in range(5):
            conns.opened(Conn(i))  # none idle: refused
            conns.refused()
            clock.advance(20)
        lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # at 0 s and at 60 s
    assert lines[0].startswith("at its bound of 1 open connections: 0 idle kept-alive "
                               "connections closed for newcomers, 1 new requests answered 503;")
    assert "3 new requests answered 503 in the last 60 s" in lines[1]


def test_memory_is_handed_back_once_a_burst_of_connections_halves():
    released = []
    conns, _ = registry_of(5000, release=lambda: released.append(conns.count))
    burst = [Conn(i) for i in range(1200)]
    for conn in burst:
        conns.opened(conn)
    for conn in burst[:599]:
        conns.closed(conn)
    assert released == []
    conns.closed(burst[599])
    assert released == [600]
    for conn in burst[600:]:
        conns.closed(conn)
    assert released == [600]  # 600 is under the size of a burst worth it


class LimitedBridge(Bridge):
    """`heartbeat-bridge serve` under `prlimit --nofile=SOFT:HARD`, one SQLite file."""

    def __init__(self, tmp_path, soft, hard, **settings):
        super().__init__(f"sqlite:///{tmp_path / 'heartbeat.db'}", HEARTBEAT_TOKEN=FLEET_TOKEN,
                         **settings)
        self.argv = [require_binary("prlimit"), f"--nofile={soft}:{hard}", "--",
                     sys.executable, "-m", "bridge", "serve"]

    def connection_metrics(self):
        text = self.metrics()
        return {name: total(text, name) for name in (
            "heartbeat_bridge_connections_open", "heartbeat_bridge_connections_limit")} | {
            reason: total(text, "heartbeat_bridge_connections_shed_total", reason=reason)
            for reason in ("idle", "refused")}


@pytest.fixture
def client_files():
    """Room for this test's own sockets; the bridge's limit is set by prlimit alone."""
    raise_own_limit(8192)


@pytest.fixture
def bridges():
    started = []
    yield started
    for bridge in started:
        bridge.stop()


def start(bridges, bridge):
    bridges.append(bridge)
    return bridge.start()


def new_beats(port, count, prefix="new"):
    return [once(port, beat_request(f"{prefix}-{i}", FLEET_TOKEN))[0] for i in range(count)]


@pytest.mark.live
def test_the_soft_limit_is_raised_to_the_hard_limit_and_logged(tmp_path, client_files, bridges):
    bridge = start(bridges, LimitedBridge(tmp_path, 256, 4096, HEARTBEAT_WORKERS="2"))
    fleet = Fleet(bridge.port, FLEET_TOKEN)
    try:
        # Past the inherited soft limit: under it, every new connection was reset here.
        assert fleet.connect(1200) == {200: 1200}
        assert new_beats(bridge.port, 20) == [200] * 20
        assert fleet.alive() == 1200
        bound = connection_bound(4096, POOL)
        assert (f"open-file limit 4096 per process (raised from 256): up to {bound} kept-alive "
                f"agents per worker, {2 * bound} in all with 2 workers") in bridge.log()
        seen = bridge.connection_metrics()
        assert seen["heartbeat_bridge_connections_limit"] == 2 * bound
        assert seen["heartbeat_bridge_connections_open"] >= 1200
        assert seen["idle"] == seen["refused"] == 0
    finally:
        fleet.close()
    wait_until(lambda: bridge.connection_metrics()["heartbeat_bridge_connections_open"] < 10,
               what="the closed connections no longer counted")


@pytest.mark.live
def test_at_the_bound_the_longest_idle_connection_makes_room(tmp_path, client_files, bridges):
    bridge = start(bridges, LimitedBridge(tmp_path, 256, 256, HEARTBEAT_WORKERS="1"))
    bound = connection_bound(256, POOL)
    fleet = Fleet(bridge.port, FLEET_TOKEN)
    try:
        # Thousands of agents through one worker that can hold a tenth of them.
        assert fleet.connect(2000, window=32) == {200: 2000}
        assert new_beats(bridge.port, 30) == [200] * 30
        for path in ("/healthz", "/readyz", "/metrics"):
            assert once(bridge.port, get_request(path))[0] == 200, path
        survivors = sorted(int(sid.rsplit("-", 1)[1]) for sid in still_connected(fleet))
        assert 0 < len(survivors) <= bound
        # the longest idle went first: those still connected are the newest agents
        assert survivors[0] >= 2000 - bound, survivors[:5]
        seen = bridge.connection_metrics()
        assert seen["heartbeat_bridge_connections_limit"] == bound
        assert seen["heartbeat_bridge_connections_open"] <= bound + 1
        assert seen["idle"] >= 2000 - bound
        assert seen["refused"] == 0
        warnings = [line for line in bridge.log().splitlines()
                    if f"at its bound of {bound} open connections" in line]
        assert len(warnings) == 1 and "[WARNING]" in warnings[0], warnings  # once a minute
        assert "open-file limit 256 per process (not raised: the hard limit)" in bridge.log()
    finally:
        fleet.close()


@pytest.mark.live
def test_with_no_idle_connection_a_newcomer_gets_503_never_a_reset(tmp_path, client_files,
                                                                   bridges):
    bridge = start(bridges, LimitedBridge(tmp_path, 256, 256, HEARTBEAT_WORKERS="1",
                                          HEARTBEAT_HEADER_TIMEOUT="120"))
    bound = connection_bound(256, POOL)
    # Connections that never send a request are not idle between requests: none to shed.
    silent = [socket_to(bridge.port) for _ in range(bound + 20)]
    try:
        wait_until(lambda: bridge.connection_metrics()["heartbeat_bridge_connections_open"]
                   >= bound + 20, what="the silent connections counted")
        answers = [once(bridge.port, beat_request(f"late-{i}", FLEET_TOKEN)) for i in range(30)]
        assert [outcome for outcome, _, _ in answers] == [503] * 30
        assert all(headers.get("retry-after") == "5" for _, headers, _ in answers)
        assert all(headers.get("connection") == "close" for _, headers, _ in answers)
        raw = requests.post(f"{bridge.url}/api/heartbeat/late-x/", json={}, timeout=10,
                            headers={"Authorization": f"Bearer {FLEET_TOKEN}"})
        assert raw.status_code == 503
        assert json.loads(raw.text)["error"] == "connection_limit"
        for path in ("/healthz", "/readyz", "/metrics"):
            assert once(bridge.port, get_request(path))[0] == 200, path
        seen = bridge.connection_metrics()
        assert seen["refused"] == 31 and seen["idle"] == 0
        assert "1 new requests answered 503" in bridge.log()  # the first, logged at once
    finally:
        for sock in silent:
            sock.close()
    # Room again: the next beat is served.
    wait_until(lambda: once(bridge.port, beat_request("after", FLEET_TOKEN))[0] == 200,
               what="a beat served once the silent connections left")


def still_connected(fleet):
    """The server ids of the agents whose connection the bridge has not closed."""
    fleet.alive()
    return list(fleet.idle.values())


def socket_to(port):
    return socket.create_connection(("127.0.0.1", port), timeout=5)


@pytest.mark.live
def test_a_request_begun_before_the_last_answer_is_read_whole(tmp_path, bridges):
    """What an idle connection lets go (scope, headers, parser) is let go only when nothing
    of the next request has arrived yet."""
    bridge = start(bridges, LimitedBridge(tmp_path, 1024, 1024, HEARTBEAT_WORKERS="1"))
    first, second = beat_request("pipe-1", FLEET_TOKEN), beat_request("pipe-2", FLEET_TOKEN)
    with socket_to(bridge.port) as sock:
        sock.sendall(first + second[:40])  # the second's request line begun, in one write
        assert read_answer(sock, b"")[0] == 200
        sock.sendall(second[40:])
        assert read_answer(sock, b"")[0] == 200
        sock.sendall(beat_request("pipe-3", FLEET_TOKEN))  # and the connection still serves
        assert read_answer(sock, b"")[0] == 200


def read_answer(sock, data):
    """(status, headers, body) of the next answer on `sock`."""
    while parse_answer(data) is None:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return parse_answer(data)
