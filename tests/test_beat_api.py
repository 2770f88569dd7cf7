"""The beat endpoint through Flask's test client, on SQLite and PostgreSQL."""
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.tools import ADMIN_TOKEN, FLEET_TOKEN

AUTH = {"Authorization": f"Bearer {FLEET_TOKEN}"}


def beat(client, server_id="web-1", body=None, headers=None, content_type="application/json",
         raw=None):
    data = raw if raw is not None else (None if body is None else json.dumps(body))
    return client.post(f"/api/heartbeat/{server_id}/", data=data,
                       headers=AUTH if headers is None else headers,
                       content_type=content_type if data else None)


def samples(client):
    """{(name, frozenset(labels)): value} from the real /metrics output."""
    text = client.get("/metrics").get_data(as_text=True)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def rejected(client, reason):
    return samples(client).get(("heartbeat_rejected_total", frozenset({("reason", reason)})), 0)


def test_it_accepts_an_empty_beat_and_answers_after_commit(client, store, clock):
    response = client.post("/api/heartbeat/web-1/", headers=AUTH)
    assert response.status_code == 200
    answer = response.get_json()
    assert len(answer.pop("token")) >= 40  # the fleet token enrols: this is web-1's own
    assert answer == {"server_id": "web-1", "received_at": clock.now, "interval": 30.0}
    assert store.get("web-1").last_seen == clock.now
    assert store.get("web-1").beats_total == 1


def test_the_trailing_slash_is_optional(client, store):
    assert client.post("/api/heartbeat/web-1", headers=AUTH).status_code == 200
    assert client.post("/api/heartbeat/web-1/", headers=AUTH).status_code == 200
    assert store.get("web-1").beats_total == 2


def test_it_records_every_documented_field(client, store, clock):
    body = {"interval": 15, "seq": 7, "boot_time": 1_799_990_000, "sent_at": clock.now + 2.5,
            "hostname": "web-1.example.org", "agent_version": "0.1.0", "unknown": [1, 2]}
    response = beat(client, body=body)
    assert response.status_code == 200
    assert response.get_json()["interval"] == 15.0
    server = store.get("web-1")
    assert (server.declared_interval, server.seq, server.boot_time, server.hostname,
            server.agent_version) == (15.0, 7, 1_799_990_000.0, "web-1.example.org", "0.1.0")
    assert server.clock_skew == pytest.approx(2.5)


def test_the_bridge_clock_decides_the_received_time(client, store, clock):
    beat(client, body={"sent_at": clock.now - 7200})  # the agent's clock is two hours behind
    server = store.get("web-1")
    assert server.last_seen == clock.now
    assert server.clock_skew == pytest.approx(-7200)


LONG_ID = "a" * 129
REJECTIONS = [
    # id, server_id, kwargs for beat(), status, reason
    ("bad-id-start", "-web", {}, 400, "invalid_server_id"),
    ("bad-id-char", "web%201", {}, 400, "invalid_server_id"),
    ("bad-id-slash", "web/1", {}, 400, "invalid_server_id"),
    ("bad-id-long", LONG_ID, {}, 400, "invalid_server_id"),
    ("invalid-json", "web-1", {"raw": "{not json"}, 400, "invalid_json"),
    ("json-not-object", "web-1", {"raw": "[1, 2]"}, 400, "invalid_json"),
    ("wrong-content-type", "web-1", {"raw": "interval=30",
                                     "content_type": "application/x-www-form-urlencoded"},
     415, "unsupported_media_type"),
    ("interval-string", "web-1", {"body": {"interval": "30"}}, 422, "invalid_field"),
    ("interval-zero", "web-1", {"body": {"interval": 0}}, 422, "invalid_field"),
    ("interval-huge", "web-1", {"body": {"interval": 86401}}, 422, "invalid_field"),
    ("interval-bool", "web-1", {"body": {"interval": True}}, 422, "invalid_field"),
    ("seq-negative", "web-1", {"body": {"seq": -1}}, 422, "invalid_field"),
    ("seq-float", "web-1", {"body": {"seq": 1.5}}, 422, "invalid_field"),
    ("boot-time-string", "web-1", {"body": {"boot_time": "yesterday"}}, 422, "invalid_field"),
    ("sent-at-negative", "web-1", {"body": {"sent_at": -5}}, 422, "invalid_field"),
    ("hostname-number", "web-1", {"body": {"hostname": 5}}, 422, "invalid_field"),
    ("hostname-control", "web-1", {"body": {"hostname": "a\nb"}}, 422, "invalid_field"),
    ("hostname-long", "web-1", {"body": {"hostname": "h" * 256}}, 422, "invalid_field"),
    ("version-long", "web-1", {"body": {"agent_version": "v" * 65}}, 422, "invalid_field"),
    ("body-too-large", "web-1", {"raw": json.dumps({"pad": "x" * 5000})}, 413,
     "body_too_large"),
    ("no-token", "web-1", {"headers": {}}, 401, "missing_token"),
    ("wrong-token", "web-1", {"headers": {"Authorization": "Bearer wrong-token-123"}}, 401,
     "invalid_token"),
    ("admin-token-is-not-a-beat-token", "web-1",
     {"headers": {"Authorization": f"Bearer {ADMIN_TOKEN}"}}, 401, "invalid_token"),
    ("basic-auth", "web-1", {"headers": {"Authorization": "Basic dXNlcjpwYXNz"}}, 401,
     "missing_token"),
]


@pytest.mark.parametrize("server_id,kwargs,status,reason",
                         [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
def test_bad_input_gets_a_precise_4xx_and_changes_nothing(client, store, server_id, kwargs,
                                                          status, reason):
    before = store.snapshot().servers
    response = beat(client, server_id, **kwargs)
    assert response.status_code == status
    assert response.is_json
    assert response.get_json()["error"] == reason
    assert response.get_json()["message"]
    assert store.snapshot().servers == before
    assert rejected(client, reason) == 1


def test_a_401_names_the_bearer_scheme(client):
    response = beat(client, headers={})
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_unknown_fields_are_ignored(client, store):
    assert beat(client, body={"future_field": {"nested": True}}).status_code == 200
    assert store.get("web-1").beats_total == 1


def test_an_empty_body_with_any_content_type_is_a_beat(client, store):
    response = client.post("/api/heartbeat/web-1/", headers=dict(
        AUTH, **{"Content-Type": "application/x-www-form-urlencoded"}))
    assert response.status_code == 200


def test_other_methods_get_405_json(client):
    response = client.get("/api/heartbeat/web-1/", headers=AUTH)
    assert response.status_code == 405
    assert response.get_json()["error"] == "method_not_allowed"


def test_unknown_paths_get_404_json(client):
    response = client.get("/api/nothing-here")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


# -- auth matrix -----------------------------------------------------------------------------
@pytest.fixture
def own_token(client):
    """web-1 registered with its own token through the admin API."""
    response = client.post("/api/servers", json={"server_id": "web-1", "token": True},
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 201
    client.post("/api/servers", json={"server_id": "web-2"},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    return response.get_json()["token"]


@pytest.mark.parametrize("server_id,token_kind,status", [
    ("web-1", "fleet", 401),     # web-1 has its own token: the fleet token only enrols
    ("web-2", "fleet", 200),
    ("new-server", "fleet", 200),
    ("web-1", "own", 200),
    ("web-2", "own", 401),       # web-1's token for another registered server
    ("new-server", "own", 401),  # web-1's token for an unknown server
    ("web-1", "none", 401),
    ("web-1", "wrong", 401),
])
def test_auth_matrix(client, store, own_token, server_id, token_kind, status):
    tokens = {"fleet": FLEET_TOKEN, "own": own_token, "wrong": own_token[:-1] + "x"}
    headers = {"Authorization": f"Bearer {tokens[token_kind]}"} if token_kind in tokens else {}
    before = {s.server_id: s.beats_total for s in store.list()}
    response = beat(client, server_id, headers=headers)
    assert response.status_code == status
    after = {s.server_id: s.beats_total for s in store.list()}
    if status == 200:
        assert after[server_id] == before.get(server_id, 0) + 1
    else:
        assert after == before


def test_a_server_token_still_works_when_the_fleet_token_is_unset(app_factory, store):
    client = app_factory(fleet_tokens=()).test_client()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    token = client.post("/api/servers", json={"server_id": "db-1", "token": True},
                        headers=admin).get_json()["token"]
    assert beat(client, "db-1", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert beat(client, "db-1").status_code == 401  # the old fleet token is gone


def test_unauthenticated_mode_must_be_explicit_and_then_accepts_anyone(app_factory, store):
    locked = app_factory(fleet_tokens=()).test_client()
    assert beat(locked, headers={}).status_code == 401
    open_bridge = app_factory(fleet_tokens=(), allow_unauthenticated=True).test_client()
    assert beat(open_bridge, headers={}).status_code == 200
    assert store.get("web-1").beats_total == 1


def test_several_fleet_tokens_are_accepted_during_a_rotation(app_factory, store):
    client = app_factory(fleet_tokens=("old-token-123", "new-token-456")).test_client()
    for token in ("old-token-123", "new-token-456"):
        assert beat(client, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert store.get("web-1").beats_total == 2


# -- registration, caps and rate limits ------------------------------------------------------
def test_unknown_servers_are_refused_when_auto_registration_is_off(app_factory, store):
    client = app_factory(auto_register=False).test_client()
    response = beat(client, "stranger")
    assert response.status_code == 404
    assert response.get_json()["error"] == "unknown_server"
    assert store.list() == []


def test_registered_servers_may_beat_when_auto_registration_is_off(app_factory, store):
    store.register("known")
    client = app_factory(auto_register=False).test_client()
    assert beat(client, "known").status_code == 200


def test_the_server_cap_holds(app_factory, store):
    client = app_factory(max_servers=3).test_client()
    for i in range(3):
        assert beat(client, f"s{i}").status_code == 200
    response = beat(client, "s3")
    assert response.status_code == 403
    assert response.get_json()["error"] == "server_limit"
    assert beat(client, "s0").status_code == 200  # known servers still beat
    assert len(store.list()) == 3
    assert rejected(client, "server_limit") == 1


def test_a_server_beating_far_faster_than_its_interval_is_rate_limited(client, store, clock):
    codes = [beat(client, body={"interval": 30}).status_code for _ in range(15)]
    assert codes[:10] == [200] * 10
    assert set(codes[10:]) == {429}
    assert store.get("web-1").beats_total == 10  # a 429 writes nothing
    response = beat(client, body={"interval": 30})
    assert int(response.headers["Retry-After"]) >= 1
    clock.advance(30)
    assert beat(client, body={"interval": 30}).status_code == 200


def test_beating_at_the_promised_interval_is_never_limited(client, clock):
    for _ in range(50):
        assert beat(client, body={"interval": 10}).status_code == 200
        clock.advance(10)


def test_the_rate_limit_can_be_turned_off(app_factory):
    client = app_factory(rate_limit_burst=0).test_client()
    assert all(beat(client).status_code == 200 for _ in range(30))
