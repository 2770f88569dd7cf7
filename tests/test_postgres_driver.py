"""A postgresql:// URL on an install without the `postgres` extra: one line that says what to
install, from every command, never a traceback."""
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.tools import FLEET_TOKEN, ROOT, bridge_env, free_port

pytestmark = pytest.mark.live  # every test here starts a real program

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
EXPECTED = ("heartbeat-bridge: a postgresql:// database URL needs the PostgreSQL driver "
            "(psycopg), which is not installed: pip install 'heartbeat-bridge[postgres]'\n")


@pytest.fixture(scope="module")
def without_driver(tmp_path_factory):
    """A site-packages holding everything this environment has but psycopg and its pool:
    what `pip install heartbeat-bridge` (no extra) leaves."""
    site = tmp_path_factory.mktemp("site-packages")
    installed = sysconfig.get_paths()["purelib"]
    for entry in sorted(Path(installed).iterdir()):
        if not entry.name.lower().startswith(("psycopg", "__editable__", "heartbeat")):
            (site / entry.name).symlink_to(entry)
    return site


def run(site, *argv, url=PG_URL):
    # -S: no site-packages of this environment (where psycopg is); the path is the bridge's
    # own tree and the site-packages without the driver.
    env = dict(bridge_env(url, free_port(), HEARTBEAT_TOKEN=FLEET_TOKEN),
               PYTHONPATH=f"{ROOT}:{site}")
    return subprocess.run([sys.executable, "-S", "-m", "bridge", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_environment_really_lacks_the_driver(without_driver):
    result = subprocess.run([sys.executable, "-S", "-c", "import psycopg"], capture_output=True,
                            env={"PYTHONPATH": f"{ROOT}:{without_driver}"}, text=True,
                            timeout=30)
    assert "No module named 'psycopg'" in result.stderr


@pytest.mark.parametrize("argv", [["serve"], ["check-config"], ["servers", "list"],
                                  ["tokens", "revoke", "web-1"]])
def test_every_command_on_a_postgresql_url_says_what_to_install(without_driver, argv):
    result = run(without_driver, *argv)
    assert (result.returncode, result.stderr) == (2, EXPECTED)


def test_migrate_to_postgresql_says_what_to_install(without_driver, tmp_path):
    source = tmp_path / "heartbeat.db"
    assert run(without_driver, "servers", "register", "web-1",
               url=f"sqlite:///{source}").returncode == 0  # SQLite needs no extra
    result = run(without_driver, "migrate", "--from", f"sqlite:///{source}", "--to", PG_URL)
    assert (result.returncode, result.stderr) == (2, EXPECTED)
