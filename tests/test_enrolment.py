"""Enrolment and a host's bounded word, through Flask's test client on SQLite and PostgreSQL.

The fleet token sits on every host; each test here asks what one host holding it can do to
another server, and sees it refused. The same attacks against a live bridge under gunicorn
are in test_enrolment_live.py.
"""
import math

import pytest

from tests.tools import ADMIN_TOKEN, FLEET_TOKEN

FLEET = {"Authorization": f"Bearer {FLEET_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def post(client, server_id, action="", headers=FLEET, json=None, method="post", data=None):
    path = f"/api/heartbeat/{server_id}/{action}"
    if data is not None:
        return getattr(client, method)(path, data=data, headers=headers,
                                       content_type="application/json")
    return getattr(client, method)(path, json=json, headers=headers)


def enrolled(client, server_id):
    """Beat with the fleet token, then confirm the issued token by using it; the token."""
    token = post(client, server_id).get_json()["token"]
    assert post(client, server_id, headers=bearer(token)).status_code == 200
    return token


def rejected(client, reason):
    text = client.get("/metrics").get_data(as_text=True)
    line = f'heartbeat_rejected_total{{reason="{reason}"}} '
    return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(line)), 0.0)


# -- enrolment -------------------------------------------------------------------------------
def test_a_fleet_token_beat_is_answered_with_the_servers_own_token(client, store):
    answer = post(client, "web-1").get_json()
    assert set(answer) == {"server_id", "received_at", "interval", "token"}
    assert answer["token"] != FLEET_TOKEN and len(answer["token"]) >= 40
    assert store.get("web-1").enrolment == "pending"


def test_once_its_token_is_used_the_fleet_token_no_longer_speaks_for_the_server(client, store):
    token = enrolled(client, "web-1")
    assert store.get("web-1").enrolment == "enrolled"
    before = store.get("web-1")
    for action, method, body in (("", "post", {}), ("goodbye", "post", {"retire": True}),
                                 ("maintenance", "post", {"for": "1h"}),
                                 ("maintenance", "delete", None)):
        response = post(client, "web-1", action, method=method, json=body)
        assert response.status_code == 401, action
        assert response.get_json()["error"] == "enrolled"
        assert "token" not in response.get_json()
    assert store.get("web-1") == before  # nothing changed
    assert rejected(client, "enrolled") == 4
    answer = post(client, "web-1", headers=bearer(token)).get_json()
    assert "token" not in answer  # its own token needs no new one


def test_a_lost_enrolment_answer_never_locks_the_host_out(client, store):
    first = post(client, "web-1").get_json()["token"]  # the answer is lost on the way
    second = post(client, "web-1").get_json()["token"]
    assert first != second
    assert post(client, "web-1", headers=bearer(second)).status_code == 200
    assert post(client, "web-1", headers=bearer(first)).status_code == 401  # second was used
    assert store.get("web-1").beats_total == 3


def test_the_first_issued_token_used_wins_and_ends_every_other(client, clock, store):
    first = post(client, "web-1").get_json()["token"]
    second = post(client, "web-1").get_json()["token"]  # a fleet-token request races it
    assert post(client, "web-1", headers=bearer(first)).status_code == 200
    assert store.get("web-1").enrolment == "enrolled"
    assert post(client, "web-1", headers=bearer(second)).status_code == 401
    assert post(client, "web-1").get_json()["error"] == "enrolled"


def test_only_the_last_two_issued_tokens_are_pending_and_not_for_ever(client, clock, store):
    first = post(client, "web-1").get_json()["token"]
    post(client, "web-1")
    third = post(client, "web-1").get_json()["token"]
    assert post(client, "web-1", headers=bearer(first)).status_code == 401
    fourth = post(client, "web-1").get_json()["token"]
    clock.advance(3601)  # the longest interval a host may declare (3600 s by default)
    assert post(client, "web-1", headers=bearer(third)).status_code == 401
    assert post(client, "web-1", headers=bearer(fourth)).status_code == 200


def test_a_client_that_never_adopts_its_token_keeps_working(client, clock, store):
    for _ in range(5):  # curl in a cron job
        assert post(client, "cron-1").status_code == 200
        clock.advance(30)
    assert store.get("cron-1").beats_total == 5
    assert store.get("cron-1").enrolment == "pending"


def test_a_server_registered_with_a_token_is_enrolled_already(client):
    token = client.post("/api/servers", headers=ADMIN,
                        json={"server_id": "db-1", "token": True}).get_json()["token"]
    assert post(client, "db-1").get_json()["error"] == "enrolled"
    assert post(client, "db-1", headers=bearer(token)).status_code == 200


def test_revoking_a_token_reopens_enrolment(client, store):
    token = enrolled(client, "web-1")
    listed = client.get("/api/servers", headers=ADMIN).get_json()["servers"]
    assert [s["enrolment"] for s in listed] == ["enrolled"]
    assert client.delete("/api/servers/web-1/token", headers=ADMIN).status_code == 200
    assert store.get("web-1").enrolment == "open"
    assert post(client, "web-1", headers=bearer(token)).status_code == 401
    fresh = post(client, "web-1").get_json()["token"]
    assert post(client, "web-1", headers=bearer(fresh)).status_code == 200
    assert store.get("web-1").enrolment == "enrolled"


def test_a_rotation_keeps_the_previous_token_for_its_grace_period(client, clock):
    old = enrolled(client, "web-1")
    new = client.post("/api/servers/web-1/token", headers=ADMIN,
                      json={"keep_previous_for": "5m"}).get_json()["token"]
    clock.advance(30)
    assert post(client, "web-1", headers=bearer(old)).status_code == 200
    clock.advance(30)
    assert post(client, "web-1", headers=bearer(new)).status_code == 200
    assert post(client, "web-1").get_json()["error"] == "enrolled"  # an operator's token
    clock.advance(301)
    assert post(client, "web-1", headers=bearer(old)).status_code == 401
    assert post(client, "web-1", headers=bearer(new)).status_code == 200


def test_a_servers_token_speaks_for_that_server_only(client):
    token = enrolled(client, "web-1")
    post(client, "web-2")
    for action, method, body in (("", "post", {}), ("goodbye", "post", {}),
                                 ("maintenance", "post", {"for": "1h"}),
                                 ("maintenance", "delete", None)):
        response = post(client, "web-2", action, headers=bearer(token), method=method, json=body)
        assert (response.status_code, response.get_json()["error"]) == (401, "invalid_token")
    assert client.get("/api/servers", headers=bearer(token)).status_code == 401


def test_enrolment_off_lets_the_fleet_token_speak_for_every_server(app_factory, store):
    client = app_factory(enrolment=False).test_client()
    answer = post(client, "web-1").get_json()
    assert "token" not in answer
    client.post("/api/servers/web-1/token", headers=ADMIN)  # even with a token of its own
    assert post(client, "web-1").status_code == 200
    assert store.get("web-1").beats_total == 2


# -- a host's word is bounded -----------------------------------------------------------------
@pytest.mark.parametrize("raw", [
    '{"until": NaN}', '{"until": Infinity}', '{"until": -Infinity}', '{"until": 1e300}',
    '{"until": 1e400}', '{"until": 9223372036854775808}', '{"until": 1' + "0" * 400 + '}',
    '{"for": NaN}', '{"for": 1e400}', '{"for": "4d"}', '{"for": 260000}',
    '{"for": 1' + "0" * 400 + '}', '{"until": TEN_YEARS}', '{"until": "tomorrow"}',
])
def test_a_hosts_maintenance_must_end_within_the_bridges_bound(client, clock, store, raw):
    post(client, "web-1")
    before = store.get("web-1")
    raw = raw.replace("TEN_YEARS", str(clock.now + 10 * 365 * 86400))
    response = post(client, "web-1", "maintenance", data=raw)
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"] == "invalid_field"
    assert store.get("web-1") == before


@pytest.mark.parametrize("body", [{"for": "72h"}, {"for": 3600}, {"until": "NOW_PLUS_71H"}])
def test_a_hosts_maintenance_within_the_bound_is_accepted(client, clock, body):
    post(client, "web-1")
    if body.get("until") == "NOW_PLUS_71H":
        body = {"until": clock.now + 71 * 3600}
    response = post(client, "web-1", "maintenance", json=body)
    assert response.status_code == 200
    assert response.get_json()["paused_until"] <= clock.now + 72 * 3600


def test_the_bound_on_a_hosts_silence_is_a_setting(app_factory, clock):
    client = app_factory(max_host_silence_hours=2.0).test_client()
    post(client, "web-1")
    assert post(client, "web-1", "maintenance", json={"for": "3h"}).status_code == 422
    assert post(client, "web-1", "goodbye", json={"back_within": "3h"}).status_code == 422
    message = post(client, "web-1", "goodbye", json={"back_within": 1e400}).get_json()
    assert message["message"] == "back_within must be more than 0 s and at most 2 h"
    assert post(client, "web-1", "maintenance", json={"for": "2h"}).status_code == 200


@pytest.mark.parametrize("raw", ['{"back_within": NaN}', '{"back_within": Infinity}',
                                 '{"back_within": "73h"}', '{"back_within": 1e300}'])
def test_a_goodbye_must_promise_a_return_within_the_bound(client, store, raw):
    post(client, "web-1")
    before = store.get("web-1")
    assert post(client, "web-1", "goodbye", data=raw).status_code == 422
    assert store.get("web-1") == before


def test_an_agent_cannot_declare_an_interval_past_the_cap(client, store):
    post(client, "web-1", json={"interval": 60})
    before = store.get("web-1")
    response = post(client, "web-1", json={"interval": 86400})
    assert response.status_code == 422
    assert "3600" in response.get_json()["message"]
    assert store.get("web-1") == before
    assert post(client, "web-1", json={"interval": 3600}).status_code == 200


def test_an_operator_may_pin_a_longer_interval_than_an_agent_may_declare(client, store):
    post(client, "batch-1")
    client.patch("/api/servers/batch-1", headers=ADMIN, json={"interval": 7200})
    assert post(client, "batch-1", json={"interval": 7200}).status_code == 200
    assert store.get("batch-1").interval(30) == 7200


def test_the_cap_applies_to_what_a_host_declares_while_pinned_too(client, store):
    post(client, "batch-1", json={"interval": 600})
    client.patch("/api/servers/batch-1", headers=ADMIN, json={"interval": 7200})
    assert post(client, "batch-1", json={"interval": 86400}).status_code == 200  # counted
    assert store.get("batch-1").declared_interval == 600  # the declaration is not kept
    client.patch("/api/servers/batch-1", headers=ADMIN, json={"interval": None})
    assert store.get("batch-1").interval(30) == 600


@pytest.mark.parametrize("raw", ['{"interval": 1' + "0" * 400 + '}', '{"interval": 1e400}',
                                 '{"interval": NaN}', '{"seq": 1e400}', '{"sent_at": 1e400}',
                                 '{"boot_time": 1' + "0" * 400 + '}'])
def test_numbers_a_float_cannot_hold_are_refused_on_the_beat(client, raw):
    response = post(client, "web-1", data=raw)
    assert response.status_code == 422, response.data


# -- the operator outranks every host ----------------------------------------------------------
def test_a_host_cannot_end_or_shorten_an_operators_pause(client, store):
    token = enrolled(client, "db-1")
    client.post("/api/servers/db-1/pause", headers=ADMIN, json={"reason": "migration"})
    own = bearer(token)
    for method, body in (("delete", None), ("post", {"for": "5m"})):
        response = post(client, "db-1", "maintenance", headers=own, method=method, json=body)
        assert (response.status_code, response.get_json()["error"]) == (409, "operator_pause")
    server = store.get("db-1")
    assert (server.paused, server.paused_until, server.paused_by) == (True, None, "operator")
    assert post(client, "db-1", headers=own).status_code == 200  # its beats still count
    assert store.get("db-1").beats_total == 3  # two to enrol, one here


def test_a_host_ends_its_own_maintenance_and_then_an_operators_pause_holds(client, clock, store):
    token = enrolled(client, "db-1")
    own = bearer(token)
    assert post(client, "db-1", "maintenance", headers=own, json={"for": "1h"}).status_code == 200
    assert store.get("db-1").paused_by == "host"
    assert post(client, "db-1", "maintenance", headers=own, method="delete").status_code == 200
    assert not store.get("db-1").is_paused(clock.now)
    client.post("/api/servers/db-1/pause", headers=ADMIN, json={"for": "10m"})
    clock.advance(601)  # the operator's pause ended by itself: the host may pause again
    assert post(client, "db-1", "maintenance", headers=own, json={"for": "1h"}).status_code == 200


def test_a_host_cannot_undo_an_operators_retirement(client, store):
    token = enrolled(client, "old-1")
    client.post("/api/servers/old-1/retire", headers=ADMIN)
    own = bearer(token)
    assert post(client, "old-1", headers=own).status_code == 200
    answer = post(client, "old-1", "goodbye", headers=own).get_json()
    assert answer["retired"] is True
    server = store.get("old-1")
    assert (server.retired_by, server.beats_total) == ("operator", 3)
    client.post("/api/servers/old-1/unretire", headers=ADMIN)
    assert store.get("old-1").retired_at is None


# -- one rate limit ---------------------------------------------------------------------------
def test_beat_goodbye_and_maintenance_share_one_rate_limit(app_factory, store):
    client = app_factory(rate_limit_burst=4).test_client()
    token = enrolled(client, "web-1")  # two beats
    own = bearer(token)
    codes = []
    for _ in range(5):  # alternating used to reset the limit at every goodbye
        codes.append(post(client, "web-1", "goodbye", headers=own).status_code)
        codes.append(post(client, "web-1", headers=own).status_code)
    assert codes[:2] == [200, 200] and set(codes[2:]) == {429}
    assert post(client, "web-1", "maintenance", headers=own,
                json={"for": "1h"}).status_code == 429
    assert post(client, "web-1", "maintenance", headers=own, method="delete").status_code == 429
    assert store.get("web-1").beats_total == 3


def test_strict_json_everywhere_even_for_stored_odd_values(client, store):
    post(client, "web-1")
    store.pause("web-1", until=math.inf)  # as an older bridge could have stored it
    body = client.get("/api/servers/web-1", headers=ADMIN).get_data(as_text=True)
    assert "Infinity" not in body and "NaN" not in body
    assert client.get("/api/servers/web-1", headers=ADMIN).get_json()["server"][
        "paused_until"] is None
