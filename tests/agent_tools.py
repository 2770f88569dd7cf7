"""Helpers for the agent's tests: a scripted HTTP(S) server on loopback, the agent run as
a real process, and a clock the agent sleeps on."""
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time

from tests.tools import FLEET_TOKEN, ROOT, Process

AGENT = ROOT / "agent" / "heartbeat_agent.py"
TOKEN = FLEET_TOKEN


class _Tee:
    """Wraps a handler's rfile and keeps every byte read, to measure the raw request."""

    def __init__(self, rfile):
        self.rfile, self.raw = rfile, bytearray()

    def readline(self, limit=-1):
        line = self.rfile.readline(limit)
        self.raw += line
        return line

    def read(self, size=-1):
        data = self.rfile.read(size)
        self.raw += data
        return data

    def take(self):
        raw, self.raw = bytes(self.raw), bytearray()
        return raw


class BeatServer(socketserver.ThreadingTCPServer):
    """A real HTTP/1.1 server on 127.0.0.1 recording every request; `script` decides answers.

    script(request) returns (status, headers, body), "hang" (no answer until stopped or
    10 s), "drop" (close the connection without answering) or "garbage" (not HTTP).
    `close_after` closes each connection silently right after its answer, as an idle
    timeout would.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port=0, tls=None, script=None, close_after=False):
        super().__init__(("127.0.0.1", port), _Handler)
        self.port = self.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.tls, self.close_after = tls, close_after
        self.script = script or (lambda request: (200, {}, {"server_id": "x", "interval": 1}))
        self.requests, self.connections, self.open = [], 0, set()
        self.released = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.released.set()
        self.shutdown()
        for sock in list(self.open):  # kept-alive connections too: a real restart
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.server_close()

    def handle_error(self, request, client_address):
        pass  # failed TLS handshakes and reset connections are part of the tests

    def bodies(self):
        return [json.loads(r["body"]) for r in self.requests]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class _Handler(socketserver.StreamRequestHandler):
    def setup(self):
        if self.server.tls:
            self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        self.server.connections += 1
        self.number = self.server.connections
        self.server.open.add(self.request)
        super().setup()
        self.rfile = _Tee(self.rfile)

    def finish(self):
        self.server.open.discard(self.request)
        try:
            super().finish()
        except OSError:
            pass

    def handle(self):
        while self._one_request():
            pass

    def _one_request(self):
        line = self.rfile.readline(65537)
        if not line:
            return False
        headers = {}
        while True:
            header = self.rfile.readline(65537)
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self.rfile.read(int(headers.get("content-length", 0)))
        method, path, _ = line.decode("latin-1").split(" ", 2)
        request = {"method": method, "path": path, "headers": headers, "body": body,
                   "raw": self.rfile.take(), "at": time.monotonic(),
                   "connection": self.number}
        self.server.requests.append(request)
        answer = self.server.script(request)
        if answer == "hang":
            self.server.released.wait(10)
            return False
        if answer == "drop":
            return False
        if answer == "garbage":
            self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
            return False
        status, extra, payload = answer
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n" \
               f"Content-Length: {len(data)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        self.wfile.write(head.encode() + b"\r\n" + data)
        self.wfile.flush()
        return not self.server.close_after


def statuses(*codes, then=200, retry_after=None):
    """A script answering the given statuses in turn, then `then` for ever."""
    answers = list(codes)

    def script(request):
        status = answers.pop(0) if answers else then
        if status == 200:
            return 200, {}, {"server_id": "web-1", "received_at": time.time(), "interval": 1}
        extra = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return status, extra, {"error": f"code_{status}", "message": "scripted"}
    return script


def agent_env(**settings):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HEARTBEAT_") and k != "CREDENTIALS_DIRECTORY"}
    # never the machine's /var/lib/heartbeat-agent: a token a test bridge issues stays here
    env["HEARTBEAT_STATE_DIR"] = tempfile.mkdtemp(prefix="agent-state-")
    env.update({k: str(v) for k, v in settings.items()})
    return env


def run_agent(conf, *flags, timeout=15, **settings):
    """Run the agent to completion; (exit code, stdout, stderr)."""
    done = subprocess.run([sys.executable, AGENT, "--config", conf, *flags],
                          env=agent_env(**settings), capture_output=True, text=True,
                          timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def start_agent(conf, *flags, **settings):
    """The loop as a real process; it beats at once unless the flags set --initial-delay."""
    if "--initial-delay" not in flags:
        flags = ("--initial-delay", "0", *flags)
    settings.setdefault("HEARTBEAT_TOKEN", TOKEN)
    settings.setdefault("HEARTBEAT_SERVER_ID", "web-1")
    settings.setdefault("HEARTBEAT_INTERVAL", "1")
    return Process([sys.executable, AGENT, "--config", conf, *flags],
                   env=agent_env(**settings), name="agent").start()


STOP_WITHIN = 15.0  # seconds: far below the sleeps (600 s) and requests (300 s) tests interrupt


def stop_agent(proc):
    """SIGTERM; the agent must exit 0 within STOP_WITHIN seconds. Returns its log.

    The bound tells "stopped at once" from "finished a long sleep or request first", and is
    wide enough for a loaded machine: how fast the agent stops is not measured here."""
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.proc.wait(timeout=STOP_WITHIN)
    except subprocess.TimeoutExpired:
        code = None
    log = proc.log()
    proc.stop()
    assert code == 0, f"exit {code} (None: still running {STOP_WITHIN}s after SIGTERM):\n{log}"
    return log


class FakeTime:
    """A monotonic clock that only moves when the agent sleeps or a test says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def stamped(fake, script=statuses(), takes=0.0):
    """A script that notes the agent's clock when each request arrives, then takes time."""
    def answer(request):
        request["sent"] = fake.now
        fake.now += takes
        return script(request)
    return answer
