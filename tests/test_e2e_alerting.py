"""End to end on loopback, every part real: agents -> bridge (gunicorn) -> Prometheus
(the shipped rule expressions) -> Alertmanager (the shipped config) -> a webhook.

Only the `for` / `keep_firing_for` durations of the shipped rules and Alertmanager's
group timers are shortened, and receivers point at the local webhook; the expressions,
routes and inhibitions are the shipped ones.
"""
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from tests.tools import (
    ROOT,
    Bridge,
    Process,
    Prometheus,
    free_port,
    require_binary,
    wait_http,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.live]

FLEET_TOKEN = "fleet-token-e2e-0123"
ADMIN_TOKEN = "admin-token-e2e-0123"
FOR_SCALE = 6          # every `for` divided by 6 (HeartbeatMissing has none)
KEEP_FIRING_FOR = "5s"
UNITS = {"s": 1, "m": 60, "h": 3600}
SERVERS = {"a-1": "db", "b-1": "web", "c-1": "web"}


class Webhook:
    """An HTTP listener recording every Alertmanager notification (arrival time, path, body)."""

    def __init__(self):
        self.received = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.received.append((time.time(), self.path, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def alerts(self, since=0.0):
        """(arrival, path, status, labels) of every alert notified after `since`."""
        with self.lock:
            return [(at, path, alert["status"], alert["labels"])
                    for at, path, body in self.received if at >= since
                    for alert in body["alerts"]]


def shortened_rules(tmp_path):
    """The shipped rules.yml with only the for/keep_firing_for durations shortened."""
    missing = "none"
    groups = yaml.safe_load((ROOT / "prometheus" / "rules.yml").read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            if "for" in rule:  # proportions kept
                seconds = int(rule["for"][:-1]) * UNITS[rule["for"][-1]]
                rule["for"] = f"{seconds // FOR_SCALE}s"
            if "keep_firing_for" in rule:
                rule["keep_firing_for"] = KEEP_FIRING_FOR
            if rule.get("alert") == "HeartbeatMissing":
                missing = rule.get("for")
    assert missing is None  # it fires at the first evaluation past its line
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(groups))
    return path


def alertmanager(tmp_path, webhook_port):
    """The shipped alertmanager.yml, receivers on the local webhook, group timers of 1 s."""
    config = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"http://127.0.0.1:{webhook_port}{urlsplit(hook['url']).path}"
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    process = Process([require_binary("prometheus-alertmanager"), f"--config.file={path}",
                       f"--storage.path={tmp_path / 'am'}", "--cluster.listen-address=",
                       f"--web.listen-address=127.0.0.1:{port}"], name="alertmanager").start()
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=20)
    except AssertionError:
        process.stop()
        raise AssertionError(f"alertmanager did not start:\n{process.log()}")
    process.port = port
    return process


def agent(bridge, server_id):
    """agent/heartbeat_agent.py beating every second."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTBEAT_")}
    env.update(HEARTBEAT_URL=bridge.url, HEARTBEAT_SERVER_ID=server_id,
               HEARTBEAT_TOKEN=FLEET_TOKEN, HEARTBEAT_INTERVAL="1")
    return Process([sys.executable, ROOT / "agent" / "heartbeat_agent.py"], env=env, cwd=ROOT,
                   name=f"agent-{server_id}").start()


def admin(bridge, method, path, **kwargs):
    answer = requests.request(method, f"{bridge.url}/api/servers{path}", timeout=5,
                              headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, **kwargs)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()["server"]


class Stack:
    """The running pipeline of one test: bridge, Prometheus, Alertmanager, agents, webhook."""

    def __init__(self, tmp_path, webhook):
        self.tmp_path, self.webhook, self.processes = tmp_path, webhook, {}
        self.database = f"sqlite:///{tmp_path / 'hb.db'}"
        self.settings = dict(HEARTBEAT_TOKEN=FLEET_TOKEN, HEARTBEAT_ADMIN_TOKEN=ADMIN_TOKEN)

    def start(self, servers):
        self.bridge = self.processes["bridge"] = Bridge(self.database, **self.settings).start()
        for server_id, team in servers.items():
            admin(self.bridge, "POST", "", json={"server_id": server_id, "interval": 1,
                                                 "labels": {"team": team}})
        am = self.processes["alertmanager"] = alertmanager(self.tmp_path, self.webhook.port)
        self.prometheus = self.processes["prometheus"] = Prometheus(
            self.tmp_path, [self.bridge.port], rule_files=[shortened_rules(self.tmp_path)],
            alertmanager_port=am.port).start()
        for server_id in servers:
            self.start_agent(server_id)
        self.wait_healthy(len(servers), timeout=30)
        return self

    def start_agent(self, server_id):
        self.processes[server_id] = agent(self.bridge, server_id)

    def stop_agent(self, server_id):
        """Stop the agent; the bridge's time of its last accepted beat."""
        self.processes[server_id].stop()
        return admin(self.bridge, "GET", f"/{server_id}")["last_seen"]

    def restart_bridge(self, down_for):
        self.bridge.stop()
        time.sleep(down_for)
        self.bridge = self.processes["bridge"] = Bridge(
            self.database, port=self.bridge.port, **self.settings).start()

    def wait_healthy(self, servers, timeout):
        healthy = f"count(heartbeat:missing:bool == 0) == {servers} and on () absent(ALERTS)"
        wait_until(lambda: self.prometheus.query(healthy), timeout=timeout, interval=0.5,
                   what=f"{servers} servers beating, no alert pending")

    def stop(self):
        for process in reversed(list(self.processes.values())):
            process.stop()


@pytest.fixture
def stack(tmp_path):
    for name in ("prometheus", "prometheus-alertmanager"):
        require_binary(name)
    with Webhook() as webhook:
        running = Stack(tmp_path, webhook)
        try:
            yield running
        finally:
            running.stop()


def test_a_silent_server_is_notified_and_resolved_while_restarts_and_pauses_stay_quiet(stack):
    started = time.monotonic()
    stack.start({"a-1": "db", "b-1": "web", "c-1": "web"})
    webhook, prometheus = stack.webhook, stack.prometheus

    # 1. A bridge restart of 5 intervals (same port, same store): no alert at all, as the
    # time the bridge could not hear is no server's silence.
    restart = time.time()
    stack.restart_bridge(down_for=5)
    print(f"bridge down for {time.time() - restart:.1f} s")
    stack.wait_healthy(3, timeout=20)
    time.sleep(12)  # well past 3 intervals: anything that would fire has fired
    alerted = prometheus.query('count by (alertname) (count_over_time(ALERTS[30s]))')
    print("alerts around the restart:",
          {r["metric"]["alertname"]: r["value"][1] for r in alerted} or "none")
    assert webhook.alerts() == [], "a bridge restart raised an alert"

    # 2. One agent stops: a firing HeartbeatMissing for exactly that server, routed by team.
    last_beat = stack.stop_agent("a-1")
    firing = wait_until(lambda: webhook.alerts(since=last_beat), timeout=60, interval=0.2,
                        what="the HeartbeatMissing notification")
    delay = firing[0][0] - last_beat
    print(f"last beat -> notification: {delay:.1f} s "
          f"(silence > 3.05 intervals of 1 s, scrape/eval 1 s, group_wait 1 s)")
    time.sleep(2)  # anything else that fires with it arrives in the same second
    alerts = webhook.alerts()
    assert {(path, status, labels["alertname"], labels["server_id"], labels["team"])
            for _, path, status, labels in alerts} == {
        ("/alerts/team-db-pager", "firing", "HeartbeatMissing", "a-1", "db")}
    assert "instance" not in alerts[0][3]
    assert delay < 30

    # 3. It beats again: the resolution arrives.
    back = time.time()
    stack.start_agent("a-1")
    resolved = wait_until(lambda: [a for a in webhook.alerts(since=back) if a[2] == "resolved"],
                          timeout=45, interval=0.2, what="the resolved notification")
    assert {(a[3]["alertname"], a[3]["server_id"]) for a in resolved} == {
        ("HeartbeatMissing", "a-1")}
    print(f"beating again -> resolved: {resolved[0][0] - back:.1f} s")

    # 4. A paused server whose agent stops: no alert.
    admin(stack.bridge, "POST", "/c-1/pause", json={"reason": "e2e maintenance"})
    quiet_from = time.time()
    stack.stop_agent("c-1")
    time.sleep(18)  # 3 intervals + scrape and evaluation, several times over
    assert prometheus.query('heartbeat:silence_seconds:max{server_id="c-1"} > 10')
    assert webhook.alerts(since=quiet_from) == [], "a paused server alerted"
    assert time.monotonic() - started < 180


def test_most_servers_silent_at_once_page_once_and_inhibit_the_per_server_alerts(stack):
    started = time.monotonic()
    servers = {"m-1": "db", "m-2": "web", "m-3": "web", "m-4": "ops", "m-5": "db", "m-6": "ops"}
    stack.start(servers)
    quiet_from = time.time()
    silent = ("m-1", "m-2", "m-3", "m-4", "m-5")  # 5 of 6: more than half, and at least five
    for server_id in silent:  # at once, as when a network link fails
        stack.processes[server_id].send_signal(signal.SIGTERM)
    for server_id in silent:
        stack.stop_agent(server_id)
    wait_until(lambda: stack.webhook.alerts(since=quiet_from), timeout=60, interval=0.2,
               what="the HeartbeatMassSilence notification")
    wait_until(lambda: stack.prometheus.query('count(ALERTS{alertname="HeartbeatMissing",'
                                              'alertstate="firing"}) == 5'),
               timeout=30, interval=0.5, what="the five HeartbeatMissing firing in Prometheus")
    time.sleep(3)  # the per-server alerts had every chance to be notified
    notified = {(status, labels["alertname"]) for _, _, status, labels in stack.webhook.alerts()}
    assert notified == {("firing", "HeartbeatMassSilence")}
    assert time.monotonic() - started < 180


def test_a_bridge_clock_skew_inhibits_the_per_server_clock_skew_of_that_bridge(tmp_path):
    """The shipped inhibition in a real Alertmanager, fed the alerts Prometheus would send."""
    with Webhook() as webhook:
        am = alertmanager(tmp_path, webhook.port)
        try:
            api = f"http://127.0.0.1:{am.port}/api/v2/alerts"
            skewed = {"alertname": "HeartbeatClockSkew", "severity": "warning",
                      "job": "heartbeat-bridge"}
            alerts = [
                {"alertname": "HeartbeatBridgeClockSkew", "severity": "warning",
                 "job": "heartbeat-bridge", "instance": "bridge-a:8000"},
                {**skewed, "server_id": "web-1"},
                {**skewed, "server_id": "web-2"},
                {**skewed, "job": "heartbeat-bridge-eu", "server_id": "eu-1"},  # its clock is fine
            ]
            requests.post(api, json=[{"labels": labels} for labels in alerts],
                          timeout=5).raise_for_status()

            def states():
                return {(a["labels"].get("server_id") or a["labels"]["instance"]):
                        a["status"]["state"] for a in requests.get(api, timeout=5).json()}
            expected = {"bridge-a:8000": "active", "web-1": "suppressed",
                        "web-2": "suppressed", "eu-1": "active"}
            wait_until(lambda: states() == expected, timeout=15, what=f"{expected}")
            wait_until(lambda: {labels.get("server_id") for _, _, _, labels in
                                webhook.alerts()} >= {None, "eu-1"}, timeout=15,
                       what="the notifications")
            notified = {labels.get("server_id") for _, _, _, labels in webhook.alerts()}
            assert not notified & {"web-1", "web-2"}
        finally:
            am.stop()
