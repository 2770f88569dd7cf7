"""End to end on loopback, every part real: agents -> bridge (gunicorn) -> Prometheus
(the shipped rule expressions) -> Alertmanager (the shipped config) -> a webhook.

Only the `for` / `keep_firing_for` durations of the shipped rules and Alertmanager's
group timers are shortened, and receivers point at the local webhook; the expressions,
routes and inhibitions are the shipped ones.
"""
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from tests.test_dashboard import Prometheus
from tests.tools import ROOT, Bridge, Process, free_port, require_binary, wait_http, wait_until

pytestmark = pytest.mark.slow

FLEET_TOKEN = "fleet-token-e2e-0123"
ADMIN_TOKEN = "admin-token-e2e-0123"
FOR = "10s"            # the shipped rules say 1m..15m; a 1 s fleet needs seconds
KEEP_FIRING_FOR = "5s"
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
    groups = yaml.safe_load((ROOT / "prometheus" / "rules.yml").read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR
            if "keep_firing_for" in rule:
                rule["keep_firing_for"] = KEEP_FIRING_FOR
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


def test_a_silent_server_is_notified_and_resolved_while_restarts_and_pauses_stay_quiet(tmp_path):
    for name in ("prometheus", "prometheus-alertmanager"):
        require_binary(name)
    started = time.monotonic()
    database = f"sqlite:///{tmp_path / 'hb.db'}"
    settings = dict(HEARTBEAT_TOKEN=FLEET_TOKEN, HEARTBEAT_ADMIN_TOKEN=ADMIN_TOKEN)
    processes = {}
    with Webhook() as webhook:
        try:
            bridge = processes["bridge"] = Bridge(database, **settings).start()
            for server_id, team in SERVERS.items():
                admin(bridge, "POST", "", json={"server_id": server_id, "interval": 1,
                                                "labels": {"team": team}})
            processes["alertmanager"] = am = alertmanager(tmp_path, webhook.port)
            processes["prometheus"] = prometheus = Prometheus(
                tmp_path, [bridge.port], rule_files=[shortened_rules(tmp_path)],
                alertmanager_port=am.port).start()
            for server_id in SERVERS:
                processes[server_id] = agent(bridge, server_id)
            healthy = 'count(heartbeat:missing:bool == 0) == 3 and on () absent(ALERTS)'
            wait_until(lambda: prometheus.query(healthy), timeout=30, interval=0.5,
                       what="three servers beating, no alert pending")

            # 1. A bridge restart of a few seconds (same port, same store): no alert at all.
            restart = time.time()
            bridge.stop()
            time.sleep(3)
            bridge = processes["bridge"] = Bridge(database, port=bridge.port, **settings).start()
            print(f"bridge down for {time.time() - restart:.1f} s")
            wait_until(lambda: prometheus.query(healthy), timeout=20, interval=0.5,
                       what="all servers beating again after the restart")
            time.sleep(12)  # longer than the shortened `for`: anything pending would fire
            pending = prometheus.query('count by (alertname) (count_over_time('
                                       'ALERTS{alertstate="pending"}[30s]))')
            print("pending during the restart, held back by `for`:",
                  {r["metric"]["alertname"]: r["value"][1] for r in pending} or "none")
            assert webhook.alerts() == [], "a bridge restart raised an alert"

            # 2. One agent stops: a firing HeartbeatMissing for exactly that server.
            processes["a-1"].stop()
            last_beat = admin(bridge, "GET", "/a-1")["last_seen"]
            firing = wait_until(lambda: webhook.alerts(since=last_beat), timeout=60,
                                interval=0.2, what="the HeartbeatMissing notification")
            delay = firing[0][0] - last_beat
            print(f"last beat -> notification: {delay:.1f} s "
                  f"(silence > 3 intervals of 1 s, for: {FOR}, scrape/eval 1 s, group_wait 1 s)")
            time.sleep(2)  # anything else that fires with it arrives in the same second
            alerts = webhook.alerts()
            assert {(path, status, labels["alertname"], labels["server_id"], labels["team"])
                    for _, path, status, labels in alerts} == {
                ("/alerts/team-db-pager", "firing", "HeartbeatMissing", "a-1", "db")}
            assert "instance" not in alerts[0][3]
            assert delay < 30

            # 3. It beats again: the resolution arrives.
            back = time.time()
            processes["a-1"] = agent(bridge, "a-1")
            resolved = wait_until(
                lambda: [a for a in webhook.alerts(since=back) if a[2] == "resolved"],
                timeout=45, interval=0.2, what="the resolved notification")
            assert {(a[3]["alertname"], a[3]["server_id"]) for a in resolved} == {
                ("HeartbeatMissing", "a-1")}
            print(f"beating again -> resolved: {resolved[0][0] - back:.1f} s")

            # 4. A paused server whose agent stops: no alert.
            admin(bridge, "POST", "/c-1/pause", json={"reason": "e2e maintenance"})
            quiet_from = time.time()
            processes["c-1"].stop()
            time.sleep(18)  # 3 intervals + `for` + margins, twice over
            assert prometheus.query('heartbeat:silence_seconds:max{server_id="c-1"} > 10')
            assert webhook.alerts(since=quiet_from) == [], "a paused server alerted"
        finally:
            for process in reversed(list(processes.values())):
                process.stop()
    assert time.monotonic() - started < 180
