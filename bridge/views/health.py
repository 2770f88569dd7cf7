"""Liveness and readiness."""
from flask import Blueprint, Response, jsonify

from bridge.store import StoreUnavailableError
from bridge.views import error, state

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process answers; says nothing about the store."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response:
    """Ready when the store answers; a load balancer takes the replica out otherwise."""
    try:
        state().store.ping()
    except StoreUnavailableError as exc:
        return error(exc.reason, exc.status, "the store is unreachable", dict(exc.headers()))
    return jsonify(status="ready")
