#!/usr/bin/env python3
"""Write the Kubernetes copies of prometheus/rules.yml and the Grafana dashboard.

One source of truth: the PrometheusRule's spec is rules.yml and the dashboard ConfigMap's
data is heartbeat.json, both embedded as text (comments kept), never edited by hand.
`make kubernetes` runs this; tests/test_kubernetes.py fails when the copies are stale.
Standard library only.  Usage: generate.py [--check]
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "grafana" / "dashboards" / "heartbeat.json"
MONITORING = Path(__file__).resolve().parent / "components" / "monitoring"

_HEADER = ("# GENERATED from {source} by deploy/kubernetes/generate.py (`make kubernetes`):\n"
           "# edit {source} and regenerate; tests/test_kubernetes.py fails while they differ.\n")


def _indent(text, spaces):
    """Every non-empty line moved right: a YAML document or a block scalar's content."""
    pad = " " * spaces
    return "".join(pad + line if line.strip() else "\n"
                   for line in text.splitlines(keepends=True))


def prometheus_rule(rules_text):
    """A PrometheusRule whose spec is rules.yml (whose only top-level key is `groups`)."""
    return (_HEADER.format(source="prometheus/rules.yml")
            + "apiVersion: monitoring.coreos.com/v1\n"
              "kind: PrometheusRule\n"
              "metadata:\n"
              "  name: heartbeat-bridge\n"
              "  labels:\n"
              "    app.kubernetes.io/name: heartbeat-bridge\n"
              "spec:\n"
            + _indent(rules_text, 2))


def dashboard_configmap(dashboard_text):
    """A ConfigMap the Grafana sidecar loads (label grafana_dashboard: "1")."""
    if not dashboard_text.endswith("\n"):
        dashboard_text += "\n"  # `|` keeps exactly one final newline
    return (_HEADER.format(source="grafana/dashboards/heartbeat.json")
            + "apiVersion: v1\n"
              "kind: ConfigMap\n"
              "metadata:\n"
              "  name: heartbeat-bridge-dashboard\n"
              "  labels:\n"
              "    app.kubernetes.io/name: heartbeat-bridge\n"
              "    grafana_dashboard: \"1\"\n"
              "data:\n"
              "  heartbeat.json: |\n"
            + _indent(dashboard_text, 4))


def outputs():
    """{path: text} of every generated file, from the sources as they are now."""
    return {
        MONITORING / "prometheusrule.yaml": prometheus_rule(RULES.read_text(encoding="utf-8")),
        MONITORING / "grafana-dashboard.yaml":
            dashboard_configmap(DASHBOARD.read_text(encoding="utf-8")),
    }


def main(argv=None):
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    stale = []
    for path, text in outputs().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if check:
            stale.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("stale (run `make kubernetes`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
