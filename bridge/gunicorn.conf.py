"""gunicorn settings for `heartbeat-bridge serve`, taken from the bridge's own settings."""
import logging
import shutil
from typing import Any

from prometheus_client import multiprocess

from bridge import render
from bridge.config import Settings
from bridge.connections import describe_limit, raise_file_limit

_settings = Settings.from_env()

bind = [_settings.bind]
workers = _settings.workers
# An event loop per worker (bridge/worker.py): a slow or idle connection costs memory, not
# a thread. `heartbeat-bridge serve` gives it the ASGI app (bridge/asgi.py).
worker_class = "bridge.worker.BridgeWorker"
timeout = _settings.timeout
graceful_timeout = 10
keepalive = _settings.keepalive
loglevel = _settings.log_level
accesslog = None
errorlog = "-"
proc_name = "heartbeat-bridge"
# gunicorn's control socket has one fixed path per user; several bridges on a host would clash.
control_socket_disable = True
# Each worker listens on its own SO_REUSEPORT socket, so the kernel spreads connections
# across workers. On one shared socket the idlest-looking worker wins nearly every accept()
# (with a threaded worker, a few dozen slow clients filled its threads while beats queued).
reuse_port = True
# Requests are tiny; refuse oversized request lines and headers outright (gunicorn's own
# workers; the event-loop worker has its own total limit, bridge.worker.MAX_HEADER_BYTES).
limit_request_line = 2048
limit_request_fields = 50
limit_request_field_size = 4096
# Forwarding headers (X-Forwarded-*, and SCRIPT_NAME / PATH_INFO, which gunicorn would
# otherwise take from 127.0.0.1) are believed only from the proxies the operator named.
forwarded_allow_ips = ",".join(_settings.trusted_proxies)
forwarder_headers = ""


class _NoRequestDetails(logging.Filter):
    """gunicorn quotes what a client sent in its warnings and debug lines about malformed or
    cut-off requests (an `Authorization Bearer <token>` without its colon, for one): keep
    only the kind of error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Invalid request from ip="):
            record.msg, record.args = record.msg.split(": ", 1)[0] + ": (details not logged)", ()
        elif isinstance(record.args, tuple) and any(isinstance(a, Exception)
                                                    for a in record.args):
            record.args = tuple(type(a).__name__ if isinstance(a, Exception) else a
                                for a in record.args)
        return True


class _BindAddress(logging.Filter):
    """Each worker binds its own socket (reuse_port), so the arbiter has none to name and
    logs `Listening at:  (pid)`: name the addresses the workers bind."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.msg == "Listening at: %s (%s)" and isinstance(record.args, tuple)
                and record.args and not record.args[0]):
            record.args = (",".join(f"http://{address}" for address in bind),
                           *record.args[1:])
        return True


def on_starting(server: Any) -> None:
    server.log.error_log.addFilter(_BindAddress())


def when_ready(server: Any) -> None:
    """Before the first worker forks: use the file limit the operator gave (the workers
    inherit it), and say what it allows: each kept-alive agent holds a connection, one file
    descriptor (bridge/connections.py)."""
    before, limit = raise_file_limit()
    line = describe_limit(before, limit, _settings.pool_size, _settings.workers)
    if limit < 4096:
        server.log.warning("%s; raise it (LimitNOFILE=, ulimits) for a larger fleet "
                           "(docs/scaling.md, Connections)", line)
    else:
        server.log.info("%s", line)


def post_fork(server: Any, worker: Any) -> None:
    """The bridge's own log lines go where gunicorn's error log goes, at the same level."""
    worker.log.error_log.addFilter(_NoRequestDetails())
    logger = logging.getLogger("bridge")
    logger.handlers = list(worker.log.error_log.handlers)
    logger.setLevel(worker.log.error_log.level)
    logger.propagate = False


def child_exit(server: Any, worker: Any) -> None:
    if _settings.metrics_multiproc_dir:
        multiprocess.mark_process_dead(worker.pid, _settings.metrics_multiproc_dir)


def on_reload(server: Any) -> None:
    """New workers, new settings: the render process of the old ones ends (the first new
    worker that needs one starts it)."""
    if _settings.run_dir:
        render.stop(_settings.run_dir)


def on_exit(server: Any) -> None:
    if _settings.run_dir:
        render.stop(_settings.run_dir)
        shutil.rmtree(_settings.run_dir, ignore_errors=True)
    if _settings.metrics_multiproc_dir:
        shutil.rmtree(_settings.metrics_multiproc_dir, ignore_errors=True)
    if _settings.status_cache_dir:
        shutil.rmtree(_settings.status_cache_dir, ignore_errors=True)
