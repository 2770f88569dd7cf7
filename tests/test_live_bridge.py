"""The bridge as it runs in production: `heartbeat-bridge serve` (gunicorn), real SQLite."""
import re
import socket
import subprocess

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.tools import ADMIN_TOKEN, FLEET_TOKEN, per_server, require_binary, total, wait_until

pytestmark = pytest.mark.live  # every test here starts a real program


@pytest.fixture(scope="module")
def bridge(module_bridge):
    """One bridge for the tests that each write ids of their own, or nothing."""
    return module_bridge()


def test_health_and_readiness(bridge):
    assert requests.get(bridge.url + "/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(bridge.url + "/readyz", timeout=5).json() == {"status": "ready"}


def test_state_survives_a_restart_unchanged(live_bridge, tmp_path):
    db = f"sqlite:///{tmp_path / 'persist.db'}"
    bridge = live_bridge(db, HEARTBEAT_METRICS="full")  # beat counts
    requests.post(bridge.url + "/api/servers", timeout=5, json={
        "server_id": "db-1", "labels": {"team": "db"}, "interval": 60},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).raise_for_status()
    for i in range(5):
        for server in ("web-1", "web-2", "db-1"):
            assert bridge.beat(server, FLEET_TOKEN, json={"interval": 10, "seq": i,
                                                          "hostname": server}).ok
    before = per_server(bridge.metrics())
    assert before[("heartbeat_beats_total", (("server_id", "web-1"),))] == 5
    bridge.stop()
    restarted = live_bridge(db, port=bridge.port, HEARTBEAT_METRICS="full")
    assert per_server(restarted.metrics()) == before


def test_every_worker_answers_metrics_the_same(live_bridge):
    bridge = live_bridge(HEARTBEAT_WORKERS="4", HEARTBEAT_THREADS="2", HEARTBEAT_METRICS="full")
    servers = [f"node-{i:03d}" for i in range(40)]
    for round_ in range(3):
        for server in servers:
            # a fresh connection each time, so beats land on different workers
            assert bridge.beat(server, FLEET_TOKEN, json={"interval": 30}).status_code == 200
    for _ in range(20):
        text = requests.get(bridge.url + "/metrics", timeout=10,
                            headers={"Connection": "close"}).text
        beats = {s.labels["server_id"]: s.value
                 for family in text_string_to_metric_families(text) for s in family.samples
                 if s.name == "heartbeat_beats_total"}
        assert beats == {server: 3 for server in servers}
        assert total(text, "heartbeat_bridge_http_requests_total", handler="beat",
                     code="200") == 120


def test_rejections_from_every_worker_are_counted_once(live_bridge):
    bridge = live_bridge(HEARTBEAT_WORKERS="4")
    for _ in range(12):
        assert bridge.beat("web-1", "not-the-token").status_code == 401
    wait_until(lambda: total(bridge.metrics(), "heartbeat_rejected_total",
                             reason="invalid_token") == 12,
               timeout=10, what="12 rejections counted")


def raw_request(port, head, body_chunks=(), read_timeout=5.0):
    """Send raw bytes; return the status line and whether the server closed early."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the bridge stopped reading: that is the point
        data = sock.recv(4096)
    return data.split(b"\r\n", 1)[0].decode()


def test_a_declared_oversized_body_is_refused_before_it_is_read(bridge):
    head = (f"POST /api/heartbeat/big-1/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{FLEET_TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 50000000\r\n\r\n").encode()
    # 50 MB announced, none sent: an answer at all (within raw_request's 5 s read timeout)
    # shows the bridge did not wait for the body
    status = raw_request(bridge.port, head)
    assert status.endswith("413 REQUEST ENTITY TOO LARGE") or " 413 " in status


def test_a_chunked_body_over_the_limit_is_cut_off(bridge):
    head = (f"POST /api/heartbeat/cut-1/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{FLEET_TOKEN}\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    status = raw_request(bridge.port, head, [chunk] * 8)
    assert " 413 " in status
    assert "cut-1" not in bridge.metrics()


def test_a_small_chunked_beat_is_accepted(bridge):
    body = b'{"interval": 20}'
    head = (f"POST /api/heartbeat/chunk-1/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{FLEET_TOKEN}\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    status = raw_request(bridge.port, head, [b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)])
    assert " 200 " in status
    assert 'heartbeat_interval_seconds{server_id="chunk-1"} 20.0' in bridge.metrics()


def test_live_metrics_pass_promtool_and_both_formats(live_bridge):
    require_binary("promtool")
    bridge = live_bridge(HEARTBEAT_METRICS="full")  # every family
    requests.post(bridge.url + "/api/servers", timeout=5, headers={
        "Authorization": f"Bearer {ADMIN_TOKEN}"}, json={
        "server_id": "edge.1", "labels": {"site": 'a "quoted" \\ site', "team": "nét"}})
    bridge.beat("edge.1", FLEET_TOKEN, json={"hostname": "edge\\1", "agent_version": "0.1"})
    text = bridge.metrics()
    result = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert total(text, "heartbeat_beats_total", server_id="edge.1",
                 site='a "quoted" \\ site', team="nét") == 1
    om = requests.get(bridge.url + "/metrics", timeout=10, headers={
        "Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.headers["Content-Type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n")


def test_tokens_never_reach_the_log(live_bridge):
    bridge = live_bridge(HEARTBEAT_LOG_LEVEL="debug")
    requests.post(bridge.url + "/api/servers", timeout=5, json={"server_id": "db-1",
                                                                "token": True},
                  headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    wrong = "guessed-token-ABCDEFGH"
    bridge.beat("web-1", FLEET_TOKEN)
    bridge.beat("web-1", wrong)
    bridge.beat("db-1", wrong)
    requests.get(bridge.url + "/api/servers", timeout=5,
                 headers={"Authorization": f"Bearer {wrong}"})
    bridge.stop()
    log = bridge.log()
    assert "rejected beat" in log  # debug logging was on and did log the rejections
    for secret in (FLEET_TOKEN, ADMIN_TOKEN, wrong):
        assert secret not in log


LOG_LINE = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[(\d+)\] "
                      r"\[(DEBUG|INFO|WARNING|ERROR|CRITICAL)\] ")


def test_every_process_logs_in_one_format_at_the_level_set(live_bridge):
    """gunicorn, its workers and the render process: one line format, one level."""
    bridge = live_bridge(HEARTBEAT_LOG_LEVEL="debug", HEARTBEAT_WORKERS="1",
                         HEARTBEAT_RENDER_PROCESS_FROM="0")
    bridge.metrics()  # starts the host's render process, which logs when it is ready
    wait_until(lambda: "ready in" in bridge.log(), what="the render process's debug line")
    lines = [line for line in bridge.log().splitlines() if line.startswith("[")]
    assert lines and all(LOG_LINE.match(line) for line in lines), bridge.log()
    ready = next(line for line in lines if "ready in" in line)
    assert LOG_LINE.match(ready).group(2) == "DEBUG"
    assert f"Listening at: http://127.0.0.1:{bridge.port} (" in bridge.log()
    bridge.stop()

    quiet = live_bridge(HEARTBEAT_LOG_LEVEL="warning")
    quiet.metrics()
    requests.get(quiet.url + "/api/status", timeout=5)
    quiet.stop()
    assert "[INFO]" not in quiet.log() and "[DEBUG]" not in quiet.log(), quiet.log()
