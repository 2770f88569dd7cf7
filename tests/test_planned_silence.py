"""Goodbye beats, maintenance from the host, retirement, and their metrics (both backends)."""
import sqlite3
import subprocess
import sys

import pytest

from bridge.store import SCHEMA_VERSION, open_store
from bridge.store.sql import SCHEMA
from tests.tools import ADMIN_TOKEN, FLEET_TOKEN, ROOT, sample_map, value

AUTH = {"Authorization": f"Bearer {FLEET_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def app(app_factory):
    """The full metric set: these tests read the goodbye, pause and retired flags
    (test_metrics.py covers the lean set's heartbeat_excused_until_seconds)."""
    return app_factory(metric_set="full")


def metrics(client):
    return sample_map(client.get("/metrics").get_data(as_text=True))


def say(client, server_id, action, json=None, method="post", headers=AUTH):
    return getattr(client, method)(f"/api/heartbeat/{server_id}/{action}", json=json,
                                   headers=headers)


def test_a_goodbye_promises_a_return_within_15_minutes_by_default(client, clock, store):
    client.post("/api/heartbeat/web-1/", headers=AUTH)
    clock.advance(10)
    response = say(client, "web-1", "goodbye")
    assert response.status_code == 200
    answer = response.get_json()
    assert answer.pop("token")  # web-1 has not used a token of its own yet
    assert answer == {"server_id": "web-1", "expected_back": clock.now + 900, "retired": False}
    server = store.get("web-1")
    assert (server.last_seen, server.beats_total) == (clock.now, 1)  # alive, not a beat
    assert value(metrics(client), "heartbeat_expected_back_seconds",
                 server_id="web-1") == clock.now + 900


def test_the_next_beat_ends_the_goodbye(client, clock):
    client.post("/api/heartbeat/web-1/", headers=AUTH)
    say(client, "web-1", "goodbye", {"back_within": "30m"})
    assert value(metrics(client), "heartbeat_expected_back_seconds",
                 server_id="web-1") == clock.now + 1800
    clock.advance(60)
    client.post("/api/heartbeat/web-1/", headers=AUTH)
    assert value(metrics(client), "heartbeat_expected_back_seconds", server_id="web-1") == 0


def test_the_first_beat_after_a_goodbye_and_a_quick_reboot_is_accepted(client, clock):
    for _ in range(3):
        assert client.post("/api/heartbeat/web-1/", headers=AUTH,
                           json={"interval": 60}).status_code == 200
        clock.advance(60)
    assert say(client, "web-1", "goodbye", {"back_within": 120}).status_code == 200
    clock.advance(5)  # a quick reboot
    assert client.post("/api/heartbeat/web-1/", headers=AUTH,
                       json={"interval": 60}).status_code == 200


def test_a_goodbye_can_retire_the_server_and_a_beat_brings_it_back(client, store):
    token = client.post("/api/heartbeat/old-1/", headers=AUTH).get_json()["token"]
    own = {"Authorization": f"Bearer {token}"}
    response = say(client, "old-1", "goodbye", {"retire": True}, headers=own)
    assert response.get_json()["retired"] is True
    assert value(metrics(client), "heartbeat_retired", server_id="old-1") == 1
    client.post("/api/heartbeat/old-1/", headers=own)
    assert value(metrics(client), "heartbeat_retired", server_id="old-1") == 0


@pytest.mark.parametrize("settings", [{}, {"enrolment": False}])
def test_the_fleet_token_cannot_retire_and_changes_nothing(app_factory, store, settings):
    client = app_factory(**settings).test_client()
    client.post("/api/servers", headers=ADMIN, json={"server_id": "db-1", "interval": 60,
                                                     "labels": {"team": "db"}})
    client.post("/api/heartbeat/web-1/", headers=AUTH)
    before = [store.get("db-1"), store.get("web-1")]
    for server_id in ("db-1", "web-1"):  # registered without a token; pending
        response = say(client, server_id, "goodbye", {"retire": True})
        assert response.status_code == 403
        assert response.get_json()["error"] == "own_token_required"
    assert [store.get("db-1"), store.get("web-1")] == before


@pytest.mark.parametrize("server_id,body,headers,status,reason", [
    ("web-1", {"back_within": "soon"}, AUTH, 422, "invalid_field"),
    ("web-1", {"back_within": "8d"}, AUTH, 422, "invalid_field"),
    ("web-1", {"back_within": -5}, AUTH, 422, "invalid_field"),
    ("web-1", {"retire": "yes"}, AUTH, 422, "invalid_field"),
    ("ghost", {}, AUTH, 404, "unknown_server"),
    ("web-1", {}, {}, 401, "missing_token"),
    ("web-1", {}, {"Authorization": "Bearer wrong-token-1"}, 401, "invalid_token"),
])
def test_bad_goodbyes_are_refused_and_change_nothing(client, store, server_id, body, headers,
                                                     status, reason):
    client.post("/api/heartbeat/web-1/", headers=AUTH)
    before = store.snapshot().servers
    response = say(client, server_id, "goodbye", body, headers=headers)
    assert (response.status_code, response.get_json()["error"]) == (status, reason)
    assert store.snapshot().servers == before


def test_maintenance_from_the_host_has_an_end_and_a_reason(client, clock, store):
    client.post("/api/heartbeat/db-1/", headers=AUTH)
    response = say(client, "db-1", "maintenance", {"for": "2h", "reason": "kernel 6.12"})
    assert response.status_code == 200
    answer = response.get_json()
    assert answer.pop("token")
    assert answer == {"server_id": "db-1", "paused_until": clock.now + 7200,
                      "reason": "kernel 6.12"}
    m = metrics(client)
    assert value(m, "heartbeat_paused", server_id="db-1") == 1
    assert value(m, "heartbeat_maintenance_until_seconds", server_id="db-1") == clock.now + 7200
    assert value(m, "heartbeat_maintenance_info", server_id="db-1", reason="kernel 6.12") == 1
    clock.advance(7201)  # the window closes by itself
    m = metrics(client)
    assert value(m, "heartbeat_paused", server_id="db-1") == 0
    assert not any(name == "heartbeat_maintenance_info" for name, _ in m)


def test_maintenance_from_the_host_can_end_early(client, clock, store):
    client.post("/api/heartbeat/db-1/", headers=AUTH)
    say(client, "db-1", "maintenance", {"for": 3600})
    assert say(client, "db-1", "maintenance", method="delete").status_code == 200
    assert not store.get("db-1").is_paused(clock.now)


@pytest.mark.parametrize("body", [{}, {"reason": "no end"}, {"for": "forever"},
                                  {"until": 5}])
def test_maintenance_from_the_host_needs_a_valid_end(client, store, body):
    client.post("/api/heartbeat/db-1/", headers=AUTH)
    response = say(client, "db-1", "maintenance", body)
    assert response.status_code == 422
    assert not store.get("db-1").paused


def test_actions_answer_405_to_other_methods(client):
    response = say(client, "web-1", "goodbye", method="get")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert say(client, "web-1", "maintenance", method="put").headers["Allow"] == "DELETE, POST"


def test_an_unknown_action_is_an_invalid_server_id(client):
    assert say(client, "web-1", "reboot").get_json()["error"] == "invalid_server_id"


def test_retire_and_unretire_through_the_admin_api(client, store):
    client.post("/api/servers", headers=ADMIN, json={"server_id": "db-1"})
    body = client.post("/api/servers/db-1/retire", headers=ADMIN).get_json()["server"]
    assert body["retired"] is True
    body = client.post("/api/servers/db-1/unretire", headers=ADMIN).get_json()["server"]
    assert body["retired"] is False
    assert client.post("/api/servers/ghost/retire", headers=ADMIN).status_code == 404


def test_silent_servers_are_retired_then_forgotten_when_configured(app_factory, store, clock):
    client = app_factory(auto_retire_after_days=3, retired_retention_days=2,
                         metric_set="full").test_client()
    client.post("/api/heartbeat/gone-1/", headers=AUTH)
    client.post("/api/heartbeat/alive-1/", headers=AUTH)
    clock.advance(3 * 86400 + 1)
    client.post("/api/heartbeat/alive-1/", headers=AUTH)
    m = metrics(client)
    assert value(m, "heartbeat_retired", server_id="gone-1") == 1
    assert value(m, "heartbeat_retired", server_id="alive-1") == 0
    clock.advance(2 * 86400 + 1)  # housekeeping runs again: a minute has passed
    assert 'server_id="gone-1"' not in client.get("/metrics").get_data(as_text=True)
    assert [s.server_id for s in store.list()] == ["alive-1"]


def test_nothing_is_retired_or_forgotten_by_default(client, store, clock):
    client.post("/api/heartbeat/quiet-1/", headers=AUTH)
    clock.advance(365 * 86400)
    m = metrics(client)
    assert value(m, "heartbeat_retired", server_id="quiet-1") == 0


@pytest.mark.live
def test_cli_retire_and_unretire(tmp_path):
    db = f"sqlite:///{tmp_path / 'cli.db'}"

    def run(*args):
        return subprocess.run([sys.executable, "-m", "bridge", "--database-url", db, *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert run("servers", "register", "db-1").returncode == 0
    assert run("servers", "retire", "db-1").returncode == 0
    assert open_store(db).get("db-1").retired_at is not None
    assert run("servers", "unretire", "db-1").returncode == 0
    assert open_store(db).get("db-1").retired_at is None
    assert run("servers", "retire", "ghost").returncode == 1


def test_a_version_1_database_is_upgraded_in_place(tmp_path):
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    for statement in SCHEMA:
        conn.execute(statement)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO servers (server_id, created_at, last_seen, beats_total) "
                 "VALUES ('old-1', 1.0, 2.0, 3)")
    conn.commit()
    conn.close()
    store = open_store(f"sqlite:///{path}")
    assert store.schema_version() == SCHEMA_VERSION
    server = store.get("old-1")
    assert (server.last_seen, server.beats_total, server.expected_back, server.retired_at) == (
        2.0, 3, None, None)
