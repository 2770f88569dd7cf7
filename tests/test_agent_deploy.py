"""The agent's systemd units, cron file and example settings: they parse and say what they must."""
import configparser
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys

import pytest

from agent import heartbeat_agent as ha
from tests.agent_tools import BeatServer, agent_env
from tests.tools import ROOT, Process, wait_until

AGENT_DIR = ROOT / "agent"
PYTHON = "/usr/bin/python3 -I -S"  # no site-packages: a stdlib-only file needs none
HARDENING = {
    "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
    "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6", "CapabilityBoundingSet": "",
    "SystemCallFilter": "@system-service",
    "EnvironmentFile": "-/etc/default/heartbeat-agent",
    "LoadCredential": "heartbeat-token:/etc/heartbeat-agent/token",
}


def unit(name):
    """A unit file as {section: {key: [values]}}; systemd allows repeated keys."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",),
                                       empty_lines_in_values=False)
    parser.optionxform = str
    sections, current = {}, None
    for line in (AGENT_DIR / name).read_text().splitlines():
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    parser.read_string((AGENT_DIR / name).read_text())  # fails on anything configparser rejects
    return sections


@pytest.mark.parametrize("name", ["heartbeat-agent.service", "heartbeat-agent-once.service"])
def test_both_services_are_hardened_and_read_the_same_settings(name):
    service = unit(name)["Service"]
    for key, value in HARDENING.items():
        assert value in service.get(key, []), f"{name}: {key}={value} missing"
    assert re.fullmatch(r"\d+M", service["MemoryMax"][0])
    assert "ProcSubset" not in service  # would hide /proc/stat, the boot time


def test_the_loop_service_restarts_but_not_on_bad_settings():
    u = unit("heartbeat-agent.service")
    assert u["Service"]["ExecStart"] == [
        f"{PYTHON} /usr/local/bin/heartbeat-agent --goodbye-on-exit"]
    assert (u["Service"]["Restart"], u["Service"]["RestartSec"]) == (["always"], ["5"])
    assert u["Service"]["RestartPreventExitStatus"] == [str(ha.EXIT_CONFIG)]
    assert u["Install"]["WantedBy"] == ["multi-user.target"]


def exec_start(name, **env):
    """The unit's ExecStart command line, started as systemd would (with `env` added)."""
    [line] = unit(name)["Service"]["ExecStart"]
    here = {"/usr/local/bin/heartbeat-agent": str(ROOT / "agent" / "heartbeat_agent.py")}
    if not os.path.exists("/usr/bin/python3"):
        here["/usr/bin/python3"] = sys.executable
    argv = [here.get(word, word) for word in shlex.split(line)]
    return Process([*argv, "--config", os.devnull], env=agent_env(**env), name="unit").start()


@pytest.mark.live
def test_the_loop_service_says_goodbye_when_stopped():
    with BeatServer() as server:
        proc = exec_start("heartbeat-agent.service", HEARTBEAT_URL=server.url,
                          HEARTBEAT_SERVER_ID="web-1", HEARTBEAT_INTERVAL="1",
                          HEARTBEAT_BACK_WITHIN="2h")
        try:  # the first beat comes within one interval
            wait_until(lambda: server.requests, timeout=5, what="first beat")
            proc.send_signal(signal.SIGTERM)  # what systemctl stop and a reboot send
            assert proc.proc.wait(timeout=5) == 0
        finally:
            proc.stop()
        last = server.requests[-1]
        assert (last["method"], last["path"]) == ("POST", "/api/heartbeat/web-1/goodbye")
        assert json.loads(last["body"]) == {"back_within": 7200, "retire": False}
        assert "heartbeat-agent: goodbye: web-1 is expected back by" in proc.log()


def test_the_loop_service_has_no_stop_commands():
    service = unit("heartbeat-agent.service")["Service"]
    # systemd gives ExecStop*= no credentials (the token), and ExecStop= runs while the
    # loop may still beat and cancel the goodbye: the loop says it itself
    assert not {"ExecStop", "ExecStopPost"} & set(service)
    assert int(service["TimeoutStopSec"][0]) > 3 * ha.GOODBYE_TIMEOUT  # DNS, connect, answer


def test_the_timer_starts_one_beat_every_30_s_with_1_s_accuracy():
    once, timer = unit("heartbeat-agent-once.service"), unit("heartbeat-agent.timer")
    assert once["Service"]["Type"] == ["oneshot"]
    assert once["Service"]["ExecStart"] == [f"{PYTHON} /usr/local/bin/heartbeat-agent --once"]
    assert timer["Timer"]["Unit"] == ["heartbeat-agent-once.service"]
    assert timer["Timer"]["OnUnitActiveSec"] == ["30s"] and timer["Timer"]["OnBootSec"]
    assert timer["Timer"]["AccuracySec"] == ["1s"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]


@pytest.mark.live
def test_systemd_accepts_the_units(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed")
    agent = tmp_path / "heartbeat-agent"
    shutil.copy(AGENT_DIR / "heartbeat_agent.py", agent)
    agent.chmod(0o755)
    names = ["heartbeat-agent.service", "heartbeat-agent-once.service", "heartbeat-agent.timer"]
    for name in names:  # verify insists that ExecStart exists
        text = (AGENT_DIR / name).read_text().replace("/usr/local/bin/heartbeat-agent", str(agent))
        if not os.path.exists("/usr/bin/python3"):  # the units' interpreter
            text = text.replace("/usr/bin/python3", shutil.which("python3"))
        (tmp_path / name).write_text(text)
    done = subprocess.run([analyze, "verify", *(tmp_path / n for n in names)],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr


def test_cron_beats_twice_a_minute_with_once():
    lines = [line for line in (AGENT_DIR / "heartbeat-agent.cron").read_text().splitlines()
             if line.strip() and not line.startswith("#") and "=" not in line.split()[0]]
    assert len(lines) == 2
    fields = [line.split(None, 6) for line in lines]
    assert all(f[:5] == ["*"] * 5 for f in fields)
    commands = [f[6] for f in fields]
    assert all("heartbeat-agent --once" in c for c in commands)
    assert not commands[0].startswith("sleep") and commands[1].startswith("sleep 30;")


def test_the_env_example_names_only_real_settings_and_loads():
    known = {env for env, _, _ in ha.SETTINGS.values()}
    env = {}
    for line in (AGENT_DIR / "heartbeat-agent.env.example").read_text().splitlines():
        line = line.lstrip("#")
        if re.match(r"HEARTBEAT_\w+=", line):
            key, _, value = line.partition("=")
            assert key in known and " #" not in value  # systemd takes no trailing comments
            env.setdefault(key, value)
    assert set(env) == known
    active = {k: v for k, v in env.items() if k in ("HEARTBEAT_URL", "HEARTBEAT_TOKEN")}
    config, _ = ha.load_config(["--config", os.devnull], environ=active)
    assert config.url == "https://heartbeat.example.org"


def test_the_ini_example_names_only_real_settings_and_loads():
    path = AGENT_DIR / "heartbeat-agent.conf.example"
    keys = re.findall(r"^#? ?(\w+) = ", path.read_text(), re.MULTILINE)
    assert set(keys) <= set(ha.SETTINGS) and {"url", "token_file", "interval"} <= set(keys)
    config, _ = ha.load_config(["--config", str(path)], environ={"HEARTBEAT_TOKEN": "t"})
    assert (config.url, config.interval, config.token) == ("https://heartbeat.example.org", 30, "t")
