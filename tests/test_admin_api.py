"""The admin API under /api/servers, on SQLite and PostgreSQL."""
import pytest

from tests.tools import ADMIN_TOKEN, FLEET_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_register_list_show_and_remove(client, store):
    response = client.post("/api/servers", headers=ADMIN, json={
        "server_id": "db-1", "interval": 60, "labels": {"team": "db"}})
    assert response.status_code == 201
    server = response.get_json()["server"]
    assert (server["server_id"], server["interval"], server["labels"], server["last_seen"]) == (
        "db-1", 60.0, {"team": "db"}, None)
    assert "token" not in response.get_json()
    listed = client.get("/api/servers", headers=ADMIN).get_json()["servers"]
    assert [s["server_id"] for s in listed] == ["db-1"]
    assert client.get("/api/servers/db-1", headers=ADMIN).get_json()["server"]["labels"] == {
        "team": "db"}
    assert client.delete("/api/servers/db-1", headers=ADMIN).status_code == 204
    assert store.list() == []
    assert client.get("/api/servers/db-1", headers=ADMIN).status_code == 404


def test_registering_with_a_token_returns_it_once_and_stores_only_its_hash(client, store):
    response = client.post("/api/servers", headers=ADMIN, json={"server_id": "db-1",
                                                                "token": True})
    token = response.get_json()["token"]
    assert len(token) >= 32
    assert response.get_json()["server"]["has_token"] is True
    assert token not in str(store.export_rows())
    assert "token" not in client.get("/api/servers/db-1", headers=ADMIN).get_json()


def test_relabel_and_set_interval(client, store):
    client.post("/api/servers", headers=ADMIN, json={"server_id": "db-1", "interval": 60})
    response = client.patch("/api/servers/db-1", headers=ADMIN,
                            json={"labels": {"team": "web", "env": "prod"}, "interval": None})
    assert response.status_code == 200
    server = store.get("db-1")
    assert server.labels == {"env": "prod", "team": "web"}
    assert server.registered_interval is None


def test_pause_for_a_duration_until_a_time_and_resume(client, store, clock):
    client.post("/api/servers", headers=ADMIN, json={"server_id": "db-1"})
    body = client.post("/api/servers/db-1/pause", headers=ADMIN,
                       json={"for": "90m", "reason": "upgrade"}).get_json()["server"]
    assert (body["paused"], body["paused_until"], body["pause_reason"]) == (
        True, clock.now + 5400, "upgrade")
    body = client.post("/api/servers/db-1/pause", headers=ADMIN,
                       json={"until": clock.now + 60}).get_json()["server"]
    assert body["paused_until"] == clock.now + 60
    body = client.post("/api/servers/db-1/pause", headers=ADMIN).get_json()["server"]
    assert (body["paused"], body["paused_until"]) == (True, None)
    assert client.post("/api/servers/db-1/resume", headers=ADMIN).get_json()["server"][
        "paused"] is False
    assert not store.get("db-1").is_paused(clock.now)


def test_token_rotation_with_a_grace_period(client, clock):
    client.post("/api/servers", headers=ADMIN, json={"server_id": "db-1", "token": True})
    old = client.post("/api/servers/db-1/token", headers=ADMIN).get_json()["token"]
    new = client.post("/api/servers/db-1/token", headers=ADMIN,
                      json={"keep_previous_for": "10m"}).get_json()["token"]

    def beat(token):
        return client.post("/api/heartbeat/db-1/",
                           headers={"Authorization": f"Bearer {token}"}).status_code
    assert (beat(old), beat(new)) == (200, 200)
    clock.advance(601)
    assert (beat(old), beat(new)) == (401, 200)
    assert client.delete("/api/servers/db-1/token", headers=ADMIN).status_code == 200
    assert beat(new) == 401


@pytest.mark.parametrize("method,path,body,status,reason", [
    ("post", "/api/servers", {"server_id": "-bad"}, 400, "invalid_server_id"),
    ("post", "/api/servers", {}, 400, "invalid_server_id"),
    ("post", "/api/servers", {"server_id": "a", "interval": 0}, 422, "invalid_field"),
    ("post", "/api/servers", {"server_id": "a", "labels": {"job": "x"}}, 422, "invalid_field"),
    ("post", "/api/servers", {"server_id": "a", "labels": {"__x": "y"}}, 422, "invalid_field"),
    ("post", "/api/servers", {"server_id": "a", "labels": {"1bad": "y"}}, 422, "invalid_field"),
    ("post", "/api/servers", {"server_id": "a", "labels": {"ok": 5}}, 422, "invalid_field"),
    ("post", "/api/servers", {"server_id": "a", "labels": ["x"]}, 422, "invalid_field"),
    ("post", "/api/servers", {"server_id": "a",
                              "labels": {f"l{i}": "v" for i in range(17)}}, 422,
     "invalid_field"),
    ("post", "/api/servers", {"server_id": "known"}, 409, "server_exists"),
    ("patch", "/api/servers/ghost", {"labels": {}}, 404, "unknown_server"),
    ("patch", "/api/servers/ghost", {"labels": {"instance": "x"}}, 404, "unknown_server"),
    ("patch", "/api/servers/known", {"labels": {}, "interval": 0}, 422, "invalid_field"),
    ("patch", "/api/servers/known", {"labels": {"instance": "x"}}, 422, "invalid_field"),
    ("post", "/api/servers/known/pause", {"for": "soon"}, 422, "invalid_field"),
    ("post", "/api/servers/known/pause", {"for": "1h", "until": 5}, 422, "invalid_field"),
    ("post", "/api/servers/known/pause", {"until": 5}, 422, "invalid_field"),
    ("post", "/api/servers/known/pause", {"reason": 5}, 422, "invalid_field"),
    ("post", "/api/servers/ghost/pause", {}, 404, "unknown_server"),
    ("post", "/api/servers/ghost/resume", {}, 404, "unknown_server"),
    ("delete", "/api/servers/ghost", None, 404, "unknown_server"),
    ("post", "/api/servers/ghost/token", {}, 404, "unknown_server"),
    ("post", "/api/servers/known/token", {"keep_previous_for": -1}, 422, "invalid_field"),
])
def test_bad_admin_requests_get_a_clear_4xx_and_change_nothing(client, store, method, path,
                                                                body, status, reason):
    store.register("known")
    before = store.snapshot().servers
    response = getattr(client, method)(path, headers=ADMIN, json=body)
    assert response.status_code == status
    assert response.get_json()["error"] == reason
    assert store.snapshot().servers == before


def test_a_non_json_admin_body_is_refused(client):
    response = client.post("/api/servers", headers=ADMIN, data="server_id=a",
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415
    response = client.post("/api/servers", headers=ADMIN, data="{broken",
                           content_type="application/json")
    assert response.status_code == 400


@pytest.mark.parametrize("body", ["[" * 20000, '{"labels": ' + "[" * 20000, "[1]", '"x"'])
def test_an_admin_body_that_is_not_a_json_object_is_a_400_however_deep(client, store, body):
    store.register("known")
    response = client.patch("/api/servers/known", headers=ADMIN, data=body,
                            content_type="application/json")
    assert (response.status_code, response.get_json()["error"]) == (400, "invalid_json")
    assert store.get("known").labels == {}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-admin-token"},
                                     {"Authorization": f"Bearer {FLEET_TOKEN}"}])
def test_the_admin_api_needs_the_admin_token(client, store, headers):
    response = client.post("/api/servers", headers=headers, json={"server_id": "x"})
    assert response.status_code == 401
    assert client.get("/api/servers", headers=headers).status_code == 401
    assert store.list() == []


def test_the_admin_api_is_unreachable_without_an_admin_token_set(app_factory, store):
    client = app_factory(admin_token="").test_client()
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything-at-all"}):
        response = client.post("/api/servers", headers=headers, json={"server_id": "x"})
        assert response.status_code == 404
        assert response.get_json()["error"] == "admin_disabled"
    assert store.list() == []


HUGE = "1" + "0" * 400


@pytest.mark.parametrize("method,path,raw", [
    ("post", "/api/servers", '{"server_id": "db-9", "interval": ' + HUGE + '}'),
    ("post", "/api/servers", '{"server_id": "db-9", "interval": NaN}'),
    ("patch", "/api/servers/db-1", '{"interval": ' + HUGE + '}'),
    ("patch", "/api/servers/db-1", '{"interval": 1e400}'),
    ("post", "/api/servers/db-1/pause", '{"for": ' + HUGE + '}'),
    ("post", "/api/servers/db-1/pause", '{"until": ' + HUGE + '}'),
    ("post", "/api/servers/db-1/pause", '{"until": 9223372036854775808}'),
    ("post", "/api/servers/db-1/pause", '{"until": Infinity}'),
    ("post", "/api/servers/db-1/pause", '{"until": NaN}'),
    ("post", "/api/servers/db-1/token", '{"keep_previous_for": ' + HUGE + '}'),
    ("post", "/api/servers/db-1/token", '{"keep_previous_for": 1e400}'),
])
def test_numbers_beyond_a_float_or_the_store_get_422_and_change_nothing(client, store, method,
                                                                        path, raw):
    client.post("/api/servers", headers=ADMIN, json={"server_id": "db-1"})
    before = store.snapshot().servers
    response = getattr(client, method)(path, data=raw, headers=ADMIN,
                                       content_type="application/json")
    assert (response.status_code, response.get_json()["error"]) == (422, "invalid_field")
    assert store.snapshot().servers == before
