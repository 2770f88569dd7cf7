"""Loopback ports that no other test run, test or benchmark on this machine is handed.

A port the kernel gave to `bind(("127.0.0.1", 0))` is free only until the socket closes, and a
bridge binds with SO_REUSEPORT, so two runs handed the same port would both start and silently
share connections. A port here comes from below the kernel's ephemeral range (so no `bind(0)`
and no outgoing connection gets it), is reserved by a lock on one byte of a shared file at the
port's offset (held until this process exits, so concurrent runs skip it), and is checked free
by a plain bind without SO_REUSEADDR or SO_REUSEPORT and by the kernel's table of listeners.
"""
import fcntl
import os
import random
import socket
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional, Set, Tuple

LOCK_FILE = Path(tempfile.gettempdir()) / "heartbeat-bridge-test-ports.lock"
FIRST_PORT = 20000  # well clear of the well-known ports programs in the suite use by default
_lock_fd: Optional[int] = None
_next: Optional[int] = None


def _ephemeral_range() -> Tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _candidates() -> Iterator[int]:
    """Every port of the reserved range once, from a random start, so runs rarely meet."""
    global _next
    low, high = FIRST_PORT, _ephemeral_range()[0] - 1
    if _next is None:
        _next = random.randint(low, high)
    for _ in range(high - low + 1):
        port, _next = _next, (_next + 1 if _next < high else low)
        yield port


def _reserve(port: int) -> bool:
    """Lock the port's byte of the shared file for this process; False if another holds it."""
    global _lock_fd
    if _lock_fd is None:
        _lock_fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.lockf(_lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
    except OSError:
        return False
    return True


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return listening_sockets(port) == 0


def free_port() -> int:
    """A loopback TCP port reserved for this process until it exits, and free right now."""
    for port in _candidates():
        if _reserve(port) and _bindable(port):
            return port
    raise RuntimeError(f"no free port left between {FIRST_PORT} and the ephemeral range")


def _sockets(port: int, state: str) -> Iterator[List[str]]:
    """The kernel's rows (/proc/net/tcp and tcp6) of TCP sockets on this local port in this
    state ("0A" listening, "01" established)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == state and int(fields[1].rsplit(":", 1)[1], 16) == port:
                yield fields


def listening_sockets(port: int) -> int:
    """How many TCP sockets listen on this port (IPv4 and IPv6)."""
    return sum(1 for _ in _sockets(port, "0A"))


def listener_inodes(port: int) -> Set[int]:
    """The inodes of the sockets listening on this port, to tell whose they are."""
    return {int(fields[9]) for fields in _sockets(port, "0A")}


def socket_inodes(process_group: int) -> Set[int]:
    """The inodes of every socket the processes of this process group hold open."""
    inodes: Set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # the fields after the command's closing parenthesis: state, ppid, pgrp, ...
            if int(stat.read_text().rpartition(")")[2].split()[2]) != process_group:
                continue
            links = [os.readlink(fd) for fd in (stat.parent / "fd").iterdir()]
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
        inodes.update(int(link[8:-1]) for link in links if link.startswith("socket:["))
    return inodes


def unread_bytes(port: int) -> List[int]:
    """Bytes waiting to be read, per accepted (established) connection to this local port:
    0 for each connection the program listening on it has read everything from."""
    return [int(fields[4].split(":")[1], 16) for fields in _sockets(port, "01")]
