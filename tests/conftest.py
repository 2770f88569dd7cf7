"""Shared fixtures: a fake clock, a fresh store per test on each backend, PostgreSQL schemas,
apps and live bridges; the `live` and `postgresql` markers kept true. Helpers and constants
live in tests/tools.py: test modules import from there."""

import sys

import pytest

from bridge.asgi import BridgeASGI
from bridge.state import build_state
from bridge.store import open_store
from tests.asgi_client import ServedApp
from tests.tools import (
    ADMIN_TOKEN,
    FLEET_TOKEN,
    Bridge,
    FakeClock,
    make_settings,
    postgres_schema,
)


class ProgramStartedError(RuntimeError):
    """A test not marked `live` started a program."""


_live = [False]  # whether the test being run (setup, call, teardown) may start programs


def _refuse_programs_outside_live_tests(event, args):
    """Audit hook: a test that starts a program must say so (`@pytest.mark.live`), so that
    `make test-fast` (-m "not live") is exactly the tests that start nothing."""
    if event in ("subprocess.Popen", "os.posix_spawn", "os.exec") and not _live[0]:
        raise ProgramStartedError(f"{args[0]!r} started by a test not marked "
                                  "@pytest.mark.live (tests that start programs say so)")


def pytest_configure(config):
    sys.addaudithook(_refuse_programs_outside_live_tests)
    _live[0] = True  # until a test runs: collection and the session's own work may start any


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _live[0] = item.get_closest_marker("live") is not None
    yield
    _live[0] = True


def pytest_collection_modifyitems(items):
    """A test on a PostgreSQL schema (the pg_schema or pg_url fixture, or a parameter
    "postgresql" of any fixture) is marked `postgresql`, so `-m "not postgresql"` runs what
    needs no database server whether one is up or not. A test that opens a schema any
    other way says so itself."""
    for item in items:
        params = item.callspec.params.values() if hasattr(item, "callspec") else ()
        if {"pg_schema", "pg_url"} & set(item.fixturenames) or "postgresql" in params:
            item.add_marker(pytest.mark.postgresql)


@pytest.fixture
def pg_schema():
    """(admin connection, schema, URL) of a fresh PostgreSQL schema, dropped afterwards."""
    with postgres_schema() as fresh:
        yield fresh


@pytest.fixture
def pg_url(pg_schema):
    """The URL of a fresh PostgreSQL schema, dropped afterwards."""
    return pg_schema[2]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def database_url(request, tmp_path):
    """Each store and HTTP test runs on both backends, on a fresh database or schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'heartbeat.db'}"
    return request.getfixturevalue("pg_url")


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


@pytest.fixture
def app_factory(store, clock, database_url):
    """The served ASGI app (bridge.asgi, as `serve` runs it) over the test's store and
    clock, with settings changed as asked; its test_client() speaks WSGI to it."""
    served = []

    def make(**changes):
        state = build_state(make_settings(database_url, **changes), store=store, clock=clock,
                            rejection_flush_every=0)
        served.append(ServedApp(BridgeASGI(state)))
        return served[-1]
    yield make
    for app in served:
        app.stop()


@pytest.fixture
def app(app_factory):
    return app_factory()


@pytest.fixture
def client(app):
    return app.test_client()


def _bridges(directory):
    """A function that starts real bridges (gunicorn), on `directory`/bridge.db unless given
    a database URL, and stops them all when the generator is closed."""
    started = []

    def start(database_url=None, **settings):
        settings.setdefault("HEARTBEAT_TOKEN", FLEET_TOKEN)
        settings.setdefault("HEARTBEAT_ADMIN_TOKEN", ADMIN_TOKEN)
        url = database_url or f"sqlite:///{directory / 'bridge.db'}"
        bridge = Bridge(url, **settings).start()
        started.append(bridge)
        return bridge

    try:
        yield start
    finally:
        for bridge in started:
            bridge.stop()


@pytest.fixture
def live_bridge(tmp_path):
    """Start real bridges on a fresh SQLite file; all are stopped at the end of the test."""
    yield from _bridges(tmp_path)


@pytest.fixture(scope="module")
def module_bridge(tmp_path_factory):
    """Start real bridges the tests of one module share (tests that only read what the
    fixture built, or write ids no other test reads); stopped after the module."""
    yield from _bridges(tmp_path_factory.mktemp("module-bridge"))
