"""The serving layer, live under gunicorn: slow and idle clients, forwarding headers behind a
real HAProxy, and malformed requests that must not put a token in the log."""
import resource
import selectors
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.tools import FLEET_TOKEN, Process, free_port, require_binary, wait_until

STALLED = 1000  # connections stalled in their headers, and as many in their bodies
IDLE = 10_000   # kept-alive connections left idle
READ_TIMEOUT = 3.0


@pytest.fixture(autouse=True)
def enough_files():
    """Thousands of sockets here and in the bridge (its processes inherit the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 2 * IDLE + 1000) if hard != resource.RLIM_INFINITY else 2 * IDLE + 1000
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    if max(soft, wanted) < IDLE + 500:
        pytest.fail(f"RLIMIT_NOFILE hard limit {hard} is too low for {IDLE} connections")
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Beater(threading.Thread):
    """A real agent's beats, one every 100 ms over a kept-alive session, until stopped."""

    def __init__(self, url, server_id="steady"):
        super().__init__(daemon=True)
        self.url = f"{url}/api/heartbeat/{server_id}/"
        self.stop_event = threading.Event()
        self.codes = []

    def run(self):
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {FLEET_TOKEN}"
            while not self.stop_event.wait(0.1) and len(self.codes) < 3000:
                try:
                    self.codes.append(session.post(self.url, json={"seq": 1}, timeout=5)
                                      .status_code)
                except requests.RequestException as exc:
                    self.codes.append(repr(exc))

    def stop(self):
        self.stop_event.set()
        self.join(10)
        return self.codes


def connect(port, count):
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(sock)
    return socks


def read_response(sock):
    """One whole answer (status line, headers, Content-Length bytes of body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def rss_kb(root_pid):
    """Resident memory of a process and its children, summed (kB)."""
    pids = [root_pid] + [int(p) for p in Path(f"/proc/{root_pid}/task/{root_pid}/children")
                         .read_text().split()]
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def wait_closed(socks, deadline):
    """{socket: (seconds after `started`, bytes the bridge sent before closing)} for every
    socket the bridge closed before the deadline."""
    selector = selectors.DefaultSelector()
    received = {}
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        received[sock] = b""
    closed = {}
    while len(closed) < len(socks) and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            sock = key.fileobj
            try:
                data = sock.recv(4096)
            except ConnectionResetError:
                data = b""
            if data:
                received[sock] += data
                continue
            closed[sock] = (time.monotonic(), received[sock])
            selector.unregister(sock)
    selector.close()
    return closed


@pytest.mark.live
def test_stalled_headers_and_bodies_are_cut_off_and_beats_never_fail(live_bridge):
    bridge = live_bridge(HEARTBEAT_HEADER_TIMEOUT=str(READ_TIMEOUT),
                         HEARTBEAT_BODY_TIMEOUT=str(READ_TIMEOUT),
                         HEARTBEAT_RATE_LIMIT_BURST="0")
    beater = Beater(bridge.url)
    beater.start()
    stalled = []
    try:
        opened_at = time.monotonic()
        headers = connect(bridge.port, STALLED)
        for i, sock in enumerate(headers):  # no token, and never the blank line
            sock.sendall(b"POST /api/heartbeat/slow-%d/ HTTP/1.1\r\nHost: x\r\nX-Slow: a" % i)
        bodies = connect(bridge.port, STALLED)
        for i, sock in enumerate(bodies):  # complete headers, 10 of 100 body bytes
            sock.sendall(b"POST /api/heartbeat/slow-%d/ HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                         b'{"seq": 1,' % i)
        stalled = headers + bodies
        opened_for = time.monotonic() - opened_at
        closed = wait_closed(stalled, time.monotonic() + READ_TIMEOUT + 60)
        codes = beater.stop()
    finally:
        beater.stop()
        for sock in stalled:
            sock.close()
    late = [t - opened_at for t, _ in closed.values()]
    print(f"\n{STALLED} connections stalled in headers and {STALLED} in bodies (opened in "
          f"{opened_for:.1f} s): {len(closed)} closed by the bridge, between "
          f"{min(late):.1f} and {max(late):.1f} s after the first was opened; "
          f"{len(codes)} beats meanwhile, every 100 ms")
    assert len(closed) == 2 * STALLED, "the bridge kept a stalled connection open"
    assert min(late) >= READ_TIMEOUT * 0.9  # cut off by the timeout, not before
    assert all(answer.startswith(b"HTTP/1.1 408 ") for _, answer in closed.values())
    assert len(codes) >= 10 and set(codes) == {200}, codes


@pytest.mark.live
def test_ten_thousand_idle_kept_alive_connections_cost_memory_not_beats(live_bridge):
    bridge = live_bridge(HEARTBEAT_RATE_LIMIT_BURST="0")
    before = rss_kb(bridge.pid)
    beater = Beater(bridge.url)
    beater.start()
    idle = []
    try:
        idle = connect(bridge.port, IDLE)
        request = (b"POST /api/heartbeat/idle/ HTTP/1.1\r\nHost: x\r\n"
                   b"Content-Length: 0\r\n\r\n")  # no token: 401, and the connection stays
        for sock in idle:
            sock.sendall(request)
        answered = 0
        for sock in idle:
            answer = read_response(sock)
            assert answer.startswith(b"HTTP/1.1 401 "), answer[:80]
            answered += 1
        going = len(beater.codes)  # idle, while beats go on: twenty more of them
        wait_until(lambda: len(beater.codes) >= going + 20, timeout=30, what="20 more beats")
        after = rss_kb(bridge.pid)
        for sock in idle[::100]:  # still open, and reused
            sock.sendall(request)
            assert read_response(sock).startswith(b"HTTP/1.1 401 ")
        codes = beater.stop()
    finally:
        beater.stop()
        for sock in idle:
            sock.close()
    print(f"\n{IDLE} idle kept-alive connections: bridge RSS (master + workers) "
          f"{before / 1024:.1f} MB before, {after / 1024:.1f} MB with them held "
          f"({(after - before) / IDLE:.1f} kB per connection); {len(codes)} beats meanwhile")
    assert answered == IDLE
    assert len(codes) >= 10 and set(codes) == {200}, codes


# -- forwarding headers behind a real proxy (issue 13, item 4) ----------------------------------
HAPROXY_CFG = """
global
    maxconn 256
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend agents
    bind 127.0.0.1:{front}
    acl beat path_beg /api/heartbeat/
    http-request deny deny_status 403 unless beat
    default_backend bridge
backend bridge
    server b1 127.0.0.1:{back}
"""
# What a client may add to get past an ACL that lets only /api/heartbeat/ through.
TRICKS = [
    ("/api/heartbeat/metrics", {"SCRIPT_NAME": "/api/heartbeat"}),
    ("/api/heartbeat/api/status", {"SCRIPT_NAME": "/api/heartbeat"}),
    ("/api/heartbeat/x", {"PATH_INFO": "/metrics", "SCRIPT_NAME": ""}),
    ("/api/heartbeat/x", {"X-Original-URL": "/metrics"}),
    ("/api/heartbeat/x", {"X-Rewrite-URL": "/api/status"}),
    ("/api/heartbeat/x", {"X-Forwarded-Prefix": "/api/heartbeat", "X-Forwarded-Path": "/metrics"}),
    ("/api/heartbeat/x", {"X-Script-Name": "/api/heartbeat", "X-Forwarded-For": "127.0.0.1",
                          "X-Forwarded-Proto": "https", "Forwarded": "for=127.0.0.1"}),
    ("/api/heartbeat/../metrics", {}),
    ("/api/heartbeat/%2e%2e/metrics", {}),
    ("/api/heartbeat/..%2fapi/status", {}),
]
SECRETS = ("heartbeat_registered_servers", '"counts"')


@pytest.mark.live
def test_no_forwarding_header_gets_past_a_proxy_acl_to_metrics_or_status(live_bridge, tmp_path):
    haproxy = require_binary("haproxy")
    bridge = live_bridge(HEARTBEAT_STATUS_PUBLIC="true")
    front = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CFG.format(front=front, back=bridge.port))
    proxy = Process([haproxy, "-db", "-f", config], name="haproxy").start()
    try:
        url = f"http://127.0.0.1:{front}"
        wait_until(lambda: requests.get(url + "/metrics", timeout=1).status_code == 403,
                   what="haproxy up")
        # Control: the bridge itself serves both, so a leak would show.
        assert SECRETS[0] in requests.get(bridge.url + "/metrics", timeout=5).text
        assert SECRETS[1] in requests.get(bridge.url + "/api/status", timeout=5).text
        assert requests.post(url + "/api/heartbeat/web-1/", timeout=5, headers={
            "Authorization": f"Bearer {FLEET_TOKEN}"}).status_code == 200
        for path, headers in TRICKS:
            for method in ("GET", "POST"):
                response = requests.request(method, url + path, headers=headers, timeout=5)
                assert response.status_code != 200 or "server_id" in response.json(), (
                    path, headers)
                for secret in SECRETS:
                    assert secret not in response.text, (method, path, headers)
    finally:
        proxy.stop()


# -- no token in the log (issue 13, item 5) -----------------------------------------------------
def raw_exchange(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.settimeout(5)
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return answer


@pytest.mark.live
def test_no_token_reaches_the_log_from_malformed_requests(live_bridge):
    token = "secret-token-MALFORMED-0123"
    bridge = live_bridge(HEARTBEAT_LOG_LEVEL="debug",
                         HEARTBEAT_TOKEN=token, HEARTBEAT_HEADER_TIMEOUT="1",
                         HEARTBEAT_BODY_TIMEOUT="1")
    tok = token.encode()
    requests_sent = [
        b"POST /api/heartbeat/web-1/ HTTP/1.1\r\nHost: x\r\nAuthorization Bearer " + tok +
        b"\r\n\r\n",                                                       # no colon
        b"POST /api/heartbeat/web-1/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tok +
        b"\x01\r\n\r\n",                                                   # control character
        b"POST /api/heartbeat/web-1/ HTTP/1.1\r\nHost: x\r\nAuthorization : Bearer " + tok +
        b"\r\n\r\n",                                                       # space before colon
        b"POST /api/heartbeat/web-1/ HTTP/1.1\r\nHost: x\r\n Authorization: Bearer " + tok +
        b"\r\n\r\n",                                                       # obsolete folding
        b"POST /api/heartbeat/web-1/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tok +
        b"\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n",                       # headers too large
        b"Bearer " + tok + b" /api/heartbeat/web-1/ HTTP/1.1\r\n\r\n",     # as the method
        b"POST /api/heartbeat/" + tok + b" HTTP/9.9\r\n\r\n",              # bad version
        b"POST /api/heartbeat/web-1/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tok +
        b"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + tok + b"\r\n",   # bad chunk
        b"POST /api/heartbeat/web-1/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tok +
        b"\r\nContent-Length: " + tok + b"\r\n\r\n",                       # bad length
        b"POST /api/heartbeat/web-1/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tok,
        # ^ cut off in the headers: the header timeout closes it
    ]
    answers = [raw_exchange(bridge.port, data) for data in requests_sent]
    assert bridge.beat("web-1", token).status_code == 200  # the token works
    bridge.stop()
    log = bridge.log()
    print("\nanswers " + ", ".join(a.split(b"\r\n", 1)[0].decode(
        errors="replace") or "(closed)" for a in answers))
    assert "[DEBUG]" in log
    assert all(a.startswith(b"HTTP/1.1 4") or not a for a in answers)  # none accepted
    assert sum(a.startswith(b"HTTP/1.1 4") for a in answers) >= 6  # refused, not ignored
    assert token not in log


# -- settings --------------------------------------------------------------------------------
def test_serving_settings_have_their_defaults_and_refuse_bad_values():
    from bridge.config import ConfigError, Settings
    settings = Settings.from_env({})
    assert (settings.keepalive, settings.header_timeout,
            settings.body_timeout, settings.trusted_proxies) == (75, 10.0, 10.0, ())
    assert settings.keepalive > settings.default_interval  # an agent reuses its connection
    proxies = Settings.from_env({"HEARTBEAT_TRUSTED_PROXIES": "10.0.0.1, 192.168.0.0/16,::1"})
    assert proxies.trusted_proxies == ("10.0.0.1", "192.168.0.0/16", "::1")
    for name, value in (("HEARTBEAT_TRUSTED_PROXIES", "proxy.example.org"),
                        ("HEARTBEAT_WORKER_CLASS", "gthread"),
                        ("HEARTBEAT_HEADER_TIMEOUT", "0"), ("HEARTBEAT_BODY_TIMEOUT", "nan")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})


def data_segments_in(sock):
    """Segments with data this socket has received (Linux tcp_info.tcpi_data_segs_in)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int.from_bytes(info[152:156], "little")


@pytest.mark.live
def test_a_beat_and_a_status_answer_each_arrive_in_one_segment(live_bridge):
    """Status line, headers and body go out in one send: a second send per answer costs
    the bridge a syscall and the agent's host a segment."""
    bridge = live_bridge(HEARTBEAT_RATE_LIMIT_BURST="0")
    with socket.create_connection(("127.0.0.1", bridge.port), timeout=5) as sock:
        body = b'{"seq": 1}'
        requests_sent = [
            b"POST /api/heartbeat/one-segment/ HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + FLEET_TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"]
        for request in requests_sent:
            before = data_segments_in(sock)
            sock.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(65536)
            head, _, rest = answer.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            while len(rest) < length:
                rest += sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert data_segments_in(sock) - before == 1, (request[:30], head)
