"""A replica of the previous release (0.1.0, run from this repository's history) never writes
a store this release migrated; it is refused instead. On PostgreSQL that is a rolling
upgrade; on SQLite, a 0.1 bridge still running while a new one (or its CLI) migrates."""
import logging
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from bridge.store import SCHEMA_VERSION, BeatPolicy, open_store
from bridge.validate import parse_beat
from tests import previous_release
from tests.fixtures.make_v010_fixtures import T0
from tests.tools import (
    ADMIN_TOKEN,
    FLEET_TOKEN,
    ROOT,
    GiveUp,
    Process,
    bridge_env,
    free_port,
    read_rows,
    wait_until,
    write_rows,
)

FLEET = {"Authorization": f"Bearer {FLEET_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(params=["sqlite", "postgresql"])
def old_store(request, tmp_path):
    with previous_release.v010_store(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def old_bridge(tmp_path):
    """Start `heartbeat-bridge serve` of release 0.1.0 on a database; stopped at the end."""
    code = previous_release.checkout(tmp_path / "v010")
    started = []

    def start(url, wait=True):
        port = free_port()
        env = previous_release.env(code, HEARTBEAT_DATABASE_URL=url,
                                   HEARTBEAT_BIND=f"127.0.0.1:{port}", HEARTBEAT_WORKERS="1",
                                   HEARTBEAT_TOKEN=FLEET_TOKEN, HEARTBEAT_ADMIN_TOKEN=ADMIN_TOKEN)
        process = Process([sys.executable, "-m", "bridge", "serve"], env=env, cwd=code,
                          name="bridge-0.1.0").start()
        process.url = f"http://127.0.0.1:{port}"
        started.append(process)
        if wait:
            wait_until(lambda: _ready(process), timeout=30, what="the 0.1.0 bridge")
        return process

    yield start
    for process in started:
        process.stop()


def _ready(process):
    if not process.running():
        raise GiveUp(f"the 0.1.0 bridge exited:\n{process.log()}")
    try:
        return requests.get(process.url + "/readyz", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def beats_total(url, server_id):
    return read_rows(url, f"SELECT beats_total FROM servers WHERE server_id = '{server_id}'")[0][0]


@pytest.mark.live
def test_a_running_previous_release_replica_cannot_write_once_the_schema_is_migrated(
        old_store, old_bridge):
    url = old_store
    old = old_bridge(url)
    assert requests.get(old.url + "/api", timeout=5).json()["version"] == "0.1.0"
    before = beats_total(url, "web-fleet")
    beat = requests.post(f"{old.url}/api/heartbeat/web-fleet/", headers=FLEET, timeout=5)
    assert beat.status_code == 200  # schema 2: the old replica works as it always did
    assert beats_total(url, "web-fleet") == before + 1

    check = subprocess.run([sys.executable, "-m", "bridge", "check-config"], cwd=ROOT,
                           env=bridge_env(url, free_port()), capture_output=True, text=True,
                           timeout=30)
    if url.startswith("postgresql"):  # the old replica, seen before
        assert "connected: heartbeat-bridge, " in check.stdout
        assert "(a release before 0.2: its writes are refused once the schema is 3)" in (
            check.stdout)

    new = open_store(url, clock=lambda: T0 + 60)  # a new replica starts, and migrates
    try:
        assert new.schema_version() == SCHEMA_VERSION
        # Through the old replica: a beat, an operator's pause without its author, a host
        # ending an operator's pause, a fleet-token beat for a server with its own token.
        attempts = [
            ("post", "/api/heartbeat/web-fleet/", FLEET, None),
            ("post", "/api/servers/web-bye/pause", ADMIN, {"for": "1h", "reason": "x"}),
            ("delete", "/api/heartbeat/app-paused/maintenance", FLEET, None),
            ("post", "/api/heartbeat/db-own/", FLEET, None),
        ]
        for method, path, headers, body in attempts:
            response = requests.request(method, old.url + path, headers=headers, json=body,
                                        timeout=5)
            assert response.status_code in (401, 503), (path, response.text)
            if response.status_code == 503:
                assert response.json()["error"] == "store_unavailable"
        # PostgreSQL says why; on SQLite 0.1 lacks the function the lockout asks for.
        assert ("may not write it: upgrade it" in old.log()
                or "no such function: heartbeat_bridge_writer_schema" in old.log())
        assert beats_total(url, "web-fleet") == before + 1
        assert new.get("web-bye").paused is False
        assert new.get("app-paused").paused_by == "operator"
        # Its scrapes also write (counters, housekeeping): refused alike, never half-true.
        assert requests.get(old.url + "/metrics", timeout=10).status_code == 503
        # Read-only answers still come; the new replica writes as usual.
        listed = requests.get(old.url + "/api/servers", headers=ADMIN, timeout=5)
        assert len(listed.json()["servers"]) == 8
        new.record_beat("web-fleet", parse_beat(b"", None), BeatPolicy(rate_limit_burst=0))
        assert beats_total(url, "web-fleet") == before + 2
    finally:
        new.close()


@pytest.mark.live
def test_the_previous_release_refuses_to_start_on_the_migrated_schema(old_store, old_bridge):
    url = old_store
    open_store(url, clock=lambda: T0 + 60).close()
    old = old_bridge(url, wait=False)
    wait_until(lambda: not old.running(), timeout=30, what="the 0.1.0 bridge to exit")
    assert old.proc.returncode != 0
    assert (f"the database schema is version {SCHEMA_VERSION}, newer than this bridge "
            "understands (2)") in old.log()


def test_writes_that_do_not_say_their_schema_are_refused(old_store):
    open_store(old_store, clock=lambda: T0 + 60).close()
    if old_store.startswith("sqlite:///"):
        import sqlite3
        error, match = sqlite3.OperationalError, "no such function"
    else:
        import psycopg
        error, match = psycopg.errors.ObjectNotInPrerequisiteState, "upgrade it"
    with pytest.raises(error, match=match):
        write_rows_as_0_1(old_store, "UPDATE servers SET paused = 0")
    # What an operator's own SQL says to be let through (docs/upgrading.md).
    sql = "UPDATE servers SET labels = '{}' WHERE server_id = 'web-bye'"
    assert write_rows(old_store, sql) == 1


def write_rows_as_0_1(url, sql):
    """A write from a session that does not say which schema it writes, as 0.1's."""
    if url.startswith("sqlite:///"):
        import sqlite3
        with sqlite3.connect(url[len("sqlite:///"):]) as conn:
            conn.execute(sql)
        return
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def test_new_replicas_starting_together_on_an_old_store_migrate_it_once(caplog, pg_schema):
    _, schema, url = pg_schema
    previous_release.load_dump(schema)
    barrier = threading.Barrier(3)

    def start(_):
        barrier.wait(timeout=10)
        return open_store(url, clock=lambda: T0 + 60, pool_size=1)

    with caplog.at_level(logging.INFO, logger="bridge"):
        with ThreadPoolExecutor(3) as pool:
            stores = list(pool.map(start, range(3)))
    assert [s.schema_version() for s in stores] == [SCHEMA_VERSION] * 3
    assert caplog.text.count("migrating the store from schema 2") == 1
    stores[0].record_beat("web-fleet", parse_beat(b"", None), BeatPolicy(rate_limit_burst=0))
    for store in stores:
        store.close()
