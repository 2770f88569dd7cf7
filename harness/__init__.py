"""Real programs on loopback for the tests and the benchmarks: ports that cannot collide,
processes stopped by their own PID, waits on a condition, a live bridge under gunicorn, and
reading its /metrics."""
from harness.bridge import Bridge, bridge_env
from harness.metrics import per_server, sample_map, total, value
from harness.ports import free_port, listening_sockets, unread_bytes
from harness.process import (
    ROOT,
    GiveUp,
    MissingProgramError,
    Process,
    find_binary,
    wait_http,
    wait_until,
)

__all__ = ["ROOT", "Bridge", "GiveUp", "MissingProgramError", "Process", "bridge_env",
           "find_binary", "free_port", "listening_sockets", "per_server", "sample_map", "total",
           "unread_bytes", "value", "wait_http", "wait_until"]
