"""Store semantics, the same on SQLite and PostgreSQL."""
import pytest

from bridge.store import (
    BeatPolicy,
    RateLimitedError,
    ServerExistsError,
    ServerLimitError,
    UnknownServerError,
    open_store,
    rate_limit,
)
from bridge.validate import Beat

POLICY = BeatPolicy()


def test_a_beat_survives_closing_and_reopening_the_store(store, database_url, clock):
    store.record_beat("web-1", Beat(interval=10, hostname="h1"), POLICY)
    before = store.snapshot().servers
    store.close()
    reopened = open_store(database_url, clock=clock)
    try:
        assert reopened.snapshot().servers == before
    finally:
        reopened.close()


def test_opening_an_existing_store_twice_is_safe(store, database_url, clock):
    store.record_beat("web-1", Beat(), POLICY)
    again = open_store(database_url, clock=clock)
    try:
        assert again.get("web-1").beats_total == 1
    finally:
        again.close()


def test_beats_count_and_keep_the_latest_facts(store, clock):
    store.record_beat("web-1", Beat(hostname="old", seq=1), POLICY)
    clock.advance(30)
    store.record_beat("web-1", Beat(seq=2), POLICY)  # hostname not sent: kept
    server = store.get("web-1")
    assert (server.beats_total, server.hostname, server.seq, server.last_seen) == (
        2, "old", 2, clock.now)


def test_the_registered_interval_wins_over_the_declared_one(store):
    store.register("db-1", interval=120)
    received_at, interval = store.record_beat("db-1", Beat(interval=10), POLICY)
    assert interval == 120
    assert store.get("db-1").interval(30) == 120
    store.update("db-1", interval=None)
    assert store.get("db-1").interval(30) == 10


def test_registering_twice_is_refused(store):
    store.register("db-1")
    with pytest.raises(ServerExistsError):
        store.register("db-1")


def test_registration_respects_the_cap(store):
    store.register("a", max_servers=1)
    with pytest.raises(ServerLimitError):
        store.register("b", max_servers=1)
    with pytest.raises(ServerLimitError):
        store.record_beat("c", Beat(), BeatPolicy(max_servers=1))
    assert [s.server_id for s in store.list()] == ["a"]


def test_unknown_servers_raise(store):
    with pytest.raises(UnknownServerError):
        store.get("ghost")
    with pytest.raises(UnknownServerError):
        store.pause("ghost")
    with pytest.raises(UnknownServerError):
        store.remove("ghost")
    with pytest.raises(UnknownServerError):
        store.record_beat("ghost", Beat(), BeatPolicy(auto_register=False))


def test_a_pause_with_an_end_expires_when_read(store, clock):
    store.register("db-1")
    store.pause("db-1", until=clock.now + 60, reason="kernel update")
    assert store.get("db-1").is_paused(clock.now)
    clock.advance(61)
    assert not store.get("db-1").is_paused(clock.now)
    store.pause("db-1")
    clock.advance(10**6)
    assert store.get("db-1").is_paused(clock.now)
    store.resume("db-1")
    assert not store.get("db-1").is_paused(clock.now)


def test_a_rotated_token_keeps_the_old_one_valid_for_the_grace_period(store, clock):
    store.register("db-1", token_hash="old")
    store.set_token("db-1", "new", keep_previous_for=300)
    assert sorted(store.token_hashes("db-1")) == ["new", "old"]
    clock.advance(301)
    assert store.token_hashes("db-1") == ["new"]
    store.set_token("db-1", None)
    assert store.token_hashes("db-1") == []
    assert store.token_hashes("ghost") == []


def test_forget_silent_removes_only_long_silent_servers(store, clock):
    store.record_beat("old", Beat(), POLICY)
    store.register("never-seen-old")
    clock.advance(10 * 86400)
    store.record_beat("fresh", Beat(), POLICY)
    store.register("never-seen-new")
    assert store.forget_silent(5 * 86400) == 2
    assert [s.server_id for s in store.list()] == ["fresh", "never-seen-new"]


def test_rejection_counters_add_up(store):
    store.add_rejections({"invalid_json": 2, "invalid_token": 1})
    store.add_rejections({"invalid_json": 3})
    assert store.snapshot().rejected == {"invalid_json": 5, "invalid_token": 1}


def test_a_rate_limited_beat_writes_nothing(store, clock):
    policy = BeatPolicy(rate_limit_burst=2)
    store.record_beat("web-1", Beat(interval=60), policy)
    store.record_beat("web-1", Beat(interval=60), policy)
    with pytest.raises(RateLimitedError) as caught:
        store.record_beat("web-1", Beat(interval=60), policy)
    assert 0 < caught.value.retry_after <= 30
    assert store.get("web-1").beats_total == 2


def test_export_and_import_round_trip(store, tmp_path, clock):
    store.register("db-1", interval=60, labels={"team": "db"}, token_hash="h")
    store.record_beat("web-1", Beat(hostname="w"), POLICY)
    store.add_rejections({"invalid_json": 4})
    rows, rejected = store.export_rows()
    target = open_store(f"sqlite:///{tmp_path / 'copy.db'}", clock=clock)
    target.import_rows(rows, rejected)
    assert target.snapshot().servers == store.snapshot().servers
    assert target.snapshot().rejected == {"invalid_json": 4}
    target.import_rows(rows, {})  # idempotent for servers
    assert target.snapshot().servers == store.snapshot().servers
    target.close()


@pytest.mark.parametrize("beats_at,burst,allowed", [
    ([0, 0, 0], 3, [True, True, True]),
    ([0, 0, 0, 0], 3, [True, True, True, False]),
    ([0, 10, 20, 30, 40], 3, [True] * 5),
    ([0, 0, 0, 0], 0, [True] * 4),
])
def test_rate_limit_allows_bursts_then_the_sustained_rate(beats_at, burst, allowed):
    tat, got = None, []
    for now in beats_at:
        new_tat, retry = rate_limit(tat, float(now), 30.0, burst)
        got.append(retry is None)
        if retry is None:
            tat = new_tat
    assert got == allowed
