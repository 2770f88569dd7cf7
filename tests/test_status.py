"""The fleet status page `/` and `/api/status` over HTTP, on SQLite and PostgreSQL."""
import base64
import json
import math
import random
import re
import threading
import time

import pytest
import yaml

from bridge import status
from tests.tools import ADMIN_TOKEN, FLEET_TOKEN, ROOT, START, wait_until, write_rows

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FLEET = {"Authorization": f"Bearer {FLEET_TOKEN}"}
STATUS_TOKEN = "status-token-0123456789"


@pytest.fixture
def client(app_factory):
    """Snapshots computed per request: these tests change the fleet and look at once."""
    return app_factory(status_max_age=0).test_client()


def basic(password, user="anyone"):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def fleet_status(client):
    response = client.get("/api/status", headers=ADMIN)
    assert response.status_code == 200
    return response.get_json()


def states(client):
    return {s["server_id"]: s["state"] for s in fleet_status(client)["servers"]}


@pytest.mark.parametrize("silent,expected", [
    (0, "up"), (15, "up"), (15.5, "late"), (30, "late"), (30.5, "late"), (31, "down"),
    (3600, "down")])
def test_state_follows_the_alert_thresholds_in_intervals(client, clock, silent, expected):
    client.post("/api/heartbeat/web-1", headers=FLEET, json={"interval": 10})
    clock.advance(silent)
    assert states(client) == {"web-1": expected}


def test_registered_never_seen_and_paused_servers(client, clock):
    client.post("/api/servers", headers=ADMIN, json={"server_id": "new-1"})
    client.post("/api/heartbeat/db-1", headers=FLEET, json={"interval": 10})
    client.post("/api/servers/db-1/pause", headers=ADMIN, json={"for": "1m", "reason": "disk"})
    clock.advance(45)  # db-1 silent for 4.5 intervals: down, were it not paused
    body = fleet_status(client)
    db = next(s for s in body["servers"] if s["server_id"] == "db-1")
    assert (db["state"], db["paused_until"], db["pause_reason"]) == (
        "paused", clock.now + 15, "disk")
    assert states(client) == {"new-1": "never_seen", "db-1": "paused"}
    clock.advance(16)  # the pause has ended: the silence decides again
    assert states(client) == {"new-1": "never_seen", "db-1": "down"}


def test_a_server_that_said_goodbye_is_away_until_due_back(client, clock):
    client.post("/api/heartbeat/web-1", headers=FLEET, json={"interval": 10})
    response = client.post("/api/heartbeat/web-1/goodbye", headers=FLEET,
                           json={"back_within": "10m"})
    assert response.status_code == 200
    clock.advance(599)
    server = fleet_status(client)["servers"][0]
    assert (server["state"], server["expected_back"]) == ("away", clock.now + 1)
    clock.advance(2)  # not back when promised: judged by its silence again
    assert states(client) == {"web-1": "down"}
    client.post("/api/heartbeat/web-1", headers=FLEET, json={"interval": 10})
    assert states(client) == {"web-1": "up"}


def test_a_retired_server_is_retired_however_long_it_is_silent(client, clock):
    client.post("/api/heartbeat/old-1", headers=FLEET, json={"interval": 10})
    client.post("/api/servers/old-1/pause", headers=ADMIN)
    assert client.post("/api/servers/old-1/retire", headers=ADMIN).status_code == 200
    clock.advance(86400)
    body = fleet_status(client)
    assert (body["servers"][0]["state"], body["servers"][0]["retired_at"]) == (
        "retired", clock.now - 86400)
    assert body["counts"]["retired"] == 1


def test_servers_come_worst_first_and_retired_last(client, clock):
    for server_id in ("a-up", "b-late", "c-down", "d-away", "e-retired"):
        client.post(f"/api/heartbeat/{server_id}", headers=FLEET, json={"interval": 10})
    client.post("/api/heartbeat/d-away/goodbye", headers=FLEET)
    client.post("/api/servers/e-retired/retire", headers=ADMIN)
    client.post("/api/servers", headers=ADMIN, json={"server_id": "f-new"})
    client.post("/api/servers", headers=ADMIN, json={"server_id": "g-paused"})
    client.post("/api/servers/g-paused/pause", headers=ADMIN)
    clock.advance(20)
    client.post("/api/heartbeat/b-late", headers=FLEET, json={"interval": 10})
    clock.advance(11)
    client.post("/api/heartbeat/a-up", headers=FLEET, json={"interval": 10})
    clock.advance(5)  # c-down silent 36 s, b-late 16 s, a-up 5 s
    assert [(s["server_id"], s["state"]) for s in fleet_status(client)["servers"]] == [
        ("c-down", "down"), ("b-late", "late"), ("f-new", "never_seen"), ("d-away", "away"),
        ("g-paused", "paused"), ("a-up", "up"), ("e-retired", "retired")]


def test_json_has_counts_thresholds_and_servers_worst_first(client, clock):
    client.post("/api/servers", headers=ADMIN, json={"server_id": "new-1",
                                                    "labels": {"team": "web"}})
    client.post("/api/heartbeat/up-1", headers=FLEET, json={
        "interval": 10, "hostname": "up-1.example", "agent_version": "1.2.3",
        "boot_time": clock.now - 3600})
    client.post("/api/heartbeat/down-1", headers=FLEET, json={"interval": 1})
    clock.advance(5)
    body = fleet_status(client)
    assert body["generated_at"] == clock.now
    assert body["thresholds"] == {"late_after_intervals": 1.5, "down_after_intervals": 3.05,
                                  "default_interval": 30.0}
    assert body["counts"] == {"up": 1, "late": 0, "down": 1, "never_seen": 1, "paused": 0,
                              "away": 0, "retired": 0, "total": 3}
    assert [s["server_id"] for s in body["servers"]] == ["down-1", "new-1", "up-1"]
    assert body["servers"][2] == {
        "server_id": "up-1", "state": "up", "last_seen": clock.now - 5,
        "seconds_since_last_seen": 5.0, "interval": 10.0, "labels": {},
        "hostname": "up-1.example", "agent_version": "1.2.3", "boot_time": clock.now - 3605,
        "paused_until": None, "pause_reason": None, "expected_back": None, "retired_at": None}
    never = body["servers"][1]
    assert (never["last_seen"], never["seconds_since_last_seen"], never["labels"],
            never["interval"]) == (None, None, {"team": "web"}, 30.0)


def test_an_empty_fleet_has_zero_counts(client):
    body = fleet_status(client)
    assert body["counts"] == dict.fromkeys(["up", "late", "down", "never_seen", "paused",
                                            "away", "retired", "total"], 0)
    assert body["servers"] == []


@pytest.mark.parametrize("path", ["/", "/api/status"])
@pytest.mark.parametrize("headers,code", [
    ({}, 401),
    ({"Authorization": "Bearer wrong-token-0123456789"}, 401),
    ({"Authorization": f"Bearer {FLEET_TOKEN}"}, 401),  # a fleet token only sends beats
    (basic("wrong-token-0123456789"), 401),
    ({"Authorization": f"Digest {ADMIN_TOKEN}"}, 401),
    ({"Authorization": f"Bearer {ADMIN_TOKEN}"}, 200),
    (basic(ADMIN_TOKEN), 200),
    (basic(ADMIN_TOKEN, user=""), 200),
    ({"Authorization": f"Bearer {STATUS_TOKEN}"}, 200),
    (basic(STATUS_TOKEN), 200),
])
def test_it_needs_the_status_or_admin_token(app_factory, path, headers, code):
    client = app_factory(status_token=STATUS_TOKEN).test_client()
    response = client.get(path, headers=headers)
    assert response.status_code == code
    if code == 401:
        scheme = "Bearer" if path.startswith("/api/") else "Basic"
        assert response.headers["WWW-Authenticate"].startswith(scheme + " realm=")
        assert response.get_json()["error"] == "invalid_token"


def test_a_status_token_does_not_open_the_admin_api(app_factory):
    client = app_factory(status_token=STATUS_TOKEN).test_client()
    assert client.get("/api/servers", headers={"Authorization": f"Bearer {STATUS_TOKEN}"}
                      ).status_code == 401


@pytest.mark.parametrize("path", ["/", "/api/status"])
def test_it_is_off_with_a_hint_when_no_token_is_configured(app_factory, path):
    client = app_factory(admin_token="").test_client()
    response = client.get(path, headers=ADMIN)
    assert response.status_code == 404
    body = response.get_json()
    assert body["error"] == "status_disabled"
    assert "HEARTBEAT_STATUS_TOKEN" in body["message"]
    assert "HEARTBEAT_STATUS_PUBLIC=true" in body["message"]


@pytest.mark.parametrize("admin_token", ["", ADMIN_TOKEN])
def test_public_mode_needs_no_token(app_factory, admin_token):
    client = app_factory(status_public=True, admin_token=admin_token).test_client()
    assert client.get("/").status_code == 200
    assert client.get("/api/status").get_json()["counts"]["total"] == 0


def test_the_page_never_carries_a_token(app_factory):
    client = app_factory(status_token=STATUS_TOKEN).test_client()
    response = client.get("/", headers=basic(ADMIN_TOKEN))
    assert response.status_code == 200
    for secret in (ADMIN_TOKEN, STATUS_TOKEN, FLEET_TOKEN):
        assert secret not in response.get_data(as_text=True)


def test_the_page_and_its_assets_reference_nothing_outside_the_bridge(app_factory):
    client = app_factory(status_public=True).test_client()
    page = client.get("/")
    assert page.mimetype == "text/html"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert set(assets) == {"/static/status.css", "/static/status.js", "/api/status", "data:,"}
    bodies = {"/": html}
    for path in ("/static/status.css", "/static/status.js"):
        response = client.get(path)
        assert response.status_code == 200
        bodies[path] = response.get_data(as_text=True)
        response.close()
    for path, text in bodies.items():
        assert not re.search(r"https?:|ftp:|//[\w.-]+\.\w", text), path
        assert "@import" not in text and "url(" not in text, path


@pytest.mark.parametrize("kind,name,constant", [
    ("alert", "HeartbeatMissing", status.DOWN_AFTER),
    ("record", "heartbeat:missing:bool", status.DOWN_AFTER),
    ("record", "heartbeat:late:bool", status.LATE_AFTER),
])
def test_thresholds_are_the_shipped_rules_multipliers(kind, name, constant):
    """`silence > [bool] N * interval` in prometheus/rules.yml, N the page's constant."""
    groups = yaml.safe_load((ROOT / "prometheus" / "rules.yml").read_text())["groups"]
    rule = next(r for g in groups for r in g["rules"] if r.get(kind) == name)
    found = re.findall(r">\s*(?:bool\s+)?([\d.]+)\s*\*[^>]*?heartbeat_interval_seconds",
                       rule["expr"])
    assert [float(n) for n in found] == [constant], rule["expr"]


# -- views: filter, sort, pages, validators (issue 17) -------------------------------------
def seed(client, clock):
    """web-1..3 up (team web), db-1 late, db-2 down, new-1 never seen, old-1 retired."""
    for server_id in ("db-2", "db-1", "web-1", "web-2", "web-3", "old-1"):
        team = server_id.split("-")[0]
        client.post("/api/servers", headers=ADMIN, json={"server_id": server_id,
                                                        "labels": {"team": team}})
        client.post(f"/api/heartbeat/{server_id}", headers=FLEET,
                    json={"interval": 10, "hostname": f"{server_id}.example"})
        clock.advance(10 if server_id == "db-2" else 5)
    client.post("/api/servers", headers=ADMIN, json={"server_id": "new-1"})
    client.post("/api/servers/old-1/retire", headers=ADMIN)
    clock.advance(2)  # db-2 silent 37 s: down; db-1 27 s: late; web-* beat again now
    for server_id in ("web-1", "web-2", "web-3"):
        client.post(f"/api/heartbeat/{server_id}", headers=FLEET, json={"interval": 10})


def ids(client, query, headers=ADMIN):
    response = client.get("/api/status" + query, headers=headers)
    assert response.status_code == 200, response.get_json()
    return [s["server_id"] for s in response.get_json()["servers"]]


@pytest.mark.parametrize("query,expected", [
    ("", ["db-2", "db-1", "new-1", "web-1", "web-2", "web-3", "old-1"]),
    ("?state=problems", ["db-2", "db-1", "new-1"]),
    ("?state=up,retired", ["web-1", "web-2", "web-3", "old-1"]),
    ("?state=down,late&sort=server_id", ["db-1", "db-2"]),
    ("?q=team=web", ["web-1", "web-2", "web-3"]),
    ("?q=TEAM%3DDB+late", ["db-1"]),
    ("?q=example+2", ["db-2", "web-2"]),
    ("?q=never", ["new-1"]),
    ("?q=team=we", []),
    ("?sort=server_id&order=desc", ["web-3", "web-2", "web-1", "old-1", "new-1", "db-2", "db-1"]),
    ("?sort=state&order=desc", ["old-1", "web-1", "web-2", "web-3", "new-1", "db-1", "db-2"]),
    ("?sort=last_seen", ["web-1", "web-2", "web-3", "old-1", "db-1", "db-2", "new-1"]),
    ("?sort=last_seen&order=desc", ["new-1", "db-2", "db-1", "old-1", "web-1", "web-2", "web-3"]),
    ("?per_page=3", ["db-2", "db-1", "new-1"]),
    ("?per_page=3&page=3", ["old-1"]),
    ("?per_page=3&page=4", []),
])
def test_the_bridge_filters_sorts_and_pages(client, clock, query, expected):
    seed(client, clock)
    assert ids(client, query) == expected


def test_an_answer_says_what_it_shows_and_counts_every_state(client, clock):
    seed(client, clock)
    body = client.get("/api/status?state=problems&q=db&per_page=1&page=2",
                      headers=ADMIN).get_json()
    assert body["counts"] == {"up": 3, "late": 1, "down": 1, "never_seen": 1, "paused": 0,
                              "away": 0, "retired": 1, "total": 7}
    assert body["query"] == {"state": ["down", "late", "never_seen", "away", "paused"],
                             "q": "db", "sort": "state", "order": "asc", "page": 2,
                             "per_page": 1}
    assert (body["matched"], body["pages"]) == (2, 2)
    assert [s["server_id"] for s in body["servers"]] == ["db-1"]


@pytest.mark.parametrize("query,fragment", [
    ("?state=sleepy", "state:"), ("?state=", "state:"), ("?state=up,,down", "state:"),
    ("?state=Down", "state:"), ("?sort=", "sort:"), ("?page=", "page:"),
    ("?sort=cpu", "sort:"), ("?order=up", "order:"), ("?page=0", "page:"),
    ("?page=-1", "page:"), ("?page=1.5", "page:"), ("?per_page=1001", "per_page:"),
    ("?per_page=%D9%A3", "per_page:"), ("?q=" + "x" * 257, "q:"), ("?limit=5", "limit"),
])
def test_a_bad_query_gets_400_naming_the_parameter(client, query, fragment):
    response = client.get("/api/status" + query, headers=ADMIN)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_query"
    assert fragment in response.get_json()["message"]


def test_an_unchanged_view_answers_304_and_a_changed_one_200(client, clock):
    seed(client, clock)
    first = client.get("/api/status?state=problems", headers=ADMIN)
    etag = first.headers["ETag"]
    assert etag.startswith('W/"')
    clock.advance(1)  # time passes, nothing in the view changes state
    again = client.get("/api/status?state=problems", headers={**ADMIN, "If-None-Match": etag})
    assert (again.status_code, again.get_data(), again.headers["ETag"]) == (304, b"", etag)
    assert again.headers["Cache-Control"] == "no-store"
    other_view = client.get("/api/status?state=problems&sort=server_id",
                            headers={**ADMIN, "If-None-Match": etag})
    assert other_view.status_code == 200
    client.post("/api/heartbeat/db-1", headers=FLEET, json={"interval": 10})  # late -> up
    changed = client.get("/api/status?state=problems", headers={**ADMIN, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert [s["server_id"] for s in changed.get_json()["servers"]] == ["db-2", "new-1"]
    # Up servers beating change the "up" rows, not the opening view.
    etag = changed.headers["ETag"]
    client.post("/api/heartbeat/web-2", headers=FLEET, json={"interval": 10})
    assert client.get("/api/status?state=problems",
                      headers={**ADMIN, "If-None-Match": etag}).status_code == 304


def test_if_none_match_is_evaluated_as_rfc_9110_says(client, clock):
    """`*` matches whenever a current representation exists (13.1.2), which /api/status
    always has: a GET answers 304 (13.2.2). A list matches if any member matches weakly.
    An answer that would not be a 2xx ignores the precondition (13.2.1)."""
    seed(client, clock)
    etag = client.get("/api/status", headers=ADMIN).headers["ETag"]
    for value in ("*", f'"other", {etag}', etag[2:], f"W/{etag[2:]}, W/\"x\""):
        answer = client.get("/api/status", headers={**ADMIN, "If-None-Match": value})
        assert (answer.status_code, answer.headers["ETag"]) == (304, etag), value
    for value in ('"other"', "W/\"other\", \"x\"", ""):
        assert client.get("/api/status", headers={**ADMIN, "If-None-Match": value}
                          ).status_code == 200, value
    bad = client.get("/api/status?sort=nonsense", headers={**ADMIN, "If-None-Match": "*"})
    assert bad.status_code == 400
    unauthorised = client.get("/api/status", headers={"If-None-Match": "*"})
    assert unauthorised.status_code == 401


def test_a_snapshot_serves_every_request_until_it_is_max_age_old(app_factory, clock):
    client = app_factory(status_max_age=5).test_client()
    client.post("/api/servers", headers=ADMIN, json={"server_id": "new-1"})
    assert ids(client, "?state=problems") == ["new-1"]
    client.post("/api/servers", headers=ADMIN, json={"server_id": "new-2"})
    clock.advance(4.9)
    assert ids(client, "?state=problems") == ["new-1"]  # the snapshot taken 4.9 s ago
    clock.advance(0.1)
    assert ids(client, "?state=problems") == ["new-1", "new-2"]
    # The whole fleet: the last snapshot answers at once while a new one is computed.
    assert ids(client, "?state=all") == ["new-1", "new-2"]
    client.post("/api/servers", headers=ADMIN, json={"server_id": "new-3"})
    clock.advance(5)
    assert ids(client, "?state=all") == ["new-1", "new-2"]
    wait_until(lambda: ids(client, "?state=all") == ["new-1", "new-2", "new-3"], timeout=5,
               what="the background refresh")


def test_workers_share_one_snapshot_per_max_age(tmp_path, clock):
    """Two caches on one directory stand for two gunicorn workers (separate memories)."""
    from bridge.status import FleetSnapshot
    from bridge.status_cache import SnapshotCache
    built = []

    def build(kind):
        built.append(kind)
        return FleetSnapshot(clock(), {"total": len(built)}, [("up", "web-1")], kind == "fleet")

    workers = [SnapshotCache(build, ("fleet", "problems"), 5.0, str(tmp_path), clock=clock)
               for _ in range(2)]
    assert [w.get("problems").counts for w in workers] == [{"total": 1}, {"total": 1}]
    assert workers[1].get("problems").rows == [("up", "web-1")]
    clock.advance(4)
    assert [w.get("problems").counts for w in workers * 2] == [{"total": 1}] * 4
    assert workers[0].get("fleet").complete and built == ["problems", "fleet"]
    clock.advance(1)
    assert [w.get("problems").counts for w in workers] == [{"total": 3}, {"total": 3}]
    (tmp_path / "problems.snapshot").write_bytes(b"\x00garbage")  # a crashed writer's file
    clock.advance(5)
    assert workers[1].get("problems").counts == {"total": 4}
    assert built == ["problems", "fleet", "problems", "problems"]


# -- odd stored values (issue 13): never invalid JSON, never a lost row ---------------------
def write_raw(database_url, server_id, **columns):
    """Set columns of a server's row straight in the database, past every input check."""
    sets = ", ".join(f"{name} = ?" for name in columns)
    assert write_rows(database_url, f"UPDATE servers SET {sets} WHERE server_id = ?",
                      (*columns.values(), server_id)) == 1


def strict_loads(text):
    def refuse(constant):
        raise AssertionError(f"{constant} in JSON")
    return json.loads(text, parse_constant=refuse)


ODD_ROWS = {  # server id -> stored values no API accepts (any more)
    "p-inf": dict(paused=1, paused_until=math.inf, pause_reason="forever"),
    "p-1e13": dict(paused=1, paused_until=1e13),
    "p-minus-inf": dict(paused=1, paused_until=-math.inf),
    "away-inf": dict(expected_back=math.inf),
    "boot-1e13": dict(boot_time=1e13, last_seen=START - 1),
    "boot-inf": dict(boot_time=-math.inf, last_seen=START - 1),
    "seen-future": dict(last_seen=math.inf),
    "seen-minus-inf": dict(last_seen=-math.inf),
    "interval-inf": dict(registered_interval=math.inf, last_seen=START - 1e6),
    "interval-negative": dict(registered_interval=-5.0, last_seen=START - 1),
    "retired-inf": dict(retired_at=math.inf),
}


def test_odd_stored_values_give_strict_json_and_every_row(app_factory, database_url):
    client = app_factory(status_max_age=0).test_client()
    for server_id, columns in ODD_ROWS.items():
        client.post("/api/servers", headers=ADMIN, json={"server_id": server_id})
        write_raw(database_url, server_id, **columns)
    client.post("/api/servers", headers=ADMIN, json={"server_id": "plain-1"})
    for query in ("", "?state=problems", "?sort=last_seen", "?q=forever"):
        response = client.get("/api/status" + query, headers=ADMIN)
        assert response.status_code == 200
        body = strict_loads(response.get_data(as_text=True))
    body = strict_loads(client.get("/api/status", headers=ADMIN).get_data(as_text=True))
    rows = {s["server_id"]: s for s in body["servers"]}
    assert set(rows) == set(ODD_ROWS) | {"plain-1"}
    assert body["counts"]["total"] == len(rows) == sum(
        n for state, n in body["counts"].items() if state != "total")
    assert (rows["p-inf"]["state"], rows["p-inf"]["paused_until"]) == ("paused", None)
    assert (rows["p-1e13"]["state"], rows["p-1e13"]["paused_until"]) == ("paused", 1e13)
    assert rows["p-minus-inf"]["state"] == "never_seen"  # the pause ended long ago
    assert (rows["away-inf"]["state"], rows["away-inf"]["expected_back"]) == ("away", None)
    assert rows["boot-1e13"]["boot_time"] == 1e13 and rows["boot-inf"]["boot_time"] is None
    assert rows["seen-future"]["last_seen"] is None
    assert (rows["interval-inf"]["state"], rows["interval-inf"]["interval"]) == ("up", None)
    assert (rows["retired-inf"]["state"], rows["retired-inf"]["retired_at"]) == (
        "retired", None)


PICKS = {
    "last_seen": [0.0, -5.0, 1e13, START - 1, START - 14.5, START - 15, START - 15.5, START - 16,
                  START - 29.9, START - 31, START - 1000, START + 50, math.inf, -math.inf],
    "registered_interval": [None, 0.0, 10.0, 1.0, -10.0, 1e13, math.inf, -math.inf, math.nan],
    "declared_interval": [None, 0.0, 10.0, 30.0, math.inf, math.nan],
    "paused": [0, 0, 0, 1],
    "paused_until": [None, START - 1, START + 1, math.inf, -math.inf, 1e13, math.nan],
    "expected_back": [None, None, START - 1, START + 10, math.inf, math.nan],
    "retired_at": [None, None, None, START - 5, math.inf],
}


def test_the_opening_view_counts_and_lists_what_the_whole_fleet_does(store, database_url):
    """problem_snapshot scans in the database: same counts, same rows, odd values included."""
    rng = random.Random(17)
    for i in range(150):
        store.register(f"s-{i:03d}")
        write_raw(database_url, f"s-{i:03d}",
                  **{column: rng.choice(values) for column, values in PICKS.items()})
    fleet = status.fleet_snapshot(store, 10.0)
    problems = status.problem_snapshot(store, 10.0)
    assert problems.counts == fleet.counts
    assert problems.rows == [row for row in fleet.rows if row[status.STATE] != "up"]
    assert len(problems.rows) < len(fleet.rows) and fleet.counts["up"] > 0
    assert len({row[status.STATE] for row in fleet.rows}) == len(status.STATES)
    strict_loads(status.strict_json([status.row_json(r, START) for r in fleet.rows]))


# -- the CLI's `servers list` filters as /api/status does ----------------------------------
@pytest.mark.parametrize("query", [
    {}, {"state": "problems"}, {"state": "down,late", "sort": "state"},
    {"q": "team=web"}, {"q": "team=web down"}, {"q": "DB", "sort": "last_seen", "order": "desc"},
    {"state": "problems", "sort": "state", "per_page": "1", "page": "2"},
])
def test_the_cli_lists_with_the_filters_of_the_api(app_factory, clock, database_url, capsys,
                                                   query):
    from bridge import cli

    def run(*args):
        assert cli.main(["--database-url", database_url, "servers", *args]) == 0
        return capsys.readouterr().out

    now = clock.now = time.time()  # the CLI judges silence on the real clock
    for server_id, silent in (("web-1", 1), ("web-2", 100), ("db-1", 20), ("db-2", None)):
        run("register", server_id, "--label", f"team={server_id[:-2]}", "--interval", "10")
        if silent is not None:
            write_raw(database_url, server_id, last_seen=now - silent)
    options = [f"--{name.replace('_', '-')}={value}" for name, value in query.items()
               if name != "q"] + (["--filter", query["q"]] if "q" in query else [])
    if "sort" not in query:
        options.append("--sort=state")  # the CLI lists by id unless told; the API worst first
    listed = json.loads(run("list", "--json", *options))
    api = app_factory(status_max_age=0, default_interval=10).test_client()
    expected = [(s["server_id"], s["state"]) for s in api.get(
        "/api/status", query_string=query, headers=ADMIN).get_json()["servers"]]
    assert [(s["server_id"], s["state"]) for s in listed] == expected
    assert expected or query.get("q") == "team=web down"
    table = run("list", *options)
    assert table.splitlines()[0].split()[:2] == ["SERVER_ID", "STATE"]
    assert [line.split()[:2] for line in table.splitlines()[1:]] == [list(e) for e in expected]


def test_the_whole_fleet_is_answered_from_its_last_snapshot_while_a_new_one_is_computed(
        clock):
    from bridge.status import FleetSnapshot
    from bridge.status_cache import STALE_FOR, SnapshotCache
    built, release = [], threading.Event()

    def build(kind):
        if built:
            assert release.wait(10)  # a slow database
        built.append(kind)
        return FleetSnapshot(clock(), {"total": len(built)}, [], True)

    cache = SnapshotCache(build, ("fleet", "problems"), 5.0, clock=clock, serve_stale=("fleet",))
    assert cache.get("fleet").counts == {"total": 1}
    clock.advance(6)
    assert cache.get("fleet").counts == {"total": 1}  # at once: the last one
    release.set()
    wait_until(lambda: cache.get("fleet").counts == {"total": 2}, timeout=5,
               what="the background refresh")
    clock.advance(STALE_FOR * 5)  # too old to show even once: wait for a new one
    assert cache.get("fleet").counts == {"total": 3}
