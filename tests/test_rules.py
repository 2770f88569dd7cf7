"""The shipped Prometheus rules and configs, checked by the real promtool and amtool."""
import re
import subprocess

import pytest
import yaml

from tests.tools import ROOT, require_binary

RULES = ROOT / "prometheus" / "rules.yml"
RULE_TESTS = sorted((ROOT / "prometheus" / "tests").glob("*.yml"))
ALERTMANAGER = ROOT / "alertmanager" / "alertmanager.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_BASE = "https://github.com/heartbeat-bridge/heartbeat-bridge/blob/main/docs/runbook.md#"
# Alerts computed per server: one alert per server, operator labels kept, and silent while
# the server is excused (paused, retired or away).
PER_SERVER = {"HeartbeatMissing", "HeartbeatNeverSeen", "HeartbeatFlapping",
              "HeartbeatServerRebooted", "HeartbeatClockSkew"}


def run(argv, cwd=ROOT):
    """Run a real tool; the output is shown when an assertion on it fails."""
    result = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                            timeout=120)
    result.output = f"$ {' '.join(map(str, argv))}\n{result.stdout}\n{result.stderr}"
    return result


def rules():
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def alerts():
    return [rule for rule in rules() if "alert" in rule]


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.live
def test_rules_file_passes_promtool_check():
    promtool = require_binary("promtool")
    result = run([promtool, "check", "rules", RULES])
    assert result.returncode == 0, result.output
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout, result.output


@pytest.mark.live
def test_every_alert_behaves_as_its_promtool_unit_tests_say():
    promtool = require_binary("promtool")
    assert RULE_TESTS
    result = run([promtool, "test", "rules", *RULE_TESTS])
    assert result.returncode == 0, result.output
    assert "FAILED" not in result.stdout + result.stderr, result.output


def test_every_alert_has_unit_tests_for_firing_and_for_staying_silent():
    fires, silent = set(), set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fires == set(), "no unit test where these fire"
    assert names - silent == set(), "no unit test where these stay silent"


@pytest.mark.live
def test_prometheus_config_passes_promtool_check_with_the_rules_it_loads():
    promtool = require_binary("promtool")
    # rule_files in prometheus.yml is relative to the config file's directory.
    result = run([promtool, "check", "config", "prometheus.yml"], cwd=ROOT / "prometheus")
    assert result.returncode == 0, result.output
    assert "SUCCESS: 1 rule files found" in result.stdout, result.output


def test_prometheus_config_scrapes_the_bridge_as_the_rules_expect():
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "heartbeat-bridge")
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8000"]
    assert job["scrape_interval"] == "15s"
    assert config["rule_files"] == ["rules.yml"]
    am = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am == ["127.0.0.1:9093"]


@pytest.mark.live
def test_alertmanager_config_passes_amtool_check():
    amtool = require_binary("amtool")
    result = run([amtool, "check-config", ALERTMANAGER])
    assert result.returncode == 0, result.output
    assert "SUCCESS" in result.stdout, result.output


@pytest.mark.parametrize("labels, receiver", [
    ({"alertname": "HeartbeatMissing", "team": "db", "severity": "critical"}, "team-db-pager"),
    ({"alertname": "HeartbeatClockSkew", "team": "db", "severity": "warning"}, "team-db"),
    ({"alertname": "HeartbeatMissing", "team": "web", "severity": "critical"}, "team-web"),
    ({"alertname": "HeartbeatBridgeDown", "severity": "critical"}, "oncall-pager"),
    ({"alertname": "HeartbeatServerRebooted", "severity": "info"}, "default-webhook"),
    ({"alertname": "HeartbeatFlapping", "team": "ops", "severity": "warning"}, "default-webhook"),
])
@pytest.mark.live
def test_alerts_are_routed_by_team_then_severity(labels, receiver):
    amtool = require_binary("amtool")
    result = run([amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}",
                  *(f"{k}={v}" for k, v in labels.items())])
    assert result.returncode == 0, result.output
    assert result.stdout.split() == [receiver], result.output


def test_bridge_outages_and_mass_or_group_silence_inhibit_the_per_server_alerts():
    config = yaml.safe_load(ALERTMANAGER.read_text())
    inhibited_by = {}
    for rule in config["inhibit_rules"]:
        sources = re.search(r'"(.*)"', rule["source_matchers"][0]).group(1).split("|")
        targets = re.search(r'"(.*)"', rule["target_matchers"][0]).group(1).split("|")
        assert "job" in rule["equal"]
        for grouping in set(rule["equal"]) - {"job", "server_id"}:
            # a group's alert mutes only servers of that group, never those without the label
            assert f'{grouping}=~".+"' in rule["source_matchers"]
        for target in targets:
            inhibited_by.setdefault(target, set()).update(sources)
    for source in ("HeartbeatBridgeDown", "HeartbeatBridgeAbsent", "HeartbeatMassSilence",
                   "HeartbeatGroupSilent", "HeartbeatNoIngest"):
        assert source in inhibited_by["HeartbeatMissing"]
    assert config["route"]["group_by"] == ["alertname", "server_id"]


@pytest.mark.parametrize("alert", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_has_severity_summary_description_and_runbook(alert):
    assert re.fullmatch(r"Heartbeat[A-Z][A-Za-z]+", alert["alert"])
    assert alert["labels"]["severity"] in ("critical", "warning", "info")
    annotations = alert["annotations"]
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key, "").strip(), f"{alert['alert']} has no {key}"
    assert annotations["runbook_url"].startswith(RUNBOOK_BASE)


def test_every_runbook_url_points_at_a_heading_of_the_runbook():
    anchors = {github_anchor(line.lstrip("#"))
               for line in RUNBOOK.read_text().splitlines() if line.startswith("#")}
    for alert in alerts():
        anchor = alert["annotations"]["runbook_url"][len(RUNBOOK_BASE):]
        assert anchor in anchors, f"{alert['alert']}: no heading with anchor #{anchor}"
        assert anchor == github_anchor(alert["alert"])


@pytest.mark.parametrize("alert", [a for a in alerts() if a["alert"] in PER_SERVER],
                         ids=lambda rule: rule["alert"])
def test_per_server_alerts_aggregate_replicas_keep_labels_and_skip_excused_servers(alert):
    expr = alert["expr"]
    assert "unless on (job, server_id) heartbeat:excused:max" in expr
    assert not re.search(r"\bby\s*\(\s*server_id", expr), "by (server_id) drops operator labels"
    uses_recorded = "heartbeat:" in expr
    assert uses_recorded or "without (instance, pod)" in expr


def test_recorded_and_alerting_missing_thresholds_agree():
    by_name = {rule.get("alert") or rule.get("record"): rule["expr"] for rule in rules()}
    threshold = re.compile(r">\s*(?:bool\s+)?([\d.]+)\s*\*\s*max without \(instance, pod\) "
                           r"\(heartbeat_interval_seconds\)")
    assert (threshold.search(by_name["HeartbeatMissing"]).group(1)
            == threshold.search(by_name["heartbeat:missing:bool"]).group(1))


def test_fleet_and_group_silences_reach_alertmanager_before_it_notifies_the_servers():
    """Alertmanager mutes a per-server notice when its group flushes (after `group_wait`):
    a mass or group silence must be firing by then, so it waits no longer than
    HeartbeatMissing (and both fire at the evaluation that finds the servers missing)."""
    seconds = {"s": 1, "m": 60}
    durations = {rule["alert"]: int(rule["for"][:-1]) * seconds[rule["for"][-1]]
                 if "for" in rule else 0 for rule in alerts()}
    route = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())["route"]
    assert durations["HeartbeatMissing"] == 0
    for source in ("HeartbeatMassSilence", "HeartbeatGroupSilent"):
        assert durations[source] <= durations["HeartbeatMissing"]
    assert route["group_wait"] not in ("0s", "0m")


def test_every_duration_is_measured_on_the_bridge_clock():
    """Silence, promised returns and registration ages against heartbeat_bridge_time_seconds
    of the same scrape and replica; Prometheus' clock only in the alert that compares the two."""
    for rule in rules():
        name = rule.get("alert") or rule.get("record")
        expr = rule["expr"]
        if name == "HeartbeatBridgeClockSkew":
            own_clock = "heartbeat_bridge_time_seconds - timestamp(heartbeat_bridge_time_seconds)"
            assert own_clock in expr
            continue
        assert not re.search(r"\btime\(\)|\btimestamp\(", expr), f"{name} reads Prometheus' clock"
        if "heartbeat_bridge_time_seconds" in expr:
            assert "on (job, instance)" in expr, f"{name}: not matched by scrape target"
    by_name = {rule.get("alert") or rule.get("record"): rule["expr"] for rule in rules()}
    for name in ("heartbeat:silence_seconds:max", "heartbeat:excused:max", "HeartbeatNeverSeen"):
        assert "heartbeat_bridge_time_seconds" in by_name[name], name
