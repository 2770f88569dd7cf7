"""The Grafana dashboard: its structure, and every query run by a real Prometheus on a real
bridge."""
import json
import re
import threading
import time

import pytest
import requests
import yaml

from bridge.metric_table import (
    AGENT_INFO,
    MAINTENANCE_INFO,
    METRIC_SETS,
    SAMPLE_SUFFIX,
    bridge_families,
    per_server,
)
from bridge.store import Snapshot
from tests.tools import (
    PROMETHEUS_RULES,
    ROOT,
    Bridge,
    Prometheus,
    require_binary,
    wait_until,
)

DASHBOARD = ROOT / "grafana" / "dashboards" / "heartbeat.json"
PROVISIONING = ROOT / "grafana" / "provisioning"
RULES = PROMETHEUS_RULES
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
FLEET_TOKEN = "fleet-token-dashboard"
ADMIN_TOKEN = "admin-token-dashboard"
# What Grafana would put in place of its variables when everything is selected.
GRAFANA_VARIABLES = {"$server_id": ".*", "$team": ".*", "$__rate_interval": "1m",
                     "$__interval": "15s", "$__range": "5m"}


def dashboard():
    return json.loads(DASHBOARD.read_text())


def panels(board=None):
    """Every panel, rows' nested panels included."""
    for panel in (board or dashboard())["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets(board=None):
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield panel, target


def substitute(expr, **selected):
    """The query as Grafana sends it, with everything selected or the given `name=value`s."""
    values = dict(GRAFANA_VARIABLES, **{f"${name}": value for name, value in selected.items()})
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


# --- structure ------------------------------------------------------------------------

def test_dashboard_has_a_fixed_uid_and_no_instance_id_or_inputs():
    board = dashboard()
    assert board["uid"] == "heartbeat-bridge"
    assert board.get("id") is None
    assert "__inputs" not in board and "__requires" not in board
    assert board["title"] and isinstance(board["schemaVersion"], int)


def test_datasource_is_a_variable_used_by_every_panel_target_variable_and_annotation():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
    custom = [a for a in board["annotations"]["list"] if not a.get("builtIn")]
    assert custom and all(a["datasource"] == DATASOURCE for a in custom)


def test_server_and_team_variables_filter_every_per_server_query():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    for name in ("server_id", "team"):
        assert variables[name]["type"] == "query"
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    for panel, target in targets(board):
        if "server_id" in target["expr"] or "heartbeat:" in target["expr"]:
            if "ALERTS" not in target["expr"]:
                assert 'team=~"$team"' in target["expr"], panel["title"]
            assert 'server_id=~"$server_id"' in target["expr"], panel["title"]


# Series that carry server_id and the operator labels: the team and server selections apply.
PER_SERVER_SERIES = ({family.name + SAMPLE_SUFFIX[family.typ] for metric_set in METRIC_SETS
                      for family in per_server(metric_set)[0]}
                     | {AGENT_INFO[0] + "_info", MAINTENANCE_INFO[0] + "_info"})
# Series that belong to no server (the bridge's own, and Prometheus' own of its scrape).
BRIDGE_SERIES = ({sample.name for family in bridge_families(Snapshot([], {"any": 1}, 0.0), 1, 0.0,
                                                            (0.0, 0.0))
                  for sample in family.samples}
                 | {"up", "scrape_duration_seconds", "heartbeat_bridge_http_requests_total",
                    "heartbeat_bridge_http_request_duration_seconds_bucket"})
WHOLE_BRIDGE = "Whole bridge: these series belong to no server"
PROMQL_WORDS = {"sum", "max", "min", "count", "avg", "rate", "increase", "vector", "time", "abs",
                "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "clamp_min", "changes", "label_values", "offset"}


def selectors(expr):
    """(metric name, label matchers text) of every series selector in a PromQL expression."""
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    found = []
    for match in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?", expr):
        name, matchers, call = match.groups()
        if call or name in PROMQL_WORDS or name.startswith("$"):
            continue
        found.append((name, matchers or ""))
    return found


def test_every_panel_honours_every_variable():
    """datasource in every panel and query; team and server_id in every selector of a series
    that belongs to a server. Series of no server (the bridge's, fleet-wide alerts) appear
    only where no selection can apply: panels that say so, or ALERTS without a server_id."""
    board = dashboard()
    team, server = 'team=~"$team"', 'server_id=~"$server_id"'
    queries = [(panel, target["expr"]) for panel, target in targets(board)]
    queries += [({"title": "annotation " + a["name"], "description": ""}, a["expr"])
                for a in board["annotations"]["list"] if "expr" in a]
    assert len(queries) > 20
    for panel, expr in queries:
        found = selectors(expr)
        assert found, f"{panel['title']}: no series in {expr}"
        whole_bridge = WHOLE_BRIDGE in panel.get("description", "")
        for name, matchers in found:
            where = f"{panel['title']}: {name}{matchers}"
            if name in PER_SERVER_SERIES or name.startswith("heartbeat:"):
                assert team in matchers and server in matchers, where
                assert not whole_bridge, where
            elif name == "ALERTS":
                assert ((team in matchers and server in matchers)
                        or 'server_id=""' in matchers), where
            else:
                assert name in BRIDGE_SERIES, f"{where}: a series of unknown kind"
                assert whole_bridge, f"{where}: not filtered, and the panel does not say why"
    for panel in panels(board):
        if panel["type"] != "row":
            assert panel["datasource"] == DATASOURCE, panel["title"]
            assert all(t["datasource"] == DATASOURCE for t in panel["targets"]), panel["title"]
    # A variable's choices honour the variables before it.
    variables = board["templating"]["list"]
    for index, variable in enumerate(variables):
        for earlier in variables[:index]:
            if variable["type"] == "query" and earlier["type"] == "query":
                name = earlier["name"]
                assert f'{name}=~"${name}"' in variable["query"], variable["name"]


def test_panel_ids_are_unique_and_the_grid_has_no_overlaps():
    seen_ids, cells = set(), set()
    for panel in panels():
        assert panel["id"] not in seen_ids, panel["title"]
        seen_ids.add(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["y"] >= 0 and grid["w"] > 0 and grid["h"] > 0
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))


def test_dashboard_shows_fleet_counts_servers_states_beats_and_bridge_health():
    by_title = {panel["title"]: panel for panel in panels()}
    for title in ("Up", "Missing", "Never seen", "Paused", "Away", "Retired"):
        assert by_title[title]["type"] == "stat"
    table = by_title["Servers"]
    overrides = json.dumps(table["fieldConfig"]["overrides"])
    assert table["type"] == "table" and "dateTimeFromNow" in overrides and "thresholds" in overrides
    assert by_title["Server state"]["type"] == "state-timeline"
    assert "heartbeat_last_seen_seconds" in json.dumps(by_title["Beats per minute"]["targets"])
    for title in ("Bridge targets up", "Scrape duration", "Rejected beats by reason"):
        assert by_title[title]["type"] == "timeseries"
    annotation = next(a for a in dashboard()["annotations"]["list"] if not a.get("builtIn"))
    assert 'ALERTS{alertname=~"Heartbeat.*"' in annotation["expr"]


def test_provisioning_loads_the_dashboard_folder_and_a_prometheus_datasource():
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "heartbeat.yml").read_text())
    provider = providers["providers"][0]
    assert providers["apiVersion"] == 1 and provider["type"] == "file"
    assert provider["options"]["path"]
    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert sources["datasources"][0]["type"] == "prometheus"


# --- live: a real Prometheus scraping a real bridge ------------------------------------

def admin(bridge, method, path, **kwargs):
    answer = requests.request(method, f"{bridge.url}/api/servers{path}", timeout=5,
                              headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, **kwargs)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


# web-1 booted a minute before its first beat (the bridge exports a boot time for 15
# minutes); db-1's clock runs 30 s ahead (it exports a skew beyond 10 s).
BOOTED = time.time() - 60
CLOCK_AHEAD = {"db-1": 30.0}


def beat(bridge, server_id):
    now = time.time()
    answer = bridge.beat(server_id, token=FLEET_TOKEN, json={
        "interval": 1, "boot_time": BOOTED if server_id == "web-1" else now - 3600,
        "sent_at": now + CLOCK_AHEAD.get(server_id, 0.0),
        "hostname": f"{server_id}.example", "agent_version": "test"})
    assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A real bridge with 7 servers (2 beating every second) and a real Prometheus on it,
    shared by the live tests (they only read)."""
    require_binary("prometheus")
    tmp_path = tmp_path_factory.mktemp("dashboard")
    bridge = Bridge(f"sqlite:///{tmp_path / 'hb.db'}", HEARTBEAT_TOKEN=FLEET_TOKEN,
                    HEARTBEAT_ADMIN_TOKEN=ADMIN_TOKEN).start()
    stop = threading.Event()
    prometheus = None
    try:
        servers = {"web-1": ("web", 1), "db-1": ("db", 1), "gone-1": ("web", 1),
                   "maint-1": ("web", 1), "never-1": ("ops", 60), "away-1": ("db", 1),
                   "old-1": ("ops", 1)}
        for server_id, (team, interval) in servers.items():
            admin(bridge, "POST", "", json={"server_id": server_id, "labels": {"team": team},
                                            "interval": interval})
        for server_id in ("web-1", "db-1", "gone-1", "maint-1", "away-1", "old-1"):
            beat(bridge, server_id)
        admin(bridge, "POST", "/maint-1/pause", json={"reason": "test"})
        admin(bridge, "POST", "/old-1/retire")
        goodbye = requests.post(f"{bridge.url}/api/heartbeat/away-1/goodbye", timeout=5,
                                json={"back_within": 600},
                                headers={"Authorization": f"Bearer {FLEET_TOKEN}"})
        assert goodbye.status_code == 200, goodbye.text
        # One rejected beat, so that "Rejected beats by reason" has a series.
        assert bridge.beat("web-1", token="not-a-token").status_code == 401

        def keep_beating():
            while not stop.wait(1.0):
                for server_id in ("web-1", "db-1"):
                    beat(bridge, server_id)

        beater = threading.Thread(target=keep_beating, daemon=True)
        beater.start()
        prometheus = Prometheus(tmp_path, [bridge.port]).start()
        yield bridge, prometheus
    finally:
        stop.set()
        if prometheus:
            prometheus.stop()
        bridge.stop()


@pytest.mark.live
def test_every_dashboard_query_returns_data_from_a_real_prometheus_on_a_real_bridge(fleet):
    bridge, prometheus = fleet
    # A few scrapes, and gone-1 silent for > 3 intervals so HeartbeatMissing is pending.
    wait_until(lambda: prometheus.value('count_over_time(up{job="heartbeat-bridge"}[1m])') >= 5
               and prometheus.query('ALERTS{alertname="HeartbeatMissing",server_id="gone-1"}'),
               timeout=40, interval=0.5, what=f"scrapes and a pending alert\n{prometheus.log()}")
    board = dashboard()
    for panel, target in targets(board):
        result = prometheus.query(substitute(target["expr"]))
        assert result, f"{panel['title']}: no data for {target['expr']}"
    for annotation in board["annotations"]["list"]:
        if "expr" in annotation:  # firing alerts: legitimately empty on a healthy fleet
            prometheus.query(substitute(annotation["expr"]))
    teams = requests.get(f"{prometheus.url}/api/v1/label/team/values",
                         params={"match[]": "heartbeat_last_seen_seconds"}, timeout=5).json()
    assert set(teams["data"]) == {"web", "db", "ops"}
    # Only gone-1 may alert: paused, away, retired and never seen (within its grace) do not.
    alerting = {row["metric"].get("server_id") for row in prometheus.query("ALERTS")}
    assert alerting == {"gone-1"}


@pytest.mark.live
def test_fleet_counts_on_the_dashboard_match_the_servers_states(fleet):
    bridge, prometheus = fleet
    expected = {"Up": 2, "Late": 0, "Missing": 1, "Never seen": 1, "Paused": 1, "Away": 1,
                "Retired": 1, "Registered": 7}
    stats = {panel["title"]: substitute(panel["targets"][0]["expr"])
             for panel in panels() if panel["type"] == "stat"}
    assert set(stats) == set(expected)

    def counts():
        return {title: prometheus.value(expr) for title, expr in stats.items()}

    try:
        wait_until(lambda: counts() == expected, timeout=40, interval=0.5, what="fleet counts")
    except AssertionError:
        raise AssertionError(f"counts {counts()} != {expected}")
    state_panel = next(p for p in panels() if p["title"] == "Server state")
    states = {row["metric"]["server_id"]: float(row["value"][1])
              for row in prometheus.query(substitute(state_panel["targets"][0]["expr"]))}
    assert states == {"web-1": 0, "db-1": 0, "gone-1": 2, "maint-1": 3, "never-1": 4,
                      "away-1": 5, "old-1": 6}
    # Silence is measured at the scrape: a server beating every second reads a second or
    # two; the bound leaves room for a loaded machine.
    assert -0.5 < prometheus.value('heartbeat:silence_seconds:max{server_id="web-1"}') < 10


@pytest.mark.parametrize("selected, allowed", [
    ({"team": "db"}, {"db-1", "away-1"}),
    ({"server_id": "gone-1"}, {"gone-1"}),
], ids=["team=db", "server_id=gone-1"])
@pytest.mark.live
def test_a_selection_shows_only_the_selected_servers_in_every_panel(fleet, selected, allowed):
    bridge, prometheus = fleet
    wait_until(lambda: prometheus.query('ALERTS{alertname="HeartbeatMissing",server_id="gone-1"}'),
               timeout=40, interval=0.5, what=f"gone-1's alert pending\n{prometheus.log()}")
    board = dashboard()
    queries = [(panel["title"], target["expr"]) for panel, target in targets(board)]
    queries += [(a["name"], a["expr"]) for a in board["annotations"]["list"] if "expr" in a]
    shown = set()
    for title, expr in queries:
        for row in prometheus.query(substitute(expr, **selected)):
            if row["metric"].get("server_id"):
                assert row["metric"]["server_id"] in allowed, f"{title} shows {row['metric']}"
                shown.add(row["metric"]["server_id"])
    assert shown  # the selection is not empty everywhere
    alerts = prometheus.query(substitute(next(
        t["expr"] for p, t in targets(board) if p["title"] == "Heartbeat alerts"), **selected))
    assert bool(alerts) == ("server_id" in selected)  # gone-1 (team web) alerts; no db server does
