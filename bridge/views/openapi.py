"""GET /openapi.yaml: the HTTP API's description (bridge/openapi.yaml, shipped as package
data), and GET /api: the bridge's name, version and endpoints."""
from functools import lru_cache
from pathlib import Path

from flask import Blueprint, Response, jsonify

from bridge import __version__

bp = Blueprint("openapi", __name__)

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"


@lru_cache(maxsize=1)
def _spec() -> bytes:
    return SPEC_PATH.read_bytes()


@bp.get("/api")
def index() -> Response:
    return jsonify(name="heartbeat-bridge", version=__version__,
                   endpoints=["/", "/api/status", "/api/heartbeat/<server_id>/", "/api/servers",
                              "/metrics", "/healthz", "/readyz", "/openapi.yaml"])


@bp.get("/openapi.yaml")
def openapi() -> Response:
    """The document as shipped; it describes every endpoint, tests fuzz the bridge against it."""
    return Response(_spec(), mimetype="application/yaml",
                    headers={"Cache-Control": "public, max-age=300"})
