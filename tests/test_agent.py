"""The agent against real HTTP(S) servers on loopback, run as a real process where it matters."""
import glob
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time

import pytest

from agent import heartbeat_agent as ha
from tests.agent_tools import (
    AGENT,
    TOKEN,
    BeatServer,
    FakeTime,
    agent_env,
    run_agent,
    stamped,
    start_agent,
    statuses,
    stop_agent,
)
from tests.tools import Bridge, free_port, require_binary, wait_until


@pytest.fixture
def conf(tmp_path):
    """An empty INI file, so no /etc/heartbeat-agent.conf on the test machine leaks in."""
    path = tmp_path / "agent.conf"
    path.write_text("[agent]\n")
    return path


# --- what a beat looks like ------------------------------------------------------------

@pytest.mark.live
def test_a_beat_arrives_with_path_token_headers_and_small_payload(conf):
    with BeatServer() as server:
        code, out, err = run_agent(conf, "--once", HEARTBEAT_URL=server.url,
                                   HEARTBEAT_TOKEN=TOKEN, HEARTBEAT_SERVER_ID="web-1.example")
    assert (code, out, err) == (0, "", "")
    [request] = server.requests
    assert (request["method"], request["path"]) == ("POST", "/api/heartbeat/web-1.example/")
    headers = request["headers"]
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"heartbeat-agent/{ha.VERSION}"
    body = json.loads(request["body"])
    assert set(body) == {"interval", "seq", "boot_time", "sent_at", "hostname", "agent_version"}
    assert (body["interval"], body["seq"], body["agent_version"]) == (30, 0, ha.VERSION)
    assert body["hostname"] == socket.gethostname()[:255]
    assert abs(body["sent_at"] - time.time()) < 5 and body["boot_time"] < body["sent_at"]
    assert b" " not in request["body"] and len(request["body"]) <= 200
    assert len(request["raw"]) <= 400, request["raw"]


def test_payload_is_trimmed_to_200_bytes_by_shortening_the_hostname():
    body = ha.build_payload(2**63 - 1, 86400, "h" * 300 + "\u00e9\x07", 1_700_000_000,
                            1_800_000_000.123456)
    data = json.loads(body)
    assert len(body) == 200 and data["hostname"] == "h" * len(data["hostname"])
    assert data["sent_at"] == 1_800_000_000.123 and data["interval"] == 86400
    assert json.loads(ha.build_payload(0, 2.5, "\u00e9" * 100, None, 0))["interval"] == 2.5
    assert len(ha.build_payload(0, 2.5, "\u00e9" * 100, None, 0)) <= 200


def test_seq_counts_every_attempt_and_the_url_prefix_is_kept():
    with BeatServer(script=statuses(500)) as server:
        config, _ = ha.load_config(["--config", os.devnull, "--url", server.url + "/hb/",
                                    "--server-id", "web-1"], environ={})
        agent = ha.Agent(config, log=lambda message: None)
        outcomes = [agent.beat() for _ in range(3)]
        agent.client.close()
    assert [o.ok for o in outcomes] == [False, True, True]
    assert [b["seq"] for b in server.bodies()] == [0, 1, 2]
    assert {r["path"] for r in server.requests} == {"/hb/api/heartbeat/web-1/"}
    assert "authorization" not in server.requests[0]["headers"]  # no token configured


def test_a_kept_alive_connection_closed_as_the_beat_is_sent_is_retried_once_on_a_new_one():
    def script(request):  # the second request arrives on the kept connection: drop it
        return "drop" if len(server.requests) == 2 else statuses()(request)
    with BeatServer(script=script) as server:
        config, _ = ha.load_config(["--config", os.devnull, "--url", server.url], environ={})
        agent = ha.Agent(config, log=lambda message: None)
        outcomes = [agent.beat() for _ in range(2)]
        agent.client.close()
    assert [o.ok for o in outcomes] == [True, True]
    assert [r["connection"] for r in server.requests] == [1, 1, 2]
    assert [b["seq"] for b in server.bodies()] == [0, 1, 1]  # the same beat, sent again


@pytest.mark.live
def test_check_prints_what_was_sent_and_what_was_answered(conf):
    with BeatServer() as server:
        code, out, _ = run_agent(conf, "--check", HEARTBEAT_URL=server.url,
                                 HEARTBEAT_TOKEN=TOKEN, HEARTBEAT_SERVER_ID="web-1")
    assert code == 0
    assert "server_id=web-1" in out and TOKEN not in out
    assert f"sent: POST {server.url}/api/heartbeat/web-1/ {{\"interval\":30," in out
    assert "answered: HTTP 200" in out and out.rstrip().endswith("ok: the bridge accepted the beat")


@pytest.mark.parametrize("script, reason", [
    (statuses(then=401), "HTTP 401 code_401: scripted"),
    (statuses(then=500), "HTTP 500 code_500: scripted"),
    (lambda r: (503, {}, b"<html>busy</html>"), "HTTP 503 Service Unavailable"),
    (lambda r: (301, {"Location": "https://x/"}, b""), "redirect to https://x/"),
    (lambda r: "drop", "closed the connection without answering"),
    (lambda r: "garbage", "bad answer (BadStatusLine)"),
])
@pytest.mark.live
def test_once_exits_1_with_one_line_naming_the_failure(conf, script, reason):
    with BeatServer(script=script) as server:
        code, out, err = run_agent(conf, "--once", HEARTBEAT_URL=server.url,
                                   HEARTBEAT_TOKEN=TOKEN)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith("heartbeat-agent: beat failed: ")
    assert reason in err


@pytest.mark.live
def test_what_the_server_says_stays_on_one_short_log_line(conf):
    answer = (500, {}, {"error": "bad\nline\x1b[31m", "message": "x" * 1000})
    with BeatServer(script=lambda r: answer) as server:
        code, _, err = run_agent(conf, "--once", HEARTBEAT_URL=server.url)
    assert code == 1 and err.count("\n") == 1 and len(err) < 300
    assert "HTTP 500 bad line [31m: xxx" in err


@pytest.mark.live
def test_once_exits_1_when_nothing_listens_or_the_server_hangs(conf):
    code, _, err = run_agent(conf, "--once", HEARTBEAT_URL=f"http://127.0.0.1:{free_port()}")
    assert (code, err) == (1, "heartbeat-agent: beat failed: connection refused\n")
    with BeatServer(script=lambda r: "hang") as server:
        started = time.monotonic()
        code, _, err = run_agent(conf, "--once", "--timeout", "0.3", HEARTBEAT_URL=server.url)
    assert (code, err) == (1, "heartbeat-agent: beat failed: no answer within 0.3s\n")
    assert time.monotonic() - started < 10  # the 0.3 s timeout, not the server's endless hang


@pytest.mark.live
def test_once_exits_1_when_the_name_does_not_resolve(conf):
    code, _, err = run_agent(conf, "--once", "--timeout", "2",
                             HEARTBEAT_URL="http://no-such-host.invalid")
    assert code == 1 and "no-such-host.invalid" in err  # cannot resolve, or lookup timed out


@pytest.mark.live
def test_once_exits_1_when_https_meets_a_plain_http_server(conf):
    with BeatServer() as server:
        code, _, err = run_agent(conf, "--once", "--timeout", "0.5",
                                 HEARTBEAT_URL=server.url.replace("http:", "https:"))
    assert (code, err) == (1, "heartbeat-agent: beat failed: no TLS handshake within 0.5s\n")


# --- the loop --------------------------------------------------------------------------

@pytest.mark.live
def test_loop_keeps_one_connection_and_logs_only_changes_of_state(conf):
    with BeatServer() as server:
        proc = start_agent(conf, HEARTBEAT_URL=server.url)
        try:
            wait_until(lambda: len(server.requests) >= 3, timeout=6, what="three beats")
        finally:
            log = stop_agent(proc)
    assert server.connections == 1
    assert [b["seq"] for b in server.bodies()][:3] == [0, 1, 2]
    gaps = [b["at"] - a["at"] for a, b in zip(server.requests, server.requests[1:])]
    assert all(0.9 < gap < 1.4 for gap in gaps), gaps  # the interval, +-5% jitter, no drift
    assert log.splitlines() == [
        f"heartbeat-agent: starting: beating {server.url} as web-1 every 1s (agent {ha.VERSION})",
        "heartbeat-agent: up: the bridge accepted the first beat",
        "heartbeat-agent: stopped"]


@pytest.mark.live
def test_loop_reconnects_when_the_server_closes_idle_connections(conf):
    with BeatServer(close_after=True) as server:
        proc = start_agent(conf, HEARTBEAT_URL=server.url)
        try:
            wait_until(lambda: len(server.requests) >= 3, timeout=6, what="three beats")
        finally:
            log = stop_agent(proc)
    assert server.connections == len(server.requests)
    assert "failing" not in log


@pytest.mark.live
def test_loop_keeps_the_normal_interval_on_401_and_logs_it_once(conf):
    with BeatServer(script=statuses(then=401)) as server:
        proc = start_agent(conf, HEARTBEAT_URL=server.url)
        try:
            wait_until(lambda: len(server.requests) >= 3, timeout=15, what="three beats")
        finally:
            log = stop_agent(proc)
    at = [r["at"] for r in server.requests]
    assert all(b - a > 0.5 for a, b in zip(at, at[1:])), at  # one per interval, no hammering
    assert log.count("failing: HTTP 401 code_401: scripted") == 1


@pytest.mark.live
def test_loop_backs_off_on_500_and_logs_recovery_with_the_failure_count(conf):
    with BeatServer(script=statuses(500, 500, 500)) as server:
        proc = start_agent(conf, HEARTBEAT_URL=server.url, HEARTBEAT_INTERVAL="60")
        try:
            wait_until(lambda: "recovered" in proc.log(), timeout=30, what="recovery")
        finally:
            log = stop_agent(proc)
    at = [r["at"] for r in server.requests]
    # backing off 0.5-1 s, then 1-2 s: the lower bounds hold on any machine, the upper ones
    # only tell a back-off from the 60 s interval
    assert 0.45 < at[1] - at[0] < 10 and 0.95 < at[2] - at[1] < 10, at
    assert log.count("failing: HTTP 500") == 1
    assert "recovered after 3 failed beat(s)" in log


@pytest.mark.live
def test_loop_honours_retry_after_on_429(conf):
    with BeatServer(script=statuses(429, retry_after=2)) as server:
        proc = start_agent(conf, HEARTBEAT_URL=server.url)
        try:
            wait_until(lambda: len(server.requests) >= 2, timeout=5, what="retry")
        finally:
            stop_agent(proc)
    assert server.requests[1]["at"] - server.requests[0]["at"] >= 1.95


@pytest.mark.live
def test_loop_survives_a_server_restart_and_a_hung_server(conf):
    server = BeatServer().start()
    port = server.port
    proc = start_agent(conf, HEARTBEAT_URL=server.url, HEARTBEAT_TIMEOUT="0.3")
    try:
        wait_until(lambda: server.requests, timeout=5, what="first beat")
        server.stop()  # refused while down
        wait_until(lambda: "failing: connection refused" in proc.log(), timeout=5, what="refused")
        server = BeatServer(port, script=lambda r: "hang").start()  # back, but hanging
        wait_until(lambda: "no answer within 0.3s" in proc.log(), timeout=5, what="timeout")
        server.stop()
        server = BeatServer(port).start()
        wait_until(lambda: "recovered after" in proc.log(), timeout=5, what="recovery")
        assert proc.running()
    finally:
        log = stop_agent(proc)
        server.stop()
    assert log.count("failing: connection refused") == 1
    assert log.count("failing: no answer within 0.3s") == 1
    assert log.count("recovered") == 1


@pytest.mark.live
def test_sigterm_ends_the_loop_at_once_mid_sleep_and_mid_request(conf):
    with BeatServer() as server:
        proc = start_agent(conf, HEARTBEAT_URL=server.url, HEARTBEAT_INTERVAL="600")
        wait_until(lambda: server.requests, timeout=5, what="first beat")
        time.sleep(0.2)
        assert "stopped" in stop_agent(proc)
    with BeatServer(script=lambda r: "hang") as server:
        proc = start_agent(conf, HEARTBEAT_URL=server.url, HEARTBEAT_TIMEOUT="300")
        wait_until(lambda: server.requests, timeout=5, what="hanging request")
        assert "stopped" in stop_agent(proc)


def scheduled_agent(server, fake, uniform, initial_delay="0"):
    config, _ = ha.load_config(["--config", os.devnull, "--url", server.url, "--interval", "10",
                                "--initial-delay", initial_delay], environ={})
    return ha.Agent(config, log=lambda message: None, clock=fake, sleep=fake.sleep,
                    uniform=uniform)


def test_beats_follow_a_fixed_grid_even_when_each_beat_takes_time():
    fake = FakeTime()
    with BeatServer(script=stamped(fake, takes=2.5)) as server:
        scheduled_agent(server, fake, uniform=lambda a, b: a).run(max_beats=4)
    assert [r["sent"] for r in server.requests] == [1000.0, 1010.0, 1020.0, 1030.0]


def test_initial_delay_and_jitter_stay_within_their_bounds():
    fake = FakeTime()
    with BeatServer(script=stamped(fake)) as server:
        scheduled_agent(server, fake, uniform=lambda a, b: b, initial_delay="7").run(max_beats=3)
    # the whole initial delay, then slots 10 s apart, each late by the full 5% jitter
    assert [r["sent"] for r in server.requests] == [1007.0, 1017.5, 1027.5]


def test_backoff_doubles_up_to_the_interval_then_the_grid_resumes():
    fake = FakeTime()
    with BeatServer(script=stamped(fake, statuses(*[500] * 5))) as server:
        scheduled_agent(server, fake, uniform=lambda a, b: b).run(max_beats=7)
    sent = [r["sent"] for r in server.requests]
    assert [b - a for a, b in zip(sent, sent[1:])][:5] == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert sent[6] == 1030.5  # recovered at 1025, back on the 10 s grid (+5% jitter)


# --- HTTPS -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA and a server certificate for IP 127.0.0.1, made by the real openssl."""
    openssl = require_binary("openssl")
    d = tmp_path_factory.mktemp("pki")
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    for argv in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
         "-days", "2", "-subj", "/CN=heartbeat test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
         "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf"],
    ):
        subprocess.run([openssl, *argv], cwd=d, check=True, capture_output=True, timeout=30)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d / "server.pem", d / "server.key")
    return d / "ca.pem", context


@pytest.mark.live
def test_https_beats_when_the_ca_is_trusted_and_is_refused_otherwise(conf, pki):
    ca, context = pki
    with BeatServer(tls=context) as server:
        code, _, err = run_agent(conf, "--once", HEARTBEAT_URL=server.url, HEARTBEAT_CA_FILE=ca,
                                 HEARTBEAT_TOKEN=TOKEN)
        assert (code, err) == (0, "")
        assert server.requests[0]["headers"]["authorization"] == f"Bearer {TOKEN}"
        code, _, err = run_agent(conf, "--once", HEARTBEAT_URL=server.url, HEARTBEAT_TOKEN=TOKEN)
    assert code == 1 and "TLS certificate rejected: unable to get local issuer" in err
    assert len(server.requests) == 1  # the token never left over an untrusted connection


@pytest.mark.live
def test_https_loop_reuses_one_tls_connection(conf, pki):
    ca, context = pki
    with BeatServer(tls=context) as server:
        proc = start_agent(conf, HEARTBEAT_URL=server.url, HEARTBEAT_CA_FILE=ca)
        try:
            wait_until(lambda: len(server.requests) >= 3, timeout=6, what="three beats")
        finally:
            stop_agent(proc)
    assert server.connections == 1


# --- configuration ---------------------------------------------------------------------

def test_settings_come_from_file_then_environment_then_flags(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-token-file\n")
    conf = tmp_path / "agent.conf"
    conf.write_text("[agent]\nurl = http://file:1\nserver_id = file-id\ntoken = from-file\n"
                    "interval = 11\ntimeout = 3\n")

    def load(argv=(), **env):
        config, _ = ha.load_config(["--config", str(conf), *argv], environ=env)
        return config.url, config.server_id, config.token, config.interval, config.timeout

    assert load() == ("http://file:1", "file-id", "from-file", 11, 3)
    assert load(HEARTBEAT_URL="http://env:2/", HEARTBEAT_INTERVAL="12",
                HEARTBEAT_TOKEN_FILE=str(token_file)) == \
        ("http://env:2", "file-id", "from-token-file", 12, 3)
    assert load(["--url", "http://flag:3", "--interval", "13", "--server-id", "flag-id"],
                HEARTBEAT_URL="http://env:2", HEARTBEAT_INTERVAL="12", HEARTBEAT_SERVER_ID="e",
                HEARTBEAT_TIMEOUT="") == ("http://flag:3", "flag-id", "from-file", 13, 3)
    assert load(["--token-file", str(token_file)], HEARTBEAT_TOKEN="from-env")[2] == \
        "from-token-file"


def test_defaults_and_a_missing_default_config_file(monkeypatch, tmp_path):
    monkeypatch.setattr(ha, "DEFAULT_CONFIG", str(tmp_path / "absent.conf"))
    config, args = ha.load_config([], environ={"HEARTBEAT_URL": "https://b.example"})
    assert (config.interval, config.timeout, config.initial_delay) == (30, 10, 30)
    assert config.back_within == 900
    assert config.server_id == socket.gethostname() and config.context.verify_mode == \
        ssl.CERT_REQUIRED
    assert not (args.once or args.check)


def test_a_systemd_credential_supplies_the_token(tmp_path):
    (tmp_path / "heartbeat-token").write_text("cred-token\n")
    config, _ = ha.load_config(["--config", os.devnull], environ={
        "HEARTBEAT_URL": "http://b", "CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert config.token == "cred-token"


@pytest.mark.parametrize("argv, env, ini, message", [
    ([], {"HEARTBEAT_INTERVAL": "abc"}, "",
     "HEARTBEAT_INTERVAL: must be a number between 1 and 86400, got 'abc'"),
    (["--interval", "0.5"], {}, "", "--interval: must be a number between 1 and 86400, got '0.5'"),
    ([], {"HEARTBEAT_TIMEOUT": "nan"}, "", "HEARTBEAT_TIMEOUT: must be a number between 0.1"),
    ([], {"HEARTBEAT_URL": ""}, "", "HEARTBEAT_URL: not set"),
    ([], {"HEARTBEAT_URL": "ftp://b"}, "", "HEARTBEAT_URL: must be an http:// or https:// URL"),
    ([], {"HEARTBEAT_URL": "http://b:99999"}, "", "HEARTBEAT_URL: has an invalid port"),
    ([], {"HEARTBEAT_SERVER_ID": "-web"}, "", "HEARTBEAT_SERVER_ID: must be 1-128 characters"),
    (["--server-id", "a" * 129], {}, "", "--server-id: must be 1-128 characters"),
    ([], {"HEARTBEAT_TOKEN": "two words"}, "", "HEARTBEAT_TOKEN: must be printable ASCII"),
    ([], {"HEARTBEAT_TOKEN_FILE": "/nonexistent/t"}, "",
     "HEARTBEAT_TOKEN_FILE: cannot read /nonexistent/t: No such file or directory"),
    ([], {"HEARTBEAT_TOKEN": "a", "HEARTBEAT_TOKEN_FILE": "/t"}, "",
     "HEARTBEAT_TOKEN and HEARTBEAT_TOKEN_FILE: set only one"),
    ([], {"HEARTBEAT_URL": "https://b", "HEARTBEAT_CA_FILE": "/nonexistent/ca.pem"}, "",
     "HEARTBEAT_CA_FILE: cannot load /nonexistent/ca.pem: No such file or directory"),
    ([], {}, "intervall = 5\n", "unknown key 'intervall' in [agent]"),
    ([], {}, "interval = 0\n", "agent.conf: interval: must be a number between 1 and 86400"),
    (["--initial-delay", "-1"], {}, "", "--initial-delay: must be a number between 0"),
    (["--bogus"], {}, "", "unknown option --bogus"),
])
@pytest.mark.live
def test_bad_settings_exit_2_with_one_line_naming_the_problem(tmp_path, argv, env, ini, message):
    conf = tmp_path / "agent.conf"
    conf.write_text("[agent]\n" + ini)
    env = {"HEARTBEAT_URL": "http://127.0.0.1:9", **env}
    code, out, err = run_agent(conf, *argv, **env)
    assert (code, out, err.count("\n")) == (2, "", 1), err
    assert err.startswith("heartbeat-agent: ") and message in err


@pytest.mark.parametrize("argv,message", [
    (["--token", "s3cret-TOKEN-value"], "unknown option --token"),  # not --token-file
    (["--tok", "s3cret-TOKEN-value"], "unknown option --tok"),
    (["--token-file", "s3cret-TOKEN-value"], "cannot read the file named there"),
    (["--token-file=s3cret-TOKEN-value"], "cannot read the file named there"),
    (["s3cret-TOKEN-value"], "unexpected value"),
])
@pytest.mark.live
def test_no_error_repeats_a_value_that_may_be_a_secret(conf, argv, message):
    code, out, err = run_agent(conf, *argv, HEARTBEAT_URL="http://127.0.0.1:9")
    assert code == 2 and message in err, err
    assert "s3cret" not in out + err


@pytest.mark.live
def test_an_explicit_config_file_must_exist_and_have_an_agent_section(tmp_path):
    code, _, err = run_agent(tmp_path / "absent.conf", "--once", HEARTBEAT_URL="http://b")
    assert (code, err) == (2, f"heartbeat-agent: --config: {tmp_path / 'absent.conf'}: "
                              "no such file\n")
    (tmp_path / "other.conf").write_text("[Agent]\nurl = http://b\n")
    code, _, err = run_agent(tmp_path / "other.conf", "--once")
    assert (code, err) == (2, f"heartbeat-agent: {tmp_path / 'other.conf'}: no [agent] section\n")


# --- portability -----------------------------------------------------------------------

@pytest.mark.live
def test_the_agent_needs_nothing_newer_than_python_3_8():
    # the venv's vermin when pytest runs from it, else the one on PATH
    beside = os.path.join(os.path.dirname(sys.executable), "vermin")
    vermin = beside if os.access(beside, os.X_OK) else require_binary("vermin")
    done = subprocess.run([vermin, "-t=3.8-", "--no-tips", "--violations", AGENT],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.live
def test_the_agent_runs_without_any_site_packages(tmp_path):
    copy = tmp_path / "heartbeat_agent.py"  # what an operator does: copy the one file
    copy.write_bytes(AGENT.read_bytes())
    done = subprocess.run([sys.executable, "-I", "-S", copy, "--version"], capture_output=True,
                          text=True, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"heartbeat-agent {ha.VERSION}\n", "")


def mapped_tls_libraries(pid):
    """Shared objects of OpenSSL and Python's _ssl module mapped into a process."""
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split()[-1].rsplit("/", 1)[-1] for line in maps
                if "libssl" in line or "/_ssl" in line}


@pytest.mark.live
def test_a_plain_http_loop_never_loads_tls_and_an_https_one_does(conf, pki):
    # http.client would import ssl (about 4 MB resident) for an http:// URL too
    ca, context = pki
    for tls, extra in ((None, {}), (context, {"HEARTBEAT_CA_FILE": ca})):
        with BeatServer(tls=tls) as server:
            proc = start_agent(conf, HEARTBEAT_URL=server.url, **extra)
            try:
                wait_until(lambda: server.requests, timeout=5, what="first beat")
                loaded = mapped_tls_libraries(proc.pid)
            finally:
                stop_agent(proc)
        assert bool(loaded) == bool(tls), loaded


def _python_3_8():
    """A working Python 3.8 interpreter if this machine has one (pyenv's or the system's)."""
    candidates = [shutil.which("python3.8"), "/usr/bin/python3.8",
                  *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))]
    for candidate in filter(None, candidates):
        try:
            subprocess.run([candidate, "-c", "import sys; assert sys.version_info[:2] == (3, 8)"],
                           check=True, capture_output=True, timeout=30)
            return candidate
        except (OSError, subprocess.SubprocessError):
            continue
    pytest.skip("no Python 3.8 interpreter on this machine (vermin still checks the syntax)")


@pytest.mark.live
def test_the_agent_beats_under_python_3_8(conf):
    python = _python_3_8()
    with BeatServer() as server:
        done = subprocess.run([python, "-I", AGENT, "--config", conf, "--once"], timeout=30,
                              env=agent_env(HEARTBEAT_URL=server.url, HEARTBEAT_TOKEN=TOKEN),
                              capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "")
    assert len(server.requests) == 1


# --- against the real bridge -----------------------------------------------------------

@pytest.mark.live
@pytest.mark.slow
def test_the_agent_beats_a_real_bridge_and_shows_up_in_metrics(conf, tmp_path):
    bridge = Bridge("sqlite:///" + str(tmp_path / "hb.db"), HEARTBEAT_TOKEN=TOKEN,
                    HEARTBEAT_METRICS="full").start()  # beat counts and agent facts
    proc = None
    try:
        proc = start_agent(conf, HEARTBEAT_URL=bridge.url, HEARTBEAT_SERVER_ID="agent-e2e")
        series = 'heartbeat_beats_total{server_id="agent-e2e"}'

        def beats():
            for line in bridge.metrics().splitlines():
                if line.startswith(series):
                    return float(line.split()[-1])
            return 0
        wait_until(lambda: beats() >= 1, timeout=8, what="first beat in /metrics")
        first = beats()
        wait_until(lambda: beats() >= first + 2, timeout=8, what="beats rising")
        metrics = bridge.metrics()
        assert f'agent_version="{ha.VERSION}"' in metrics
        assert 'heartbeat_agent_info{agent_version="%s",hostname="%s",server_id="agent-e2e"} 1.0' \
            % (ha.VERSION, socket.gethostname()) in metrics
        assert 'heartbeat_interval_seconds{server_id="agent-e2e"} 1.0' in metrics
        log = stop_agent(proc)
        assert "failing" not in log
    finally:
        if proc:
            proc.stop()
        bridge.stop()
