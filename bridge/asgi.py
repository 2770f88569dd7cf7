"""The ASGI app `heartbeat-bridge serve` runs under gunicorn with bridge.worker.BridgeWorker.

Beats (`/api/heartbeat/...`: beat, goodbye, maintenance) are handled natively in the event
loop: headers and body are read there, then the whole handling (BeatEndpoint.handle: auth,
validation, store) runs as one job of the process's group commit (bridge/writer.py), and
the answer goes out once that job's batch committed. Everything else is the Flask app
(admin API, status page, health, /metrics) in a pool of HEARTBEAT_THREADS threads through
a2wsgi; the heavy answers, /metrics and /api/status, of a large fleet are computed in the
host's render process (bridge.render), so a 100,000-server scrape holds neither the loop
nor its GIL. Both adapt one BridgeState (bridge.state), built once per worker.
"""
import asyncio
import functools
import logging
import time
from typing import Any, Awaitable, Callable, Dict, Optional

from a2wsgi import WSGIMiddleware

from bridge.app import flask_app
from bridge.errors import encode
from bridge.state import BridgeState, build_state
from bridge.validate import MAX_BODY_BYTES
from bridge.views.beat import PREFIX, Answer, BeatEndpoint, route
from bridge.writer import GroupWriter

log = logging.getLogger("bridge")
Scope = Dict[str, Any]
Receive = Callable[[], Awaitable[Dict[str, Any]]]
Send = Callable[[Dict[str, Any]], Awaitable[None]]
_JSON = (b"content-type", b"application/json")
# Stands for a body whose Content-Length is over the limit: it is not read, and
# BeatEndpoint.handle() refuses anything longer than MAX_BODY_BYTES with 413.
_OVER_LIMIT = bytes(MAX_BODY_BYTES + 1)


def create_asgi_app(**options: Any) -> "BridgeASGI":
    """The bridge as an ASGI app; options as for bridge.state.build_state()."""
    return BridgeASGI(build_state(**options))


class BridgeASGI:
    """Routes by path: the beat prefix natively, everything else to Flask in threads."""

    def __init__(self, state: BridgeState) -> None:
        self.state = state
        self.beats = BeatEndpoint(state)
        self.flask_app = flask_app(state)
        self.wsgi = WSGIMiddleware(_input_terminated(self.flask_app),
                                   workers=state.settings.threads)
        self.writer = GroupWriter(state.store)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if path.startswith(PREFIX) and path[len(PREFIX):len(PREFIX) + 1] in ("", "/"):
                return await self.beat(scope, receive, send)
            return await self.flask(scope, receive, send)
        if kind == "lifespan":
            return await self.lifespan(receive, send)
        # websocket: not served

    async def flask(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Flask, in a thread, once the whole body is here (up to the limit, past which Flask
        answers 413): a request whose client left mid-body, or whose framing the server
        refused (a Transfer-Encoding other than chunked), never reaches a view, so none
        acts on a body it did not receive. A declared length over the limit is not read."""
        limit = self.flask_app.config["MAX_CONTENT_LENGTH"]
        length = dict(scope["headers"]).get(b"content-length", b"")
        if not (length.isdigit() and int(length) > limit):
            body = await _whole_body(receive, limit)
            if body is None:
                return  # the client went away, or was cut off by the body timeout
            receive = _replay(body, receive)
        await self.wsgi(scope, receive, send)  # type: ignore[arg-type]

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.writer.start(asyncio.get_running_loop())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.writer.stop()
                self.state.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def beat(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        server_id, action = route(scope["path"][len(PREFIX):])
        authorization: Optional[str] = None
        content_type: Optional[str] = None
        length: Optional[bytes] = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                length = value
        body = await _read_body(receive, length)
        if body is None:
            return  # the client went away, or was cut off by the body timeout
        status, answer, headers = await self.writer.submit(
            functools.partial(self.beats.handle, scope["method"], server_id, action,
                              authorization, content_type, body),
            functools.partial(self._unavailable, server_id))
        payload = encode(answer)
        await send({"type": "http.response.start", "status": status, "headers": [
            _JSON, (b"content-length", str(len(payload)).encode())] + [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]})
        # counted before the last byte goes out: a scrape that follows the answer sees it
        self.beats.observe(action or "beat", status, time.perf_counter() - started)
        await send({"type": "http.response.body", "body": payload})

    def _unavailable(self, server_id: str, exc: BaseException) -> Answer:
        """The answer to a request whose batch did not commit: nothing was acknowledged."""
        return self.beats.unavailable(server_id)


def _input_terminated(app: Any) -> Any:
    """`app` told that wsgi.input ends where the body ends, as a2wsgi's does (it reads the
    ASGI body messages, chunked ones too): without that, werkzeug reads a body that has no
    Content-Length as empty, and an admin request would act without what it was sent.
    Flask's MAX_CONTENT_LENGTH then bounds chunked bodies as it bounds sized ones (413)."""
    def wsgi(environ: Dict[str, Any], start_response: Any) -> Any:
        environ["wsgi.input_terminated"] = True
        return app(environ, start_response)
    return wsgi


async def _read_body(receive: Receive, length: Optional[bytes]) -> Optional[bytes]:
    """The request body, at most MAX_BODY_BYTES + 1 bytes; None if the client went away."""
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        return _OVER_LIMIT
    return await _whole_body(receive, MAX_BODY_BYTES)


async def _whole_body(receive: Receive, limit: int) -> Optional[bytes]:
    """The request body to its end, or its first limit + 1 bytes (a chunked flood is cut off
    there); None if the client went away first."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            return body[:limit + 1]
        if not message.get("more_body", False):
            return body


def _replay(body: bytes, receive: Receive) -> Receive:
    """An ASGI receive that yields `body` as one message, then what `receive` yields."""
    sent = False

    async def replay() -> Dict[str, Any]:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
    return replay
