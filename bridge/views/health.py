"""Liveness and readiness."""
from flask import Blueprint, jsonify

from bridge.store import StoreUnavailableError
from bridge.views import error, state

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process answers; says nothing about the store."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Ready when the store answers; a load balancer takes the replica out otherwise."""
    try:
        state().store.ping()
    except StoreUnavailableError:
        return error("store_unavailable", 503, "the store is unreachable",
                     {"Retry-After": "5"})
    return jsonify(status="ready")
