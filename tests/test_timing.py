"""Time, both kinds: clocks that are wrong or jump, and what a token guesser can measure."""
import statistics
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.store import rate_limit
from tests.tools import ADMIN_TOKEN, FLEET_TOKEN

AUTH = {"Authorization": f"Bearer {FLEET_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HOUR = 3600.0


@pytest.fixture
def database_url(tmp_path):
    """SQLite only: these tests are about the bridge's logic and timing, not the backend."""
    return f"sqlite:///{tmp_path / 'heartbeat.db'}"


def scrape(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for s in family.samples}


def beat(client, server_id="web-1", **body):
    return client.post(f"/api/heartbeat/{server_id}/", headers=AUTH, json=body or None)


# -- a server whose clock is wrong -----------------------------------------------------------
@pytest.mark.parametrize("offset", [-6 * HOUR, +6 * HOUR])
def test_a_server_hours_off_is_judged_by_the_bridge_clock_on_metrics(client, clock, offset):
    assert beat(client, sent_at=clock.now + offset, interval=30).status_code == 200
    samples = scrape(client)
    key = (("server_id", "web-1"),)
    assert samples[("heartbeat_last_seen_seconds", key)] == clock.now
    assert samples[("heartbeat_clock_skew_seconds", key)] == pytest.approx(offset)


# -- the bridge's own clock jumps ------------------------------------------------------------
@pytest.mark.parametrize("jump", [-5 * HOUR, +5 * HOUR])
def test_a_bridge_clock_jump_crashes_nothing_and_locks_nobody_out(client, clock, jump):
    for _ in range(10):  # a full burst just before the jump
        assert beat(client, interval=30).status_code == 200
    assert beat(client, interval=30).status_code == 429
    clock.advance(jump)
    assert beat(client, interval=30).status_code == 200
    for path, headers in (("/metrics", {}), ("/api/status", ADMIN), ("/api/servers", ADMIN),
                          ("/", ADMIN), ("/readyz", {})):
        assert client.get(path, headers=headers).status_code == 200, path
    assert scrape(client)[("heartbeat_last_seen_seconds", (("server_id", "web-1"),))] == clock.now
    # ...and the limit still holds after the jump: a burst, then 429
    codes = [beat(client, interval=30).status_code for _ in range(12)]
    assert 200 in codes and codes[-1] == 429
    # ...and a server beating at its interval is never refused, on either side of a jump
    for _ in range(5):
        clock.advance(30)
        assert beat(client, interval=30).status_code == 200


def test_a_server_at_its_interval_survives_repeated_jumps_back(app_factory, clock):
    client = app_factory(metric_set="full").test_client()  # beat counts
    for _ in range(20):
        assert beat(client, interval=30).status_code == 200
        clock.advance(-HOUR)  # a clock stepping back an hour at every beat
    assert scrape(client)[("heartbeat_beats_total", (("server_id", "web-1"),))] == 20


@pytest.mark.parametrize("tat,now,allowed", [
    (1000.0 + 3 * HOUR, 1000.0, True),   # far ahead: the clock went back, start afresh
    (1000.0 + 30.0, 1000.0, False),      # one full interval ahead: a burst just used
    (1000.0 + 27.0, 1000.0, True),       # room for one more
])
def test_rate_limit_forgets_a_tat_only_a_clock_going_back_can_leave(tat, now, allowed):
    new_tat, retry = rate_limit(tat, now, 30.0, 10)
    assert (retry is None) is allowed
    if allowed:
        assert now < new_tat <= now + 30.0


# -- token guessing --------------------------------------------------------------------------
ROUNDS = 400


def median_us(samples):
    return statistics.median(samples) * 1e6


def test_a_wrong_token_and_an_unknown_server_take_the_same_time(client, store):
    """A guesser learns nothing from timing: a known server with its own token and an unknown
    server both cost one store read and one constant-time comparison."""
    assert client.post("/api/servers", headers=ADMIN,
                       json={"server_id": "known", "token": True}).status_code == 201
    wrong = {"Authorization": "Bearer wrong-token-0123456789abcdef"}
    cases = {"wrong_token_known_server": "/api/heartbeat/known/",
             "unknown_server": "/api/heartbeat/nobody-here/"}
    timings = {name: [] for name in cases}
    for _ in range(20):  # warm up both paths
        for path in cases.values():
            client.post(path, headers=wrong)
    for _ in range(ROUNDS):
        for name, path in cases.items():  # interleaved, so drift hits both alike
            started = time.perf_counter()
            response = client.post(path, headers=wrong)
            timings[name].append(time.perf_counter() - started)
            assert response.status_code == 401
            assert response.get_json()["error"] == "invalid_token"
    known, unknown = (median_us(timings[name]) for name in cases)
    print(f"token timing medians over {ROUNDS} requests each: wrong token for a known server "
          f"{known:.1f} us, unknown server {unknown:.1f} us")
    assert abs(known - unknown) <= max(0.30 * min(known, unknown), 200.0)
    assert [s.server_id for s in store.list()] == ["known"]  # guessing registers nobody
