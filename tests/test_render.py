"""The host's render process (bridge.render): /metrics and /api/status of a large fleet
computed in one process shared by every worker, identical to what a worker would compute
itself, and what one bad moment of that process (killed, hung, the store gone) does to the
answers: a 503 for that request, a new process for the next, never a stuck worker. A small
fleet's answers are computed in the workers: no render process at all."""
import gzip
import json
import os
import signal
import sys
import threading
import time

import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from bridge.errors import BridgeError
from bridge.exposition import render
from bridge.render import RENDER_NICE, HostRenderer, RenderError, read_pid, stop
from bridge.render_process import Shared
from bridge.status_answer import status_answer, status_snapshots
from bridge.store import BeatPolicy, StoreUnavailableError, open_store
from bridge.validate import Beat
from tests.tools import ADMIN_TOKEN, FLEET_TOKEN, Bridge, make_settings, sample_map, wait_until

pytestmark = pytest.mark.live  # every test here starts a real program


@pytest.fixture
def seeded(tmp_path):
    """A SQLite store with a fleet in every state the page knows, on the real clock."""
    url = f"sqlite:///{tmp_path / 'render.db'}"
    store = open_store(url)
    store.register("never-1", labels={"team": "db"})
    for i in range(30):
        store.record_beat(f"web-{i}", Beat(interval=30, hostname=f"web-{i}.example"),
                          BeatPolicy(rate_limit_burst=0))
    store.pause("web-3", until=None, reason="disk swap")
    yield url, store
    store.close()


@pytest.fixture
def run_dir(tmp_path):
    """serve's run directory; the render process started there is stopped at the end."""
    path = tmp_path / "run"
    path.mkdir()
    yield str(path)
    pid = read_pid(str(path))
    stop(str(path))
    if pid is not None:
        wait_until(lambda: read_pid(str(path)) is None, what="the render process ended")


@pytest.fixture
def renderer(seeded, run_dir):
    url, _ = seeded
    r = HostRenderer(make_settings(url, status_max_age=0.0, run_dir=run_dir))
    yield r
    r.close()


# What differs between two scrapes a moment apart: the scrape's own time and its clock.
# ...and of the process: since when it has served (each process starts its own stretch).
_OF_THE_MOMENT = ("heartbeat_scrape_duration_seconds", "heartbeat_bridge_time_seconds",
                  "heartbeat_bridge_serving_since_seconds", "heartbeat_bridge_unheard_seconds")


def _without_timing(text, parse=text_string_to_metric_families):
    return {k: v for k, v in sample_map(text, parse).items() if k[0] not in _OF_THE_MOMENT}


def test_metrics_from_the_render_process_are_the_workers_own(seeded, renderer):
    url, store = seeded
    settings = renderer.settings
    for accept in ("", "application/openmetrics-text; version=1.0.0"):
        headers, body = renderer.metrics(accept, "")
        here_headers, here = render(store, {"HTTP_ACCEPT": accept}, CollectorRegistry(),
                                    settings.default_interval, settings.max_servers)
        assert headers == here_headers
        parse = openmetrics_families if accept else text_string_to_metric_families
        assert _without_timing(body.decode(), parse) == _without_timing(here.decode(), parse)
    headers, body = renderer.metrics("", "gzip")
    assert ("Content-Encoding", "gzip") in headers
    assert b'heartbeat_excused_until_seconds{server_id="web-3"} +Inf' in gzip.decompress(body)


def test_status_from_the_render_process_is_the_workers_own(seeded, renderer):
    url, store = seeded
    snapshots = status_snapshots(store, renderer.settings)
    for args in ({}, {"state": "all", "per_page": "5", "page": "2"}, {"q": "team=db"},
                 {"state": "paused"}, {"sort": "last_seen", "order": "desc"}):
        etag, text = renderer.status(args, "")
        here_etag, here = status_answer(snapshots, args, renderer.settings.default_interval)
        assert etag == here_etag, args
        theirs, ours = json.loads(text), json.loads(here)
        assert [s["server_id"] for s in theirs["servers"]] == \
            [s["server_id"] for s in ours["servers"]]
        assert theirs["counts"] == ours["counts"] and theirs["matched"] == ours["matched"]
    etag, text = renderer.status({"q": "team=db"}, "")
    assert renderer.status({"q": "team=db"}, f'W/"{etag}"') == (etag, None)
    assert renderer.status({"q": "team=db"}, '"other"')[1] is not None


def test_a_bad_query_is_the_callers_error_not_the_processes(renderer):
    with pytest.raises(BridgeError) as caught:
        renderer.status({"sort": "bogus"}, "")
    assert (caught.value.status, caught.value.reason) == (400, "invalid_query")
    assert "sort" in caught.value.message
    pid = renderer.pid()
    assert pid is not None
    assert renderer.status({}, "")[1] is not None and renderer.pid() == pid  # kept


def test_every_worker_shares_one_niced_process_and_a_killed_one_is_replaced(seeded,
                                                                            renderer):
    url, _ = seeded
    other_worker = HostRenderer(renderer.settings)
    try:
        renderer.metrics("", "")
        pid = renderer.pid()
        assert other_worker.status({}, "")[1] is not None and other_worker.pid() == pid
        other_worker.metrics("", "")
        with open(f"/proc/{pid}/stat") as stat:
            assert int(stat.read().rsplit(")", 1)[1].split()[16]) == RENDER_NICE
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: renderer.pid() is None, what="the killed process seen as dead")
        headers, body = renderer.metrics("", "")
        assert b'heartbeat_last_seen_seconds{server_id="web-1"}' in body
        assert renderer.pid() not in (None, pid)
        assert other_worker.metrics("", "")[1] and other_worker.pid() == renderer.pid()
    finally:
        other_worker.close()


# A stand-in render process: reads the settings, listens where it is told, says so, then
# does what BEHAVIOUR says with the first request.
_FAKE = """import marshal, os, socket, struct, sys, time
from bridge.render import read_message, write_message
read_message(0)
listener = socket.socket(socket.AF_UNIX); listener.bind(sys.argv[1]); listener.listen(1)
with open(os.path.join(os.path.dirname(sys.argv[1]), "render.pid"), "w") as f:
    f.write(str(os.getpid()))
write_message(1, "listening")
conn, _ = listener.accept()
read_message(conn.fileno())
BEHAVIOUR
"""


def _fake(behaviour):
    return [sys.executable, "-c", _FAKE.replace("BEHAVIOUR", behaviour)]


def test_a_process_killed_mid_answer_fails_that_request_only(seeded, run_dir):
    url, _ = seeded
    r = HostRenderer(make_settings(url, run_dir=run_dir), argv=_fake("sys.exit(3)"),
                     timeout=10)
    try:
        with pytest.raises(RenderError) as caught:
            r.metrics("", "")
        assert caught.value.status == 503 and "EOFError" in str(caught.value)
    finally:
        r.close()


def test_a_hung_render_process_is_given_up_on_and_killed(seeded, run_dir):
    url, _ = seeded
    r = HostRenderer(make_settings(url, run_dir=run_dir), argv=_fake("time.sleep(60)"),
                     timeout=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(RenderError) as caught:
            r.status({}, "")
        assert "TimeoutError" in str(caught.value)
        assert time.monotonic() - started < 10  # bounded by the timeout, not the sleep
        wait_until(lambda: r.pid() is None, what="the hung process killed")
    finally:
        r.close()


def test_an_unreachable_store_is_a_503_store_unavailable(run_dir):
    url = "postgresql://heartbeat@127.0.0.1:9/nowhere?connect_timeout=1"
    r = HostRenderer(make_settings(url, run_dir=run_dir), timeout=30)
    try:
        with pytest.raises(StoreUnavailableError):
            r.metrics("", "")
    finally:
        r.close()


def test_a_scrape_arriving_during_the_same_scrape_gets_that_answer():
    computed, release = [], threading.Event()

    def compute(*args):
        computed.append(args)
        release.wait(10)
        return f"answer {len(computed)}"
    shared = Shared(compute)
    answers = []
    first = threading.Thread(target=lambda: answers.append(shared("text", "")))
    first.start()
    wait_until(lambda: computed, what="the first render under way")
    # arrives while the first renders: waits for it, then renders anew (the first one
    # began before it arrived, so it may miss what this request should see)
    second = threading.Thread(target=lambda: answers.append(shared("text", "")))
    second.start()
    third = threading.Thread(target=lambda: answers.append(shared("text", "")))
    third.start()
    time.sleep(0.2)  # both queued behind the lock; nothing to wait_until on
    release.set()
    for thread in (first, second, third):
        thread.join(10)
    assert len(computed) == 2  # the first, then one for both that arrived during it
    assert sorted(answers) == ["answer 1", "answer 2", "answer 2"]
    assert shared("other", "") == "answer 3"


def test_under_serve_a_small_fleet_renders_in_its_workers(tmp_path):
    url = f"sqlite:///{tmp_path / 'small.db'}"
    bridge = Bridge(url, HEARTBEAT_TOKEN=FLEET_TOKEN, HEARTBEAT_STATUS_PUBLIC="true",
                    HEARTBEAT_ENROLMENT="false").start()
    try:
        assert bridge.beat("web-1", FLEET_TOKEN, json={"interval": 30}).status_code == 200
        for _ in range(6):
            assert 'heartbeat_last_seen_seconds{server_id="web-1"}' in bridge.metrics()
            requests.get(bridge.url + "/api/status", timeout=10).raise_for_status()
        assert _render_processes(bridge.pid) == {}
        assert len(_descendants(bridge.pid)) == 2  # HEARTBEAT_WORKERS=2, nothing else
    finally:
        bridge.stop()


def test_under_serve_a_large_fleet_renders_in_one_niced_process(tmp_path):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    # from 1 server on, as a fleet past the default threshold would
    bridge = Bridge(url, HEARTBEAT_TOKEN=FLEET_TOKEN, HEARTBEAT_ADMIN_TOKEN=ADMIN_TOKEN,
                    HEARTBEAT_STATUS_PUBLIC="true", HEARTBEAT_ENROLMENT="false",
                    HEARTBEAT_RENDER_PROCESS_FROM="1").start()
    try:
        assert bridge.beat("web-1", FLEET_TOKEN, json={"interval": 30}).status_code == 200
        for _ in range(8):  # new connections spread over both workers (SO_REUSEPORT)
            bridge.metrics()
            requests.get(bridge.url + "/api/status", timeout=10).raise_for_status()
        children = _render_processes(bridge.pid)
        assert set(children.values()) == {RENDER_NICE} and len(children) == 1
        (pid,) = children
        os.kill(pid, signal.SIGKILL)
        for _ in range(6):  # the next answers come from a new process
            assert 'heartbeat_last_seen_seconds{server_id="web-1"}' in bridge.metrics()
            status = requests.get(bridge.url + "/api/status?state=all", timeout=10)
            assert [s["server_id"] for s in status.json()["servers"]] == ["web-1"]
        assert len(_render_processes(bridge.pid)) == 1
        assert pid not in _render_processes(bridge.pid)
    finally:
        bridge.stop()
    wait_until(lambda: not _render_processes(bridge.pid, anywhere=True),
               what="the render process ended with the bridge")


def _descendants(pid):
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                found += [int(child)] + _descendants(int(child))
    return found


def _render_processes(master, anywhere=False):
    """{pid: nice} of the live render processes under the gunicorn master `master` (with
    `anywhere`, those started for it wherever they are now)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"bridge.render_process" not in cmd or fields[0] == "Z":
            continue
        if (anywhere and cmd[-2:-1] == [str(master).encode()]) or \
                int(entry) in _descendants(master):
            found[int(entry)] = int(fields[16])
    return found
