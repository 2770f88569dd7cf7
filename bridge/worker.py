"""gunicorn's worker for the bridge: uvicorn's event loop (uvloop, httptools), with read
timeouts and a header size limit that uvicorn does not have of its own.

A connection costs memory, not a thread: while it is idle (kept alive between beats,
HEARTBEAT_KEEPALIVE) or slow, nothing waits for it but a timer. A client must send its
request line and headers within HEARTBEAT_HEADER_TIMEOUT of its first byte (of connecting,
for a new connection) and its body within HEARTBEAT_BODY_TIMEOUT after the headers; else
the bridge answers 408 and closes the connection.
"""
import asyncio
import logging
from typing import Any, Optional

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from bridge.config import Settings

log = logging.getLogger("bridge")
# The request line and every header together; a beat's are about 200 bytes, a browser's
# with cookies a few KiB. gunicorn's limits were 2048 (line) and 50 x 4096 (fields).
MAX_HEADER_BYTES = 16 * 1024
_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
            b"content-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n")
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
              b"content-length: 25\r\nconnection: close\r\n\r\nrequest headers too large\n")


class TimedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a deadline for the headers and one for the body.

    A connection is, for reading, in one of three phases: "headers" (from its first byte of
    a request, or from connecting), "body" (headers complete, body not), or "idle" (the
    request was read whole: the app answers it, and uvicorn's keep-alive timer runs after).
    """

    header_timeout = 10.0
    body_timeout = 10.0
    _timer: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._phase, self._timer, self._header_bytes, self._parsed_bytes = "idle", None, 0, 0
        self._enter("headers", self.header_timeout)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
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

    def _count(self, size):
        """Headers that arrived whole in one read: uvicorn answers 400 to what this raises."""
        self._parsed_bytes += size
        if self._parsed_bytes > MAX_HEADER_BYTES:
            raise ValueError("request headers too large")

    def on_headers_complete(self) -> None:
        self._enter("body", self.body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._enter("idle", None)
        super().on_message_complete()

    def _enter(self, phase, timeout):
        self._cancel()
        self._phase = phase
        if phase == "headers":
            self._header_bytes = self._parsed_bytes = 0
        if timeout is not None:
            self._timer = self.loop.call_later(timeout, self._expired)

    def _cancel(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self):
        self._timer = None
        log.debug("closing a connection from %s: %s not received in time",
                  self.client[0] if self.client else "?", self._phase)
        self._refuse(_TIMEOUT if self._header_bytes or self._phase == "body" else b"")

    def _refuse(self, answer):
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
        protocol = type("BridgeHttpProtocol", (TimedHttpProtocol,), {
            "header_timeout": settings.header_timeout, "body_timeout": settings.body_timeout})
        trusted = list(settings.trusted_proxies)
        self.CONFIG_KWARGS = {
            "loop": "uvloop", "http": protocol, "lifespan": "on", "access_log": False,
            "server_header": False,
            # X-Forwarded-For / -Proto are believed only from the proxies the operator named.
            "proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None,
        }
        super().__init__(*args, **kwargs)
