"""GET /openapi.yaml: the HTTP API's description (bridge/openapi.yaml, shipped as package data)."""
from functools import lru_cache
from pathlib import Path

from flask import Blueprint, Response

bp = Blueprint("openapi", __name__)

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"


@lru_cache(maxsize=1)
def _spec():
    return SPEC_PATH.read_bytes()


@bp.get("/openapi.yaml")
def openapi():
    """The document as shipped; it describes every endpoint, tests fuzz the bridge against it."""
    return Response(_spec(), mimetype="application/yaml",
                    headers={"Cache-Control": "public, max-age=300"})
