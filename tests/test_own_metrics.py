"""The bridge's own request metrics never fail a scrape: /metrics always serves the fleet."""
import os
import struct
import threading
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

from tests.tools import FLEET_TOKEN, Bridge, Process, per_server, total

AUTH = {"Authorization": f"Bearer {FLEET_TOKEN}"}


def multiproc_dir(bridge):
    """The PROMETHEUS_MULTIPROC_DIR `heartbeat-bridge serve` made for this bridge (it execs
    gunicorn, so the master keeps the bridge's PID and the environment it was given)."""
    environ = Path(f"/proc/{bridge.pid}/environ").read_bytes().split(b"\0")
    values = [v.split(b"=", 1)[1] for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    assert values, "the bridge runs without PROMETHEUS_MULTIPROC_DIR"
    return Path(values[0].decode())


def fresh_scrape(bridge):
    """One /metrics answer on a new connection, so successive scrapes reach several workers."""
    return requests.get(bridge.url + "/metrics", timeout=10, headers={"Connection": "close"})


def gauge(text, name, **labels):
    values = [s.value for family in text_string_to_metric_families(text) for s in family.samples
              if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(values) == 1, f"{name}{labels}: {values}"
    return values[0]


@pytest.mark.live
def test_empty_and_truncated_metrics_files_leave_the_scrape_whole(live_bridge):
    bridge = live_bridge(HEARTBEAT_WORKERS="2")
    for server in ("web-1", "web-2", "db-1"):
        for _ in range(2):
            assert bridge.beat(server, FLEET_TOKEN, json={"interval": 30}).status_code == 200
    before = fresh_scrape(bridge)
    assert before.status_code == 200
    directory = multiproc_dir(bridge)
    real = sorted(directory.glob("counter_*.db"))
    assert real, f"no counter files in {directory}: {os.listdir(directory)}"
    data = real[0].read_bytes()
    used = struct.unpack_from("i", data)[0]
    assert used > 16
    # A worker killed between creating its file and sizing it leaves 0 bytes behind
    # (client_python issue #1199); a damaged file claims more than it holds.
    (directory / "counter_4194001.db").write_bytes(b"")
    (directory / "counter_4194002.db").write_bytes(data[:used // 2])
    (directory / "histogram_4194003.db").write_bytes(b"\x01\x02\x03")
    for _ in range(6):
        after = fresh_scrape(bridge)
        assert after.status_code == 200, after.text[:2000]
        assert per_server(after.text) == per_server(before.text)
        # the readable files still count, the damaged ones add nothing
        assert total(after.text, "heartbeat_bridge_http_requests_total", handler="beat",
                     code="200") == 6
        assert gauge(after.text, "heartbeat_bridge_metrics_files_skipped") == 2
        assert gauge(after.text, "heartbeat_bridge_collector_success",
                     collector="http_requests") == 1
    bridge.stop()
    log = bridge.log()
    assert "counter_4194002.db" in log and "histogram_4194003.db" in log
    assert "counter_4194001.db" not in log  # empty is "nothing recorded yet", not damage


STARTS = 8


def _traffic(bridge, stop, answers, kind, index):
    """Beat or scrape on fresh connections until `stop` is set; record every status."""
    n = 0
    while not stop.is_set() and n < 2000:
        n += 1
        try:
            if kind == "beat":
                status = requests.post(f"{bridge.url}/api/heartbeat/s-{index}-{n % 5}/",
                                       headers={**AUTH, "Connection": "close"},
                                       json={"interval": 30}, timeout=5).status_code
            else:
                status = fresh_scrape(bridge).status_code
        except requests.ConnectionError:
            time.sleep(0.01)  # not listening yet
            continue
        answers.append((kind, status))


@pytest.mark.live
def test_no_answer_fails_while_the_bridge_starts_under_beats_and_scrapes(tmp_path):
    """Beats and scrapes arrive from the first instant a worker listens, start after start."""
    database = f"sqlite:///{tmp_path / 'starts.db'}"
    answers, logs = [], []
    for start in range(STARTS):
        bridge = Bridge(database, HEARTBEAT_WORKERS="4", HEARTBEAT_TOKEN=FLEET_TOKEN)
        stop = threading.Event()
        threads = [threading.Thread(target=_traffic, args=(bridge, stop, answers, kind, i))
                   for i, kind in enumerate(["beat"] * 6 + ["scrape"] * 4)]
        seen = len(answers)
        Process.start(bridge)  # no waiting for readiness: the first second is the point
        try:
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 20
            while len(answers) == seen and time.monotonic() < deadline and bridge.running():
                time.sleep(0.01)
            time.sleep(1.0)  # the first second after the first answer
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=15)
            bridge.stop()
            logs.append(bridge.log())
        assert len(answers) > seen, f"start {start}: no answer at all:\n{logs[-1]}"
    failed = [a for a in answers if a[1] >= 500]
    scrapes = sum(1 for kind, status in answers if kind == "scrape" and status == 200)
    assert scrapes > STARTS and not failed, (
        f"{len(failed)} of {len(answers)} answers >= 500: {failed[:10]}\n"
        + "\n".join(log for log in logs if "Traceback" in log)[:4000])


class BrokenCollector:
    """An instrumentation collector with a bug."""

    def collect(self):
        raise RuntimeError("instrumentation bug 1234")


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0"])
def test_a_failing_instrumentation_collector_is_left_out_of_the_scrape(app, client, caplog,
                                                                       accept):
    assert client.post("/api/heartbeat/web-1/", headers=AUTH).status_code == 200
    app.extensions["heartbeat"].registry.register(BrokenCollector())
    response = client.get("/metrics", headers={"Accept": accept})
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    parse = om_parse if accept else text_string_to_metric_families
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in parse(text) for s in family.samples}
    assert samples[("heartbeat_last_seen_seconds", (("server_id", "web-1"),))] > 0
    assert samples[("heartbeat_registered_servers", ())] == 1
    assert samples[("heartbeat_bridge_collector_success", (("collector", "http_requests"),))] == 0
    assert text.count("# EOF") == (1 if accept else 0)
    assert "instrumentation bug 1234" in caplog.text and "http_requests" in caplog.text


def _write(path, entries):
    """A multiprocess file as a worker writes it: {key: value}."""
    values = MmapedDict(str(path))
    for key, value in entries.items():
        values.write_value(key, value, 0.0)
    values.close()


def test_only_damaged_files_are_left_out_of_the_sum(tmp_path, caplog):
    from bridge.http_metrics import WorkerFiles  # here: the live tests also run without it
    key = mmap_key("heartbeat_bridge_http_requests", "heartbeat_bridge_http_requests_total",
                   ["handler", "code"], ["beat", "200"], "HTTP requests answered.")
    _write(tmp_path / "counter_101.db", {key: 3.0})
    _write(tmp_path / "counter_102.db", {key: 4.0})
    whole = (tmp_path / "counter_102.db").read_bytes()
    (tmp_path / "counter_102.db").write_bytes(whole[:20])  # claims more than it holds
    (tmp_path / "counter_103.db").write_bytes(b"")  # created, not yet sized
    _write(tmp_path / "counter_104.db", {"not json": 5.0})
    _write(tmp_path / "histogram_105.db", {mmap_key(
        "d", "d_bucket", ["handler", "le"], ["beat", "soon"], "x"): 1.0})
    _write(tmp_path / "notes.db", {key: 6.0})
    for damaged in ("counter_102.db", "counter_104.db", "histogram_105.db"):
        with pytest.raises(Exception):  # what prometheus_client's own reader does
            list(MultiProcessCollector(None, path=str(tmp_path)).merge(
                [str(tmp_path / damaged)]))
    samples = {s.name: s.value for family in WorkerFiles(str(tmp_path)).collect()
               for s in family.samples}
    assert samples == {"heartbeat_bridge_http_requests_total": 3.0,
                       "heartbeat_bridge_metrics_files_skipped": 4.0}
    for name in ("counter_102.db", "counter_104.db", "histogram_105.db", "notes.db"):
        assert name in caplog.text
