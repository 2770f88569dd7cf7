"""The heavy answers, /metrics and /api/status, computed in a child process of each worker.

A 100,000-server /metrics takes about 2 s of CPU to render, and a status snapshot of the
whole fleet about 1 s to build. Done in a thread of the worker, that work holds the
worker's GIL in 5 ms slices, and the event loop that answers beats waits for it at every
turn: beats of that worker stall while someone scrapes or watches the page. So under
`heartbeat-bridge serve` each worker hands them to a render process of its own
(`python -m bridge.render`, started on first use, restarted when it dies), which runs at
a lower CPU priority (nice RENDER_NICE): on a busy machine the beats are served first.

The worker sends its settings, then one request at a time, over the child's stdin and
reads each answer from its stdout, each a length-prefixed marshal of plain values. The
child opens its own store connection from the worker's settings, so
it reads what the workers committed; status snapshots stay shared between the children
through the status cache directory, as they were between workers (bridge.status_cache).

Housekeeping on scrape (rejection counts, retiring silent servers) stays in the worker,
which owns the pending counts.
"""
import dataclasses
import logging
import marshal
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import IO, Any, Callable, Dict, List, Optional, Tuple

from prometheus_client import CollectorRegistry

from bridge import logs
from bridge.config import Settings
from bridge.errors import BridgeError
from bridge.exposition import render
from bridge.http_metrics import WorkerFiles
from bridge.serving import Serving
from bridge.status_query import status_answer, status_snapshots
from bridge.store import StoreUnavailableError, open_store

log = logging.getLogger("bridge")
RENDER_NICE = 10
_LENGTH = struct.Struct("!I")
Headers = List[Tuple[str, str]]


class RenderError(BridgeError):
    """The render process failed, went away or took longer than `timeout`: answered 503 (the
    next request starts a new one). str() is the detail, for the log."""

    reason = "render_unavailable"
    status = 503
    message = "the bridge could not compute this answer; retry shortly"

    def headers(self) -> Headers:
        return [("Retry-After", "5")]


class Renderer:
    """A worker's link to its render processes; safe to call from any thread of the worker.

    One process per kind of answer, each started on first use: a scrape that renders for
    seconds never makes a status-page refresh of the same worker wait behind it."""

    KINDS = ("metrics", "status")

    def __init__(self, settings: Settings, argv: Optional[List[str]] = None,
                 timeout: Optional[float] = None) -> None:
        self.settings = settings
        # An answer not back within this is given up on (and its process replaced): the
        # gunicorn worker timeout, which a request in a thread would otherwise outlive.
        self.timeout = float(settings.timeout) if timeout is None else timeout
        argv = argv or [sys.executable, "-m", "bridge.render"]
        self._links = {kind: _Link(argv, settings) for kind in self.KINDS}

    # -- the two answers ------------------------------------------------------------------
    def metrics(self, accept: str, accept_encoding: str) -> Tuple[Headers, bytes]:
        """(headers, body) of one scrape, as bridge.exposition.render() gives them."""
        return self._call("metrics", accept, accept_encoding)

    def status(self, args: Dict[str, str], if_none_match: str
               ) -> Tuple[str, Optional[str]]:
        """(etag, JSON text or None when `if_none_match` already names that etag)."""
        return self._call("status", args, if_none_match)

    def pid(self, kind: str) -> Optional[int]:
        """The pid of the render process for `kind`, None while there is none."""
        return self._links[kind].pid

    def close(self) -> None:
        for link in self._links.values():
            link.close()

    def _call(self, op: str, *args: Any) -> Any:
        outcome, value = self._links[op].call(op, args, self.timeout)
        if outcome == "ok":
            return value
        kind, reason, message, status = value
        if kind == "StoreUnavailableError":
            raise StoreUnavailableError(message)
        if status < 500:  # the request's own fault (a bad query): as the child judged it
            raise BridgeError(f"render {op}: {message}", reason=reason, message=message,
                              status=status)
        raise RenderError(f"render {op}: {kind}: {message}")


class _Link:
    """One render process, one request at a time."""

    def __init__(self, argv: List[str], settings: Settings) -> None:
        self.argv = argv
        self.settings = settings
        self._lock = threading.Lock()
        self._child: Optional["subprocess.Popen[bytes]"] = None

    @property
    def pid(self) -> Optional[int]:
        child = self._child
        return child.pid if child is not None and child.poll() is None else None

    def call(self, op: str, args: Tuple[Any, ...], timeout: float) -> Any:
        with self._lock:
            for attempt in (1, 2):
                try:
                    child = self._start()
                    _send(child.stdin, (op, args))
                    return _receive(child.stdout, time.monotonic() + timeout)
                except (OSError, EOFError, ValueError, TimeoutError) as exc:
                    self._stop(kill=True)
                    # A child that died since the last answer is only seen now: renders
                    # change nothing, so one more try with a new child is safe.
                    if attempt == 2 or isinstance(exc, TimeoutError):
                        raise RenderError(f"render {op}: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _start(self) -> "subprocess.Popen[bytes]":
        child = self._child
        if child is not None and child.poll() is None:
            return child
        child = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 close_fds=True)
        self._child = child
        _send(child.stdin, dataclasses.asdict(self.settings))  # the worker's own settings
        log.info("render process started: pid %d", child.pid)
        return child

    def _stop(self, kill: bool = False) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if kill:
            child.kill()
        for stream in (child.stdin, child.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            child.wait(timeout=5)  # it ends when its stdin closes
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _send(stream: Optional[IO[bytes]], value: Any) -> None:
    assert stream is not None
    data = marshal.dumps(value)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _receive(stream: Optional[IO[bytes]], deadline: Optional[float] = None) -> Any:
    """One message; EOFError when the other end closed, TimeoutError after `deadline`."""
    assert stream is not None
    size = _LENGTH.unpack(_read(stream, _LENGTH.size, deadline))[0]
    return marshal.loads(_read(stream, size, deadline))


def _read(stream: IO[bytes], size: int, deadline: Optional[float]) -> bytes:
    if deadline is None:
        data = stream.read(size)
        if len(data) < size:
            raise EOFError("the other end closed the pipe")
        return data
    # Straight from the descriptor: the stream's own buffer is never used, so select()
    # sees everything there is to read.
    fd, chunks, left = stream.fileno(), [], size
    while left:
        wait = deadline - time.monotonic()
        if wait <= 0 or not select.select([fd], [], [], wait)[0]:
            raise TimeoutError("no answer in time")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other end closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# -- the child ----------------------------------------------------------------------------
class _Work:
    """What the render process computes, over its own store connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Any = None
        self.registry = CollectorRegistry(auto_describe=False)
        if settings.metrics_multiproc_dir:  # the workers' request metrics, merged
            self.registry.register(WorkerFiles(settings.metrics_multiproc_dir))
        self._snapshots: Any = None
        self.serving: Optional[Serving] = None

    @property
    def store(self) -> Any:
        """Opened on first use: a store that cannot be reached is that request's 503."""
        if self._store is None:
            self._store = open_store(self.settings.database_url, pool_size=1)
        return self._store

    def metrics(self, accept: str, accept_encoding: str) -> Tuple[Headers, bytes]:
        environ = {"HTTP_ACCEPT": accept, "HTTP_ACCEPT_ENCODING": accept_encoding}
        if self.serving is None:
            self.serving = Serving(self.settings.started_at or None,
                                   self.settings.heard_until or None)
        return render(self.store, environ, self.registry, self.settings.default_interval,
                      self.settings.max_servers, self.settings.metric_set, self.serving)

    def status(self, args: Dict[str, str], if_none_match: str) -> Tuple[str, Optional[str]]:
        if self._snapshots is None:
            self._snapshots = status_snapshots(self.store, self.settings)
        return status_answer(self._snapshots, args, self.settings.default_interval,
                             if_none_match)


def serve(stdin: IO[bytes], stdout: IO[bytes], work: Any) -> None:
    """Answer requests until stdin closes (the worker ended or restarts us)."""
    handlers: Dict[str, Callable[..., Any]] = {"metrics": work.metrics, "status": work.status}
    while True:
        try:
            op, args = _receive(stdin)
        except EOFError:
            return
        try:
            answer: Tuple[str, Any] = ("ok", handlers[op](*args))
        except BridgeError as exc:
            if exc.status >= 500:
                log.error("render %s: %s", op, exc)
            answer = ("error", (type(exc).__name__, exc.reason, exc.message, exc.status))
        except Exception as exc:
            log.exception("render %s failed", op)
            answer = ("error", (type(exc).__name__, "internal_error", str(exc), 500))
        _send(stdout, answer)


def main() -> None:
    try:
        os.nice(RENDER_NICE)
    except OSError:
        pass
    # Ctrl-C in a terminal reaches the whole process group: the worker stops us by closing
    # our stdin, without a traceback here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the answers
    started = time.perf_counter()
    try:
        settings = Settings(**_receive(stdin))  # the worker's, first
    except EOFError:
        return
    logs.setup(settings.log_level)  # as the worker logs, in its format and at its level
    work = _Work(settings)
    log.debug("ready in %.2f s", time.perf_counter() - started)
    serve(stdin, stdout, work)


if __name__ == "__main__":
    main()
