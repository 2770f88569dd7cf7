"""Several real bridges (gunicorn) on one PostgreSQL: one truth, any replica, any outage."""
import random
import socket
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bridge.store import BeatPolicy, open_store
from bridge.validate import parse_beat
from tests.tools import (
    ADMIN_TOKEN,
    FLEET_TOKEN,
    POSTGRES_BASE,
    Bridge,
    Process,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.slow
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BEAT = parse_beat(b"", None)


class TcpProxy:
    """A loopback TCP forwarder a test can cut (every connection closed, new ones refused)
    and restore on the same port: a database outage without touching the database."""

    def __init__(self, target_port, target_host="127.0.0.1"):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets = set()
        self._listener = None

    def start(self):
        listener = socket.create_server(("127.0.0.1", self.port))
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    restore = start

    def cut(self):
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        if listener is not None:
            _close(listener)  # nothing listens on the port: connecting is refused
        for sock in sockets:
            _close(sock)

    stop = cut

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=3)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):  # as libpq and PostgreSQL do: no Nagle delays
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    _close(client)
                    _close(upstream)
                    return
                self._sockets |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


def _pump(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    _close(dst)


def _close(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)  # also wakes a thread blocked in accept()
    except OSError:
        pass
    sock.close()


def beat(bridge, server_id):
    """A beat with a client timeout well past the bridge's own bounded waits."""
    return requests.post(f"{bridge.url}/api/heartbeat/{server_id}/", timeout=20,
                         headers={"Authorization": f"Bearer {FLEET_TOKEN}"})


def per_server_samples(text):
    """{(sample name, sorted labels): value} of every heartbeat_* sample with a server_id."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("heartbeat_") and "server_id" in sample.labels:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(text, name, server_id):
    for (sample, labels), v in per_server_samples(text).items():
        if sample == name and dict(labels)["server_id"] == server_id:
            return v
    return None


@pytest.mark.live
def test_two_replicas_show_identical_per_server_series(pg_url, live_bridge):
    a, b = (live_bridge(pg_url, HEARTBEAT_METRICS="full") for _ in range(2))  # every family
    for n in range(3):
        for i in range(8):
            replica = (a, b)[(n + i) % 2]
            body = {"interval": 20 + i, "hostname": f"host-{i}"}
            assert replica.beat(f"srv-{i}", FLEET_TOKEN, json=body).status_code == 200
    seen_a, seen_b = per_server_samples(a.metrics()), per_server_samples(b.metrics())
    assert seen_a == seen_b
    assert value(a.metrics(), "heartbeat_beats_total", "srv-3") == 3
    assert value(b.metrics(), "heartbeat_interval_seconds", "srv-7") == 27


@pytest.mark.live
def test_admin_changes_through_one_replica_show_at_once_on_the_other(pg_url, live_bridge):
    a, b = live_bridge(pg_url), live_bridge(pg_url)
    for server_id in ("web-1", "db-1"):
        assert a.beat(server_id, FLEET_TOKEN).status_code == 200

    r = requests.post(f"{a.url}/api/servers/web-1/pause", json={"for": "1h", "reason": "disk"},
                      headers=ADMIN, timeout=5)
    assert r.status_code == 200
    assert value(b.metrics(), "heartbeat_excused_until_seconds", "web-1") > 0
    assert requests.get(f"{b.url}/api/servers/web-1", headers=ADMIN,
                        timeout=5).json()["server"]["paused"] is True

    r = requests.patch(f"{b.url}/api/servers/db-1", json={"labels": {"team": "db"}},
                       headers=ADMIN, timeout=5)
    assert r.status_code == 200
    assert ("heartbeat_last_seen_seconds", (("server_id", "db-1"), ("team", "db"))) in \
        per_server_samples(a.metrics())

    assert requests.delete(f"{a.url}/api/servers/web-1", headers=ADMIN,
                           timeout=5).status_code == 204
    assert value(b.metrics(), "heartbeat_last_seen_seconds", "web-1") is None
    assert requests.get(f"{b.url}/api/servers/web-1", headers=ADMIN,
                        timeout=5).status_code == 404


@pytest.mark.live
def test_a_replica_killed_under_load_loses_no_acknowledged_beat(pg_url, live_bridge):
    a, b = (live_bridge(pg_url, HEARTBEAT_RATE_LIMIT_BURST="0") for _ in range(2))
    acknowledged, attempts, lock = {}, [], threading.Lock()
    killed, done = threading.Event(), threading.Event()

    def client(seed):
        rng = random.Random(seed)
        session = requests.Session()
        while not done.is_set():
            replica = rng.choice((a, b))
            server_id = f"load-{rng.randrange(12)}"
            after_kill = killed.is_set()  # before sending: a may still answer one sent earlier
            try:
                r = session.post(f"{replica.url}/api/heartbeat/{server_id}/",
                                 headers={"Authorization": f"Bearer {FLEET_TOKEN}"}, timeout=5)
            except requests.RequestException:
                ok = False
            else:
                ok = r.status_code == 200
            with lock:
                attempts.append((replica is a, after_kill, ok))
                if ok:
                    acknowledged[server_id] = acknowledged.get(server_id, 0) + 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: sum(ok for on_a, _, ok in attempts if on_a) >= 20, timeout=30,
                   what="20 beats acknowledged by the replica to kill")
        a.kill()
        killed.set()
        wait_until(lambda: sum(ok for on_a, after, ok in attempts if not on_a and after) > 20,
                   timeout=30, what="the other replica going on")
    finally:
        done.set()
        for t in threads:
            t.join(timeout=15)

    assert sum(ok for on_a, after, ok in attempts if on_a and not after) > 0
    assert sum(ok for on_a, after, ok in attempts if not on_a and after) > 20  # b goes on
    assert not any(ok for on_a, after, ok in attempts if on_a and after)
    store = open_store(pg_url, pool_size=1)
    try:
        stored = {s.server_id: s.beats_total for s in store.list()}
    finally:
        store.close()
    for server_id, count in acknowledged.items():
        assert stored.get(server_id, 0) >= count, (server_id, stored, acknowledged)
    # Beats in flight on the killed replica may be committed but unacknowledged: few.
    assert sum(stored.values()) - sum(acknowledged.values()) <= 6 * 2


def test_pooled_connections_closed_by_an_outage_are_replaced_without_failing_a_call(pg_url):
    """After a database restart every pooled connection is dead; the first call after it
    must not be the one that finds out."""
    proxy = TcpProxy(5432).start()
    store = open_store(pg_url.replace(":5432/", f":{proxy.port}/"), pool_size=3, timeout=3)
    try:
        store.record_beat("before", BEAT, BeatPolicy())  # a pooled connection, idle now
        proxy.cut()
        proxy.restore()
        for n in range(3):
            store.record_beat(f"after-{n}", BEAT, BeatPolicy())
        assert len(store.list()) == 4
    finally:
        store.close()
        proxy.stop()


@pytest.mark.live
def test_a_database_outage_answers_503_and_the_bridge_recovers_without_restart(live_bridge,
                                                                              pg_schema):
    _, schema, _ = pg_schema
    proxy = TcpProxy(5432).start()
    url = POSTGRES_BASE.replace(":5432/", f":{proxy.port}/") + \
        f"?options=-csearch_path%3D{schema}"
    try:
        bridge = live_bridge(url, HEARTBEAT_METRICS="full")  # beat counts
        assert beat(bridge, "before").status_code == 200
        assert requests.get(bridge.url + "/metrics", timeout=5).status_code == 200

        proxy.cut()
        answers = _during_outage(bridge)
        print("during the outage:", answers)
        for path, (status, retry_after, seconds) in answers.items():
            assert status == 503, path
            # bounded by the store's 5 s timeout (a /metrics may wait out two store calls),
            # well short of the client's 20 s: a wide bound that still tells it from a hang
            assert seconds < 15, (path, seconds)
            assert retry_after, path
        assert not beat(bridge, "before").ok

        proxy.restore()
        restored = time.monotonic()
        wait_until(lambda: beat(bridge, "after").status_code == 200, timeout=15,
                   interval=0.2, what="beats accepted again")
        wait_until(lambda: requests.get(bridge.url + "/metrics", timeout=10).status_code == 200,
                   timeout=10, what="/metrics again")
        assert requests.get(bridge.url + "/readyz", timeout=10).status_code == 200
        assert time.monotonic() - restored < 15
        print(f"recovered {time.monotonic() - restored:.1f}s after the restore")
        assert bridge.running()  # recovered without a restart

        text = bridge.metrics()
        assert value(text, "heartbeat_beats_total", "before") == 1  # the 503s wrote nothing
        assert value(text, "heartbeat_beats_total", "during") is None
        assert value(text, "heartbeat_beats_total", "after") == 1
    finally:
        proxy.stop()


def _during_outage(bridge):
    """{path: (status, Retry-After, seconds)} for a beat, /readyz and /metrics, asked at once
    while the database is cut off."""
    requests_to_make = {
        "beat": lambda: beat(bridge, "during"),
        "/readyz": lambda: requests.get(bridge.url + "/readyz", timeout=20),
        "/metrics": lambda: requests.get(bridge.url + "/metrics", timeout=20),
    }
    answers = {}

    def ask(path):
        started = time.monotonic()
        r = requests_to_make[path]()
        answers[path] = (r.status_code, r.headers.get("Retry-After"), time.monotonic() - started)

    threads = [threading.Thread(target=ask, args=(p,)) for p in requests_to_make]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return answers


@pytest.mark.live
def test_a_bridge_started_before_its_database_serves_once_it_is_up(pg_url):
    """Compose or Kubernetes may start the bridge first: it runs, is not ready, then is."""
    proxy = TcpProxy(5432).start()
    proxy.cut()
    url = pg_url.replace(":5432/", f":{proxy.port}/")
    bridge = Bridge(url, HEARTBEAT_TOKEN=FLEET_TOKEN, HEARTBEAT_ADMIN_TOKEN=ADMIN_TOKEN,
                    HEARTBEAT_METRICS="full")  # beat counts
    try:
        Process.start(bridge)  # not Bridge.start(): that waits until ready
        wait_until(lambda: requests.get(bridge.url + "/healthz", timeout=1).ok, timeout=20,
                   what="the bridge answers /healthz")
        assert requests.get(bridge.url + "/readyz", timeout=20).status_code == 503
        assert bridge.running()

        proxy.restore()
        wait_until(lambda: beat(bridge, "late").status_code == 200, timeout=15, interval=0.2,
                   what="beats accepted once the database is up")
        assert requests.get(bridge.url + "/readyz", timeout=10).status_code == 200
        assert value(bridge.metrics(), "heartbeat_beats_total", "late") == 1
    finally:
        bridge.stop()
        proxy.stop()
