"""Property tests: arbitrary ids, labels and payloads get a clean 4xx or come out of /metrics
exactly, parseable, and without touching any other server's series.

One bridge (Flask test client, SQLite) accumulates everything the properties send; one test
registers a fleet of hostile labels and pause reasons of its own and runs promtool over the
whole exposition, in both formats (whatever ran before it).
"""
import itertools
import json
import subprocess
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

from bridge.asgi import BridgeASGI
from bridge.state import build_state
from bridge.validate import SERVER_ID
from tests.asgi_client import ServedApp
from tests.tools import ADMIN_TOKEN, FLEET_TOKEN, make_settings, require_binary

AUTH = {"Authorization": f"Bearer {FLEET_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CANARY = "canary-1"
CANARY_LABELS = {"team": "canary", "site": 'a "quoted" \\ site\u00e9'}
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Every character, lone surrogates included (JSON can carry them as "\ud800").
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=300)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12)
BEAT_FIELDS = ("interval", "seq", "boot_time", "sent_at", "hostname", "agent_version")
BEAT_BODIES = st.fixed_dictionaries({}, optional={
    **{name: JSON_VALUES for name in BEAT_FIELDS},
    "interval": st.floats(0, 100000) | JSON_VALUES,
    "hostname": ANY_TEXT | JSON_VALUES,
    "agent_version": ANY_TEXT,
    "extra": JSON_VALUES,
})
UNIQUE = itertools.count()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    db = tmp_path_factory.mktemp("properties") / "heartbeat.db"
    # Every family (the lean set's rendering is proven against the library in
    # test_exposition.py): counters and agent facts must come out exactly too.
    app = ServedApp(BridgeASGI(build_state(make_settings(f"sqlite:///{db}", metric_set="full"),
                                           rejection_flush_every=0)))
    test_client = app.test_client()
    assert test_client.post("/api/servers", headers=ADMIN, json={
        "server_id": CANARY, "labels": CANARY_LABELS}).status_code == 201
    assert test_client.post(f"/api/heartbeat/{CANARY}/", headers=AUTH, json={
        "hostname": "canary\\host", "agent_version": "1.0"}).status_code == 200
    yield test_client
    app.stop()


def exposition(client, *server_ids):
    """{server_id: {(name, labels): value}} of one scrape, for the servers named (always with
    the canary). Each server's lines are picked by their exact `server_id="..."` and parsed on
    their own, so a corrupt line fails loudly; the last test parses the whole exposition."""
    text = client.get("/metrics").get_data(as_text=True)
    servers = {}
    for server_id in (CANARY, *server_ids):
        marker = f'server_id="{server_id}"'
        lines = "".join(line + "\n" for line in text.split("\n")
                        if marker + "," in line or marker + "}" in line)
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(lines) for s in family.samples}
        if samples:
            assert {s[1] for s in samples} and all(
                dict(labels)["server_id"] == server_id for _, labels in samples)
            servers[server_id] = samples
    return servers


def assert_clean_refusal(response):
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error", "message"} and body["message"]


def check_round_trip(client, before, server_id, labels=None):
    """The server's series carry exactly its id and labels; the canary is untouched."""
    after = exposition(client, server_id)
    beats = [dict(labels) for (name, labels) in after[server_id]
             if name == "heartbeat_beats_total"]
    assert beats == [dict(labels or {}, server_id=server_id)]
    assert after[CANARY] == before[CANARY]


@PROPERTY
@given(server_id=st.text(st.characters(exclude_categories=("Cs",), exclude_characters="/"),
                         min_size=0, max_size=140) | st.from_regex(SERVER_ID, fullmatch=True))
@example(server_id="a" * 128)
@example(server_id="a" * 129)
@example(server_id="web-1\n")
@example(server_id="..")
def test_any_server_id_is_refused_cleanly_or_comes_out_exactly(client, server_id):
    before = exposition(client, server_id)
    response = client.post(f"/api/heartbeat/{quote(server_id, safe='')}/", headers=AUTH)
    if response.status_code != 200:
        assert_clean_refusal(response)
        assert response.status_code in (400, 429), server_id
        assert exposition(client, server_id) == before
        return
    assert SERVER_ID.match(server_id) and response.get_json()["server_id"] == server_id
    check_round_trip(client, before, server_id)


@PROPERTY
@given(body=BEAT_BODIES)
@example(body={"hostname": "\ud800"})
@example(body={"agent_version": "a\udfffb"})
@example(body={"hostname": 'x"}\n# HELP fake\nheartbeat_beats_total{server_id="canary-1"} 9'})
@example(body={"seq": 7.0, "interval": 1e3})
def test_any_beat_payload_is_refused_cleanly_or_exposed_exactly(client, body):
    server_id = f"payload-{next(UNIQUE)}"
    before = exposition(client, server_id)
    response = client.post(f"/api/heartbeat/{server_id}/", headers=AUTH,
                           data=json.dumps(body), content_type="application/json")
    if response.status_code != 200:
        assert_clean_refusal(response)
        assert exposition(client, server_id) == before
        return
    check_round_trip(client, before, server_id)
    info = [labels for (name, labels) in exposition(client, server_id)[server_id]
            if name == "heartbeat_agent_info"]
    assert info == [tuple(sorted({"server_id": server_id,
                                  "hostname": body.get("hostname") or "",
                                  "agent_version": body.get("agent_version") or ""}.items()))]


@PROPERTY
@given(body=st.binary(max_size=5000), content_type=st.sampled_from(
    ["application/json", "application/json; charset=latin-1", "text/plain", ""]))
@example(body=b'{"hostname": "\\ud800"}', content_type="application/json")
@example(body=b'\xff\xfe{"a":1}', content_type="application/json")
@example(body=b"[" * 3000, content_type="application/json")
def test_any_raw_body_is_refused_cleanly_or_accepted(client, body, content_type):
    server_id = f"raw-{next(UNIQUE)}"
    before = exposition(client, server_id)
    response = client.post(f"/api/heartbeat/{server_id}/", headers=AUTH, data=body,
                           content_type=content_type or None)
    if response.status_code != 200:
        assert_clean_refusal(response)
        assert exposition(client, server_id) == before
        return
    check_round_trip(client, before, server_id)


LABEL_NAMES = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True) | ANY_TEXT


@PROPERTY
@given(labels=st.dictionaries(LABEL_NAMES, ANY_TEXT | JSON_VALUES, max_size=18),
       reason=st.none() | ANY_TEXT)
@example(labels={"team": "\ud800"}, reason=None)
@example(labels={"team": "ok"}, reason="\udfff")
@example(labels={"le": "1"}, reason=None)
@example(labels={"team\n": "x"}, reason=None)
@example(labels={"team": 'a"\n\\'}, reason='b"\n\\')
def test_any_labels_and_pause_reason_are_refused_cleanly_or_exposed_exactly(client, labels,
                                                                             reason):
    server_id = f"labelled-{next(UNIQUE)}"
    before = exposition(client, server_id)
    response = client.post("/api/servers", headers=ADMIN,
                           json={"server_id": server_id, "labels": labels})
    if response.status_code != 201:
        assert_clean_refusal(response)
        assert exposition(client, server_id) == before
        return
    check_round_trip(client, before, server_id, labels)
    before = exposition(client, server_id)
    response = client.post(f"/api/servers/{server_id}/pause", headers=ADMIN,
                           json={"reason": reason})
    if response.status_code != 200:
        assert_clean_refusal(response)
        assert exposition(client, server_id) == before
        return
    after = exposition(client, server_id)
    maintenance = [dict(labels) for (name, labels) in after[server_id]
                   if name == "heartbeat_maintenance_info"]
    assert maintenance == [{"server_id": server_id, "reason": reason or ""}]
    assert after[CANARY] == before[CANARY]


# promtool's lint: operator label names are the operator's choice, camelCase included.
LINT_ONLY = "label names should be written in 'snake_case' not 'camelCase'"


@pytest.mark.live
@settings(max_examples=3, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(values=st.lists(ANY_TEXT, min_size=100, max_size=120),
       reasons=st.lists(st.none() | ANY_TEXT, min_size=30, max_size=30))
def test_a_fleet_of_hostile_labels_parses_in_both_formats_and_passes_promtool(client, values,
                                                                              reasons):
    promtool = require_binary("promtool")
    accepted = []
    for label_value in ["plain", 'a "quoted" \\ value\u00e9', *values]:
        server_id = f"fleet-{next(UNIQUE)}"
        if client.post("/api/servers", headers=ADMIN, json={
                "server_id": server_id, "labels": {"team": label_value}}).status_code == 201:
            accepted.append(server_id)
    for server_id, reason in zip(accepted, reasons):
        client.post(f"/api/servers/{server_id}/pause", headers=ADMIN, json={"reason": reason})
    text = client.get("/metrics").get_data(as_text=True)
    ids = {s.labels["server_id"] for family in text_string_to_metric_families(text)
           for s in family.samples if "server_id" in s.labels}
    assert len(accepted) >= 2 and ids >= set(accepted)
    om_text = client.get("/metrics", headers={
        "Accept": "application/openmetrics-text"}).get_data(as_text=True)
    om_ids = {s.labels["server_id"] for family in om_parse(om_text)
              for s in family.samples if "server_id" in s.labels}
    assert om_ids == ids  # the OpenMetrics parser is strict; promtool reads the text format
    result = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                            capture_output=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if line.strip() and not line.endswith(LINT_ONLY)]
    assert result.returncode in (0, 3) and not problems, problems[:20]
