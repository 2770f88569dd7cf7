"""`python -m bridge.render_process <socket> <master pid>`: the host's render process
(bridge.render explains why it exists and how the workers reach it).

It reads the settings of the worker that started it from stdin, listens on the socket,
says so on stdout, then answers each worker connection in a thread of its own.
"""
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

from prometheus_client import CollectorRegistry

from bridge import logs
from bridge.config import Settings
from bridge.errors import BridgeError
from bridge.http_metrics import WorkerFiles
from bridge.render import RENDER_NICE, read_message, write_message
from bridge.renderer import Headers, InlineRenderer
from bridge.store import open_store

log = logging.getLogger("bridge")


class _Work:
    """The answers, rendered here as a worker would render them (InlineRenderer), over this
    process's own store connection, opened on first use: a store that cannot be reached is
    that request's 503, not a process that cannot start."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=False)
        if settings.metrics_multiproc_dir:  # the workers' request metrics, merged
            self.registry.register(WorkerFiles(settings.metrics_multiproc_dir))
        self._inline: Optional[InlineRenderer] = None
        self._lock = threading.Lock()

    def renderer(self) -> InlineRenderer:
        with self._lock:
            if self._inline is None:
                store = open_store(self.settings.database_url, pool_size=1)
                self._inline = InlineRenderer(store, self.settings, self.registry)
            return self._inline

    def metrics(self, accept: str, accept_encoding: str) -> Tuple[Headers, bytes]:
        return self.renderer().metrics(accept, accept_encoding)

    def status(self, args: Dict[str, str], if_none_match: str) -> Tuple[str, Optional[str]]:
        return self.renderer().status(args, if_none_match)


class Shared:
    """One kind of answer for every worker: one at a time, and an answer rendered after a
    request arrived is that request's answer too when it asked the same."""

    def __init__(self, compute: Callable[..., Any]) -> None:
        self.compute = compute
        self._lock = threading.Lock()
        self._last: Tuple[Any, float, Any] = (None, 0.0, None)  # (args, started, answer)

    def __call__(self, *args: Any) -> Any:
        arrived = time.monotonic()
        with self._lock:
            key, started, answer = self._last
            if key == args and started >= arrived:
                return answer
            started = time.monotonic()
            answer = self.compute(*args)
            self._last = (args, started, answer)
            return answer


def serve_connection(conn: socket.socket, handlers: Dict[str, Callable[..., Any]]) -> None:
    """Answer one worker's requests until it closes the connection."""
    fd = conn.fileno()
    with conn:
        while True:
            try:
                op, args = read_message(fd)
            except (EOFError, OSError):
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
            try:
                write_message(fd, answer)
            except OSError:  # the worker gave up on it (timeout) or ended
                return


def _watch(master: int) -> None:
    """End this process once the gunicorn master is gone."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(master, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:
            pass


def main() -> None:
    try:
        os.nice(RENDER_NICE)
    except OSError:
        pass
    # Ctrl-C in a terminal reaches the whole process group: serve stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    started = time.perf_counter()
    path, master = sys.argv[1], int(sys.argv[2])
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    sys.stdout = sys.stderr  # a stray print must not reach the worker
    try:
        settings = Settings(**read_message(stdin))
    except EOFError:
        return
    logs.setup(settings.log_level)  # as the workers log, in their format and at their level
    work = _Work(settings)
    handlers = {"metrics": Shared(work.metrics), "status": Shared(work.status)}
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    threading.Thread(target=_watch, args=(master,), daemon=True).start()
    write_message(stdout, "listening")
    log.debug("ready in %.2f s", time.perf_counter() - started)
    os.close(stdout)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(conn, handlers), daemon=True).start()


if __name__ == "__main__":
    main()
