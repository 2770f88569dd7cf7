"""Abuse of a live bridge (gunicorn, several workers): slow clients, floods of beats and of new
ids, tokens in logs, token rotation. Oversized and chunked bodies: tests/test_live_bridge.py;
token timing: tests/test_timing.py."""
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.tools import ADMIN_TOKEN, FLEET_TOKEN, ROOT, unread_bytes, wait_until

pytestmark = pytest.mark.live  # every test here starts a real program

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
STATUS_TOKEN = "status-token-0123456789"


def samples(bridge, name):
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(bridge.metrics())
            for s in family.samples if s.name == name}


def fresh_beat(bridge, server_id, token=FLEET_TOKEN):
    """A beat on a new connection, so that beats land on different workers."""
    return requests.post(f"{bridge.url}/api/heartbeat/{server_id}/", timeout=10, headers={
        "Authorization": f"Bearer {token}", "Connection": "close"})


# -- slow clients ----------------------------------------------------------------------------
def all_read(port, connections):
    """At least `connections` accepted on the port, and every byte they sent read."""
    unread = unread_bytes(port)
    return len(unread) >= connections and not any(unread)

# Half the threads of 4 workers x 32: the kernel picks a worker's socket by a hash of the
# connection's addresses, not evenly (64 connections landed 8 to 22 per worker here), and a
# worker whose 32 threads are all held starves the beats that hash to it.
SLOW_CONNECTIONS = 64


def test_slow_clients_do_not_starve_real_beats(live_bridge):
    """Slowloris: 64 connections sending their headers a byte per second, held for less than
    the header timeout. The event-loop worker gives them no thread; under gthread (threads 32)
    this took reuse_port and enough threads. tests/test_serving.py holds 2,000 until cut off."""
    # a header timeout far beyond the test: a starved beat would wait for it, not for a slot
    bridge = live_bridge(HEARTBEAT_WORKERS="4", HEARTBEAT_THREADS="32",
                         HEARTBEAT_HEADER_TIMEOUT="120")
    stop = threading.Event()
    slow = []
    for i in range(SLOW_CONNECTIONS):
        sock = socket.create_connection(("127.0.0.1", bridge.port), timeout=5)
        sock.sendall(b"POST /api/heartbeat/slow-%d/ HTTP/1.1\r\nHost: x\r\nX-Slow: " % i)
        slow.append(sock)

    def trickle():
        while not stop.wait(1.0):
            for sock in slow:
                sock.sendall(b"a")

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        # every slow connection accepted and read from (its bytes left the kernel's queue)
        wait_until(lambda: all_read(bridge.port, SLOW_CONNECTIONS), timeout=30,
                   what="the slow connections read from")
        latencies = []
        for i in range(30):
            started = time.monotonic()
            assert fresh_beat(bridge, f"real-{i}").status_code == 200
            latencies.append(time.monotonic() - started)
        for sock in slow:  # still held open, never answered
            sock.setblocking(False)
            try:
                assert sock.recv(1) == b"", "a slow client got an answer"
            except BlockingIOError:
                pass
    finally:
        stop.set()
        trickler.join()
        for sock in slow:
            sock.close()
    print(f"\n{SLOW_CONNECTIONS} slow connections held; 30 real beats meanwhile: median "
          f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    assert max(latencies) < 30  # seconds against the starved beat's 120 s header timeout


# -- floods ----------------------------------------------------------------------------------
def test_the_rate_limit_holds_across_workers_and_writes_nothing(live_bridge):
    bridge = live_bridge(HEARTBEAT_WORKERS="4", HEARTBEAT_METRICS="full")  # beat counts
    codes = [fresh_beat(bridge, "noisy") for _ in range(16)]
    assert [r.status_code for r in codes] == [200] * 10 + [429] * 6
    assert all(int(r.headers["Retry-After"]) >= 1 for r in codes[10:])
    assert samples(bridge, "heartbeat_beats_total")[(("server_id", "noisy"),)] == 10
    # rejection counts are flushed to the store within a second
    wait_until(lambda: samples(bridge, "heartbeat_rejected_total").get(
        (("reason", "rate_limited"),)) == 6, timeout=15, what="6 rate-limited rejections")


def test_the_server_cap_holds_under_a_concurrent_flood_of_new_ids(live_bridge):
    cap = 40
    bridge = live_bridge(HEARTBEAT_WORKERS="4", HEARTBEAT_MAX_SERVERS=str(cap))
    accepted, refused = set(), []

    def flood(worker):
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {FLEET_TOKEN}"
            for i in range(50):
                server_id = f"flood-{worker}-{i}"
                response = session.post(f"{bridge.url}/api/heartbeat/{server_id}/", timeout=10)
                if response.status_code == 200:
                    accepted.add(server_id)
                else:
                    refused.append(response.status_code)

    threads = [threading.Thread(target=flood, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    registered = samples(bridge, "heartbeat_registered_servers")[()]
    print(f"\nflood of 400 new ids from 8 clients against a cap of {cap}: {len(accepted)} "
          f"accepted, {len(refused)} refused, {registered:.0f} registered")
    assert len(accepted) == registered == cap
    assert set(refused) == {403}
    assert fresh_beat(bridge, sorted(accepted)[0]).status_code == 200  # known ones still beat


def test_the_admin_api_is_unreachable_live_without_an_admin_token(live_bridge):
    bridge = live_bridge(HEARTBEAT_ADMIN_TOKEN="")
    for headers in ({}, ADMIN, {"Authorization": "Bearer "}):
        response = requests.get(bridge.url + "/api/servers", headers=headers, timeout=5)
        assert response.status_code == 404
        assert response.json()["error"] == "admin_disabled"


# -- secrets ---------------------------------------------------------------------------------
def test_no_token_reaches_the_log_from_admin_status_or_cli(live_bridge, tmp_path):
    db = f"sqlite:///{tmp_path / 'secrets.db'}"
    bridge = live_bridge(db, HEARTBEAT_LOG_LEVEL="debug", HEARTBEAT_STATUS_TOKEN=STATUS_TOKEN)
    wrong = "guessed-token-ABCDEFGH"
    issued = [requests.post(bridge.url + "/api/servers", headers=ADMIN, timeout=5, json={
        "server_id": "db-1", "token": True}).json()["token"]]
    issued.append(requests.post(bridge.url + "/api/servers/db-1/token", headers=ADMIN,
                                timeout=5, json={"keep_previous_for": "1h"}).json()["token"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTBEAT_")}
    cli = subprocess.run([sys.executable, "-m", "bridge", "tokens", "rotate", "db-1"],
                         env=dict(env, HEARTBEAT_DATABASE_URL=db), cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert cli.returncode == 0, cli.stderr
    issued.append(cli.stdout.split()[-1])  # the CLI prints the new token, once
    assert bridge.beat("db-1", issued[-1]).status_code == 200
    for headers in (ADMIN, {"Authorization": f"Bearer {wrong}"},
                    {"Authorization": f"Bearer {STATUS_TOKEN}"}):
        requests.get(bridge.url + "/api/servers/db-1", headers=headers, timeout=5)
        requests.patch(bridge.url + "/api/servers/db-1", headers=headers, timeout=5,
                       json={"labels": {"team": "db"}})
        requests.get(bridge.url + "/api/status", headers=headers, timeout=5)
    for auth in (("anyone", STATUS_TOKEN), ("anyone", wrong)):
        requests.get(bridge.url + "/", auth=auth, timeout=5)
    requests.get(bridge.url + "/api/nothing", headers=ADMIN, timeout=5)
    bridge.stop()
    log = bridge.log()
    assert "[DEBUG]" in log  # debug logging was on
    for secret in (FLEET_TOKEN, ADMIN_TOKEN, STATUS_TOKEN, wrong, *issued):
        assert secret not in log


# -- token rotation without downtime ---------------------------------------------------------
def test_a_fleet_token_rotation_keeps_every_agent_beating(live_bridge, tmp_path):
    db = f"sqlite:///{tmp_path / 'rotation.db'}"
    old, new = "fleet-old-0123456789", "fleet-new-0123456789"
    bridge = live_bridge(db, HEARTBEAT_TOKEN=old, HEARTBEAT_METRICS="full")  # beat counts
    assert bridge.beat("agent-a", old).status_code == 200
    for tokens, accepted, refused in (
            (f"{old},{new}", [old, new], []),  # agents move over, one by one
            (new, [new], [old])):              # the old token is retired last
        bridge.stop()
        bridge = live_bridge(db, port=bridge.port, HEARTBEAT_TOKEN=tokens,
                             HEARTBEAT_METRICS="full")
        for token in accepted:
            for agent in ("agent-a", "agent-b"):
                assert bridge.beat(agent, token).status_code == 200, (tokens, token)
        for token in refused:
            assert bridge.beat("agent-a", token).status_code == 401
    beats = samples(bridge, "heartbeat_beats_total")
    assert beats[(("server_id", "agent-a"),)] == 4  # 1 + 2 (both tokens) + 1: none refused


def test_a_per_server_token_rotation_with_a_grace_period_live(live_bridge):
    bridge = live_bridge(HEARTBEAT_TOKEN="")
    first = requests.post(bridge.url + "/api/servers", headers=ADMIN, timeout=5, json={
        "server_id": "db-1", "token": True}).json()["token"]
    assert fresh_beat(bridge, "db-1", first).status_code == 200
    second = requests.post(bridge.url + "/api/servers/db-1/token", headers=ADMIN, timeout=5,
                           json={"keep_previous_for": "1h"}).json()["token"]
    for _ in range(4):  # across workers: both are valid during the grace period
        assert fresh_beat(bridge, "db-1", first).status_code == 200
        assert fresh_beat(bridge, "db-1", second).status_code == 200
    assert fresh_beat(bridge, "db-2", second).status_code == 401
    third = requests.post(bridge.url + "/api/servers/db-1/token", headers=ADMIN,
                          timeout=5).json()["token"]
    assert fresh_beat(bridge, "db-1", third).status_code == 200
    for token in (first, second):
        assert fresh_beat(bridge, "db-1", token).status_code == 401
