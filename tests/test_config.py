"""Settings from the environment: defaults, types, secrets from files, clear errors."""
import subprocess
import sys

import pytest

from bridge.config import DEFAULT_DATABASE_URL, ConfigError, Settings
from tests.tools import ROOT


def test_defaults():
    s = Settings.from_env({})
    assert (s.bind, s.database_url, s.fleet_tokens, s.admin_token, s.max_servers,
            s.allow_unauthenticated, s.auto_register) == (
        "127.0.0.1:8000", DEFAULT_DATABASE_URL, (), "", 100000, False, True)


def test_every_setting_is_read():
    s = Settings.from_env({
        "HEARTBEAT_BIND": "[::1]:9000", "HEARTBEAT_DATABASE_URL": "postgresql://db/hb",
        "HEARTBEAT_TOKEN": "token-one-1, token-two-2", "HEARTBEAT_ADMIN_TOKEN": "admin-secret",
        "HEARTBEAT_WORKERS": "8", "HEARTBEAT_THREADS": "2", "HEARTBEAT_MAX_SERVERS": "500",
        "HEARTBEAT_AUTO_REGISTER": "no", "HEARTBEAT_ALLOW_UNAUTHENTICATED": "true",
        "HEARTBEAT_DEFAULT_INTERVAL": "60", "HEARTBEAT_RATE_LIMIT_BURST": "0",
        "HEARTBEAT_FORGET_AFTER_DAYS": "30", "HEARTBEAT_STATUS_PUBLIC": "1",
        "HEARTBEAT_LOG_LEVEL": "DEBUG", "HEARTBEAT_TIMEOUT": "10", "HEARTBEAT_KEEPALIVE": "2",
        "HEARTBEAT_DB_POOL_SIZE": "3"})
    assert (s.bind, s.database_url, s.fleet_tokens, s.admin_token, s.workers, s.threads,
            s.max_servers, s.auto_register, s.allow_unauthenticated, s.default_interval,
            s.rate_limit_burst, s.forget_after_days, s.status_public, s.log_level, s.timeout,
            s.keepalive, s.pool_size) == (
        "[::1]:9000", "postgresql://db/hb", ("token-one-1", "token-two-2"), "admin-secret", 8,
        2, 500, False, True, 60.0, 0, 30.0, True, "debug", 10, 2, 3)


def test_secrets_can_come_from_files(tmp_path):
    (tmp_path / "fleet").write_text("from-a-file-123\n")
    (tmp_path / "admin").write_text("admin-from-file\n")
    s = Settings.from_env({"HEARTBEAT_TOKEN_FILE": str(tmp_path / "fleet"),
                           "HEARTBEAT_ADMIN_TOKEN_FILE": str(tmp_path / "admin")})
    assert (s.fleet_tokens, s.admin_token) == (("from-a-file-123",), "admin-from-file")


@pytest.mark.parametrize("env,named", [
    ({"HEARTBEAT_BIND": "8000"}, "HEARTBEAT_BIND"),
    ({"HEARTBEAT_BIND": "127.0.0.1:99999"}, "HEARTBEAT_BIND"),
    ({"HEARTBEAT_DATABASE_URL": "mysql://x"}, "HEARTBEAT_DATABASE_URL"),
    ({"HEARTBEAT_WORKERS": "many"}, "HEARTBEAT_WORKERS"),
    ({"HEARTBEAT_WORKERS": "0"}, "HEARTBEAT_WORKERS"),
    ({"HEARTBEAT_MAX_SERVERS": "-1"}, "HEARTBEAT_MAX_SERVERS"),
    ({"HEARTBEAT_DEFAULT_INTERVAL": "nan"}, "HEARTBEAT_DEFAULT_INTERVAL"),
    ({"HEARTBEAT_AUTO_REGISTER": "maybe"}, "HEARTBEAT_AUTO_REGISTER"),
    ({"HEARTBEAT_LOG_LEVEL": "loud"}, "HEARTBEAT_LOG_LEVEL"),
    ({"HEARTBEAT_TOKEN": "short"}, "HEARTBEAT_TOKEN"),
    ({"HEARTBEAT_TOKEN": "long-enough-1,tiny"}, "HEARTBEAT_TOKEN"),
    ({"HEARTBEAT_TOKEN": "long-enough-1", "HEARTBEAT_TOKEN_FILE": "/x"}, "HEARTBEAT_TOKEN"),
    ({"HEARTBEAT_ADMIN_TOKEN_FILE": "/nonexistent/file"}, "HEARTBEAT_ADMIN_TOKEN_FILE"),
])
def test_a_bad_value_is_refused_naming_the_variable(env, named):
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_secrets_are_masked_when_described():
    s = Settings.from_env({"HEARTBEAT_TOKEN": "fleet-secret-1", "HEARTBEAT_ADMIN_TOKEN":
                           "admin-secret-1"})
    text = str(s.describe())
    assert "fleet-secret-1" not in text and "admin-secret-1" not in text


@pytest.mark.live
def test_serve_stops_at_start_with_a_message_naming_the_bad_variable():
    result = subprocess.run([sys.executable, "-m", "bridge", "serve"], cwd=ROOT, timeout=30,
                            capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "HEARTBEAT_WORKERS": "lots"})
    assert result.returncode == 2
    assert "HEARTBEAT_WORKERS" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("raw, metric_set", [(None, "lean"), ("lean", "lean"), ("FULL", "full")])
def test_the_metric_set_is_lean_unless_full_is_asked_for(raw, metric_set):
    environ = {} if raw is None else {"HEARTBEAT_METRICS": raw}
    assert Settings.from_env(environ).metric_set == metric_set


def test_an_unknown_metric_set_is_refused_by_name():
    with pytest.raises(ConfigError, match="HEARTBEAT_METRICS: expected one of lean, full"):
        Settings.from_env({"HEARTBEAT_METRICS": "everything"})
