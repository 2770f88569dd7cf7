"""gunicorn's worker for the bridge: uvicorn's event loop (uvloop, httptools), with read
timeouts and a header size limit that uvicorn does not have of its own.

A connection costs memory, not a thread: while it is idle (kept alive between beats,
HEARTBEAT_KEEPALIVE) or slow, nothing waits for it but a timer. A client must send its
request line and headers within HEARTBEAT_HEADER_TIMEOUT of its first byte (of connecting,
for a new connection) and its body within HEARTBEAT_BODY_TIMEOUT after the headers; else
the bridge answers 408 and closes the connection.

Each worker bounds its open connections below its file limit (bridge.connections): at the
bound the longest-idle kept-alive connection is closed for a newcomer, or, none being idle,
the newcomer's requests are answered 503 (but for health, readiness and /metrics).
"""
import asyncio
import contextlib
import logging
import resource
from typing import Any, Dict, Optional, Type

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from bridge.config import Settings
from bridge.connections import ALWAYS_ANSWERED, ConnectionMetrics, Connections, connection_bound
from bridge.errors import encode, error_body

log = logging.getLogger("bridge")
# The request line and every header together; a beat's are about 200 bytes, a browser's
# with cookies a few KiB. gunicorn's limits were 2048 (line) and 50 x 4096 (fields).
MAX_HEADER_BYTES = 16 * 1024
_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
            b"content-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n")
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
              b"content-length: 25\r\nconnection: close\r\n\r\nrequest headers too large\n")
_AT_BOUND = encode(error_body("connection_limit", "the bridge is at its connection limit; "
                              "retry shortly"))


async def _at_bound(scope: Dict[str, Any], receive: Any, send: Any) -> None:
    """The answer to a request on a connection past the worker's bound: the body read (so the
    close is clean), then 503 with Retry-After; uvicorn closes the connection after it."""
    while (await receive()).get("more_body", False):
        pass
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"retry-after", b"5"),
        (b"content-length", str(len(_AT_BOUND)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": _AT_BOUND})


def _new_parser(protocol: Any) -> httptools.HttpRequestParser:
    """A request parser as uvicorn makes one for a new connection."""
    parser = httptools.HttpRequestParser(protocol)
    with contextlib.suppress(AttributeError):  # httptools < 0.6.3
        parser.set_dangerous_leniencies(lenient_data_after_close=True)
    return parser


class _Pipeline(list):
    """The part of deque uvicorn's pipeline uses: appendleft() here, pop() at the other end."""

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class _OneWrite:
    """A request's view of its connection's transport that sends the response's status line
    and headers together with the first body write: one send() per small answer, not two
    (on loopback and on a LAN, each send costs a syscall and a segment for the peer's stack
    to take in). Anything written before the response starts (100 Continue) goes at once."""

    __slots__ = ("transport", "cycle", "_held", "_headers_sent")

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self.transport, self.cycle = transport, cycle
        self._held, self._headers_sent = b"", False

    def write(self, data: bytes) -> None:
        if not self._headers_sent and self.cycle.response_started:
            self._headers_sent = True  # the first write after the start: status and headers
            if not self.cycle.response_complete:
                self._held = bytes(data)
                return
        if self._held:
            data, self._held = self._held + data, b""
        self.transport.write(data)

    def close(self) -> None:
        if self._held:
            self.transport.write(self._held)
            self._held = b""
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class TimedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a deadline for the headers and one for the body.

    A connection is, for reading, in one of three phases: "headers" (from its first byte of
    a request, or from connecting), "body" (headers complete, body not), or "idle" (the
    request was read whole: the app answers it, and uvicorn's keep-alive timer runs after).
    """

    header_timeout = Settings.header_timeout  # replaced by the settings in a subclass (below)
    body_timeout = Settings.body_timeout
    worker_connections: Optional[Connections] = None  # set when the worker starts serving
    # Slots, not the instance dict: uvicorn's own attributes nearly fill the 30 keys an
    # instance may share with its class; five more made every connection's dict its own
    # (1.6 kB per connection, measured with tracemalloc).
    __slots__ = ("_phase", "_timer", "_header_bytes", "_parsed_bytes", "_admitted")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase, self._header_bytes, self._parsed_bytes = "idle", 0, 0
        self._timer: Optional[asyncio.TimerHandle] = None
        self._admitted = True
        # uvicorn's deque of pipelined requests costs 760 bytes even empty; a list does
        # the same (appendleft, pop from the right) for 56.
        self.pipeline = _Pipeline()  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._enter("headers", self.header_timeout)
        if self.worker_connections is not None:
            self._admitted = self.worker_connections.opened(self)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._cancel()
        if self.worker_connections is not None:
            self.worker_connections.closed(self)
        super().connection_lost(exc)

    def shed(self) -> None:
        """Close this idle kept-alive connection to make room (bridge.connections)."""
        if not self.transport.is_closing():
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is None or self.transport.is_closing():
            return  # closing, or the next pipelined request runs
        if self._phase != "idle":
            return  # bytes of the next request came in already: its scope is being read
        # Kept alive between requests: what the answered request held, and the parser
        # (0.9 kB), are not needed until the next one (a few kB per connection, times
        # thousands of idle agents).
        self.cycle = self.scope = self.headers = None  # type: ignore[assignment]
        self.parser = None  # type: ignore[assignment]
        if self.worker_connections is not None:
            self.worker_connections.idle(self)

    def on_headers_complete(self) -> None:
        if self._admitted or self.worker_connections is None:
            return self._start_request()
        self._admitted = self.worker_connections.admit()
        if self._admitted:
            return self._start_request()
        path = httptools.parse_url(self.url).path.decode("latin-1")
        if path not in ALWAYS_ANSWERED:
            self.worker_connections.refused()
            self.app = _at_bound  # this connection's app: its one answer, then it closes
        self._start_request()
        self.cycle.keep_alive = False

    def data_received(self, data: bytes) -> None:
        if self.parser is None:  # idle since its last answer (on_response_complete)
            self.parser = _new_parser(self)  # type: ignore[unreachable]
        if self.worker_connections is not None:
            self.worker_connections.busy(self)
        if self._phase == "idle":
            self._enter("headers", self.header_timeout)
        if self._phase == "headers":
            self._header_bytes += len(data)
        super().data_received(data)
        if self._phase == "headers" and self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(_TOO_LARGE)

    def on_message_begin(self) -> None:
        if self._phase == "idle":  # a pipelined request, in the same read as the last one
            self._enter("headers", self.header_timeout)
        self._parsed_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        """Headers that arrived whole in one read: uvicorn answers 400 to what this raises."""
        self._parsed_bytes += size
        if self._parsed_bytes > MAX_HEADER_BYTES:
            raise ValueError("request headers too large")

    def _start_request(self) -> None:
        self._enter("body", self.body_timeout)
        super().on_headers_complete()
        self.cycle.transport = _OneWrite(self.transport, self.cycle)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._enter("idle", None)
        super().on_message_complete()

    def _enter(self, phase: str, timeout: Optional[float]) -> None:
        self._cancel()
        self._phase = phase
        if phase == "headers":
            self._header_bytes = self._parsed_bytes = 0
        if timeout is not None:
            self._timer = self.loop.call_later(timeout, self._expired)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        log.debug("closing a connection from %s: %s not received in time",
                  self.client[0] if self.client else "?", self._phase)
        self._refuse(_TIMEOUT if self._header_bytes or self._phase == "body" else b"")

    def _refuse(self, answer: bytes) -> None:
        """Answer (unless a response has begun) and close; the app sees a disconnect."""
        self._cancel()
        if self.transport.is_closing():
            return
        if answer and (self.cycle is None or not self.cycle.response_started):
            self.transport.write(answer)
        self.transport.close()


class BridgeWorker(UvicornWorker):
    """uvicorn's gunicorn worker with the bridge's protocol and proxy settings."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = Settings.from_env()
        protocol: Type[TimedHttpProtocol] = type("BridgeHttpProtocol", (TimedHttpProtocol,), {
            "header_timeout": settings.header_timeout, "body_timeout": settings.body_timeout})
        trusted = list(settings.trusted_proxies)
        self.CONFIG_KWARGS = {
            "loop": "uvloop", "http": protocol, "lifespan": "on", "access_log": False,
            "server_header": False,
            # X-Forwarded-For / -Proto are believed only from the proxies the operator named.
            "proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None,
        }
        self.protocol, self.settings = protocol, settings
        super().__init__(*args, **kwargs)

    def run(self) -> None:
        """In the worker process: bound its connections by the file limit it inherited."""
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        state = getattr(self.wsgi, "state", None)  # the ASGI app's BridgeState
        metrics = ConnectionMetrics(getattr(state, "registry", None),
                                    self.settings.metrics_multiproc_dir)
        self.protocol.worker_connections = Connections(
            connection_bound(limit, self.settings.pool_size), metrics)
        super().run()
