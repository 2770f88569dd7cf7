"""The fleet status page `/` and the JSON it reads, `/api/status`.

Protected unless HEARTBEAT_STATUS_PUBLIC is true: the status token or the admin token,
as `Authorization: Bearer <token>` or as the password of HTTP basic auth (any user
name), which browsers can send. With protection on and neither token set, both
answer 404 saying how to turn the page on.
"""
from typing import Optional

from flask import Blueprint, Response, current_app, render_template, request

from bridge.status import DOWN_AFTER, LATE_AFTER, STATE_NAMES, STATES
from bridge.status_query import parse_query
from bridge.views import error, state

bp = Blueprint("status", __name__)

REFRESH_SECONDS = 5
REALM = 'realm="heartbeat-bridge status", charset="UTF-8"'
# Everything comes from this origin; the page can be framed by nobody.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                           "form-action 'none'; frame-ancestors 'none'")


@bp.before_request
def require_access() -> Optional[Response]:
    hb = state()
    if hb.settings.status_public:
        return None
    if not hb.auth.status_enabled:
        return error("status_disabled", 404,
                     "the status page is off: set HEARTBEAT_STATUS_TOKEN (or "
                     "HEARTBEAT_ADMIN_TOKEN) to protect it, or HEARTBEAT_STATUS_PUBLIC=true "
                     "to make it public")
    if not hb.auth.check_status(_presented_token()):
        scheme = "Bearer" if request.path.startswith("/api/") else "Basic"
        return error("invalid_token", 401,
                     "send Authorization: Bearer <status or admin token>, or HTTP basic auth "
                     "with any user name and the token as password",
                     {"WWW-Authenticate": f"{scheme} {REALM}"})
    return None


@bp.after_request
def no_caching(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


def _presented_token() -> Optional[str]:
    """The bearer token, or the basic-auth password; None when neither was sent."""
    auth = request.authorization
    if auth is None:
        return None
    if auth.type == "bearer":
        return auth.token
    if auth.type == "basic":
        return auth.password
    return None


@bp.get("/")
def page() -> str:
    """The HTML shell; status.js fills it from /api/status and refreshes it."""
    return render_template("status.html", refresh_seconds=REFRESH_SECONDS,
                           late_after=LATE_AFTER, down_after=DOWN_AFTER,
                           state_names=STATE_NAMES, states=STATES)


@bp.get("/api/status")
def status_json() -> Response:
    """Counts per state and one page of the servers the query selects (see status_query).

    Answers 304 to `If-None-Match` with the ETag of an answer whose counts, rows and
    paging are unchanged; only the times relative to `generated_at` may have moved.
    The worker's renderer computes it (bridge.renderer): for a large fleet, the host's
    render process, so building a snapshot never holds a worker's event loop.
    """
    hb = state()
    args = request.args.to_dict()  # the first value of each parameter, as parse_query reads
    parse_query(args)  # a bad query is a 400 here, before any work
    if_none_match = request.headers.get("If-None-Match", "")
    etag, text = hb.renderer.status(args, if_none_match)
    if text is None:
        response = current_app.response_class(status=304)
    else:
        response = current_app.response_class(text, mimetype="application/json")
    response.set_etag(etag, weak=True)
    return response

