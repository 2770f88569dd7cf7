"""Admin API under /api/servers (admin token); 404 when HEARTBEAT_ADMIN_TOKEN is unset."""
from flask import Blueprint, jsonify, request

from bridge import admin
from bridge.store import ServerExistsError, ServerLimitError, UnknownServerError
from bridge.validate import InvalidInputError
from bridge.views import error, state

bp = Blueprint("admin", __name__, url_prefix="/api/servers")


@bp.before_request
def require_admin():
    auth = state().auth
    if not auth.admin_enabled:
        return error("admin_disabled", 404, "the admin API is off (HEARTBEAT_ADMIN_TOKEN unset)")
    if not auth.check_admin(request.headers.get("Authorization")):
        return error("invalid_token", 401, "send Authorization: Bearer <admin token>",
                     {"WWW-Authenticate": 'Bearer realm="heartbeat-bridge-admin"'})
    return None


@bp.errorhandler(InvalidInputError)
def invalid_input(exc):
    return error(exc.reason, exc.status, exc.message)


@bp.errorhandler(UnknownServerError)
def unknown_server(exc):
    return error("unknown_server", 404, f"no server {exc.args[0]!r}")


@bp.errorhandler(ServerExistsError)
def server_exists(exc):
    return error("server_exists", 409, f"server {exc.args[0]!r} is registered already")


@bp.errorhandler(ServerLimitError)
def server_limit(exc):
    return error("server_limit", 403, str(exc))


def _body():
    """The JSON object sent, {} for an empty body; 400/415 otherwise."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return {}
    if request.mimetype != "application/json":
        raise InvalidInputError("unsupported_media_type", "send Content-Type: application/json",
                                415)
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise InvalidInputError("invalid_json", "the body must be a JSON object")
    return data


def _server_json(server, status=200, **extra):
    hb = state()
    response = jsonify(server=server.as_dict(hb.store.clock(), hb.settings.default_interval),
                       **extra)
    response.status_code = status
    return response


@bp.get("")
def list_servers():
    hb = state()
    now = hb.store.clock()
    return jsonify(servers=[s.as_dict(now, hb.settings.default_interval)
                            for s in hb.store.list()])


@bp.post("")
def register_server():
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
def show_server(server_id):
    return _server_json(state().store.get(server_id))


@bp.patch("/<server_id>")
def update_server(server_id):
    hb = state()
    data = _body()
    hb.store.get(server_id)  # 404 before validating fields of an unknown server
    if "labels" in data:
        admin.relabel(hb.store, server_id, data["labels"])
    if "interval" in data:
        admin.set_interval(hb.store, server_id, data["interval"])
    return _server_json(hb.store.get(server_id))


@bp.delete("/<server_id>")
def remove_server(server_id):
    admin.remove(state().store, server_id)
    return "", 204


@bp.post("/<server_id>/pause")
def pause_server(server_id):
    data = _body()
    return _server_json(admin.pause(state().store, server_id, duration=data.get("for"),
                                    until=data.get("until"), reason=data.get("reason")))


@bp.post("/<server_id>/resume")
def resume_server(server_id):
    return _server_json(admin.resume(state().store, server_id))


@bp.post("/<server_id>/retire")
def retire_server(server_id):
    return _server_json(admin.retire(state().store, server_id))


@bp.post("/<server_id>/unretire")
def unretire_server(server_id):
    return _server_json(admin.retire(state().store, server_id, retired=False))


@bp.post("/<server_id>/token")
def rotate_token(server_id):
    data = _body()
    token = admin.rotate_token(state().store, server_id, data.get("keep_previous_for"))
    return _server_json(state().store.get(server_id), token=token)


@bp.delete("/<server_id>/token")
def revoke_token(server_id):
    return _server_json(admin.revoke_token(state().store, server_id))
