"""Hostile Accept and Transfer-Encoding headers against a live bridge (gunicorn): /metrics
negotiation never fails, every route reads a chunked body as it reads a sized one, and
hypothesis sends both headers to every route: never a 5xx, nothing changed by a refusal."""
import http.client
import json
import socket
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.tools import ADMIN_TOKEN, FLEET_TOKEN, Bridge

pytestmark = [pytest.mark.slow, pytest.mark.live]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MALFORMED_ACCEPT = ["application/openmetrics-text;version=abc",
                    "application/openmetrics-text; version=1.x.0",
                    "text/plain;version=abc",
                    "application/openmetrics-text;version=1.0.x;escaping=values"]


def chunked(data):
    """`data` sent as requests sends a generator: Transfer-Encoding: chunked, no length."""
    yield from (data[i:i + 5] for i in range(0, len(data), 5))


@pytest.mark.parametrize("render_process", ["true", "false"])
def test_a_malformed_accept_gets_the_text_format_and_no_traceback(live_bridge,
                                                                  render_process):
    bridge = live_bridge(HEARTBEAT_RENDER_PROCESS=render_process)
    for accept in MALFORMED_ACCEPT:
        response = requests.get(bridge.url + "/metrics", headers={"Accept": accept},
                                timeout=10)
        assert response.status_code == 200, (accept, response.text)
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        names = {f.name for f in text_string_to_metric_families(response.text)}
        assert "heartbeat_registered_servers" in names
    assert "Traceback" not in bridge.log()


def test_admin_requests_sent_chunked_act_on_the_body_sent(live_bridge):
    bridge = live_bridge()
    url = bridge.url + "/api/servers"
    token = requests.post(url, json={"server_id": "db-1", "token": True}, headers=ADMIN,
                          timeout=5).json()["token"]
    as_json = {**ADMIN, "Content-Type": "application/json"}
    before = time.time()
    paused = requests.post(url + "/db-1/pause", data=chunked(b'{"for": "1h"}'),
                           headers=as_json, timeout=5).json()["server"]
    assert before + 3500 < paused["paused_until"] < time.time() + 3700
    labelled = requests.patch(url + "/db-1", data=chunked(b'{"labels": {"team": "db"}}'),
                              headers=as_json, timeout=5).json()["server"]
    assert labelled["labels"] == {"team": "db"}
    rotated = requests.post(url + "/db-1/token", data=chunked(b'{"keep_previous_for": "1h"}'),
                            headers=as_json, timeout=5)
    assert rotated.status_code == 200
    assert bridge.beat("db-1", token).status_code == 200  # the old token kept for an hour
    assert bridge.beat("db-1", rotated.json()["token"]).status_code == 200


def test_a_chunked_admin_body_over_the_limit_is_refused_and_changes_nothing(live_bridge):
    bridge = live_bridge()
    url = bridge.url + "/api/servers"
    requests.post(url, json={"server_id": "db-1"}, headers=ADMIN, timeout=5)
    big = json.dumps({"labels": {"team": "db"}, "pad": "x" * 70000}).encode()
    response = requests.patch(url + "/db-1", data=chunked(big), timeout=10,
                              headers={**ADMIN, "Content-Type": "application/json"})
    assert response.status_code == 413
    assert requests.get(url + "/db-1", headers=ADMIN, timeout=5).json()["server"][
        "labels"] == {}


# --- fuzzing both headers on every route ----------------------------------------------------

# (method, path, token, body): every route, each on a server of its own, so one route's
# accepted requests (a rotated token, a pause, a removal) do not change what another is sent.
ROUTES = [
    ("POST", "/api/heartbeat/fz-beat/", "own", {"interval": 60}),
    ("POST", "/api/heartbeat/fz-bye/goodbye", "own", {"back_within": "1h"}),
    ("POST", "/api/heartbeat/fz-mnt/maintenance", "own", {"for": "1h"}),
    ("DELETE", "/api/heartbeat/fz-mnt/maintenance", "own", None),
    ("POST", "/api/heartbeat/fz-new/", FLEET_TOKEN, {}),
    ("GET", "/api/servers", ADMIN_TOKEN, None),
    ("POST", "/api/servers", ADMIN_TOKEN, {"server_id": "fz-reg", "labels": {"a": "b"}}),
    ("PATCH", "/api/servers/fz-adm", ADMIN_TOKEN, {"labels": {"team": "x"}}),
    ("POST", "/api/servers/fz-adm/pause", ADMIN_TOKEN, {"for": "1h"}),
    ("POST", "/api/servers/fz-adm/resume", ADMIN_TOKEN, None),
    ("GET", "/api/servers/fz-adm", ADMIN_TOKEN, None),
    ("POST", "/api/servers/fz-ret/retire", ADMIN_TOKEN, None),
    ("POST", "/api/servers/fz-ret/unretire", ADMIN_TOKEN, None),
    ("POST", "/api/servers/fz-rot/token", ADMIN_TOKEN, {"keep_previous_for": "1h"}),
    ("DELETE", "/api/servers/fz-rev/token", ADMIN_TOKEN, None),
    ("DELETE", "/api/servers/fz-del", ADMIN_TOKEN, None),
    ("GET", "/", ADMIN_TOKEN, None),
    ("GET", "/api/status", ADMIN_TOKEN, None),
    ("GET", "/metrics", None, None),
    ("GET", "/healthz", None, None),
    ("GET", "/readyz", None, None),
    ("GET", "/openapi.yaml", None, None),
    ("GET", "/api", None, None),
    ("GET", "/static/status.js", None, None),
]
OWN_TOKEN_SERVERS = ("fz-beat", "fz-bye", "fz-mnt")
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                    blacklist_characters="\x7f"), max_size=60)
ACCEPTS = st.one_of(
    st.sampled_from(MALFORMED_ACCEPT + ["*/*", "", "application/openmetrics-text",
                                        "text/plain;version=1.0.0;escaping=values",
                                        "application/json;q=0", "text/html, */*;q=0.1"]),
    st.builds("application/openmetrics-text;version={};escaping={}".format,
              HEADER_TEXT, HEADER_TEXT),
    HEADER_TEXT)
TRANSFER_ENCODINGS = st.one_of(
    st.none(),
    st.sampled_from(["chunked", "Chunked", "CHUNKED", "gzip, chunked", "chunked, chunked",
                     "identity", "gzip", "chunked, identity", " chunked", "chunked;x=1", ""]),
    HEADER_TEXT)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    db = tmp_path_factory.mktemp("headers") / "bridge.db"
    bridge = Bridge(f"sqlite:///{db}", HEARTBEAT_TOKEN=FLEET_TOKEN,
                    HEARTBEAT_ADMIN_TOKEN=ADMIN_TOKEN, HEARTBEAT_RATE_LIMIT_BURST="0",
                    HEARTBEAT_BODY_TIMEOUT="1").start()
    tokens = {}
    for server_id in OWN_TOKEN_SERVERS + ("fz-adm", "fz-ret", "fz-rot", "fz-rev", "fz-del"):
        answer = requests.post(bridge.url + "/api/servers", headers=ADMIN, timeout=5,
                               json={"server_id": server_id, "token": True})
        tokens[server_id] = answer.json()["token"]
    yield bridge, tokens
    bridge.stop()


def raw_request(port, method, path, headers, body, transfer_encoding):
    """(status, headers) of one request on a connection of its own, its Transfer-Encoding
    exactly as given (the body chunk-encoded when the last coding is chunked); status None
    when the bridge closed without an answer."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if transfer_encoding is None:
        lines.append(f"Content-Length: {len(body)}")
    else:
        lines.append(f"Transfer-Encoding: {transfer_encoding}")
        if transfer_encoding.strip().lower().endswith("chunked") and body:
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        elif transfer_encoding.strip().lower().endswith("chunked"):
            body = b"0\r\n\r\n"
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)  # a body the bridge waits for ends at its body timeout (408)
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return None, {}
        response.read()
        return response.status, dict(response.getheaders())


def fleet_state(bridge):
    return requests.get(bridge.url + "/api/servers", headers=ADMIN, timeout=10).json()


@pytest.mark.parametrize("route", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_no_route_fails_or_changes_anything_on_hostile_headers(fuzzed, route):
    bridge, tokens = fuzzed
    method, path, token, body = route
    server_id = path.split("/")[3] if path.startswith("/api/heartbeat/") else None
    token = tokens[server_id] if token == "own" else token

    @settings(max_examples=50, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(accept=ACCEPTS, transfer_encoding=TRANSFER_ENCODINGS)
    def check(accept, transfer_encoding):
        headers = {"Accept": accept, "Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        payload = b"" if body is None else json.dumps(body).encode()
        before = fleet_state(bridge)
        status, _ = raw_request(bridge.port, method, path, headers, payload, transfer_encoding)
        assert status is None or status < 500, (accept, transfer_encoding, status)
        if status is None or status >= 400:
            assert fleet_state(bridge) == before, (accept, transfer_encoding, status)

    check()
    assert "Traceback" not in bridge.log()
