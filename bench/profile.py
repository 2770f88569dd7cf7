"""Where one beat's time goes: py-spy samples every gunicorn worker under wrk load.

`py-spy record --subprocesses --idle --format raw` writes one line per distinct stack
(`frame;frame;...;leaf N`, frames as `function (path:line)`). Each sample is put in one
bucket by the deepest bridge frame on its stack (read from the source line it points
at), else by whether Flask/Werkzeug or only gunicorn is running. Samples of threads
waiting for work (no request on the stack) are idle and left out of the shares.
"""
import collections
import re
import subprocess
import sys
from pathlib import Path

PY_SPY = Path(sys.executable).with_name("py-spy")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^()]*):(?P<line>\d+)\)$")
# A stack is request work when one of these frames is on it.
_REQUEST = ("ThreadWorker.handle ", "ThreadWorker.accept ", "ThreadWorker.enqueue_req ",
            "ThreadWorker.finish_request ", "ThreadWorker.murder_keepalived ",
            "ThreadWorker.handle_request ", "SyncWorker.handle ")

BUCKETS = (
    "gunicorn: waiting for the request bytes (select)",
    "gunicorn: HTTP parsing, sockets, accept/close",
    "Flask/Werkzeug: request context, routing, response objects",
    "parse: server id, body read, JSON",
    "auth: token hash and compare",
    "store: write lock (waiting, handing over)",
    "store: BEGIN, SELECT, UPDATE",
    "store: COMMIT (WAL append)",
    "response: the JSON answer",
    "request metrics (http_metrics)",
    "other bridge code (view glue, rejections, ...)",
)


class _Sources:
    """Source lines of the measured code, for frames given by relative paths."""

    def __init__(self, roots):
        self.roots = [Path(r) for r in roots]
        self.cache = {}

    def line(self, path, number):
        if path not in self.cache:
            self.cache[path] = []
            for root in self.roots:
                candidate = root / path
                if candidate.is_file():
                    self.cache[path] = candidate.read_text(errors="replace").splitlines()
                    break
        lines = self.cache[path]
        return lines[number - 1] if 0 < number <= len(lines) else ""


def _bridge_bucket(path, text, func):
    if path.startswith("bridge/store/"):
        if "flock" in text or "_lock" in text and "with" in text or ".acquire(" in text:
            return "store: write lock (waiting, handing over)"
        if "COMMIT" in text or ".commit(" in text:
            return "store: COMMIT (WAL append)"
        return "store: BEGIN, SELECT, UPDATE"
    if path == "bridge/auth.py":
        return "auth: token hash and compare"
    if path == "bridge/validate.py" or "_read_body" in func or "stream.read" in text:
        return "parse: server id, body read, JSON"
    if path == "bridge/http_metrics.py":
        return "request metrics (http_metrics)"
    if path.startswith("bridge/views/") and ("jsonify" in text or "json.dumps" in text
                                             or "Response(" in text):
        return "response: the JSON answer"
    if path.startswith("bridge/views/") and ("check_beat" in text or "auth" in text):
        return "auth: token hash and compare"
    if path.startswith("bridge/views/") and ("record_beat" in text or "store" in text):
        return "store: BEGIN, SELECT, UPDATE"
    if path.startswith("bridge/views/") and ("parse" in text or "check_server_id" in text):
        return "parse: server id, body read, JSON"
    return None


def classify(frames, sources):
    """The bucket of one stack (root first), or None when the thread is idle."""
    if not any(f.startswith(_REQUEST) for f in frames):
        return None
    bucket = None
    web = False
    for frame in frames:
        match = _FRAME.match(frame)
        if not match:
            continue
        path, func = match["path"], match["func"]
        if path.startswith(("flask/", "werkzeug/")):
            web = True
        if path.startswith("bridge/"):
            text = sources.line(path, int(match["line"]))
            bucket = _bridge_bucket(path, text, func) or bucket or \
                "other bridge code (view glue, rejections, ...)"
    if bucket:
        return bucket
    if any("wait_for_data" in f for f in frames):
        return BUCKETS[0]
    return BUCKETS[2] if web else BUCKETS[1]


def breakdown(raw_text, source_roots):
    """Shares of request-work samples per bucket, plus the idle share."""
    sources = _Sources(source_roots)
    counts = collections.Counter()
    idle = 0
    for line in raw_text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        bucket = classify(frames, sources)
        if bucket is None:
            idle += int(count)
        else:
            counts[bucket] += int(count)
    busy = sum(counts.values())
    return {"busy_samples": busy, "idle_samples": idle,
            "shares": {b: counts[b] / busy if busy else 0.0 for b in BUCKETS}}


def record(pid, duration, out_path, gil_only=False, rate=100):
    """Start py-spy on a process and its children for `duration` s; returns the Popen.

    Every thread is sampled (wall-clock view: lock waits count), or with gil_only only the
    thread holding the GIL (CPU view: where the interpreter actually spends its time).
    """
    argv = [str(PY_SPY), "record", "--pid", str(pid), "--subprocesses",
            "--gil" if gil_only else "--idle",
            "--nonblocking", "--format", "raw", "--rate", str(rate),
            "--duration", str(max(1, round(duration))), "--output", str(out_path)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
