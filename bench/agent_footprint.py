"""The agent's footprint against a real bridge: peak RSS, CPU time per beat, bytes per beat.

Usage (from the repository root, with the test extras installed and openssl on PATH):

    .venv/bin/python bench/agent_footprint.py [--beats 200]

Starts `heartbeat-bridge serve` on loopback (SQLite in a temp dir), a TLS terminator in
front of it (as nginx would be, with a throwaway CA made by openssl) and a counting TCP
proxy in front of either. Bytes are TCP payload bytes (TLS records included; IP/TCP
headers, about 66 bytes a segment, are not). Prints one table; nothing is asserted.
"""
import argparse
import os
import resource
import secrets
import select
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "agent"))  # the agent as an operator has it: one module

import heartbeat_agent as ha  # noqa: E402

from harness import Bridge, wait_until  # noqa: E402

AGENT = ROOT / "agent" / "heartbeat_agent.py"
TOKEN = secrets.token_urlsafe(32)  # 43 characters, like the tokens the bridge issues

# A child that runs the real loop for N beats with the sleeps shortened to 2 ms: the
# loop's own code runs unchanged, and the payload still declares a valid 30 s interval.
LOOP = """
import sys, time
sys.path.insert(0, sys.argv[1])
import heartbeat_agent as ha
config, _ = ha.load_config(["--config", "/dev/null", "--url", sys.argv[2], "--server-id",
                            sys.argv[3], "--interval", "30"] + sys.argv[5:],
                           environ={"HEARTBEAT_TOKEN": %r})
now = [0.0]
def sleep(seconds):
    now[0] += seconds
    time.sleep(0.002)
ha.Agent(config, clock=lambda: now[0], sleep=sleep, log=lambda m: None).run(int(sys.argv[4]))
print([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
""" % TOKEN


class Pipe:
    """Listens on 127.0.0.1 and forwards each connection to `target`; counts bytes each way.

    With `tls` (a server SSLContext) it terminates TLS, as a reverse proxy does.
    """

    def __init__(self, target, tls=None):
        self.target, self.tls = target, tls
        self.up = self.down = self.connections = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def counts(self):
        with self.lock:
            return self.up, self.down

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        with self.lock:
            self.connections += 1
        try:
            if self.tls:
                client = self.tls.wrap_socket(client, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            client.close()
            return
        ends = {client: (upstream, "up"), upstream: (client, "down")}
        try:  # one thread per connection, so an SSL socket is never used by two threads
            while True:
                ready = [s for s in ends if getattr(s, "pending", lambda: 0)()]
                ready = ready or select.select(list(ends), [], [], 30)[0]
                if not ready:
                    return
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    other, direction = ends[sock]
                    other.sendall(data)
                    with self.lock:
                        setattr(self, direction, getattr(self, direction) + len(data))
        except OSError:
            return
        finally:
            client.close()
            upstream.close()


def make_pki(directory):
    """A throwaway CA and a certificate for IP 127.0.0.1; (ca.pem, server SSLContext)."""
    d = Path(directory)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    for argv in (
        ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=bench CA"],
        ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "ext.cnf"],
    ):
        subprocess.run(["openssl", *argv], cwd=d, check=True, capture_output=True, timeout=60)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d / "server.pem", d / "server.key")
    return d / "ca.pem", context


def in_process_beats(url, proxy, n, ca_file=None):
    """Bytes (up, down) of each of n beats over one kept-alive connection."""
    argv = ["--config", os.devnull, "--url", url, "--server-id", "bench-bytes"]
    config, _ = ha.load_config(argv + (["--ca-file", str(ca_file)] if ca_file else []),
                               environ={"HEARTBEAT_TOKEN": TOKEN})
    agent = ha.Agent(config, log=lambda message: None)
    sizes, before = [], proxy.counts()
    for _ in range(n):
        outcome = agent.beat()
        assert outcome.ok, outcome.reason
        time.sleep(0.05)  # let the proxy finish counting the answer
        after = proxy.counts()
        sizes.append((after[0] - before[0], after[1] - before[1]))
        before = after
    agent.client.close()
    return sizes


def once_beats(url, proxy, n, ca_file):
    """Bytes (up, down) of n `--once` runs, each a new connection."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTBEAT_")}
    env.update(HEARTBEAT_URL=url, HEARTBEAT_TOKEN=TOKEN, HEARTBEAT_SERVER_ID="bench-once",
               HEARTBEAT_CA_FILE=str(ca_file))
    sizes = []
    for _ in range(n):
        before = proxy.counts()
        subprocess.run([sys.executable, AGENT, "--config", os.devnull, "--once"], env=env,
                       check=True, timeout=30)
        time.sleep(0.05)
        after = proxy.counts()
        sizes.append((after[0] - before[0], after[1] - before[1]))
    return sizes


def cpu_run(url, server_id, beats, extra=()):
    """(CPU seconds, VmHWM) of a child running the loop for `beats` beats."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", LOOP, ROOT / "agent", url, server_id,
                           str(beats), *extra], capture_output=True, text=True, timeout=300,
                          check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return cpu, int(done.stdout.split()[-1])


SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def looping_rss(url, ca_file=None, seconds=6, python=sys.executable):
    """VmHWM, VmRSS, RssAnon (private) and RssFile (shared libraries) in kB of the real CLI
    loop after `seconds` of 1 s beats, started as the shipped systemd unit starts it
    (`python3 -I -S heartbeat_agent.py`: no site-packages, no user environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTBEAT_")}
    env.update(HEARTBEAT_URL=url, HEARTBEAT_TOKEN=TOKEN, HEARTBEAT_SERVER_ID="bench-rss",
               HEARTBEAT_INTERVAL="1")
    if ca_file:
        env["HEARTBEAT_CA_FILE"] = str(ca_file)
    proc = subprocess.Popen([python, "-I", "-S", AGENT, "--config", os.devnull], env=env,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(seconds)
        status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
        return {line.split(":")[0]: int(line.split()[1]) for line in status
                if line.startswith(("VmHWM", "VmRSS", "RssAnon", "RssFile"))}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)


def beats_total(bridge, server_id):
    series = f'heartbeat_beats_total{{server_id="{server_id}"}}'
    for line in bridge.metrics().splitlines():
        if line.startswith(series):
            return float(line.split()[-1])
    return 0.0


def mean(pairs, skip=0):
    pairs = pairs[skip:]
    return tuple(round(sum(p[i] for p in pairs) / len(pairs)) for i in (0, 1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beats", type=int, default=200, help="beats for the CPU figure")
    parser.add_argument("--python", default=SYSTEM_PYTHON,
                        help="interpreter for the RSS figures (default: /usr/bin/python3 as in "
                             "the shipped units, else this one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ca, tls = make_pki(tmp)
        bridge = Bridge(f"sqlite:///{tmp}/hb.db", HEARTBEAT_TOKEN=TOKEN,
                        HEARTBEAT_RATE_LIMIT_BURST="0",
                        HEARTBEAT_METRICS="full").start()  # beats_total counts the beats
        try:
            port = bridge.port
            plain = Pipe(port)
            terminator = Pipe(port, tls=tls)
            secure = Pipe(terminator.port)
            http_url = f"http://127.0.0.1:{plain.port}"
            https_url = f"https://127.0.0.1:{secure.port}"
            rows = []
            http_sizes = in_process_beats(http_url, plain, 20)
            rows.append(("bytes/beat plain HTTP, kept alive (up, down)", mean(http_sizes)))
            https_sizes = in_process_beats(https_url, secure, 20, ca_file=ca)
            rows.append(("bytes first HTTPS beat incl. handshake (up, down)", https_sizes[0]))
            rows.append(("bytes/beat HTTPS kept alive (up, down)", mean(https_sizes, skip=1)))
            rows.append(("bytes/beat HTTPS --once, new connection (up, down)",
                         mean(once_beats(https_url, secure, 5, ca))))
            startup, _ = cpu_run(http_url, "bench-cpu0", 0)
            cpu, hwm = cpu_run(http_url, "bench-cpu", args.beats)
            rows.append((f"CPU ms/beat plain HTTP ({args.beats} beats, start-up excluded)",
                         round((cpu - startup) / args.beats * 1000, 3)))
            rows.append(("CPU ms for start-up and exit", round(startup * 1000, 1)))
            tls_cpu, tls_hwm = cpu_run(https_url, "bench-cpu-tls", args.beats,
                                       ["--ca-file", str(ca)])
            rows.append((f"CPU ms/beat HTTPS kept alive ({args.beats} beats)",
                         round((tls_cpu - startup) / args.beats * 1000, 3)))
            rows.append((f"VmHWM kB after {args.beats} beats (HTTP, HTTPS)", (hwm, tls_hwm)))
            rows.append(("memory kB of the CLI loop, HTTP",
                         looping_rss(http_url, python=args.python)))
            rows.append(("memory kB of the CLI loop, HTTPS",
                         looping_rss(https_url, ca, python=args.python)))
            wait_until(lambda: beats_total(bridge, "bench-cpu") == args.beats, timeout=10,
                       what="every CPU-run beat accepted by the bridge")
        finally:
            bridge.stop()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
