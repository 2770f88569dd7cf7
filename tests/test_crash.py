"""SIGKILL in the middle of sustained load: every acknowledged beat survives, the SQLite file
is sound, and the restarted bridge serves at once."""
import collections
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bridge.store.sqlite import SQLiteStore
from tests.tools import FLEET_TOKEN, Bridge

pytestmark = pytest.mark.live  # every test here starts a real program

CLIENTS = 6
SERVERS_PER_CLIENT = 20
LOAD_BEFORE_KILL = 3.0  # seconds


def beater(url, client, acked, stop):
    """Beat this client's own servers round robin; log every 200 with its server id."""
    ids = [f"crash-{client}-{i}" for i in range(SERVERS_PER_CLIENT)]
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {FLEET_TOKEN}"
        n = 0
        while not stop.is_set():
            server_id = ids[n % len(ids)]
            n += 1
            try:
                response = session.post(f"{url}/api/heartbeat/{server_id}/", timeout=2)
            except requests.RequestException:
                continue  # the bridge is dead or dying: nothing was acknowledged
            if response.status_code == 200:
                acked[server_id] += 1


def beats_total(bridge):
    text = bridge.metrics()
    return {s.labels["server_id"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "heartbeat_beats_total"}


@pytest.mark.slow
def test_every_acknowledged_beat_survives_a_sigkill_under_load(tmp_path):
    db = tmp_path / "crash.db"
    url = f"sqlite:///{db}"
    settings = dict(HEARTBEAT_TOKEN=FLEET_TOKEN, HEARTBEAT_RATE_LIMIT_BURST="0",
                    HEARTBEAT_WORKERS="4", HEARTBEAT_METRICS="full")  # beat counts
    bridge = Bridge(url, **settings).start()
    acked = collections.Counter()  # each key is written by one thread only
    stop = threading.Event()
    threads = [threading.Thread(target=beater, args=(bridge.url, c, acked, stop))
               for c in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        time.sleep(LOAD_BEFORE_KILL)
        bridge.kill()  # SIGKILL to the whole process group, mid-write
        killed_at = time.monotonic()
        time.sleep(0.3)  # clients keep trying against the dead port
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        bridge.kill()

    restarted = Bridge(url, **settings)
    started = time.monotonic()
    restarted.start()
    try:
        ready_after = time.monotonic() - started
        found = beats_total(restarted)
        assert restarted.beat("after-restart", FLEET_TOKEN).status_code == 200
        integrity = SQLiteStore(str(db)).integrity_check()
    finally:
        restarted.stop()

    total_acked, total_found = sum(acked.values()), sum(found.get(s, 0) for s in acked)
    print(f"\nSIGKILL after {LOAD_BEFORE_KILL:g} s of {CLIENTS} clients: {total_acked} beats "
          f"acknowledged, {total_found} found after restart (in flight at the kill: "
          f"{total_found - total_acked}); ready {ready_after:.2f} s after restart, "
          f"{time.monotonic() - killed_at:.1f} s after the kill")
    assert total_acked > 100  # the load was real
    lost = {s: (n, found.get(s, 0)) for s, n in acked.items() if found.get(s, 0) < n}
    assert not lost, f"acknowledged beats lost: {lost}"
    assert total_found - total_acked <= CLIENTS  # at most one unanswered beat per client
    assert integrity == "ok"
    assert ready_after < 10
