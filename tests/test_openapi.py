"""bridge/openapi.yaml: valid OpenAPI, served by the bridge, and covering every route.

tests/test_fuzz.py fuzzes a live bridge against it.
"""
import re

import pytest
import yaml
from openapi_spec_validator import validate

from bridge.views.beat import _ACTIONS as BEAT_ACTIONS
from bridge.views.beat import PREFIX as BEAT_PREFIX
from tests.tools import ROOT

SPEC_PATH = ROOT / "bridge" / "openapi.yaml"
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path / 'heartbeat.db'}"


@pytest.fixture(scope="module")
def spec():
    return yaml.safe_load(SPEC_PATH.read_text())


def documented(spec):
    return {(path, method.upper()) for path, item in spec["paths"].items()
            for method in item if method in METHODS}


def test_the_description_is_valid_openapi(spec):
    validate(spec)  # raises with the first problem it finds
    assert spec["openapi"].startswith("3.1")


def test_the_bridge_serves_the_description_it_ships(client):
    response = client.get("/openapi.yaml")
    assert response.status_code == 200
    assert response.mimetype == "application/yaml"
    assert response.get_data() == SPEC_PATH.read_bytes()


def test_docs_points_at_the_one_source():
    pointer = (ROOT / "docs" / "openapi.yaml").read_text()
    assert yaml.safe_load(pointer) == {"$ref": "../bridge/openapi.yaml"}
    assert "paths:" not in pointer  # a pointer, never a second copy to drift


def test_every_route_of_the_bridge_is_described_and_nothing_else(app, spec):
    routes = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        routes |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    # the two plain WSGI apps mounted beside Flask
    for action, methods in BEAT_ACTIONS.items():
        path = f"{BEAT_PREFIX}/{{server_id}}/{action}" if action else \
            f"{BEAT_PREFIX}/{{server_id}}/"
        routes |= {(path, m) for m in methods}
    routes.add(("/metrics", "GET"))
    assert documented(spec) == routes


def test_every_operation_documents_its_refusals_as_json_errors(spec):
    error = {"$ref": "#/components/schemas/Error"}
    responses = spec["components"]["responses"]
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            assert operation.get("operationId"), (path, method)
            for status, response in operation["responses"].items():
                if not status.startswith(("4", "5")):
                    continue
                response = responses[response["$ref"].rsplit("/", 1)[1]]
                assert response["content"]["application/json"]["schema"] == error, (
                    path, method, status)


def test_protected_operations_declare_their_tokens(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            schemes = {name for requirement in operation.get("security", [])
                       for name in requirement}
            if path.startswith("/api/servers"):
                assert schemes == {"adminToken"}, path
            elif path.startswith(BEAT_PREFIX):
                assert schemes == {"fleetToken", "serverToken"}, path
            if schemes:
                assert "401" in operation["responses"], (path, method)
