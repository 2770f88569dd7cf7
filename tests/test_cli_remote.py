"""`heartbeat-bridge --url ...`: the same commands and output through a live bridge's admin API."""
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from bridge.auth import hash_token
from bridge.store import open_store
from tests.tools import ROOT, Bridge, free_port

pytestmark = pytest.mark.live  # every test here starts a real program

ADMIN_TOKEN = "remote-admin-token-0123"


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    db = f"sqlite:///{tmp_path_factory.mktemp('remote') / 'bridge.db'}"
    bridge = Bridge(db, HEARTBEAT_ADMIN_TOKEN=ADMIN_TOKEN,
                    HEARTBEAT_TOKEN="fleet-token-0123").start()
    bridge.db = db
    yield bridge
    bridge.stop()


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "admin-token"
    path.write_text(ADMIN_TOKEN + "\n")
    return path


def run(*args, env=None, expect=0):
    base = {k: v for k, v in os.environ.items() if not k.startswith("HEARTBEAT_")}
    result = subprocess.run([sys.executable, "-m", "bridge", *args], cwd=ROOT,
                            env={**base, **(env or {})}, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == expect, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


def remote(bridge, *args, expect=0):
    """The CLI on the bridge's admin API, URL and token from the environment."""
    return run(*args, env={"HEARTBEAT_URL": bridge.url, "HEARTBEAT_ADMIN_TOKEN": ADMIN_TOKEN},
               expect=expect)


def local(bridge, *args, expect=0):
    """The CLI on the bridge's own SQLite file."""
    return run("--database-url", bridge.db, *args, expect=expect)


def store(bridge):
    return open_store(bridge.db)


def test_every_command_acts_on_the_remote_store(bridge, token_file):
    out = run("--url", bridge.url, "--admin-token-file", str(token_file), "servers", "register",
              "rm-1", "--interval", "60", "--label", "team=db", "--token").stdout
    token = [line.split()[-1] for line in out.splitlines() if line.startswith("token ")][0]
    assert store(bridge).token_hashes("rm-1") == [hash_token(token)]
    server = store(bridge).get("rm-1")
    assert (server.registered_interval, server.labels) == (60.0, {"team": "db"})

    remote(bridge, "servers", "pause", "rm-1", "--for", "2h", "--reason", "disk swap")
    assert store(bridge).get("rm-1").pause_reason == "disk swap"
    remote(bridge, "servers", "resume", "rm-1")
    assert store(bridge).get("rm-1").paused is False
    remote(bridge, "servers", "relabel", "rm-1", "--label", "team=storage")
    assert store(bridge).get("rm-1").labels == {"team": "storage"}
    remote(bridge, "servers", "set-interval", "rm-1", "45")
    assert store(bridge).get("rm-1").registered_interval == 45.0
    remote(bridge, "servers", "set-interval", "rm-1", "agent")
    assert store(bridge).get("rm-1").registered_interval is None
    remote(bridge, "servers", "retire", "rm-1")
    assert store(bridge).get("rm-1").retired_at is not None
    remote(bridge, "servers", "unretire", "rm-1")
    assert store(bridge).get("rm-1").retired_at is None

    newer = remote(bridge, "tokens", "rotate", "rm-1", "--keep-previous-for", "1h").stdout.strip()
    assert sorted(store(bridge).token_hashes("rm-1")) == sorted(
        [hash_token(token), hash_token(newer)])
    assert "revoked the token of rm-1" in remote(bridge, "tokens", "revoke", "rm-1").stdout
    assert store(bridge).token_hashes("rm-1") == []
    assert remote(bridge, "servers", "remove", "rm-1").stdout == "removed rm-1\n"
    local(bridge, "servers", "show", "rm-1", expect=1)


def test_show_and_list_print_exactly_what_they_print_on_the_store(bridge):
    remote(bridge, "servers", "register", "same-1", "--label", "team=web", "--label", "env=prod")
    remote(bridge, "servers", "register", "same-2", "--interval", "120")
    assert bridge.beat("same-1", token="fleet-token-0123", json={"interval": 20, "seq": 3,
                                                                 "hostname": "web"}).ok
    remote(bridge, "servers", "pause", "same-2", "--for", "1h", "--reason", "swap")
    for args in (["servers", "list"], ["servers", "list", "--json"],
                 ["servers", "show", "same-1"], ["servers", "show", "same-1", "--json"],
                 ["servers", "show", "same-2"]):
        assert remote(bridge, *args).stdout == local(bridge, *args).stdout, args
    assert "same-1" in remote(bridge, "servers", "list").stdout


@pytest.mark.parametrize("args,expect,message", [
    (["servers", "register", "bad!id"], 2, "server_id must be"),
    (["servers", "register", "a", "--label", "novalue"], 2, "--label takes name=value"),
    (["servers", "register", "err-a", "--label", "job=x"], 2, "reserved"),
    (["servers", "register", "err-a", "--interval", "0.1"], 2, "interval"),
    (["servers", "pause", "ghost"], 1, "no server 'ghost'"),
    (["servers", "show", "ghost"], 1, "no server 'ghost'"),
    (["servers", "pause", "ghost", "--for", "later"], 2, "for must be"),
    (["servers", "set-interval", "ghost", "fast"], 2, "interval must be a number"),
    (["tokens", "revoke", "ghost"], 1, "no server 'ghost'"),
    (["tokens", "rotate", "ghost", "--keep-previous-for", "soon"], 2, "keep_previous_for"),
])
def test_api_errors_print_the_same_line_as_on_the_store(bridge, args, expect, message):
    through_api = remote(bridge, *args, expect=expect)
    on_store = local(bridge, *args, expect=expect)
    assert message in through_api.stderr
    assert through_api.stderr == on_store.stderr


def test_registering_twice_is_refused_alike(bridge):
    remote(bridge, "servers", "register", "twice-1")
    assert "server 'twice-1' is registered already" in remote(
        bridge, "servers", "register", "twice-1", expect=1).stderr


def test_a_wrong_admin_token_is_one_line_without_the_token(bridge, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-admin-token")
    result = run("--url", bridge.url, "--admin-token-file", str(wrong), "servers", "list",
                 expect=1)
    assert "401 invalid_token" in result.stderr
    assert "not-the-admin-token" not in result.stdout + result.stderr


def test_the_token_is_never_a_flag_value(bridge):
    # argparse would take --admin-token as an abbreviation of --admin-token-file
    result = run("--url", bridge.url, "--admin-token", ADMIN_TOKEN, "servers", "list",
                 expect=2)
    assert ADMIN_TOKEN not in result.stdout + result.stderr


@pytest.mark.parametrize("args", [
    ["servers", "list", "--admin-token", ADMIN_TOKEN],
    ["servers", "list", f"--admin-token={ADMIN_TOKEN}"],
    ["servers", "list", ADMIN_TOKEN],
    [ADMIN_TOKEN, "servers", "list"],
    ["servers", ADMIN_TOKEN],
    ["servers", "register", "db-1", "--interval", ADMIN_TOKEN],
    ["healthcheck", "--path", ADMIN_TOKEN],
    ["--admin-token-file", ADMIN_TOKEN, "--url", "http://127.0.0.1:1", "servers", "list"],
])
def test_no_error_repeats_a_value_typed_on_the_command_line(args):
    result = run(*args, expect=2)
    assert ADMIN_TOKEN not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("heartbeat-bridge")


def test_without_a_token_the_cli_says_where_to_put_it(bridge):
    result = run("--url", bridge.url, "servers", "list", expect=2)
    assert "HEARTBEAT_ADMIN_TOKEN_FILE" in result.stderr and "--admin-token-file" in result.stderr


def test_an_unreachable_bridge_is_one_plain_line():
    url = f"http://127.0.0.1:{free_port()}"
    result = run("--url", url, "servers", "list", env={"HEARTBEAT_ADMIN_TOKEN": ADMIN_TOKEN},
                 expect=1)
    assert result.stderr == f"heartbeat-bridge: {url}: connection refused\n"


def test_tls_to_a_plain_http_bridge_is_one_plain_line(bridge):
    url = bridge.url.replace("http://", "https://")
    result = run("--url", url, "servers", "list", env={"HEARTBEAT_ADMIN_TOKEN": ADMIN_TOKEN},
                 expect=1)
    assert result.stderr.startswith(f"heartbeat-bridge: {url}: TLS error: ")
    assert len(result.stderr.splitlines()) == 1 and "SSLError" not in result.stderr


def test_a_bridge_that_hangs_up_is_one_plain_line():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"

        def hang_up():
            connection, _ = listener.accept()
            connection.recv(4096)
            connection.close()
        thread = threading.Thread(target=hang_up)
        thread.start()
        result = run("--url", f"http://admin:pw-in-url@127.0.0.1:{url.rsplit(':', 1)[1]}",
                     "servers", "list", env={"HEARTBEAT_ADMIN_TOKEN": ADMIN_TOKEN}, expect=1)
        thread.join(timeout=10)
    assert result.stderr.endswith(
        ": the bridge closed the connection without answering\n"), result.stderr
    assert "pw-in-url" not in result.stderr and "admin:***@" in result.stderr


@pytest.mark.parametrize("args,message", [
    (["--url", "ftp://x", "servers", "list"], "--url: expected http(s)://"),
    (["--url", "http://x", "--database-url", "sqlite:///x.db", "servers", "list"], "not both"),
    (["--admin-token-file", "/nonexistent", "servers", "list"], "needs --url"),
])
def test_bad_remote_flags_are_named(args, message):
    assert message in run(*args, expect=2).stderr


def test_forget_needs_the_store(bridge):
    result = remote(bridge, "servers", "forget", "--silent-days", "3", expect=1)
    assert "--database-url" in result.stderr


def test_admin_api_off_is_reported(tmp_path):
    bridge = Bridge(f"sqlite:///{tmp_path / 'off.db'}", HEARTBEAT_TOKEN="fleet-token-0123").start()
    try:
        result = remote(bridge, "servers", "list", expect=1)
    finally:
        bridge.stop()
    assert "404 admin_disabled" in result.stderr


def test_json_listing_is_the_admin_api_answer(bridge):
    remote(bridge, "servers", "register", "json-1")
    listed = json.loads(remote(bridge, "servers", "list", "--json").stdout)
    assert "json-1" in [s["server_id"] for s in listed]


def test_a_server_without_an_interval_shows_the_bridges_default_not_the_clis(tmp_path):
    """The bridge holds such a server to its own HEARTBEAT_DEFAULT_INTERVAL; the CLI, run
    with another default, shows and judges it by the bridge's."""
    bridge = Bridge(f"sqlite:///{tmp_path / 'b.db'}", HEARTBEAT_ADMIN_TOKEN=ADMIN_TOKEN,
                    HEARTBEAT_TOKEN="fleet-token-0123", HEARTBEAT_DEFAULT_INTERVAL="7200").start()
    try:
        remote(bridge, "servers", "register", "own-default")
        shown = json.loads(run("servers", "show", "own-default", "--json", env={
            "HEARTBEAT_URL": bridge.url, "HEARTBEAT_ADMIN_TOKEN": ADMIN_TOKEN,
            "HEARTBEAT_DEFAULT_INTERVAL": "10"}).stdout)
        listed = json.loads(run("servers", "list", "--json", env={
            "HEARTBEAT_URL": bridge.url, "HEARTBEAT_ADMIN_TOKEN": ADMIN_TOKEN,
            "HEARTBEAT_DEFAULT_INTERVAL": "10"}).stdout)
    finally:
        bridge.stop()
    assert shown["interval"] == 7200 and shown["registered_interval"] is None
    assert [(s["server_id"], s["interval"], s["state"]) for s in listed] == [
        ("own-default", 7200, "never_seen")]
