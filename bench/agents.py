"""Kept-alive agents on loopback, bounded in count and time: each connects, beats once and
stays connected, idle, as an agent does between beats; and one-off beats on new connections.

One process, non-blocking sockets on one selector (a socket costs a file descriptor here
too: raise_own_limit() first). Outcomes are HTTP status codes, or "reset", "closed" (the
peer closed before a whole answer), "timeout" or "refused": never an exception.
"""
import errno
import resource
import selectors
import socket
import time
from collections import Counter
from typing import Dict, List, Optional, Tuple, Union

Outcome = Union[int, str]


def raise_own_limit(wanted: int) -> int:
    """Raise this process's file limit (soft, and hard if root allows) to `wanted`; the new
    soft limit. The bridge does not inherit it: its limit is set when it is started."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
        except (OSError, ValueError):
            pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def beat_request(server_id: str, token: str, close: bool = False) -> bytes:
    """An agent's beat, kept alive (HTTP/1.1) unless `close`."""
    return (f"POST /api/heartbeat/{server_id}/ HTTP/1.1\r\nHost: bridge\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            + ("Connection: close\r\n" if close else "")
            + "Content-Length: 2\r\n\r\n{}").encode()


def get_request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bridge\r\n\r\n".encode()


def parse_answer(data: bytes) -> Optional[Tuple[int, Dict[str, str], bytes]]:
    """(status, headers, body) once `data` holds a whole answer with Content-Length."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if len(body) < length:
        return None
    return int(lines[0].split()[1]), headers, body[:length]


def once(port: int, raw: bytes, timeout: float = 10.0
         ) -> Tuple[Outcome, Dict[str, str], float]:
    """One request on a new connection: (outcome, answer headers, seconds to answer)."""
    started = time.perf_counter()
    data = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(raw)
            while True:
                answer = parse_answer(data)
                if answer:
                    return answer[0], answer[1], time.perf_counter() - started
                chunk = sock.recv(65536)
                if not chunk:
                    return "closed", {}, time.perf_counter() - started
                data += chunk
    except ConnectionRefusedError:
        outcome: Outcome = "refused"
    except (ConnectionResetError, BrokenPipeError):
        outcome = "reset"
    except socket.timeout:
        outcome = "timeout"
    return outcome, {}, time.perf_counter() - started


class Fleet:
    """Kept-alive agents: connect(n) adds n, each beating once; then they stay idle. Their
    server ids are `prefix`-`first` and up, in the order they connect."""

    def __init__(self, port: int, token: str, prefix: str = "agent", first: int = 0,
                 keep: bool = True) -> None:
        self.port, self.token, self.prefix, self.keep = port, token, prefix, keep
        self.selector = selectors.DefaultSelector()
        self.idle: Dict[socket.socket, str] = {}  # answered, kept alive: their server ids
        self.outcomes: Counter = Counter()  # of the connecting beats
        self.lost = 0  # idle connections the bridge closed since
        self._made = first
        self._ids: Dict[socket.socket, str] = {}

    def connect(self, count: int, window: int = 200, time_limit: float = 120.0) -> Counter:
        """Add `count` agents, at most `window` connecting at once; their beats' outcomes."""
        deadline = time.monotonic() + time_limit
        pending: Dict[socket.socket, bytes] = {}
        outcomes: Counter = Counter()
        todo = count
        while (todo or pending) and time.monotonic() < deadline:
            while todo and len(pending) < window:
                sock = self._open()
                todo -= 1
                if isinstance(sock, str):
                    outcomes[sock] += 1
                else:
                    pending[sock] = b""
            for key, _ in self.selector.select(timeout=0.5):
                sock = key.fileobj
                if sock in pending:
                    outcome = self._progress(sock, pending)  # type: ignore[arg-type]
                    if outcome is not None:
                        outcomes[outcome] += 1
                elif sock in self.idle:
                    self._check_idle(sock)  # type: ignore[arg-type]
        for sock in pending:
            outcomes["timeout"] += 1
            self._drop(sock)
        self.outcomes.update(outcomes)
        return outcomes

    def alive(self) -> int:
        """Kept-alive connections the bridge has not closed (checked now)."""
        for key, _ in self.selector.select(timeout=0):
            if key.fileobj in self.idle:
                self._check_idle(key.fileobj)  # type: ignore[arg-type]
        return len(self.idle)

    def close(self) -> None:
        for sock in list(self.idle):
            self._drop(sock)
        self.selector.close()

    def _open(self) -> Union[socket.socket, str]:
        server_id = f"{self.prefix}-{self._made}"
        self._made += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", self.port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            return "refused" if code == errno.ECONNREFUSED else "reset"
        self.selector.register(sock, selectors.EVENT_WRITE, beat_request(server_id, self.token,
                                                                 close=not self.keep))
        self._ids[sock] = server_id
        return sock

    def _progress(self, sock: socket.socket, pending: Dict[socket.socket, bytes]
                  ) -> Optional[Outcome]:
        key = self.selector.get_key(sock)
        try:
            if key.events == selectors.EVENT_WRITE:
                sock.send(key.data)
                self.selector.modify(sock, selectors.EVENT_READ)
                return None
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError, ConnectionRefusedError) as exc:
            del pending[sock]
            self._drop(sock)
            return "refused" if isinstance(exc, ConnectionRefusedError) else "reset"
        if not chunk:
            del pending[sock]
            self._drop(sock)
            return "closed"
        pending[sock] += chunk
        answer = parse_answer(pending[sock])
        if answer is None:
            return None
        del pending[sock]
        if answer[1].get("connection") == "close":
            self._drop(sock)
        else:
            self.idle[sock] = self._ids[sock]
        return answer[0]

    def _check_idle(self, sock: socket.socket) -> None:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.lost += 1
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        self.idle.pop(sock, None)
        self._ids.pop(sock, None)
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()


def percentile(values: List[float], share: float) -> float:
    """The `share` (0..1) percentile of `values`, nearest rank; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(share * len(ordered))) - 1))]
