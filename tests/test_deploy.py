"""deploy/: the compose stack is wired consistently (Docker cannot run here; the configs can
be read, and Prometheus' and HAProxy's own checkers run on them)."""
import re
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml

from bridge.config import Settings
from bridge.connections import connection_bound
from tests.tools import ROOT, require_binary

DEPLOY = ROOT / "deploy"
BRIDGE_PORT = 8000


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


def bridge_services(services):
    """{name: port} of every service built from the repo's Dockerfile (the replicas)."""
    out = {}
    for name, service in services.items():
        build = service.get("build")
        if build and build.get("dockerfile") == "Dockerfile":
            bind = service["environment"]["HEARTBEAT_BIND"]
            out[name] = int(bind.rpartition(":")[2])
    return out


def mounts(service):
    """[(host path, container path)] of a service's bind mounts (named volumes left out)."""
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out.append(((DEPLOY / source).resolve(), target))
    return out


def mount_target(services, service, host_path):
    for source, target in mounts(services[service]):
        if source == (ROOT / host_path).resolve():
            return target
    raise AssertionError(f"{service} does not mount {host_path}")


def published(service, container_port):
    for mapping in service.get("ports", []):
        host, _, inside = str(mapping).rpartition(":")
        if int(inside) == container_port:
            return int(host)
    return None


def test_the_stack_has_every_part(services):
    assert {"postgres", "lb", "prometheus", "alertmanager", "grafana"} <= set(services)
    assert len(bridge_services(services)) >= 2


def test_replicas_are_built_from_the_repo_and_share_one_postgres(services):
    urls = set()
    for name in bridge_services(services):
        service = services[name]
        assert (DEPLOY / service["build"]["context"] / "Dockerfile").is_file()
        assert service["command"] == ["serve"]
        assert service["environment"]["HEARTBEAT_BIND"] == f"0.0.0.0:{BRIDGE_PORT}"
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        urls.add(service["environment"]["HEARTBEAT_DATABASE_URL"])
    assert len(urls) == 1, "every replica must use the same database"
    url = urlsplit(urls.pop())
    db = services["postgres"]["environment"]
    assert (url.scheme, url.hostname, url.port) == ("postgresql", "postgres", 5432)
    assert url.path == "/" + db["POSTGRES_DB"] and url.username == db["POSTGRES_USER"]


def test_every_file_the_stack_mounts_is_in_the_repo(services):
    missing = [f"{name}: {source.relative_to(ROOT)}" for name, service in services.items()
               for source, _ in mounts(service) if not source.exists()]
    assert not missing, "mounted but not in the repo: " + ", ".join(missing)


def haproxy_servers():
    text = (DEPLOY / "haproxy.cfg").read_text()
    servers = re.findall(r"^\s*server\s+\S+\s+([\w.-]+):(\d+)", text, re.M)
    binds = re.findall(r"^\s*bind\s+\S*:(\d+)", text, re.M)
    return {(host, int(port)) for host, port in servers}, [int(p) for p in binds]


def test_the_load_balancer_sends_to_every_replica_and_only_them(services):
    upstreams, binds = haproxy_servers()
    assert upstreams == set(bridge_services(services).items())
    assert binds == [8080]
    assert published(services["lb"], 8080) == 8080
    assert mount_target(services, "lb", "deploy/haproxy.cfg") == \
        "/usr/local/etc/haproxy/haproxy.cfg"
    assert "uri /readyz" in (DEPLOY / "haproxy.cfg").read_text()


@pytest.mark.live
def test_haproxy_accepts_its_config(tmp_path):
    haproxy = require_binary("haproxy")
    result = subprocess.run([haproxy, "-c", "-f", DEPLOY / "haproxy.cfg"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def prometheus_config():
    return yaml.safe_load((DEPLOY / "prometheus.yml").read_text())


def test_prometheus_scrapes_every_replica_directly(services):
    config = prometheus_config()
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "heartbeat-bridge"]
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"{name}:{port}" for name, port in bridge_services(services).items()}
    assert "lb:8080" not in targets


def test_prometheus_loads_the_mounted_rules_and_alerts_the_alertmanager_service(services):
    config = prometheus_config()
    command = services["prometheus"]["command"]
    config_path = mount_target(services, "prometheus", "deploy/prometheus.yml")
    assert f"--config.file={config_path}" in command
    assert config["rule_files"] == [mount_target(services, "prometheus", "prometheus/rules.yml")]
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert published(services["alertmanager"], 9093) == 9093
    am_config = mount_target(services, "alertmanager", "alertmanager/alertmanager.yml")
    assert f"--config.file={am_config}" in services["alertmanager"]["command"]


@pytest.mark.live
def test_prometheus_config_passes_promtool_with_the_shipped_rules(tmp_path):
    promtool = require_binary("promtool")
    config = prometheus_config()
    config["rule_files"] = [str(ROOT / "prometheus" / "rules.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool, "check", "config", path], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_reads_prometheus_and_the_shipped_dashboards(services):
    grafana = services["grafana"]
    datasource_target = "/etc/grafana/provisioning/datasources/prometheus.yml"
    assert mount_target(services, "grafana", "deploy/grafana-datasource.yml") == \
        datasource_target
    (source,) = yaml.safe_load((DEPLOY / "grafana-datasource.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert published(services["prometheus"], 9090) == 9090
    # The uid the dashboard's data source variable and panels may refer to.
    shipped = yaml.safe_load(
        (ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert source["uid"] == shipped[0]["uid"] and source["name"] == shipped[0]["name"]

    assert mount_target(services, "grafana", "grafana/provisioning/dashboards") == \
        "/etc/grafana/provisioning/dashboards"
    dashboards_at = mount_target(services, "grafana", "grafana/dashboards")
    providers = [p for f in sorted((ROOT / "grafana/provisioning/dashboards").glob("*.y*ml"))
                 for p in yaml.safe_load(f.read_text())["providers"]]
    assert [p["options"]["path"] for p in providers] == [dashboards_at]
    assert list((ROOT / "grafana/dashboards").glob("*.json"))
    assert published(grafana, 3000) == 3000


def test_the_docs_explain_scaling_and_scraping():
    readme = (DEPLOY / "README.md").read_text()
    scaling = (ROOT / "docs" / "scaling.md").read_text()
    for text in (readme, scaling):
        assert "max without (instance" in text
        assert "HEARTBEAT_DB_POOL_SIZE" in text
    assert "heartbeat-bridge migrate" in scaling
    assert "haproxy.cfg" in readme and "scaling.md" in readme


def test_the_shipped_file_limits_fit_the_fleet_they_are_sized_for(services):
    """The systemd unit (sized for a 4-worker host) and the compose replicas hold every
    server the bridge accepts (HEARTBEAT_MAX_SERVERS) kept alive, twice over for an uneven
    spread across workers."""
    fleet = Settings().max_servers
    unit = (DEPLOY / "heartbeat-bridge.service").read_text()
    limit = int(re.search(r"^LimitNOFILE=(\d+)$", unit, re.M).group(1))
    assert "ExecStart=/opt/heartbeat-bridge/bin/heartbeat-bridge serve" in unit
    assert connection_bound(limit, Settings().pool_size) * 4 >= 2 * fleet
    for name in bridge_services(services):
        env = services[name]["environment"]
        nofile = services[name]["ulimits"]["nofile"]
        assert nofile["soft"] == nofile["hard"]
        per_worker = connection_bound(nofile["hard"], int(env["HEARTBEAT_DB_POOL_SIZE"]))
        assert per_worker * int(env["HEARTBEAT_WORKERS"]) >= 2 * fleet / len(
            bridge_services(services)), name
    assert "heartbeat-bridge.service" in (DEPLOY / "README.md").read_text()
