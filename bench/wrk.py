"""Run wrk with one of the bench Lua scripts and read its BENCH_RESULT line."""
import json
import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
WRK = "/usr/bin/wrk"


class WrkError(RuntimeError):
    """wrk failed or printed no BENCH_RESULT line."""


def run_wrk(url, script, duration, env=None, connections=32, threads=2, timeout_s=5):
    """One wrk run; returns beats/s, latency percentiles (ms) and error counts."""
    argv = [WRK, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
            f"--timeout={timeout_s}s", "-s", str(HERE / script), url]
    run_env = dict(os.environ, **{k: str(v) for k, v in (env or {}).items()})
    proc = subprocess.run(argv, env=run_env, capture_output=True, text=True,
                          timeout=duration + 30)
    line = next((text for text in proc.stdout.splitlines() if text.startswith("BENCH_RESULT ")),
                None)
    if proc.returncode != 0 or line is None:
        raise WrkError(f"wrk exited {proc.returncode}: {proc.stdout[-500:]} {proc.stderr[-500:]}")
    raw = json.loads(line[len("BENCH_RESULT "):])
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    ok = raw["requests"] - raw["status_errors"]
    return {
        "rps": ok / seconds if seconds else 0.0,
        "requests": raw["requests"],
        "non_2xx": raw["status_errors"],
        "socket_errors": errors,
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
    }
