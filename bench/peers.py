"""The peers under test, started for real on loopback: the bridge and the Pushgateway.

Each peer knows how to prefill N servers, start, build one beat as raw HTTP (for
bench/load.py), which wrk script and environment send its beats, and its processes (RSS).
"""
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

from bench import load
from harness import ROOT, Process, free_port, wait_until

TOKEN = "bench-fleet-token-0123456789"
PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def server_ids(n):
    """The ids every load generator uses: srv-0 .. srv-(n-1)."""
    return [f"srv-{i}" for i in range(n)]


def bridge_source(rev, workdir):
    """A directory holding the bridge to measure, and a description of it.

    "worktree" is this checkout as it is (uncommitted edits included); anything else is a
    git revision, exported clean, so a half-edited working tree cannot break a run.
    """
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    if rev == "worktree":
        dirty = git("status", "--porcelain", "--", "bridge")
        return ROOT, f"working tree at {git('rev-parse', '--short', 'HEAD')}" + (
            " with uncommitted changes under bridge/" if dirty else "")
    commit = git("rev-parse", "--short", rev)
    target = Path(workdir) / f"src-{commit}"
    if not target.exists():
        target.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", commit, "bridge"], cwd=ROOT,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    last = git("log", "-1", "--format=%h %s", commit, "--", "bridge")
    return target, f"`{rev}` = {commit}; bridge/ last changed in \"{last[:80]}\""


def rss_bytes(pid):
    """Resident memory of one process, from /proc (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_by_pid(pids):
    """{pid: user + system CPU seconds used so far} of these processes (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (14, 15)
        except (OSError, IndexError, ValueError):
            pass
    return out


def cpu_seconds(pids):
    """User + system CPU time used so far by these processes together."""
    return sum(cpu_by_pid(pids).values())


def cpu_since(peer, before):
    """CPU seconds the peer's processes used since `before` (a cpu_by_pid of its pids()),
    counting in full the processes started meanwhile (a bridge's render processes start on
    the first scrape or status request)."""
    now = cpu_by_pid(peer.pids())
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in now.items())


def children(pid):
    """The processes `pid` started, from any of its threads (a gunicorn worker starts its
    render processes from a request thread, so the main thread's list alone misses them)."""
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return found


def descendants(pid):
    """Children, their children, and so on."""
    found = []
    for child in children(pid):
        found += [child] + descendants(child)
    return found


class Peer:
    """A program under test on 127.0.0.1:<port>."""

    name = ""
    script = ""
    process = None
    scrapes = True  # serves a /metrics worth measuring

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def _start(self, argv, env=None, cwd=None, ready_path="/", timeout=30.0):
        self.process = Process(argv, env=env, cwd=cwd, name=self.name).start()

        def ready():
            if not self.process.running():
                raise RuntimeError(f"{self.name} exited early:\n{self.process.log()[-2000:]}")
            return requests.get(self.url + ready_path, timeout=2).status_code == 200
        wait_until(ready, timeout=timeout, what=f"{self.name} on port {self.port}")
        return self

    def pids(self):
        """The peer's processes: the main one and all below it (gunicorn workers, and the
        bridge's render processes under them)."""
        return [self.process.pid] + descendants(self.process.pid)

    def wait_for_workers(self, timeout=15.0):
        """Until the set of processes has not changed for a second (workers all forked)."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            pids = sorted(self.pids())
            if pids != last:
                last, since = pids, time.monotonic()
            elif time.monotonic() - since >= 1.0:
                break
            time.sleep(0.1)

    def stop(self):
        if self.process is not None:
            self.process.stop()
            self.process.log_path.unlink(missing_ok=True)
            self.process = None


class BridgePeer(Peer):
    """`heartbeat-bridge serve`: default settings plus a fleet token, rate limit off (README)."""

    script = "beat.lua"

    def __init__(self, workdir, backend="sqlite", source=ROOT, settings=None):
        super().__init__(workdir)
        self.settings = dict(settings or {})  # HEARTBEAT_* overrides, for experiments
        self.backend = backend
        self.source = Path(source)
        self.name = f"bridge-{backend}"
        self.schema = None
        if backend == "sqlite":
            self.database_url = f"sqlite:///{self.workdir / f'{self.name}-{self.port}.db'}"
        else:
            self.schema = f"bench_{uuid.uuid4().hex[:12]}"
            self.database_url = f"{POSTGRES_URL}?options=-csearch_path%3D{self.schema}"

    @staticmethod
    def unavailable(backend, source=ROOT):
        """Why this backend cannot run here, or None."""
        if backend == "sqlite":
            return None
        if not (Path(source) / "bridge" / "store" / "postgres.py").exists():
            return "bridge/store/postgres.py does not exist in the measured source yet"
        try:
            import psycopg
            psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
        except Exception as exc:  # any failure means: not reachable here
            return f"PostgreSQL at 127.0.0.1:5432 is not reachable ({exc.__class__.__name__})"
        return None

    def prefill(self, n, time_limit=300.0):
        """Import N registered, recently seen servers straight into the store (fast)."""
        if self.schema:
            import psycopg
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {self.schema}")
        subprocess.run([sys.executable, "-m", "bench.prefill", self.database_url, str(n)],
                       env=self._env(), cwd=self.source, check=True, timeout=time_limit)
        return n

    def _env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTBEAT_")}
        # The measured source first, then this checkout (for the bench package).
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([str(self.source), str(ROOT)]))
        return env

    def start(self):
        env = self._env()
        env.update(HEARTBEAT_BIND=f"127.0.0.1:{self.port}",
                   HEARTBEAT_DATABASE_URL=self.database_url, HEARTBEAT_TOKEN=TOKEN,
                   # wrk revisits each id many times a second; a real fleet beats once per
                   # interval. Measure accepting beats, not answering 429 (bench/README.md).
                   HEARTBEAT_RATE_LIMIT_BURST="0",
                   # The fleet token speaks for the prefilled servers, as before enrolment
                   # existed: a beat is measured, not a token issued with every answer.
                   HEARTBEAT_ENROLMENT="false")
        env.update(self.settings)
        self._start([sys.executable, "-m", "bridge", "serve"], env=env, cwd=self.source,
                    ready_path="/readyz")
        self.wait_for_workers()
        return self

    def wrk_env(self, n, close):
        return {"TOKEN": TOKEN, "SERVERS": n, "CLOSE": int(close)}

    def request(self, server_id, close=True):
        body = b'{"interval":30,"seq":1,"hostname":"bench","agent_version":"bench"}'
        head = (f"POST /api/heartbeat/{server_id}/ HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n")
        if close:
            head += "Connection: close\r\n"
        return (head + "\r\n").encode() + body

    def stop(self):
        super().stop()
        if self.schema:
            import psycopg
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            self.schema = None


class FloorPeer(BridgePeer):
    """gunicorn with the bridge's gunicorn.conf.py serving bench/floor_app.py (no work)."""

    scrapes = False

    def __init__(self, workdir, source=ROOT):
        super().__init__(workdir, "sqlite", source)
        self.name = "gunicorn-floor"

    def prefill(self, n, time_limit=300.0):
        return n

    def start(self):
        env = self._env()
        # The threaded worker (4 x 4, as the bridge before its loop): a WSGI app, and the
        # ceiling the bridge had before its loop; the command line overrides the config's.
        env.update(HEARTBEAT_BIND=f"127.0.0.1:{self.port}")
        conf = self.source / "bridge" / "gunicorn.conf.py"
        self._start([sys.executable, "-m", "gunicorn", "--config", str(conf),
                     "--worker-class", "gthread", "--workers", "4", "--threads", "4",
                     "bench.floor_app:app"], env=env, cwd=self.source)
        self.wait_for_workers()
        return self


class PushgatewayPeer(Peer):
    """prometheus-pushgateway with its defaults, or with --push.disable-consistency-check."""

    script = "push.lua"

    def __init__(self, workdir, consistency_check=True):
        super().__init__(workdir)
        self.flags = [] if consistency_check else ["--push.disable-consistency-check"]
        self.name = "pushgateway" + ("" if consistency_check else "-no-consistency-check")
        self.state_file = None

    def prefill(self, n, time_limit=300.0):
        """Load N groups from a state file, made once per N by a loader Pushgateway.

        With the consistency check on, every push re-checks every stored group, so pushing
        100,000 groups one by one would take hours; a state file loads in seconds. Both
        configurations start from the same file (bench/README.md).
        """
        path = self.workdir / f"pushgateway-{n}.state"
        if not path.exists():
            loader = PushgatewayPeer(self.workdir, consistency_check=False)
            loader.name = "pushgateway-loader"
            loader.state_file = path
            loader.start()
            try:
                sent = load.prefill("127.0.0.1", loader.port,
                                    (loader.request(sid, close=False) for sid in server_ids(n)),
                                    time_limit=time_limit)
            finally:
                loader.stop()  # SIGTERM: the Pushgateway writes its state file on shutdown
            if sent < n:
                path.unlink(missing_ok=True)
                raise RuntimeError(f"pushgateway prefill: {sent} of {n} groups in {time_limit}s")
        self.state_file = path
        return n

    def start(self):
        argv = [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{self.port}", *self.flags]
        if self.state_file:
            # Load the prefilled groups; never write during the run (persistence stays idle).
            argv += [f"--persistence.file={self.state_file}", "--persistence.interval=24h"]
        return self._start(argv, ready_path="/-/ready")

    def wrk_env(self, n, close):
        return {"SERVERS": n, "CLOSE": int(close)}

    def request(self, server_id, close=True):
        body = f"heartbeat_last_seen_seconds {time.time():.3f}\n".encode()
        head = (f"PUT /metrics/job/heartbeat/instance/{server_id} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{self.port}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                f"Content-Length: {len(body)}\r\n")
        if close:
            head += "Connection: close\r\n"
        return (head + "\r\n").encode() + body
