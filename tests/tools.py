"""Helpers shared by the tests: tokens and a fake clock, settings, PostgreSQL schemas, the
programs a test needs, reading /metrics, and Prometheus. Ports, processes, waits and the live
bridge come from the harness package (bench uses it too) and are re-exported here."""
import contextlib
import os
import sqlite3
import uuid

import pytest
import requests
import yaml

from bridge.config import Settings
from harness import (  # noqa: F401 (the tests import these from here too)
    ROOT,
    Bridge,
    GiveUp,
    MissingProgramError,
    Process,
    bridge_env,
    find_binary,
    free_port,
    listening_sockets,
    per_server,
    sample_map,
    total,
    unread_bytes,
    value,
    wait_http,
    wait_until,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PROMETHEUS_RULES = ROOT / "prometheus" / "rules.yml"


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


def postgres_schema_url():
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


@contextlib.contextmanager
def postgres_schema():
    """(admin connection, schema, URL) of a fresh schema, dropped (and closed) on exit."""
    conn, schema, url = postgres_schema_url()
    try:
        yield conn, schema, url
    finally:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()
def read_rows(database_url, sql):
    """The rows of one query, run without any store code. A SQLite file nobody has open (no
    -wal) is read as immutable, which leaves no -wal or -shm file behind."""
    if database_url.startswith("sqlite:///"):
        path = database_url[len("sqlite:///"):]
        flags = "mode=ro" if os.path.exists(f"{path}-wal") else "mode=ro&immutable=1"
        conn = sqlite3.connect(f"file:{path}?{flags}", uri=True)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    import psycopg
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql).fetchall()


def write_rows(database_url, sql, params=()):
    """Run one write (`?` placeholders) straight in a store's database, past every check of
    the bridge, as a writer of this release (which the store's lockout of older releases'
    writers lets through); return the row count."""
    from bridge.store import SCHEMA_VERSION
    from bridge.store.upgrade import WRITER_FUNCTION
    if database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(database_url[len("sqlite:///"):])
        conn.create_function(WRITER_FUNCTION, 0, lambda: SCHEMA_VERSION)
        try:
            with conn:
                return conn.execute(sql, params).rowcount
        finally:
            conn.close()
    import psycopg
    with psycopg.connect(database_url) as conn:
        conn.execute(f"SET LOCAL heartbeat_bridge.writer_schema = '{SCHEMA_VERSION}'")
        return conn.execute(sql.replace("?", "%s"), params).rowcount


def make_settings(database_url, **changes):
    values = dict(database_url=database_url, fleet_tokens=(FLEET_TOKEN,),
                  admin_token=ADMIN_TOKEN)
    values.update(changes)
    return Settings(**values)


def require_binary(name):
    """Path of a real program the test needs; fails loudly under CI, skips elsewhere."""
    try:
        return find_binary(name)
    except MissingProgramError as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))


class Prometheus(Process):
    """The real Prometheus on a loopback port, scraping the given bridges."""

    def __init__(self, tmp_path, bridge_ports, rule_files=(PROMETHEUS_RULES,), interval="1s",
                 alertmanager_port=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": "heartbeat-bridge", "static_configs": [
                {"targets": [f"127.0.0.1:{port}" for port in bridge_ports]}]}],
        }
        if alertmanager_port:
            config["alerting"] = {"alertmanagers": [{"static_configs": [
                {"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]}
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        super().__init__([require_binary("prometheus"), f"--config.file={path}",
                          f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{self.port}"], name="prometheus")

    def start(self):
        super().start()
        try:
            wait_http(self.url + "/-/ready", timeout=20)
        except AssertionError:
            self.stop()
            raise AssertionError(f"prometheus did not start:\n{self.log()}")
        return self

    def query(self, expr):
        answer = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def value(self, expr):
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None
