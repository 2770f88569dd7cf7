"""The host's render process: /metrics and /api/status of a large fleet, for every worker.

A 100,000-server /metrics takes about 2 s of CPU to render, and a status snapshot of the
whole fleet about 1 s to build. Done in a thread of a worker, that work holds the worker's
GIL in 5 ms slices, and the event loop that answers beats waits for it at every turn. So
under `heartbeat-bridge serve`, once the fleet is large (bridge.renderer.SizedRenderer),
the workers hand these answers to one render process per host (`python -m bridge.render_process`),
started by the first worker that needs it, shared by all of them, run at a lower CPU
priority (nice RENDER_NICE): on a busy machine the beats are served first.

Workers talk to it over a Unix socket in the serve run directory (HEARTBEAT_RUN_DIR), one
connection per worker and kind of answer; each message is a length-prefixed marshal of
plain values. It opens its own store connection from the settings of the worker that
started it, so it reads what the workers committed. A scrape that arrives while the same
scrape is being rendered for another worker gets that answer (rendered after it arrived,
so never older than the request). It ends with the gunicorn master (checked every second)
or when `serve` stops it (bridge/gunicorn.conf.py).

Housekeeping on scrape (rejection counts, retiring silent servers) stays in the workers,
which own the pending counts.
"""
import dataclasses
import fcntl
import logging
import marshal
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from bridge.config import Settings
from bridge.errors import BridgeError
from bridge.renderer import Headers
from bridge.store import StoreUnavailableError

log = logging.getLogger("bridge")
RENDER_NICE = 10
SOCKET_NAME, LOCK_NAME, PID_NAME = "render.sock", "render.lock", "render.pid"
START_TIMEOUT = 30.0
_LENGTH = struct.Struct("!I")


class RenderError(BridgeError):
    """The render process failed, went away or took longer than `timeout`: answered 503 (the
    next request reaches a new one). str() is the detail, for the log."""

    reason = "render_unavailable"
    status = 503
    message = "the bridge could not compute this answer; retry shortly"

    def headers(self) -> Headers:
        return [("Retry-After", "5")]


class HostRenderer:
    """A worker's link to the host's render process; safe to call from any thread.

    One connection per kind of answer: a scrape that renders for seconds never makes a
    status refresh of the same worker wait behind it."""

    KINDS = ("metrics", "status")

    def __init__(self, settings: Settings, argv: Optional[List[str]] = None,
                 timeout: Optional[float] = None) -> None:
        if not settings.run_dir:
            raise ValueError("HostRenderer needs settings.run_dir (set by serve)")
        self.settings = settings
        # An answer not back within this is given up on (and the process replaced): the
        # gunicorn worker timeout, which a request in a thread would otherwise outlive.
        self.timeout = float(settings.timeout) if timeout is None else timeout
        self.argv = argv or [sys.executable, "-m", "bridge.render_process"]
        self.path = os.path.join(settings.run_dir, SOCKET_NAME)
        self._links = {kind: _Link(self) for kind in self.KINDS}
        self._started: List["subprocess.Popen[bytes]"] = []  # reaped when they end

    def metrics(self, accept: str, accept_encoding: str) -> Tuple[Headers, bytes]:
        return self._call("metrics", accept, accept_encoding)

    def status(self, args: Dict[str, str], if_none_match: str) -> Tuple[str, Optional[str]]:
        return self._call("status", args, if_none_match)

    def pid(self) -> Optional[int]:
        """The pid of the host's render process, None while there is none."""
        return read_pid(self.settings.run_dir)

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._started = [child for child in self._started if child.poll() is None]

    def _call(self, op: str, *args: Any) -> Any:
        outcome, value = self._links[op].call(op, args)
        if outcome == "ok":
            return value
        kind, reason, message, status = value
        if kind == "StoreUnavailableError":
            raise StoreUnavailableError(message)
        if status < 500:  # the request's own fault (a bad query): as the process judged it
            raise BridgeError(f"render {op}: {message}", reason=reason, message=message,
                              status=status)
        raise RenderError(f"render {op}: {kind}: {message}")

    def connect(self) -> socket.socket:
        """A connection to the render process; starts one when there is none."""
        try:
            return _connect(self.path)
        except OSError:
            pass
        with open(os.path.join(self.settings.run_dir, LOCK_NAME), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one worker starts it; the others wait for it
            try:
                return _connect(self.path)
            except OSError:
                self._start()
                return _connect(self.path)

    def _start(self) -> None:
        self._started = [child for child in self._started if child.poll() is None]
        if os.path.exists(self.path):
            os.unlink(self.path)  # left by one that died
        child = subprocess.Popen(self.argv + [self.path, str(os.getppid())],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        self._started.append(child)
        assert child.stdin is not None and child.stdout is not None
        try:
            write_message(child.stdin.fileno(), dataclasses.asdict(self.settings))
            child.stdin.close()
            read_message(child.stdout.fileno(), time.monotonic() + START_TIMEOUT)  # listening
        except (OSError, EOFError, ValueError, TimeoutError) as exc:
            child.kill()
            raise RenderError(f"render process did not start: {type(exc).__name__}: {exc}")
        finally:
            child.stdout.close()
        with open(os.path.join(self.settings.run_dir, PID_NAME), "w") as f:
            f.write(str(child.pid))
        log.info("render process started: pid %d", child.pid)

    def kill(self) -> None:
        """End a render process that hung: the next request starts a new one."""
        pid = self.pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


class _Link:
    """One connection to the render process, one request at a time."""

    def __init__(self, owner: HostRenderer) -> None:
        self.owner = owner
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None

    def call(self, op: str, args: Tuple[Any, ...]) -> Any:
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._sock is None:
                        self._sock = self.owner.connect()
                    fd = self._sock.fileno()
                    write_message(fd, (op, args))
                    return read_message(fd, time.monotonic() + self.owner.timeout)
                except (OSError, EOFError, ValueError, TimeoutError) as exc:
                    self._drop()
                    if isinstance(exc, TimeoutError):
                        self.owner.kill()
                    # A process that ended since the last answer is only seen now: renders
                    # change nothing, so one more try with a new connection is safe.
                    if attempt == 2 or isinstance(exc, TimeoutError):
                        raise RenderError(f"render {op}: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def read_pid(run_dir: str) -> Optional[int]:
    """The pid of the render process of this run directory, if it is alive."""
    try:
        with open(os.path.join(run_dir, PID_NAME)) as f:
            pid = int(f.read())
        with open(f"/proc/{pid}/stat") as f:  # a zombie, not yet reaped, is gone too
            alive = f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive else None


def stop(run_dir: str) -> None:
    """End the render process of this run directory, if any (serve's shutdown and reload)."""
    pid = read_pid(run_dir)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass


def write_message(fd: int, value: Any) -> None:
    """Send one message: a length-prefixed marshal of plain values."""
    data = marshal.dumps(value)
    data = _LENGTH.pack(len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def read_message(fd: int, deadline: Optional[float] = None) -> Any:
    """One message; EOFError when the other end closed, TimeoutError after `deadline`."""
    size = _LENGTH.unpack(_read(fd, _LENGTH.size, deadline))[0]
    return marshal.loads(_read(fd, size, deadline))


def _read(fd: int, size: int, deadline: Optional[float]) -> bytes:
    chunks, left = [], size
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError("no answer in time")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError("the other end closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
