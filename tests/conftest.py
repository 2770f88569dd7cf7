"""Shared fixtures: a fake clock, a fresh store per test on each backend, apps and live
bridges. Helpers and constants live in tests/tools.py: test modules import from there."""

import subprocess

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
    postgres_schema_url,
)


def pytest_addoption(parser):
    parser.addoption("--in-process", action="store_true",
                     help="skip every test that starts a real program (make test-fast)")


_STARTS_A_PROGRAM = "starts a real program: `make test` runs it"
_started = []  # --in-process: programs the current test tried to start
_refused_fixtures = set()  # module or session fixtures whose setup tried to start one


def pytest_configure(config):
    """--in-process: a test (or fixture) that starts any program is skipped at that moment,
    so the fast lane needs no list to keep up to date. The database server already running
    is not started by a test: tests on PostgreSQL stay in."""
    if config.getoption("--in-process"):
        real_popen = subprocess.Popen

        class InProcessOnly(real_popen):
            def __init__(self, *args, **kwargs):
                _started.append(args[0] if args else kwargs.get("args"))
                pytest.skip(_STARTS_A_PROGRAM)

        subprocess.Popen = InProcessOnly


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """--in-process: a test whose program was refused is skipped, even when a library (the
    browser driver) turned the refusal into an error of its own."""
    outcome = yield
    report = outcome.get_result()
    # the project's own module and session fixtures (pytest's own have no baseid)
    shared = {name for name, defs in item._fixtureinfo.name2fixturedefs.items()
              if defs and defs[-1].scope != "function" and defs[-1].baseid}
    if report.failed and (_started or (call.when == "setup" and shared & _refused_fixtures)):
        report.outcome, report.longrepr = "skipped", (str(item.path), 0, _STARTS_A_PROGRAM)
        if _started and call.when == "setup":
            _refused_fixtures.update(shared)  # their setup error is cached for later tests
    if call.when == "teardown":
        _started.clear()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Each store and HTTP test runs on both backends, on a fresh database or schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'heartbeat.db'}"
        return
    conn, schema, url = postgres_schema_url()
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
