"""The docs state what the shipped configuration does: alert timing recomputed from
rules.yml, prometheus.yml and alertmanager.yml; the small-fleet minimum; no pointer to a
file users do not have."""
import re
import subprocess

import pytest
import yaml

from bridge.config import Settings
from tests.tools import ROOT

UNITS = {"s": 1, "m": 60, "h": 3600}
# Where alert timing is stated for people: each must state the same figures.
TIMING_DOCS = ["README.md", "docs/alerting.md", "docs/states.md", "prometheus/rules.yml"]
# Figures older docs gave, each wrong for the shipped configuration.
STALE = [r"about 2\.5 min", r"within 5 minutes of its last beat", r"2m45s after its last beat,",
         r"2m30s to 3m after its last beat", r"notified 3m to 3m30s"]


def seconds(duration):
    return sum(int(n) * UNITS[unit] for n, unit in re.findall(r"(\d+)([smh])", duration))


def text(seconds_):
    minutes, rest = divmod(seconds_, 60)
    return (f"{minutes:g}m" if minutes else "") + (f"{rest:g}s" if rest or not minutes else "")


def rule(name):
    groups = yaml.safe_load((ROOT / "prometheus" / "rules.yml").read_text())["groups"]
    return next(r for g in groups for r in g["rules"] if name in (r.get("alert"), r.get("record")))


def timing():
    """The figures for a server of the default interval, from the three shipped files."""
    missing = rule("HeartbeatMissing")
    intervals = float(re.search(r">\s*([\d.]+)\s*\*", missing["expr"]).group(1))
    prometheus = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "heartbeat-bridge")
    scrape = seconds(job.get("scrape_interval", prometheus["global"]["scrape_interval"]))
    evaluation = seconds(prometheus["global"]["evaluation_interval"])
    route = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())["route"]
    group_wait, group_interval = seconds(route["group_wait"]), seconds(route["group_interval"])
    pending_for, keep = seconds(missing.get("for", "0s")), seconds(missing["keep_firing_for"])
    silent = intervals * Settings.default_interval
    fires = (silent + pending_for, silent + scrape + evaluation + pending_for)
    return {
        "fires": f"{text(fires[0])} to {text(fires[1])} after its last beat",
        "notified": f"notified {text(fires[0] + group_wait)} to {text(fires[1] + group_wait)}",
        "group_wait": f"`group_wait` {text(group_wait)}",
        "resolved": f"{text(keep)} to {text(scrape + evaluation + keep + group_interval)} later",
        "keep_firing_for": f"`keep_firing_for` {text(keep)}",
        "group_interval": f"`group_interval` {text(group_interval)}",
    }


def test_the_timing_figures_follow_from_the_shipped_configuration():
    assert timing() == {  # the shipped files today; a change there must reach the docs
        "fires": "1m31.5s to 2m1.5s after its last beat",
        "notified": "notified 2m1.5s to 2m31.5s",
        "group_wait": "`group_wait` 30s", "resolved": "2m to 7m30s later",
        "keep_firing_for": "`keep_firing_for` 2m", "group_interval": "`group_interval` 5m"}


@pytest.mark.parametrize("path", TIMING_DOCS)
def test_every_doc_states_the_same_alert_timing(path):
    doc = re.sub(r"\s+#?\s*", " ", (ROOT / path).read_text())  # rules.yml: joined comments
    for what, figure in timing().items():
        assert figure in doc, f"{path} does not say {figure!r} ({what})"
    for stale in STALE:
        assert not re.search(stale, doc), f"{path} still says {stale!r}"


def test_docs_state_the_minimum_of_a_mass_or_group_silence_the_rules_use():
    minimums = {int(n) for name in ("HeartbeatMassSilence", "HeartbeatGroupSilent")
                for n in re.findall(r"heartbeat:silent:bool[^)]*\)\s*>=\s*(\d+)",
                                    rule(name)["expr"])}
    assert len(minimums) == 1
    minimum = minimums.pop()
    for path in ("README.md", "docs/alerting.md", "docs/states.md", "docs/runbook.md"):
        assert f"at least {minimum}" in (ROOT / path).read_text(), path


@pytest.mark.live
def test_no_file_points_at_a_design_document_users_do_not_have():
    found = subprocess.run(["git", "grep", "-n", "-I", "-E", r"DESIGN\.md|\.\./shared"],
                           cwd=ROOT, capture_output=True, text=True, timeout=30)
    hits = [line for line in found.stdout.splitlines()
            if not line.startswith("tests/test_docs.py:")]
    assert hits == []


def test_architecture_is_described_in_the_projects_own_docs():
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    for topic in ("source of truth", "enrolment token", "per-server token", "admin token",
                  "status token", "heartbeat_bridge_time_seconds", "max without (instance, pod)"):
        assert topic in architecture, topic
    assert "docs/architecture.md" in (ROOT / "README.md").read_text()
