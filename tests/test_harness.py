"""The harness the live tests stand on: ports no two runs share, bridges that refuse a port
another program listens on."""
import socket
import subprocess
import sys

import pytest

from harness import Bridge, free_port, ports
from tests.tools import ROOT


def reuseport_listener(port):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


@pytest.mark.live
def test_a_port_reserved_here_is_not_handed_to_another_run(monkeypatch):
    mine = free_port()
    child = subprocess.run(  # another test run, starting its search at the same port
        [sys.executable, "-c", f"from harness import ports; ports._next = {mine}; "
                               "print(ports.free_port())"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    assert int(child.stdout) != mine


def test_a_port_another_program_listens_on_is_skipped(monkeypatch):
    taken = free_port() + 1
    with reuseport_listener(taken):
        monkeypatch.setattr(ports, "_next", taken)
        assert free_port() != taken


def test_ports_come_from_below_the_ephemeral_range():
    assert ports.FIRST_PORT <= free_port() < ports._ephemeral_range()[0]


@pytest.mark.live
def test_a_bridge_refuses_to_share_its_port(tmp_path):
    port = free_port()
    with reuseport_listener(port):  # as a second bridge's worker would listen
        bridge = Bridge(f"sqlite:///{tmp_path / 'b.db'}", port=port)
        with pytest.raises(AssertionError, match="the port is shared"):
            bridge.start()
    assert not bridge.running()


@pytest.mark.live
def test_a_test_that_starts_a_program_unmarked_fails_and_marked_live_runs(tmp_path):
    (tmp_path / "test_programs.py").write_text(
        "import subprocess, sys\nimport pytest\n\n"
        "def test_unmarked():\n    subprocess.run([sys.executable, '-c', 'pass'])\n\n"
        "@pytest.mark.live\n"
        "def test_marked():\n    subprocess.run([sys.executable, '-c', 'pass'])\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q",
                          "-p", "no:cacheprovider", str(tmp_path / "test_programs.py")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "1 failed, 1 passed" in run.stdout, run.stdout
    assert "ProgramStartedError" in run.stdout and "test_unmarked" in run.stdout
