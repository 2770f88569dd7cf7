"""The render process (bridge.render): /metrics and /api/status computed in a child of the
worker, identical to what the worker would compute itself, and what one bad moment of
that child (killed, hung, the store gone) does to the answers: a 503 for that request,
a new child for the next, never a stuck worker."""
import gzip
import json
import os
import signal
import sys
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
from bridge.render import RENDER_NICE, Renderer, RenderError
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
def renderer(seeded):
    url, _ = seeded
    r = Renderer(make_settings(url, status_max_age=0.0))
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
    pid = renderer.pid("status")
    assert renderer.status({}, "")[1] is not None and renderer.pid("status") == pid  # kept


def test_each_kind_renders_in_its_own_niced_process_and_a_killed_one_is_replaced(renderer):
    renderer.metrics("", "")
    renderer.status({}, "")
    pid = renderer.pid("metrics")
    # A scrape that renders for seconds never holds up a status refresh of the same worker.
    assert renderer.pid("status") not in (None, pid)
    for kind in Renderer.KINDS:
        with open(f"/proc/{renderer.pid(kind)}/stat") as stat:
            assert int(stat.read().rsplit(")", 1)[1].split()[16]) == RENDER_NICE
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: renderer.pid("metrics") is None, what="the killed child seen as dead")
    headers, body = renderer.metrics("", "")
    assert b"heartbeat_registered_servers 31.0" in body
    assert renderer.pid("metrics") not in (None, pid)


def test_a_child_killed_mid_answer_fails_that_request_only(seeded):
    url, _ = seeded
    # A child that reads the settings and the request, then dies without answering.
    script = ("import sys,struct; r=sys.stdin.buffer\n"
              "for _ in range(2): n=struct.unpack('!I', r.read(4))[0]; r.read(n)\n"
              "sys.exit(3)")
    r = Renderer(make_settings(url), argv=[sys.executable, "-c", script], timeout=10)
    try:
        with pytest.raises(RenderError) as caught:
            r.metrics("", "")
        assert caught.value.status == 503 and "EOFError" in str(caught.value)
    finally:
        r.close()


def test_a_hung_render_process_is_given_up_on_and_killed(seeded):
    url, _ = seeded
    r = Renderer(make_settings(url), argv=[sys.executable, "-c", "import time; time.sleep(60)"],
                 timeout=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(RenderError) as caught:
            r.status({}, "")
        assert "TimeoutError" in str(caught.value)
        assert time.monotonic() - started < 10  # bounded by the timeout, not the sleep
        assert r.pid("status") is None
    finally:
        r.close()


def test_an_unreachable_store_is_a_503_store_unavailable(tmp_path):
    url = "postgresql://heartbeat@127.0.0.1:9/nowhere?connect_timeout=1"
    r = Renderer(make_settings(url), timeout=30)
    try:
        with pytest.raises(StoreUnavailableError):
            r.metrics("", "")
    finally:
        r.close()


def test_under_serve_each_worker_renders_in_niced_children(tmp_path):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    bridge = Bridge(url, HEARTBEAT_TOKEN=FLEET_TOKEN, HEARTBEAT_ADMIN_TOKEN=ADMIN_TOKEN,
                    HEARTBEAT_STATUS_PUBLIC="true", HEARTBEAT_ENROLMENT="false").start()
    try:
        assert bridge.beat("web-1", FLEET_TOKEN, json={"interval": 30}).status_code == 200
        children = {}

        def every_worker_has_one():
            # New connections spread over the workers (SO_REUSEPORT); ask until each
            # worker has rendered once.
            bridge.metrics()
            requests.get(bridge.url + "/api/status", timeout=10).raise_for_status()
            children.update(_render_children(bridge.pid))
            return len(children) == 4  # 2 workers x (metrics, status)
        wait_until(every_worker_has_one, timeout=30, what="render processes in each worker")
        assert set(children.values()) == {RENDER_NICE}
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        for _ in range(6):  # each worker's next answer comes from a new child
            assert 'heartbeat_last_seen_seconds{server_id="web-1"}' in bridge.metrics()
            status = requests.get(bridge.url + "/api/status?state=all", timeout=10)
            assert [s["server_id"] for s in status.json()["servers"]] == ["web-1"]
        assert not set(_render_children(bridge.pid)) & set(children)
    finally:
        bridge.stop()


def _render_children(master):
    """{pid: nice} of the render processes under the gunicorn master `master`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"bridge.render" not in cmd or fields[0] == "Z":
            continue
        parent = int(fields[1])
        with open(f"/proc/{parent}/stat") as f:
            grandparent = int(f.read().rsplit(")", 1)[1].split()[1])
        if grandparent == master:
            found[int(entry)] = int(fields[16])
    return found
