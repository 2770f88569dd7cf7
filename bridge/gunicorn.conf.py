"""gunicorn settings for `heartbeat-bridge serve`, taken from the bridge's own settings."""
import logging
import shutil

from prometheus_client import multiprocess

from bridge.config import Settings

_settings = Settings.from_env()

bind = [_settings.bind]
workers = _settings.workers
# Threads let one worker overlap store waits and keep slow clients from blocking it.
worker_class = "gthread"
threads = _settings.threads
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
# evenly. On one shared socket the idlest-looking worker wins nearly every accept(), and a
# few dozen slow clients (gthread gives each a thread until its headers are complete, with
# no header timeout) fill that worker's threads while beats queue behind them.
reuse_port = True
# Requests are tiny; refuse oversized request lines and headers outright.
limit_request_line = 2048
limit_request_fields = 50
limit_request_field_size = 4096


def post_fork(server, worker):
    """The bridge's own log lines go where gunicorn's error log goes, at the same level."""
    logger = logging.getLogger("bridge")
    logger.handlers = list(worker.log.error_log.handlers)
    logger.setLevel(worker.log.error_log.level)
    logger.propagate = False


def child_exit(server, worker):
    if _settings.metrics_multiproc_dir:
        multiprocess.mark_process_dead(worker.pid, _settings.metrics_multiproc_dir)


def worker_exit(server, worker):
    app = getattr(worker, "wsgi", None)
    state = getattr(app, "extensions", {}).get("heartbeat") if app else None
    if state is not None:
        state.rejections.flush()


def on_exit(server):
    if _settings.metrics_multiproc_dir:
        shutil.rmtree(_settings.metrics_multiproc_dir, ignore_errors=True)
