"""Upgrading stores that release 0.1.0 wrote (tests/fixtures/v010, made by 0.1.0's own code:
tests/fixtures/make_v010_fixtures.py): every decision kept, on SQLite and PostgreSQL."""
import logging
import shutil
import subprocess
import sys

import pytest
import requests

from bridge.asgi import BridgeASGI
from bridge.auth import hash_token
from bridge.state import build_state
from bridge.store import SCHEMA_VERSION, open_store
from bridge.store.sql import ALL_COLUMNS
from tests.asgi_client import ServedApp
from tests.fixtures.make_v010_fixtures import HERE, OWN_TOKEN, SERVERS, T0
from tests.previous_release import v010_store
from tests.tools import (
    ADMIN_TOKEN,
    FLEET_TOKEN,
    ROOT,
    FakeClock,
    bridge_env,
    free_port,
    make_settings,
    read_rows,
    write_rows,
)

FLEET = {"Authorization": f"Bearer {FLEET_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
OWN = {"Authorization": f"Bearer {OWN_TOKEN}"}
V010_COLUMNS = ALL_COLUMNS[:21]  # what schema 2 held, in the same order


@pytest.fixture(params=["sqlite", "postgresql"])
def old_store(request, tmp_path):
    with v010_store(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def clock():
    return FakeClock(T0 + 60)  # a minute after 0.1.0 left the store


@pytest.fixture
def upgraded(old_store, clock):
    store = open_store(old_store, clock=clock)
    yield store
    store.close()


@pytest.fixture
def client(upgraded, old_store, clock):
    app = ServedApp(BridgeASGI(build_state(make_settings(old_store), store=upgraded,
                                           clock=clock, rejection_flush_every=0)))
    yield app.test_client()
    app.stop()


def call(client, server_id, action="", headers=FLEET, method="post", json=None):
    return getattr(client, method)(f"/api/heartbeat/{server_id}/{action}", json=json,
                                   headers=headers)


def test_the_fixtures_are_stores_of_schema_2(old_store):
    assert read_rows(old_store, "SELECT value FROM meta") == [("2",)]
    assert len(read_rows(old_store, "SELECT server_id FROM servers")) == len(SERVERS) + 1


def test_every_server_and_counter_is_kept_as_it_was(old_store, clock):
    before = sorted(read_rows(old_store, f"SELECT {', '.join(V010_COLUMNS)} FROM servers"))
    store = open_store(old_store, clock=clock)
    try:
        rows, rejected = store.export_rows()
        assert store.schema_version() == SCHEMA_VERSION
    finally:
        store.close()
    assert sorted(tuple(row[:len(V010_COLUMNS)]) for row in rows) == before
    assert rejected == {"invalid_token": 4, "rate_limited": 2}


def test_who_paused_and_who_retired_is_read_the_way_that_keeps_both_powers(upgraded):
    by = {s.server_id: (s.paused_by if s.paused else None,
                        s.retired_by if s.retired_at else None) for s in upgraded.list()}
    assert by == {
        "web-window": ("host", None),  # ends within the host bound: may be the host's window
        "app-paused": ("operator", None),  # no end: no host could have asked for it
        "app-long": ("operator", None),  # 7 days: past what a host may ask
        "old-retired": (None, "operator"),
        "self-retired": (None, "operator"),  # schema 2 cannot tell: the safe reading
        "web-fleet": (None, None), "web-bye": (None, None), "db-own": (None, None)}


def test_the_host_can_still_end_its_own_window_early(client, upgraded, clock):
    window = upgraded.get("web-window")
    assert (window.paused_until, window.pause_reason) == (T0 - 300 + 3600, "kernel update")
    response = call(client, "web-window", "maintenance", method="delete")
    assert response.status_code == 200, response.get_json()
    assert not upgraded.get("web-window").is_paused(clock.now)


@pytest.mark.parametrize("server_id, until, reason", [
    ("app-paused", None, "disk swap"), ("app-long", T0 - 300 + 7 * 86400, "decommission review")])
def test_no_host_can_end_or_replace_an_operators_pause(client, upgraded, server_id, until,
                                                        reason):
    for method, body in (("delete", None), ("post", {"for": "10m"})):
        response = call(client, server_id, "maintenance", method=method, json=body)
        assert (response.status_code, response.get_json()["error"]) == (409, "operator_pause")
    server = upgraded.get(server_id)
    assert (server.paused, server.paused_until, server.pause_reason) == (True, until, reason)
    assert client.post(f"/api/servers/{server_id}/resume", headers=ADMIN).status_code == 200


@pytest.mark.parametrize("server_id", ["old-retired", "self-retired"])
def test_an_old_retirement_stays_whatever_beats_arrive_until_an_operator_undoes_it(
        client, upgraded, server_id):
    assert call(client, server_id).status_code == 200
    assert call(client, server_id, "goodbye").status_code == 200
    server = upgraded.get(server_id)
    assert (server.retired_at, server.retired_by) == (T0 - 300, "operator")
    assert client.post(f"/api/servers/{server_id}/unretire", headers=ADMIN).status_code == 200
    assert upgraded.get(server_id).retired_at is None


def test_an_operators_token_stays_valid_and_becomes_exclusive(client, upgraded):
    assert upgraded.credentials("db-own") == ([hash_token(OWN_TOKEN)], True)
    assert call(client, "db-own", headers=OWN).status_code == 200
    response = call(client, "db-own")  # the fleet token no longer speaks for it
    assert (response.status_code, response.get_json()["error"]) == (401, "enrolled")
    server = upgraded.get("db-own")
    assert (server.beats_total, server.labels, server.registered_interval) == (
        2, {"env": "prod", "team": "db"}, 60)


def test_a_fleet_token_server_keeps_beating_and_enrols(client, upgraded):
    assert upgraded.get("web-fleet").enrolment == "open"
    answer = call(client, "web-fleet").get_json()
    assert answer["server_id"] == "web-fleet" and answer["token"]
    server = upgraded.get("web-fleet")
    assert (server.beats_total, server.hostname, server.seq) == (3, "web-fleet.example", 2)


def test_a_goodbye_is_still_awaited(upgraded, clock):
    server = upgraded.get("web-bye")
    assert server.expected_back == T0 - 300 + 900 and server.is_away(clock.now)
    assert server.retired_at is None


def test_the_upgrade_is_logged_with_what_it_read(old_store, clock, caplog):
    with caplog.at_level(logging.INFO, logger="bridge"):
        open_store(old_store, clock=clock).close()
    lines = [r.getMessage() for r in caplog.records]
    assert f"migrating the store from schema 2 to {SCHEMA_VERSION}" in lines
    assert (f"migrated the store from schema 2 to {SCHEMA_VERSION}: 8 servers; pauses read as "
            "a host's window 1, as an operator's 2; retirements kept as an operator's 2; "
            "servers with their own token (now enrolled) 1") in lines
    with caplog.at_level(logging.INFO, logger="bridge"):
        caplog.clear()
        open_store(old_store, clock=clock).close()  # once only
    assert not [r for r in caplog.records if "migrat" in r.getMessage()]


def test_a_sqlite_store_is_backed_up_next_to_it_before_the_upgrade(tmp_path, clock, caplog):
    shutil.copy(HERE / "heartbeat.db", tmp_path / "heartbeat.db")
    before = read_rows(f"sqlite:///{tmp_path / 'heartbeat.db'}", "SELECT * FROM servers")
    with caplog.at_level(logging.INFO, logger="bridge"):
        open_store(f"sqlite:///{tmp_path / 'heartbeat.db'}", clock=clock).close()
    (backup,) = tmp_path.glob("heartbeat.db.schema2-*.bak")
    assert f"backed up the store to {backup} before migrating it" in caplog.text
    assert caplog.text.index("backed up") < caplog.text.index("migrating the store")
    assert read_rows(f"sqlite:///{backup}", "SELECT value FROM meta") == [("2",)]
    assert read_rows(f"sqlite:///{backup}", "SELECT * FROM servers") == before


def test_a_store_created_new_is_neither_migrated_in_the_log_nor_backed_up(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="bridge"):
        open_store(f"sqlite:///{tmp_path / 'new.db'}").close()
    assert "migrat" not in caplog.text
    assert not list(tmp_path.glob("*.bak"))


def check_config(url):
    return subprocess.run([sys.executable, "-m", "bridge", "check-config"], cwd=ROOT,
                          env=bridge_env(url, free_port()), capture_output=True, text=True,
                          timeout=30)


@pytest.mark.live
def test_check_config_reports_the_schema_and_the_plan_and_changes_nothing(old_store, tmp_path):
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    rows = read_rows(old_store, "SELECT * FROM servers ORDER BY server_id")
    result = check_config(old_store)
    assert result.returncode == 0, result.stderr
    assert f"store schema: 2 (this bridge: {SCHEMA_VERSION})\n" in result.stdout
    plan = result.stdout.split("serve would: ")[1]
    assert f"migrate the store from schema 2 to {SCHEMA_VERSION}" in plan
    if old_store.startswith("sqlite:///"):
        assert plan.startswith(f"back the store up to {tmp_path / 'heartbeat.db'}.schema2-")
    else:
        assert "back it up with pg_dump first" in plan
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files  # not one byte more
    assert read_rows(old_store, "SELECT value FROM meta") == [("2",)]
    assert read_rows(old_store, "SELECT * FROM servers ORDER BY server_id") == rows


@pytest.mark.live
def test_check_config_on_a_new_database_creates_nothing(tmp_path):
    result = check_config(f"sqlite:///{tmp_path / 'data' / 'heartbeat.db'}")
    assert result.returncode == 0, result.stderr
    assert "store schema: none yet" in result.stdout
    assert f"serve would: create the store at schema {SCHEMA_VERSION}" in result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.live
def test_check_config_after_the_upgrade_and_on_a_newer_schema(old_store, clock):
    open_store(old_store, clock=clock).close()
    result = check_config(old_store)
    assert "serve would: use the store as it is" in result.stdout
    write_rows(old_store, "UPDATE meta SET value = '99'")  # as a later release leaves it
    result = check_config(old_store)
    assert result.returncode == 1
    assert "serve would: refuse to start: the store's schema 99 is newer" in result.stdout


@pytest.mark.live
def test_serve_on_a_0_1_store_backs_it_up_migrates_it_and_says_so(live_bridge, tmp_path):
    shutil.copy(HERE / "heartbeat.db", tmp_path / "old.db")
    bridge = live_bridge(f"sqlite:///{tmp_path / 'old.db'}")
    (backup,) = tmp_path.glob("old.db.schema2-*.bak")
    log = bridge.log()
    assert f"[WARNING] backed up the store to {backup} before migrating it\n" in log
    assert f"[WARNING] migrating the store from schema 2 to {SCHEMA_VERSION}\n" in log
    assert "migrated the store from schema 2 to 3: 8 servers;" in log
    assert log.count("migrating the store") == 1  # by serve, before any worker starts
    # The window's host ends it early through the live bridge; the operator's pause holds.
    url = f"{bridge.url}/api/heartbeat/web-window/maintenance"
    assert requests.delete(url, headers=FLEET, timeout=5).status_code == 200
    url = f"{bridge.url}/api/heartbeat/app-paused/maintenance"
    assert requests.delete(url, headers=FLEET, timeout=5).status_code == 409
