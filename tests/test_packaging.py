"""The Dockerfile and the console scripts, checked without a Docker engine."""
import re
import subprocess
import sys

import pytest

from tests.tools import ROOT, bridge_env, free_port

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(name):
    return [line.split(None, 1)[1] for line in DOCKERFILE.replace("\\\n", " ").splitlines()
            if line.split(None, 1)[:1] == [name]]


def test_the_image_is_slim_and_runs_as_a_non_root_user():
    assert re.match(r"python:3\.\d+-slim$", instructions("FROM")[0])
    user = instructions("USER")[-1]
    assert user.split(":")[0] not in ("root", "0")


def test_the_image_serves_with_gunicorn_on_a_volume():
    assert instructions("ENTRYPOINT") == ['["heartbeat-bridge"]']
    assert instructions("CMD") == ['["serve"]']
    assert instructions("EXPOSE") == ["8000"]
    assert "/var/lib/heartbeat-bridge" in instructions("VOLUME")[0]
    assert "HEARTBEAT_BIND=0.0.0.0:8000" in " ".join(instructions("ENV"))


def test_the_healthcheck_needs_no_curl():
    (check,) = instructions("HEALTHCHECK")
    assert '"heartbeat-bridge", "healthcheck"' in check
    assert "curl" not in DOCKERFILE and "wget" not in DOCKERFILE


@pytest.mark.live
def test_healthcheck_command_exits_0_against_a_live_bridge_and_1_without(live_bridge):
    bridge = live_bridge()
    env = bridge_env(bridge.env["HEARTBEAT_DATABASE_URL"], bridge.port)
    ok = subprocess.run([sys.executable, "-m", "bridge", "healthcheck"], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run([sys.executable, "-m", "bridge", "healthcheck"], cwd=ROOT,
                          env=bridge_env("sqlite:///unused.db", free_port()),
                          capture_output=True, text=True, timeout=30)
    assert down.returncode == 1
    assert "Connection refused" in down.stderr


def test_console_scripts_are_declared():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'heartbeat-bridge = "bridge.cli:main"' in pyproject
    assert 'heartbeat-agent = "agent.heartbeat_agent:main"' in pyproject
