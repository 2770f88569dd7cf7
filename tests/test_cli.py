"""`heartbeat-bridge servers ...` and `tokens ...` on the store directly, as subprocesses."""
import json
import subprocess
import sys

import pytest

from bridge.auth import hash_token
from bridge.store import open_store
from tests.tools import ROOT

pytestmark = pytest.mark.live  # every test here starts a real program


@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path / 'cli.db'}"


def cli(db, *args, expect=0):
    result = subprocess.run([sys.executable, "-m", "bridge", "--database-url", db, *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == expect, result.stdout + result.stderr
    return result


def show(db, server_id):
    return json.loads(cli(db, "servers", "show", server_id, "--json").stdout)


def test_register_with_labels_interval_and_token(db):
    out = cli(db, "servers", "register", "db-1", "--interval", "60", "--label", "team=db",
              "--label", "env=prod", "--token").stdout
    token = [line.split()[-1] for line in out.splitlines() if line.startswith("token")][0]
    server = show(db, "db-1")
    assert (server["interval"], server["labels"], server["has_token"]) == (
        60.0, {"env": "prod", "team": "db"}, True)
    store = open_store(db)
    assert store.token_hashes("db-1") == [hash_token(token)]


def test_list_shows_every_server(db):
    cli(db, "servers", "register", "a-1")
    cli(db, "servers", "register", "b-2", "--label", "team=web")
    listed = json.loads(cli(db, "servers", "list", "--json").stdout)
    assert [s["server_id"] for s in listed] == ["a-1", "b-2"]
    table = cli(db, "servers", "list").stdout
    assert "a-1" in table and "team=web" in table and "never" in table


def test_pause_resume_relabel_interval_remove(db):
    cli(db, "servers", "register", "db-1", "--label", "team=db")
    server = json.loads(json.dumps(show(db, "db-1")))
    assert server["paused"] is False
    cli(db, "servers", "pause", "db-1", "--for", "2h", "--reason", "disk swap")
    server = show(db, "db-1")
    assert (server["paused"], server["pause_reason"]) == (True, "disk swap")
    assert server["paused_until"] > server["registered_at"] + 7000
    cli(db, "servers", "resume", "db-1")
    assert show(db, "db-1")["paused"] is False
    cli(db, "servers", "relabel", "db-1", "--label", "team=storage")
    assert show(db, "db-1")["labels"] == {"team": "storage"}
    cli(db, "servers", "set-interval", "db-1", "45")
    assert show(db, "db-1")["interval"] == 45.0
    cli(db, "servers", "set-interval", "db-1", "agent")
    assert show(db, "db-1")["registered_interval"] is None
    cli(db, "servers", "remove", "db-1")
    cli(db, "servers", "show", "db-1", expect=1)


def test_tokens_rotate_and_revoke(db):
    cli(db, "servers", "register", "db-1")
    token = cli(db, "tokens", "rotate", "db-1").stdout.strip()
    assert open_store(db).token_hashes("db-1") == [hash_token(token)]
    newer = cli(db, "tokens", "rotate", "db-1", "--keep-previous-for", "1h").stdout.strip()
    assert sorted(open_store(db).token_hashes("db-1")) == sorted(
        [hash_token(token), hash_token(newer)])
    cli(db, "tokens", "revoke", "db-1")
    assert open_store(db).token_hashes("db-1") == []


def test_forget_removes_silent_servers(db):
    cli(db, "servers", "register", "db-1")
    assert "forgot 0 servers" in cli(db, "servers", "forget", "--silent-days", "1").stdout


@pytest.mark.parametrize("args,expect,message", [
    (["servers", "register", "bad!id"], 2, "server_id must be"),
    (["servers", "register", "a", "--label", "novalue"], 2, "--label takes name=value"),
    (["servers", "register", "a", "--label", "job=x"], 2, "reserved"),
    (["servers", "pause", "ghost"], 1, "no server 'ghost'"),
    (["servers", "pause", "a", "--for", "later"], 2, "for must be"),
    (["servers", "set-interval", "a", "fast"], 2, "interval must be a number"),
    (["servers", "forget", "--silent-days", "0"], 2, "days must be a positive number"),
    (["tokens", "revoke", "ghost"], 1, "no server 'ghost'"),
])
def test_bad_commands_exit_non_zero_with_one_clear_line(db, args, expect, message):
    result = cli(db, *args, expect=expect)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_database_url_is_named(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bridge", "--database-url", "mysql://x",
                             "servers", "list"], cwd=ROOT, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    assert "HEARTBEAT_DATABASE_URL" in result.stderr


@pytest.mark.parametrize("args", [
    ("--until", "nan"), ("--until", "inf"), ("--until=-inf",), ("--until", "1e400"),
    ("--until", "9223372036854775808"), ("--for", "1" + "0" * 400),
])
def test_pause_refuses_times_no_clock_can_reach(db, args):
    cli(db, "servers", "register", "db-1")
    result = cli(db, "servers", "pause", "db-1", *args, expect=2)
    assert "Traceback" not in result.stderr and "must be" in result.stderr
    assert show(db, "db-1")["paused"] is False


def test_show_and_list_print_any_stored_value(db):
    cli(db, "servers", "register", "db-1")
    store = open_store(db)
    store.pause("db-1", until=1e13)  # year 318857: as an older bridge could have stored it
    store.register("db-2")
    store.pause("db-2", until=float("inf"))
    text = cli(db, "servers", "show", "db-1").stdout
    assert "out of the calendar's range" in text
    assert show(db, "db-2")["paused_until"] is None
    listing = json.loads(cli(db, "servers", "list", "--json").stdout)
    assert {s["server_id"] for s in listing} == {"db-1", "db-2"}


def test_list_shows_each_servers_enrolment(db):
    cli(db, "servers", "register", "db-1", "--token")
    cli(db, "servers", "register", "db-2")
    rows = {line.split()[0]: line.split() for line in
            cli(db, "servers", "list").stdout.splitlines()[1:]}
    assert "enrolled" in rows["db-1"] and "open" in rows["db-2"]
    cli(db, "tokens", "revoke", "db-1")
    assert show(db, "db-1")["enrolment"] == "open"


PASSWORD = "s3cret-db-password"


def test_check_config_masks_the_database_password(pg_url):
    """The test database trusts every connection, so the password only has to stay unseen."""
    result = cli(pg_url.replace("postgres@", f"postgres:{PASSWORD}@"), "check-config")
    assert "store: reachable" in result.stdout
    assert PASSWORD not in result.stdout + result.stderr
    assert "postgres:***@127.0.0.1" in result.stdout


@pytest.mark.parametrize("args", [
    ["--database-url", f"postgresql://u:{PASSWORD}@[::1/db", "servers", "list"],
    ["--database-url", f"postgresql://u:{PASSWORD}@h/db?nonsense=1", "servers", "list"],
    ["--database-url", f"mysql://u:{PASSWORD}@h/db", "servers", "list"],
    ["--url", f"https://admin:{PASSWORD}@bad host/", "servers", "list"],
    ["--database-url", f"postgresql://u@h/db?password={PASSWORD}&nonsense=1", "servers",
     "list"],
])
def test_no_error_prints_a_password_from_a_url(args):
    result = subprocess.run([sys.executable, "-m", "bridge", *args], cwd=ROOT, text=True,
                            capture_output=True, timeout=30)
    assert result.returncode != 0
    assert result.stderr.startswith("heartbeat-bridge: "), result.stderr
    assert PASSWORD not in result.stdout + result.stderr
