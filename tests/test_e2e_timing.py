"""When HeartbeatMissing fires, end to end with the real programs at a 5 s interval: a real
bridge (gunicorn), a real Prometheus scraping and evaluating every 5 s with the shipped
rules, unchanged. A server that stops fires at the first evaluation past 3.05 intervals;
one that misses exactly two beats never fires; nor does any server when the bridge was
stopped for 5 intervals and started again."""
import calendar
import threading
import time

import pytest
import requests

from tests.tools import Bridge, Prometheus, require_binary, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.live]

FLEET_TOKEN = "fleet-token-timing-0123"
ADMIN_TOKEN = "admin-token-timing-0123"
INTERVAL = 5.0
LINE = 3.05 * INTERVAL  # the silence HeartbeatMissing pages beyond (rules.yml)
SCRAPE = EVALUATION = 5.0
SERVERS = ("stop-1", "blip-1", "steady-1", "steady-2")


class Beater:
    """Beats each server on a fixed 5 s grid, as the agent does; a server can stop, or skip
    slots. Connection errors (the bridge is down) are a missed slot, as for an agent."""

    def __init__(self, bridge):
        self.bridge = bridge
        self.lock = threading.Lock()
        self.stopped, self.skip = set(), {}
        self.accepted = {}  # server -> bridge time of its last accepted beat
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        slot = time.monotonic()
        while not self.halt.is_set():
            for server_id in SERVERS:
                with self.lock:
                    if server_id in self.stopped or self.skip.get(server_id, 0) > 0:
                        if server_id in self.skip:
                            self.skip[server_id] -= 1
                        continue
                try:
                    answer = requests.post(f"{self.bridge.url}/api/heartbeat/{server_id}/",
                                           json={"interval": INTERVAL}, timeout=2,
                                           headers={"Authorization": f"Bearer {FLEET_TOKEN}"})
                except requests.RequestException:
                    continue
                if answer.status_code == 200:
                    with self.lock:
                        self.accepted[server_id] = answer.json()["received_at"]
            slot += INTERVAL
            self.halt.wait(max(0.0, slot - time.monotonic()))

    def stop(self, server_id):
        """Stop beating; the bridge's time of the server's last accepted beat."""
        with self.lock:
            self.stopped.add(server_id)
            return self.accepted[server_id]

    def skip_slots(self, server_id, slots):
        with self.lock:
            self.skip[server_id] = slots


def firing(prometheus, server_id):
    """Prometheus' activeAt of a firing HeartbeatMissing for the server (Unix time), or None."""
    alerts = requests.get(prometheus.url + "/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    for alert in alerts:
        labels = alert["labels"]
        if (labels.get("alertname"), labels.get("server_id"), alert["state"]) == (
                "HeartbeatMissing", server_id, "firing"):
            return _unix(alert["activeAt"])
    return None


def _unix(rfc3339):
    """Prometheus' activeAt (RFC 3339 with up to nanoseconds) as Unix time."""
    stamp, _, fraction = rfc3339.rstrip("Z").partition(".")
    whole = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
    return whole + (float("0." + fraction) if fraction else 0.0)


def ever_alerted(prometheus, server_id, window):
    return prometheus.query(f'max_over_time(ALERTS{{server_id="{server_id}"}}[{window}])')


def test_missing_fires_at_the_first_evaluation_past_the_line_and_never_on_two_missed_beats(
        tmp_path):
    require_binary("prometheus")
    database = f"sqlite:///{tmp_path / 'hb.db'}"
    settings = dict(HEARTBEAT_TOKEN=FLEET_TOKEN, HEARTBEAT_ADMIN_TOKEN=ADMIN_TOKEN)
    bridge = Bridge(database, **settings).start()
    beater = prometheus = None
    try:
        for server_id in SERVERS:
            answer = requests.post(f"{bridge.url}/api/servers", timeout=5, json={
                "server_id": server_id, "interval": INTERVAL},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            assert answer.status_code == 201, answer.text
        beater = Beater(bridge)
        beater.thread.start()
        prometheus = Prometheus(tmp_path, [bridge.port], interval=f"{SCRAPE:g}s").start()
        wait_until(lambda: prometheus.query(
            f"count(heartbeat:missing:bool == 0) == {len(SERVERS)}"), timeout=40, interval=0.5,
            what=f"every server beating, seen by Prometheus\n{prometheus.log()}")

        # 1. stop-1 stops; blip-1 misses exactly two beats and beats at its next slot.
        last_beat = beater.stop("stop-1")
        beater.skip_slots("blip-1", 2)
        active_at = wait_until(lambda: firing(prometheus, "stop-1"), timeout=60, interval=0.2,
                               what=f"HeartbeatMissing for stop-1\n{prometheus.log()}")
        delay = active_at - last_beat
        print(f"last beat -> HeartbeatMissing firing: {delay:.2f} s (line {LINE:g} s, "
              f"scrape {SCRAPE:g} s, evaluation {EVALUATION:g} s: at most "
              f"{LINE + SCRAPE + EVALUATION:g} s)")
        assert delay > LINE  # never before the line...
        # ...and at the first evaluation after the first scrape past it (one more interval
        # of slack for a busy machine: this is no benchmark, bench/ measures).
        assert delay <= LINE + SCRAPE + EVALUATION + INTERVAL

        wait_until(lambda: prometheus.query(
            'max_over_time(heartbeat:silence_seconds:max{server_id="blip-1"}[1m]) >= 10'),
            timeout=30, interval=0.5, what="blip-1's two missed beats seen by a scrape")
        wait_until(lambda: prometheus.query(
            'heartbeat:silence_seconds:max{server_id="blip-1"} < 5'),
            timeout=30, interval=0.5, what="blip-1 beating again")
        time.sleep(SCRAPE + EVALUATION)  # the evaluations that follow its return, done
        assert not ever_alerted(prometheus, "blip-1", "2m")

        # 2. The bridge is stopped for 5 intervals and started again (same store, same
        # port): no server that beats on is blamed for the time it could not be heard.
        bridge.stop()
        time.sleep(5 * INTERVAL)
        bridge = Bridge(database, port=bridge.port, **settings).start()
        beater.bridge = bridge
        restarted = time.time()
        wait_until(lambda: prometheus.query(
            "heartbeat_bridge_unheard_seconds > 0 and heartbeat_bridge_serving_since_seconds"
            f" > {restarted - 10}"), timeout=30, interval=0.5,
            what="the restarted bridge scraped")
        unheard = prometheus.value("heartbeat_bridge_unheard_seconds")
        print(f"bridge down {5 * INTERVAL:g} s; it reports {unheard:.1f} s unheard")
        assert unheard >= 5 * INTERVAL - INTERVAL
        # Past the line after the restart, plus a scrape and an evaluation: anything that
        # was going to fire has fired.
        time.sleep(LINE + SCRAPE + EVALUATION + INTERVAL)
        for server_id in ("blip-1", "steady-1", "steady-2"):
            assert not ever_alerted(prometheus, server_id, "3m"), server_id
        assert firing(prometheus, "stop-1"), "the silent server stopped firing"
    finally:
        if beater:
            beater.halt.set()
            beater.thread.join(timeout=10)
        if prometheus:
            prometheus.stop()
        bridge.stop()
