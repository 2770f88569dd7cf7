"""`heartbeat-bridge migrate`: all state from a SQLite file into PostgreSQL, re-runnable."""
import subprocess
import sys

import pytest

from bridge.store import BeatPolicy, open_store
from bridge.validate import parse_beat
from tests.tools import ROOT

pytestmark = pytest.mark.live  # every test here starts a real program

BEAT = b'{"interval": 15, "hostname": "web-1.example", "agent_version": "0.1.0", "seq": 7}'


@pytest.fixture
def sqlite_url(tmp_path):
    """A SQLite store holding every kind of state a bridge keeps."""
    url = f"sqlite:///{tmp_path / 'heartbeat.db'}"
    store = open_store(url)
    beat = parse_beat(BEAT, "application/json")
    for n in range(3):
        store.record_beat("web-1", beat, BeatPolicy())
    store.record_beat("web-2", parse_beat(b"", None), BeatPolicy())
    store.register("db-1", interval=60, labels={"team": "db", "env": "prod"},
                   token_hash="0" * 64)
    store.set_token("db-1", "1" * 64, keep_previous_for=3600)
    store.pause("web-2", until=store.clock() + 3600, reason="disk swap")
    store.goodbye("web-1", back_within=900)
    store.register("old-1")
    store.set_retired("old-1", True)
    store.add_rejections({"invalid_token": 4, "rate_limited": 2})
    store.close()
    return url


def migrate(*args):
    return subprocess.run([sys.executable, "-m", "bridge", "migrate", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def state(url):
    """Everything a store holds, as comparable values (token hashes and limiter included)."""
    store = open_store(url)
    try:
        rows, rejected = store.export_rows()
        return [tuple(row) for row in rows], rejected, store.snapshot().servers
    finally:
        store.close()


def test_migrate_copies_every_server_and_counter(sqlite_url, pg_url):
    result = migrate("--from", sqlite_url, "--to", pg_url)
    assert result.returncode == 0, result.stderr
    assert "copied 4 servers and 2 rejection counters" in result.stdout
    assert state(pg_url) == state(sqlite_url)
    rows, rejected, servers = state(pg_url)
    assert rejected == {"invalid_token": 4, "rate_limited": 2}
    by_id = {s.server_id: s for s in servers}
    assert by_id["web-1"].beats_total == 3 and by_id["web-1"].hostname == "web-1.example"
    assert by_id["db-1"].labels == {"env": "prod", "team": "db"}
    assert by_id["web-2"].pause_reason == "disk swap"
    assert by_id["old-1"].retired_at is not None


def test_migrated_tokens_still_authenticate(sqlite_url, pg_url):
    assert migrate("--from", sqlite_url, "--to", pg_url).returncode == 0
    store = open_store(pg_url)
    try:
        assert sorted(store.token_hashes("db-1")) == ["0" * 64, "1" * 64]
    finally:
        store.close()


def test_running_migrate_twice_changes_nothing(sqlite_url, pg_url):
    assert migrate("--from", sqlite_url, "--to", pg_url).returncode == 0
    first = state(pg_url)
    result = migrate("--from", sqlite_url, "--to", pg_url)
    assert result.returncode == 0, result.stderr
    assert state(pg_url) == first  # counters were topped up, not added twice


def test_a_migrated_database_serves_beats(sqlite_url, pg_url):
    assert migrate("--from", sqlite_url, "--to", pg_url).returncode == 0
    store = open_store(pg_url)
    try:
        store.record_beat("web-1", parse_beat(BEAT, "application/json"),
                          BeatPolicy(rate_limit_burst=0))
        assert store.get("web-1").beats_total == 4
        assert store.get("web-1").expected_back is None  # the beat ended the goodbye
    finally:
        store.close()


@pytest.mark.parametrize("source, target, message", [
    ("sqlite:///{tmp}/missing.db", "{pg}", "--from: expected sqlite:///PATH of an existing file"),
    ("{pg}", "{pg}", "--from: expected sqlite:///PATH"),
    ("{sqlite}", "sqlite:///{tmp}/other.db", "--to: expected postgresql://"),
    ("{sqlite}", "mysql://db/heartbeat", "--to: expected postgresql://"),
    ("{sqlite}", "postgresql://host/db?no_such_option=1", "--to: unusable URL"),
])
def test_bad_urls_exit_2_with_a_clear_message(sqlite_url, tmp_path, source, target, message):
    urls = dict(tmp=tmp_path, pg="postgresql://postgres@127.0.0.1:5432/test", sqlite=sqlite_url)
    result = migrate("--from", source.format(**urls), "--to", target.format(**urls))
    assert result.returncode == 2
    assert result.stderr.startswith(f"heartbeat-bridge: {message}"), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "missing.db").exists()  # never created by the attempt


def test_an_unreachable_target_exits_1_saying_why(sqlite_url):
    result = migrate("--from", sqlite_url, "--to", "postgresql://postgres@127.0.0.1:1/test")
    assert result.returncode == 1
    assert "heartbeat-bridge: postgresql 127.0.0.1:1/test: " in result.stderr
    assert "refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_arguments_exit_2():
    result = migrate("--from", "sqlite:///x.db")
    assert result.returncode == 2
    assert "--to" in result.stderr
