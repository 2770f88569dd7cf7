"""Shared fixtures: a fake clock, a fresh store per test on each backend, apps and live bridges."""
import uuid

import pytest

from bridge.app import create_app
from bridge.config import Settings
from bridge.store import open_store
from tests.tools import IN_CI, Bridge

FLEET_TOKEN = "fleet-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789"
POSTGRES_BASE = "postgresql://postgres@127.0.0.1:5432/test"
START = 1_800_000_000.0


class FakeClock:
    """A settable Unix clock for the store and collector."""

    def __init__(self, now=START):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds
        return self.now


def _postgres_schema_url():
    """A fresh schema in the test database; skipped locally, fails under CI when unreachable."""
    try:
        import psycopg
        conn = psycopg.connect(POSTGRES_BASE, autocommit=True, connect_timeout=3)
    except Exception as exc:  # driver missing or server down
        message = f"PostgreSQL at {POSTGRES_BASE} is not reachable: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    schema = "t_" + uuid.uuid4().hex[:12]
    conn.execute(f"CREATE SCHEMA {schema}")
    return conn, schema, f"{POSTGRES_BASE}?options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Each store and HTTP test runs on both backends, on a fresh database or schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'heartbeat.db'}"
        return
    conn, schema, url = _postgres_schema_url()
    try:
        yield url
    finally:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()


@pytest.fixture(autouse=True)
def agent_state_dir(tmp_path, monkeypatch):
    """An agent run in-process keeps an issued token under the test's tmp_path, never in the
    machine's /var/lib/heartbeat-agent."""
    from agent import heartbeat_agent
    path = tmp_path / "agent-state"
    monkeypatch.setattr(heartbeat_agent, "DEFAULT_STATE_DIR", str(path))
    return path


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store(database_url, clock):
    s = open_store(database_url, clock=clock)
    yield s
    s.close()


def make_settings(database_url, **changes):
    values = dict(database_url=database_url, fleet_tokens=(FLEET_TOKEN,),
                  admin_token=ADMIN_TOKEN)
    values.update(changes)
    return Settings(**values)


@pytest.fixture
def app_factory(store, clock, database_url):
    """create_app over the test's store and clock, with settings changed as asked."""
    def make(**changes):
        return create_app(make_settings(database_url, **changes), store=store, clock=clock,
                          rejection_flush_every=0)
    return make


@pytest.fixture
def app(app_factory):
    return app_factory()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def live_bridge(tmp_path):
    """Start real bridges (gunicorn) on SQLite files; all are stopped at the end of the test."""
    started = []

    def start(database_url=None, **settings):
        settings.setdefault("HEARTBEAT_TOKEN", FLEET_TOKEN)
        settings.setdefault("HEARTBEAT_ADMIN_TOKEN", ADMIN_TOKEN)
        url = database_url or f"sqlite:///{tmp_path / 'bridge.db'}"
        bridge = Bridge(url, **settings).start()
        started.append(bridge)
        return bridge

    yield start
    for bridge in started:
        bridge.stop()
