"""Soak: a minute of beats for 10,000 servers at half the measured capacity, a scrape every
second: no errors, memory flat, scrape time stable. Bounded to about 80 s."""
import os
import statistics
import threading
import time

import pytest
import requests

from bridge.store import BeatPolicy, open_store
from bridge.validate import Beat
from tests.tools import FLEET_TOKEN, Bridge

pytestmark = pytest.mark.live  # every test here starts a real program

SERVERS = 10_000
SOAK_SECONDS = 60.0
CAPACITY_SECONDS = 3.0
CLIENTS = 4
RSS_EVERY = 3.0


def server_ids():
    return [f"soak-{i:05d}" for i in range(SERVERS)]


def rss_bytes(session_id):
    """Resident memory of every process of the bridge's session (gunicorn master, workers)."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) != session_id:  # the session id, after state, ppid, pgrp
                continue
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f
                              if line.startswith("VmRSS:"))
        except (OSError, StopIteration, IndexError):
            continue  # gone meanwhile, or a kernel thread
    return total


def run_beats(url, ids, rate, seconds, results):
    """Beat ids round robin at `rate` per second (0: as fast as possible) for `seconds`;
    append (ok, latency) per beat to results."""
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {FLEET_TOKEN}"
        started = time.monotonic()
        n = 0
        while True:
            due = started + n / rate if rate else time.monotonic()
            now = time.monotonic()
            if due - started >= seconds or now - started >= seconds + 5:
                return
            if due > now:
                time.sleep(due - now)
            sent = time.monotonic()
            try:
                ok = session.post(f"{url}/api/heartbeat/{ids[n % len(ids)]}/",
                                  timeout=10).status_code == 200
            except requests.RequestException:
                ok = False
            results.append((ok, time.monotonic() - sent))
            n += 1


def in_parallel(url, ids, rate, seconds):
    results = [[] for _ in range(CLIENTS)]
    threads = [threading.Thread(target=run_beats, args=(
        url, ids[c::CLIENTS], rate / CLIENTS if rate else 0, seconds, results[c]))
        for c in range(CLIENTS)]
    for t in threads:
        t.start()
    return threads, results


@pytest.mark.slow
def test_a_minute_at_half_capacity_for_ten_thousand_servers(tmp_path):
    db = tmp_path / "soak.db"
    store = open_store(f"sqlite:///{db}")
    for server_id in server_ids():  # the fleet exists before the soak: scrapes are alike
        store.record_beat(server_id, Beat(interval=30), BeatPolicy(rate_limit_burst=0))
    store.close()
    bridge = Bridge(f"sqlite:///{db}", HEARTBEAT_TOKEN=FLEET_TOKEN, HEARTBEAT_WORKERS="2",
                    HEARTBEAT_THREADS="8").start()
    try:
        ids = server_ids()
        threads, results = in_parallel(bridge.url, ids, 0, CAPACITY_SECONDS)
        for t in threads:
            t.join()
        capacity = sum(ok for r in results for ok, _ in r) / CAPACITY_SECONDS
        rate = capacity / 2

        scrapes, rss, stop = [], [], threading.Event()

        def scraper():
            with requests.Session() as session:
                due = time.monotonic()
                while not stop.wait(max(0.0, due - time.monotonic())):
                    due += 1.0  # every second on the clock, not a second after the last
                    sent = time.monotonic()
                    try:
                        ok = session.get(bridge.url + "/metrics", timeout=10).status_code == 200
                    except requests.RequestException:
                        ok = False
                    scrapes.append((ok, time.monotonic() - sent))

        def sampler():
            while not stop.wait(RSS_EVERY):
                rss.append(rss_bytes(bridge.pid))

        watchers = [threading.Thread(target=scraper), threading.Thread(target=sampler)]
        for w in watchers:
            w.start()
        started = time.monotonic()
        threads, results = in_parallel(bridge.url, ids[SERVERS // 2:] + ids[:SERVERS // 2],
                                       rate, SOAK_SECONDS)
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        stop.set()
        for w in watchers:
            w.join()
    finally:
        bridge.stop()

    beats = [b for r in results for b in r]
    errors = sum(not ok for ok, _ in beats) + sum(not ok for ok, _ in scrapes)
    latencies = sorted(latency for _, latency in beats)
    half = len(rss) // 2
    growth = statistics.median(rss[half:]) - statistics.median(rss[:half])
    first, last = (statistics.median(s for _, s in scrapes[:10]),
                   statistics.median(s for _, s in scrapes[-10:]))
    print(f"\nsoak: capacity {capacity:.0f} beats/s, target {rate:.0f}/s, achieved "
          f"{len(beats) / elapsed:.0f}/s over {elapsed:.0f} s ({len(beats)} beats, "
          f"{SERVERS} servers), p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, p99 "
          f"{latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms; {len(scrapes)} scrapes, "
          f"median first 10 {first * 1000:.0f} ms, last 10 {last * 1000:.0f} ms; RSS "
          f"{rss[0] / 2**20:.1f} -> {rss[-1] / 2**20:.1f} MiB, second half vs first "
          f"{growth / 2**20:+.1f} MiB; errors {errors}")
    assert errors == 0
    assert len(beats) >= 0.9 * rate * SOAK_SECONDS  # the load was really sustained
    assert len(scrapes) >= SOAK_SECONDS * 0.9
    assert growth < 20 * 2**20
    assert last <= 3 * first
