"""One log line for every process of the bridge (gunicorn's, its workers', the render
processes', `serve` before it execs gunicorn): gunicorn's format, at HEARTBEAT_LOG_LEVEL."""
import logging
import sys

# gunicorn's own (gunicorn.glogging.CONFIG_DEFAULTS): "[2026-01-01 12:00:00 +0000] [42] [INFO] ..."
FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"
DATEFMT = "[%Y-%m-%d %H:%M:%S %z]"


def setup(level: str) -> None:
    """Log to stderr as gunicorn does, at `level` (a HEARTBEAT_LOG_LEVEL value)."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format=FORMAT, datefmt=DATEFMT,
                        force=True)
