"""Admin API under /api/servers (admin token); 404 when HEARTBEAT_ADMIN_TOKEN is unset.

Errors answer as they describe themselves (bridge.views.errors)."""
from typing import Any, Dict, Optional, Tuple

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from bridge import admin
from bridge.server_view import server_json
from bridge.store import Server
from bridge.validate import InvalidInputError, parse_object
from bridge.views import error, state

bp = Blueprint("admin", __name__, url_prefix="/api/servers")


@bp.before_request
def require_admin() -> Optional[Response]:
    auth = state().auth
    if not auth.admin_enabled:
        return error("admin_disabled", 404, "the admin API is off (HEARTBEAT_ADMIN_TOKEN unset)")
    if not auth.check_admin(request.headers.get("Authorization")):
        return error("invalid_token", 401, "send Authorization: Bearer <admin token>",
                     {"WWW-Authenticate": 'Bearer realm="heartbeat-bridge-admin"'})
    return None


@bp.after_request
def private(response: Response) -> Response:
    """Admin answers carry tokens and the fleet's data: for no cache, and never sniffed."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _body() -> Dict[str, Any]:
    """The JSON object sent, {} for an empty body; 400/415 otherwise (as every endpoint), 413
    over MAX_CONTENT_LENGTH, chunked or sized."""
    data = request.get_data(cache=True)
    # werkzeug stops a body without Content-Length at the limit and returns what it read:
    # a body cut there must be refused, not parsed (it may even be valid JSON).
    if len(data) >= (current_app.config["MAX_CONTENT_LENGTH"] or 0) and \
            request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return parse_object(data, request.content_type)


def _server_json(server: Server, status: int = 200, **extra: Any) -> Response:
    hb = state()
    response = jsonify(server=server_json(server, hb.store.clock(),
                                          hb.settings.default_interval), **extra)
    response.status_code = status
    return response


@bp.get("")
def list_servers() -> Response:
    hb = state()
    now = hb.store.clock()
    return jsonify(servers=[server_json(s, now, hb.settings.default_interval)
                            for s in hb.store.list()])


@bp.post("")
def register_server() -> Response:
    hb = state()
    data = _body()
    with_token = data.get("token")
    if with_token is not None and not isinstance(with_token, bool):  # "false" is truthy
        raise InvalidInputError("invalid_field", "token must be true or false", 422)
    server, token = admin.register(hb.store, hb.settings, data.get("server_id"),
                                   interval=data.get("interval"), labels=data.get("labels"),
                                   with_token=bool(with_token))
    extra = {"token": token} if token else {}
    return _server_json(server, 201, **extra)


@bp.get("/<server_id>")
def show_server(server_id: str) -> Response:
    return _server_json(state().store.get(server_id))


@bp.patch("/<server_id>")
def update_server(server_id: str) -> Response:
    hb = state()
    data = _body()
    changes = {key: data[key] for key in ("labels", "interval") if key in data}
    return _server_json(admin.update(hb.store, server_id, **changes))


@bp.delete("/<server_id>")
def remove_server(server_id: str) -> Tuple[str, int]:
    admin.remove(state().store, server_id)
    return "", 204


@bp.post("/<server_id>/pause")
def pause_server(server_id: str) -> Response:
    data = _body()
    return _server_json(admin.pause(state().store, server_id, duration=data.get("for"),
                                    until=data.get("until"), reason=data.get("reason")))


@bp.post("/<server_id>/resume")
def resume_server(server_id: str) -> Response:
    return _server_json(admin.resume(state().store, server_id))


@bp.post("/<server_id>/retire")
def retire_server(server_id: str) -> Response:
    return _server_json(admin.retire(state().store, server_id))


@bp.post("/<server_id>/unretire")
def unretire_server(server_id: str) -> Response:
    return _server_json(admin.retire(state().store, server_id, retired=False))


@bp.post("/<server_id>/token")
def rotate_token(server_id: str) -> Response:
    data = _body()
    token = admin.rotate_token(state().store, server_id, data.get("keep_previous_for"))
    return _server_json(state().store.get(server_id), token=token)


@bp.delete("/<server_id>/token")
def revoke_token(server_id: str) -> Response:
    return _server_json(admin.revoke_token(state().store, server_id))
