"""deploy/kubernetes: rendered by the real kubectl, validated, cross-checked, and the pod's own
environment run as a real bridge. What needs a cluster is listed in deploy/kubernetes/README.md."""
import base64
import copy
import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests
import yaml

from tests.tools import IN_CI, ROOT, Bridge, GiveUp, Process, free_port, require_binary, wait_until

KUBE = ROOT / "deploy" / "kubernetes"
README = KUBE / "README.md"
RULES = ROOT / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "grafana" / "dashboards" / "heartbeat.json"
OPERATOR_GROUP = "monitoring.coreos.com"
# Every kustomization a user applies: the shipped ones, and the ingress example on top of
# the base and of the replicas overlay (as the README tells users to add it).
SHIPPED = ["base", "overlays/single", "overlays/replicas"]
COMPOSED = {"base+ingress": ("base", ["ingress"]),
            "replicas+ingress": ("overlays/replicas", ["ingress"]),
            "base+monitoring": ("base", ["monitoring"])}
TARGETS = SHIPPED + sorted(COMPOSED)
MONITORED = ["overlays/single", "overlays/replicas", "base+monitoring", "replicas+ingress"]

# The Prometheus Operator's API, from its CRDs (prometheus-operator/prometheus-operator,
# example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml at operator
# 0.84.1 and monitoring.coreos.com_prometheusrules.yaml at 0.82.2; the same fields are listed
# in the API reference, https://prometheus-operator.dev/docs/api-reference/api/).
SERVICE_MONITOR_SPEC = {
    "attachMetadata", "bodySizeLimit", "convertClassicHistogramsToNHCB", "endpoints",
    "fallbackScrapeProtocol", "jobLabel", "keepDroppedTargets", "labelLimit",
    "labelNameLengthLimit", "labelValueLengthLimit", "namespaceSelector",
    "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor", "podTargetLabels",
    "sampleLimit", "scrapeClass", "scrapeClassicHistograms", "scrapeProtocols", "selector",
    "selectorMechanism", "targetLabels", "targetLimit"}
SERVICE_MONITOR_REQUIRED = {"endpoints", "selector"}
ENDPOINT = {
    "authorization", "basicAuth", "bearerTokenFile", "bearerTokenSecret", "enableHttp2",
    "filterRunning", "followRedirects", "honorLabels", "honorTimestamps", "interval",
    "metricRelabelings", "noProxy", "oauth2", "params", "path", "port", "proxyConnectHeader",
    "proxyFromEnvironment", "proxyUrl", "relabelings", "scheme", "scrapeTimeout",
    "targetPort", "tlsConfig", "trackTimestampsStaleness"}
PROMETHEUS_RULE_SPEC = {"groups"}
RULE_GROUP = {"interval", "labels", "limit", "name", "partial_response_strategy",
              "query_offset", "rules"}
RULE = {"alert", "annotations", "expr", "for", "keep_firing_for", "labels", "record"}
# The CRDs' pattern for every duration field (interval, scrapeTimeout, for, ...).
DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                      r"(([0-9]+)s)?(([0-9]+)ms)?)$")


def kubectl():
    return require_binary("kubectl")


@functools.lru_cache(maxsize=None)
def _render_dir(path):
    result = subprocess.run([kubectl(), "kustomize", path], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, KUBECONFIG=os.devnull))
    assert result.returncode == 0, f"kubectl kustomize {path}:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(target):
    """The objects `kubectl kustomize` renders for a target of TARGETS."""
    if target in SHIPPED:
        return copy.deepcopy(list(_render_dir(str(KUBE / target))))
    base, components = COMPOSED[target]
    with tempfile.TemporaryDirectory(prefix="kustomize-") as overlay:  # a user's own overlay
        Path(overlay, "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [os.path.relpath(KUBE / base, overlay)],
            "components": [os.path.relpath(KUBE / "components" / c, overlay)
                           for c in components]}))
        return list(_render_dir(overlay))


def one(objects, kind):
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(objects):
    return one(objects, "Deployment")["spec"]["template"]["spec"]


def container(objects):
    return pod_spec(objects)["containers"][0]


def selects(selector, labels):
    return selector and all(labels.get(k) == v for k, v in selector.items())


@functools.lru_cache(maxsize=None)
def readme_secrets():
    """The Secrets the README's `kubectl create secret` commands make, rendered by kubectl
    itself (--dry-run=client: no cluster), as {name: {key: value}}."""
    secrets = {}
    for line in README.read_text().splitlines():
        line = line.strip()
        if not (line.startswith("kubectl ") and " create secret generic " in line):
            continue
        if "--dry-run" in line:  # the rotation example (OLD,NEW), not an install step
            continue
        result = subprocess.run(["bash", "-c", line + " --dry-run=client -o json"],
                                capture_output=True, text=True, timeout=60,
                                env=dict(os.environ, KUBECONFIG=os.devnull))
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        secret = json.loads(result.stdout)
        secrets.setdefault(secret["metadata"]["name"], {}).update(
            {k: base64.b64decode(v).decode() for k, v in secret["data"].items()})
    assert {"heartbeat-bridge-tokens", "heartbeat-db-app"} <= set(secrets)
    return secrets


# -- rendering and validation ------------------------------------------------------------------
@pytest.mark.live
@pytest.mark.parametrize("target", TARGETS)
def test_every_overlay_renders_with_kubectl_kustomize(target):
    kinds = sorted(o["kind"] for o in render(target))
    assert {"Deployment", "Service"} <= set(kinds)
    assert all(o["metadata"]["name"].startswith("heartbeat-bridge") for o in render(target))


@pytest.mark.live
@pytest.mark.parametrize("target", TARGETS)
def test_every_built_in_kind_passes_kubernetes_validate_strict(target, tmp_path):
    builtin = [o for o in render(target) if not o["apiVersion"].startswith(OPERATOR_GROUP)]
    path = tmp_path / "objects.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    result = validate(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(builtin), result.stdout


def validate(path):
    if importlib.util.find_spec("kubernetes_validate") is None:
        message = "kubernetes-validate is not installed (the test extra installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", str(path)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.live
def test_kubernetes_validate_strict_refuses_an_unknown_field(tmp_path):
    """The check above can fail: a misspelt field is refused."""
    deployment = one(render("base"), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(deployment))
    assert validate(path).returncode != 0


# -- generated from one source of truth --------------------------------------------------------
def _generator():
    spec = importlib.util.spec_from_file_location("k8s_generate", KUBE / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_what_the_generator_writes_now():
    generator = _generator()
    for path, text in generator.outputs().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.relative_to(ROOT)} is stale: run `make kubernetes` and commit it")
    assert generator.main(["--check"]) == 0


@pytest.mark.live
def test_the_prometheus_rule_groups_pass_promtool_and_equal_rules_yml(tmp_path):
    promtool = require_binary("promtool")
    rule = one(render("overlays/single"), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    extracted = tmp_path / "groups.yml"
    extracted.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    result = subprocess.run([promtool, "check", "rules", str(extracted)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


@pytest.mark.live
def test_the_dashboard_configmap_is_the_shipped_dashboard():
    configmap = next(o for o in render("overlays/single") if o["kind"] == "ConfigMap"
                     and o["metadata"]["name"] == "heartbeat-bridge-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert list(configmap["data"]) == ["heartbeat.json"]
    assert json.loads(configmap["data"]["heartbeat.json"]) == json.loads(DASHBOARD.read_text())


def test_the_generator_keeps_the_text_and_follows_a_change(tmp_path):
    generator = _generator()
    changed = RULES.read_text() + "  - name: added.by.test\n    rules: []\n"
    spec = yaml.safe_load(generator.prometheus_rule(changed))["spec"]
    assert spec["groups"][-1]["name"] == "added.by.test"
    dashboard = '{\n  "title": "x",\n  "panels": []\n}\n'
    data = yaml.safe_load(generator.dashboard_configmap(dashboard))["data"]["heartbeat.json"]
    assert data == dashboard


# -- cross-references --------------------------------------------------------------------------
@pytest.mark.live
@pytest.mark.parametrize("target", TARGETS)
def test_service_selects_the_pods_and_names_their_port(target):
    objects = render(target)
    service, pod = one(objects, "Service"), one(objects, "Deployment")["spec"]["template"]
    assert selects(service["spec"]["selector"], pod["metadata"]["labels"])
    ports = {p["name"] for p in container(objects)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    assert one(objects, "Deployment")["spec"]["selector"]["matchLabels"].items() <= \
        pod["metadata"]["labels"].items()


@pytest.mark.live
@pytest.mark.parametrize("target", MONITORED)
def test_service_monitor_selects_the_service_and_its_port(target):
    objects = render(target)
    service, monitor = one(objects, "Service"), one(objects, "ServiceMonitor")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["metadata"].get("namespace") == service["metadata"].get("namespace")
    names = {p["name"] for p in service["spec"]["ports"]}
    assert all(e["port"] in names for e in monitor["spec"]["endpoints"])
    assert [e["path"] for e in monitor["spec"]["endpoints"]] == ["/metrics"]


@pytest.mark.live
def test_the_job_label_is_the_one_the_shipped_prometheus_config_uses():
    # The operator names the job after the Service (no jobLabel set); rules and dashboard
    # were written against the job of prometheus/prometheus.yml.
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    jobs = [c["job_name"] for c in config["scrape_configs"]]
    monitor = one(render("overlays/single"), "ServiceMonitor")
    assert "jobLabel" not in monitor["spec"]
    assert one(render("overlays/single"), "Service")["metadata"]["name"] in jobs


@pytest.mark.live
@pytest.mark.parametrize("target", TARGETS)
def test_probes_mounts_secrets_and_file_variables_name_things_that_exist(target):
    objects = render(target)
    spec, main = pod_spec(objects), container(objects)
    ports = {p["name"] for p in main["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"]["port"] in ports
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"

    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    assert {m["name"] for m in mounts.values()} == set(volumes)
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    assert {v["persistentVolumeClaim"]["claimName"] for v in volumes.values()
            if "persistentVolumeClaim" in v} <= claims

    secrets = readme_secrets()
    for volume in volumes.values():
        if "secret" in volume:
            keys = secrets[volume["secret"]["secretName"]]
            assert {i["key"] for i in volume["secret"]["items"]} <= set(keys)
    env = {e["name"]: e for e in main["env"]}
    for var in env.values():
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["key"] in secrets[ref["name"]], ref
    files = {name: var["value"] for name, var in env.items() if name.endswith("_FILE")}
    assert set(files) >= {"HEARTBEAT_TOKEN_FILE", "HEARTBEAT_ADMIN_TOKEN_FILE"}
    for name, path in files.items():
        directory, _, filename = path.rpartition("/")
        mount = mounts[directory]
        assert mount["readOnly"] is True, name
        items = volumes[mount["name"]]["secret"]["items"]
        assert filename in {i["path"] for i in items}, name
    read_by_config = set(re.findall(r'"(HEARTBEAT_[A-Z_]+)"',
                                    (ROOT / "bridge" / "config.py").read_text()))
    for name in env:
        assert name.removesuffix("_FILE") in read_by_config, f"{name}: no such setting"


@pytest.mark.live
@pytest.mark.parametrize("target", TARGETS)
def test_every_other_object_points_at_the_pods_and_the_service(target):
    objects = render(target)
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for p in container(objects)["ports"]}
    service = one(objects, "Service")
    for obj in objects:
        if obj["kind"] == "NetworkPolicy":
            assert selects(obj["spec"]["podSelector"]["matchLabels"], labels)
            assert all(p["port"] in ports for rule in obj["spec"]["ingress"]
                       for p in rule["ports"])
        if obj["kind"] == "PodDisruptionBudget":
            assert selects(obj["spec"]["selector"]["matchLabels"], labels)
        if obj["kind"] == "Ingress":
            backends = [p["backend"]["service"] for rule in obj["spec"]["rules"]
                        for p in rule["http"]["paths"]]
            assert {b["name"] for b in backends} == {service["metadata"]["name"]}
            assert {b["port"]["name"] for b in backends} <= {
                p["name"] for p in service["spec"]["ports"]}
            assert {t["secretName"] for t in obj["spec"]["tls"]}
    for spread in pod_spec(objects).get("topologySpreadConstraints", []):
        assert selects(spread["labelSelector"]["matchLabels"], labels)


@pytest.mark.live
def test_the_container_runs_as_the_dockerfiles_user():
    user = re.search(r"^USER\s+(\d+):(\d+)\s*$", (ROOT / "Dockerfile").read_text(), re.M)
    uid, gid = int(user.group(1)), int(user.group(2))
    for target in SHIPPED:
        spec, main = pod_spec(render(target)), container(render(target))
        assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"],
                spec["securityContext"]["fsGroup"]) == (uid, gid, gid)
        assert (main["securityContext"]["runAsUser"],
                main["securityContext"]["runAsGroup"]) == (uid, gid)


@pytest.mark.live
@pytest.mark.parametrize("target", SHIPPED)
def test_the_security_context_is_restrictive(target):
    spec, main = pod_spec(render(target)), container(render(target))
    context = main["securityContext"]
    assert context["runAsNonRoot"] and spec["securityContext"]["runAsNonRoot"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    resources = main["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


@pytest.mark.live
def test_the_base_never_runs_two_pods_on_one_sqlite_file():
    objects = render("base")
    deployment, main = one(objects, "Deployment"), container(objects)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    url = {e["name"]: e for e in main["env"]}["HEARTBEAT_DATABASE_URL"]["value"]
    data = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}["data"]
    assert url.startswith(f"sqlite:///{data}/")


@pytest.mark.live
def test_the_replicas_share_postgresql_and_replace_every_old_pod_at_once():
    objects = render("overlays/replicas")
    deployment, main = one(objects, "Deployment"), container(objects)
    assert deployment["spec"]["replicas"] > 1
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    # No pod leaves before a new one is ready; all new pods start together, so old-release
    # pods (refused writes once a new one migrates the schema) are gone soonest.
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0,
                                                               "maxSurge": "100%"}
    url = {e["name"]: e for e in main["env"]}["HEARTBEAT_DATABASE_URL"]
    assert set(url) == {"name", "valueFrom"}
    secret = url["valueFrom"]["secretKeyRef"]
    assert readme_secrets()[secret["name"]][secret["key"]].startswith("postgresql://")
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert "data" not in {v["name"] for v in pod_spec(objects)["volumes"]}
    assert one(objects, "PodDisruptionBudget")
    assert pod_spec(objects)["topologySpreadConstraints"]


# -- the Prometheus Operator's API ---------------------------------------------------------------
@pytest.mark.live
def test_service_monitor_uses_only_fields_of_the_operators_api():
    monitor = one(render("overlays/single"), "ServiceMonitor")
    assert monitor["apiVersion"] == f"{OPERATOR_GROUP}/v1"
    assert SERVICE_MONITOR_REQUIRED <= set(monitor["spec"]) <= SERVICE_MONITOR_SPEC
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= ENDPOINT, set(endpoint) - ENDPOINT
        assert isinstance(endpoint["port"], str)
        assert endpoint.get("scheme", "http") in ("http", "https")
        for field in ("interval", "scrapeTimeout"):
            assert DURATION.match(endpoint[field]), field
        assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])


@pytest.mark.live
def test_prometheus_rule_uses_only_fields_of_the_operators_api():
    rule = one(render("overlays/single"), "PrometheusRule")
    assert rule["apiVersion"] == f"{OPERATOR_GROUP}/v1"
    assert set(rule["spec"]) <= PROMETHEUS_RULE_SPEC
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert len(names) == len(set(names)) and all(names)  # a list-map keyed by name
    for group in rule["spec"]["groups"]:
        assert set(group) <= RULE_GROUP, set(group) - RULE_GROUP
        for key in ("interval", "query_offset"):
            assert key not in group or DURATION.match(group[key])
        for item in group.get("rules", []):
            assert set(item) <= RULE, set(item) - RULE
            assert "expr" in item and ("alert" in item) != ("record" in item)
            for key in ("for", "keep_firing_for"):
                assert key not in item or DURATION.match(item[key]), item
            for key in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in item.get(key, {}).values()), item


def _seconds(duration):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|[smhdwy])", duration))


# -- the pod's environment, run for real ---------------------------------------------------------
def pod_environment(tmp_path):
    """The base container's env, with each mount moved under tmp_path (token files written
    from the README's Secret) and HEARTBEAT_BIND on a free loopback port."""
    objects = render("base")
    spec, main = pod_spec(objects), container(objects)
    volumes = {v["name"]: v for v in spec["volumes"]}
    moved = {}
    for mount in main["volumeMounts"]:
        local = tmp_path / mount["name"]
        local.mkdir()
        secret = volumes[mount["name"]].get("secret")
        if secret:
            data = readme_secrets()[secret["secretName"]]
            for item in secret["items"]:
                (local / item["path"]).write_text(data[item["key"]])
        moved[mount["mountPath"]] = str(local)
    env = {}
    for var in main["env"]:
        value = var["value"]
        for original in sorted(moved, key=len, reverse=True):  # /tmp is a mount, tmp_path too
            if original + "/" in value:
                value = value.replace(original + "/", moved[original] + "/", 1)
                break
        env[var["name"]] = value
    env["HEARTBEAT_BIND"] = f"127.0.0.1:{free_port()}"
    env["TMPDIR"] = moved["/tmp"]
    return env, moved, main


@pytest.mark.live
def test_the_pods_own_environment_starts_a_bridge_whose_probes_answer(tmp_path):
    """The base's env and token files: the bridge starts, and every probe path, /metrics and
    the admin API (with the Secret's admin token) answer 200."""
    env, moved, main = pod_environment(tmp_path)
    port = int(env["HEARTBEAT_BIND"].rpartition(":")[2])
    assert "HEARTBEAT_WORKERS" not in env  # one per CPU of the pod's limit
    bridge = Bridge(env.pop("HEARTBEAT_DATABASE_URL"), port=port, **env).start()
    try:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            path = main[probe]["httpGet"]["path"]
            assert requests.get(bridge.url + path, timeout=5).status_code == 200, path
        assert "heartbeat_registered_servers" in bridge.metrics()
        admin = readme_secrets()["heartbeat-bridge-tokens"]["admin-token"]
        answer = requests.get(bridge.url + "/api/servers", timeout=5,
                              headers={"Authorization": f"Bearer {admin}"})
        assert answer.status_code == 200
    finally:
        bridge.stop()
    assert Path(moved["/var/lib/heartbeat-bridge"], "heartbeat.db").exists()


@pytest.mark.live
def test_the_bridge_runs_on_a_read_only_root_filesystem(tmp_path):
    """readOnlyRootFilesystem as far as one host shows it: in a private mount namespace whose
    root is read-only but for the pod's writable volumes (data, tmp), the bridge serves."""
    unshare = require_binary("unshare")
    if os.geteuid() != 0 or subprocess.run([unshare, "-m", "true"],
                                           capture_output=True).returncode != 0:
        pytest.skip("a private mount namespace needs root (CAP_SYS_ADMIN)")
    env, moved, main = pod_environment(tmp_path)
    writable = [moved[m["mountPath"]] for m in main["volumeMounts"] if not m.get("readOnly")]
    probe = tmp_path / "root-is-writable"
    script = ("".join(f'mount --bind "{path}" "{path}" && ' for path in writable)
              + f'mount -o remount,bind,ro / && ! touch "{probe}" 2>/dev/null && exec "$@"')
    process = Process([unshare, "-m", "--propagation", "private", "sh", "-c", script, "sh",
                       sys.executable, "-m", "bridge", "serve"],
                      env={"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1", **env},
                      cwd=ROOT, name="bridge-ro").start()
    url = "http://" + env["HEARTBEAT_BIND"]
    try:
        def ready():
            if not process.running():
                raise GiveUp(f"exited with {process.proc.returncode}")
            return requests.get(url + "/readyz", timeout=1).ok

        try:
            wait_until(ready, timeout=20, what="a bridge on a read-only root")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{process.log()}") from None
        fleet = readme_secrets()["heartbeat-bridge-tokens"]["fleet-token"]
        beat = requests.post(url + "/api/heartbeat/ro-1/", timeout=5,
                             headers={"Authorization": f"Bearer {fleet}"})
        assert beat.status_code == 200, beat.text
        assert requests.get(url + "/metrics", timeout=10).ok
    finally:
        process.stop()
    assert not probe.exists()
    assert Path(moved["/var/lib/heartbeat-bridge"], "heartbeat.db").exists()


@pytest.mark.live
def test_the_ingress_carries_the_proxy_settings_of_docs_security():
    """Body size and timeouts as annotations, the controller-wide ones (header and body
    timeouts, keep-alive) named in the example's comment, all equal to docs/security.md's."""
    nginx = dict(re.findall(r"^(client_\w+|keepalive_timeout)\s+(\w+);",
                            (ROOT / "docs" / "security.md").read_text(), re.M))
    ingress = one(render("base+ingress"), "Ingress")
    notes = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert notes[prefix + "proxy-body-size"] == nginx["client_max_body_size"]
    assert notes[prefix + "proxy-request-buffering"] == "on"
    for name in ("proxy-connect-timeout", "proxy-send-timeout", "proxy-read-timeout"):
        assert int(notes[prefix + name]) <= 10, name
    comment = (KUBE / "components" / "ingress" / "ingress.yaml").read_text()
    controller = dict(re.findall(r'^#\s+([a-z-]+): "(\d+)"', comment, re.M))
    assert controller == {"client-header-timeout": nginx["client_header_timeout"].rstrip("s"),
                          "client-body-timeout": nginx["client_body_timeout"].rstrip("s"),
                          "keep-alive": nginx["keepalive_timeout"].rstrip("s")}
    paths = [p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert paths == ["/api/heartbeat"]  # agents only: docs/security.md, network placement
    assert ingress["spec"]["tls"][0]["hosts"] == [r["host"] for r in ingress["spec"]["rules"]]
