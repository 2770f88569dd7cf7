"""Helpers shared by the tests: tokens and a fake clock, settings, PostgreSQL schemas, and
for tests that start real programs on loopback: ports, binaries, bridges."""
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bridge.config import Settings

ROOT = Path(__file__).resolve().parent.parent
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

def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_binary(name):
    """Path of a real program the test needs; fails loudly under CI, skips elsewhere."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed (make test installs it from Debian's packages)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


class GiveUp(AssertionError):
    """Raised by a polled predicate when waiting longer cannot help (the process died)."""


def wait_until(predicate, timeout=10.0, interval=0.05, what="condition"):
    """Poll predicate() until it returns a truthy value, or fail after timeout seconds.

    A predicate raising GiveUp ends the wait at once with that error.
    """
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except GiveUp:
            raise
        except Exception as exc:  # the thing polled may not be up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} "
                         f"(last error: {last_error!r})")


def wait_http(url, timeout=15.0, status=200):
    """Wait until GET url answers the given status."""
    return wait_until(lambda: requests.get(url, timeout=1).status_code == status,
                      timeout=timeout, what=f"GET {url} -> {status}")


class Process:
    """A real program started by a test, stopped by its own PID, output kept in a log file."""

    def __init__(self, argv, env=None, cwd=None, name=None):
        self.argv = [str(a) for a in argv]
        self.env = env
        self.cwd = cwd
        self.name = name or Path(self.argv[0]).name
        self.log_path = Path(tempfile.mkstemp(prefix=f"{self.name}-", suffix=".log")[1])
        self.proc = None

    def start(self):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        return self.log_path.read_text(errors="replace")

    def send_signal(self, sig):
        if self.running():
            os.kill(self.proc.pid, sig)

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Stop the program (and the children of its session) and wait for it."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()
        return self.proc.returncode

    def kill(self):
        """SIGKILL the whole process group at once: a crash, not a shutdown."""
        return self.stop(sig=signal.SIGKILL)


def bridge_env(database_url, port, **settings):
    """Environment for a bridge under test: only HEARTBEAT_* settings given here plus PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTBEAT_")}
    env.update({
        "HEARTBEAT_BIND": f"127.0.0.1:{port}",
        "HEARTBEAT_DATABASE_URL": database_url,
        "HEARTBEAT_WORKERS": "2",
    })
    env.update({k: str(v) for k, v in settings.items()})
    return env


def listening_sockets(port):
    """How many TCP sockets listen on this port (IPv4 and IPv6), from /proc/net/tcp*."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


class Bridge(Process):
    """`heartbeat-bridge serve` (gunicorn) on a loopback port."""

    def __init__(self, database_url, port=None, **settings):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([sys.executable, "-m", "bridge", "serve"],
                         env=bridge_env(database_url, self.port, **settings), cwd=ROOT,
                         name="bridge")

    def start(self, timeout=20.0):
        super().start()
        try:
            wait_until(self._ready, timeout=timeout, what=f"bridge on port {self.port}")
        except AssertionError:
            self.stop()
            raise AssertionError(f"bridge did not start:\n{self.log()}")
        return self

    def _ready(self):
        """Every worker is listening (each has its own SO_REUSEPORT socket, bound when it
        has booted: until then connections only reach the others) and the store answers."""
        if not self.running():
            raise GiveUp(f"bridge exited with {self.proc.returncode}")
        if listening_sockets(self.port) < int(self.env["HEARTBEAT_WORKERS"]):
            return False
        return requests.get(self.url + "/readyz", timeout=1).status_code == 200

    def beat(self, server_id, token=None, json=None, **kwargs):
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return requests.post(f"{self.url}/api/heartbeat/{server_id}/", json=json,
                             headers=headers, timeout=5, **kwargs)

    def metrics(self, **kwargs):
        response = requests.get(self.url + "/metrics", timeout=10, **kwargs)
        response.raise_for_status()
        return response.text


# --- reading /metrics ---------------------------------------------------------------------

def sample_map(text, parse=text_string_to_metric_families):
    """{(name, sorted labels): value} of every sample of one /metrics answer."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parse(text) for s in family.samples}


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def per_server(text):
    """The heartbeat_* per-server samples of one /metrics answer."""
    return {key: v for key, v in sample_map(text).items() if "server_id" in dict(key[1])}


def total(text, name, **labels):
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


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
