"""One benchmark run: every peer at every fleet size, then a profile of the bridge."""
import os
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field

from bench import profile, scrape, wrk
from bench.peers import (
    BridgePeer,
    FloorPeer,
    PushgatewayPeer,
    cpu_by_pid,
    cpu_seconds,
    cpu_since,
    rss_bytes,
)

PEERS = ("bridge-sqlite", "bridge-before", "bridge-postgres", "pushgateway",
         "pushgateway-no-consistency-check", "gunicorn-floor")


@dataclass
class Options:
    sizes: tuple = (1000, 10000, 100000)
    duration: float = 10.0
    connections: int = 32
    threads: int = 2
    scrapes: int = 3
    profile_size: int = 10000
    prefill_limit: float = 300.0
    time_limit: float = 2400.0
    rate_fraction: float = 0.8
    paced_attempts: int = 2  # the first run, then one calibrated to the latency it saw
    peers: tuple = PEERS
    before: str = ""  # the source `bridge-before` runs (an older revision, exported)
    scraped_from: int = 100000  # paced beats while /metrics is scraped every second, from N
    warmup: float = 2.0  # seconds of unrecorded beats after each start, for every peer alike


@dataclass
class Run:
    options: Options
    bridge_source: str
    before_source: str = ""
    rows: list = field(default_factory=list)
    profile: dict = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    load_before: tuple = ()
    load_after: tuple = ()
    elapsed: float = 0.0


def make_peer(name, workdir, source, before=None):
    if name == "gunicorn-floor":
        return FloorPeer(workdir, source)
    if name == "bridge-before":
        peer = BridgePeer(workdir, "sqlite", before)
        peer.name = "bridge-before"
        return peer
    if name.startswith("bridge-"):
        return BridgePeer(workdir, name[len("bridge-"):], source)
    return PushgatewayPeer(workdir, consistency_check=(name == "pushgateway"))


def measure_peer(peer, n, opts, log):
    """Prefill, beats (new connection, then kept alive), fixed rate, scrapes, memory."""
    row = {"peer": peer.name, "servers": n}
    t0 = time.monotonic()
    peer.prefill(n, time_limit=opts.prefill_limit)
    peer.start()
    row["prefill_s"] = time.monotonic() - t0
    if opts.warmup > 0:  # first connections, lazy set-up, cold caches: not what is measured
        wrk.run_wrk(peer.url, peer.script, opts.warmup, env=peer.wrk_env(n, True),
                    connections=opts.connections, threads=opts.threads)
    for mode, close in (("close", True), ("keepalive", False)):
        row[mode] = wrk_with_cpu(peer, n, opts, close)
        log(f"  {peer.name} n={n} {mode}: {row[mode]['rps']:.0f}/s "
            f"p99 {row[mode]['p99_ms']:.1f} ms, non-2xx {row[mode]['non_2xx']}")
    row["fixed_rate"] = paced(peer, n, opts, row["close"]["rps"])
    if peer.scrapes and n >= min(opts.scraped_from, max(opts.sizes)):
        row["scraped"] = paced_while_scraped(peer, n, opts, row["fixed_rate"]["delay_ms"])
        log(f"  {peer.name} n={n} paced while scraped every second: p99 "
            f"{row['scraped']['p99_ms']:.1f} ms, scrapes {row['scraped']['scrapes']}")
    row["settle_s"] = settle(peer.pids())
    row["rss_after_beats"] = [rss_bytes(p) for p in peer.pids()]
    if peer.scrapes:
        row["scrape"] = scrape.scrape(peer.url, repeats=opts.scrapes)
    row["rss"] = [rss_bytes(p) for p in peer.pids()]
    log(f"  {peer.name} n={n} paced {row['fixed_rate']['achieved_rps']:.0f}/s: "
        f"p99 {row['fixed_rate']['p99_ms']:.1f} ms; RSS {sum(row['rss']) >> 20} MB")
    return row


def settle(pids, timeout=30.0, busy=0.05, step=0.5):
    """Wait (bounded) until the peer stops working off queued beats; seconds waited.

    Scrapes and memory are measured on an idle peer: a Pushgateway may still be applying
    pushes whose clients gave up.
    """
    started = time.monotonic()
    before = cpu_seconds(pids)
    while time.monotonic() - started < timeout:
        time.sleep(step)
        now = cpu_seconds(pids)
        if now - before < busy * step:
            break
        before = now
    return time.monotonic() - started


def wrk_with_cpu(peer, n, opts, close, **extra_env):
    """One wrk run, plus the peer's CPU time per accepted beat during it (microseconds)."""
    before = cpu_by_pid(peer.pids())
    result = wrk.run_wrk(peer.url, peer.script, opts.duration,
                         env=dict(peer.wrk_env(n, close), **extra_env),
                         connections=opts.connections, threads=opts.threads)
    beats = result["requests"] - result["non_2xx"]
    result["cpu_us_per_beat"] = 1e6 * cpu_since(peer, before) / beats if beats else None
    return result


def paced(peer, n, opts, max_rps, close=True):
    """Beats at about rate_fraction of max_rps (a new connection per beat unless `close` is
    false), then their latency; beats_total counts the accepted beats of every attempt.

    wrk waits DELAY_MS after each answer on each connection, so the rate is
    connections / (delay + latency); one calibration run corrects for the latency.
    """
    target = max(1.0, opts.rate_fraction * max_rps)
    period_ms = 1000.0 * opts.connections / target
    delay, beats_total = max(1, round(period_ms)), 0
    for _attempt in range(opts.paced_attempts):
        result = wrk.run_wrk(peer.url, peer.script, opts.duration,
                             env=dict(peer.wrk_env(n, close), DELAY_MS=delay),
                             connections=opts.connections, threads=opts.threads)
        beats_total += result["requests"] - result["non_2xx"]
        if result["rps"] <= 0 or abs(result["rps"] - target) <= 0.1 * target:
            break
        latency_ms = max(0.0, 1000.0 * opts.connections / result["rps"] - delay)
        new_delay = max(1, round(period_ms - latency_ms))
        if new_delay == delay:
            break
        delay = new_delay
    return dict(result, target_rps=target, achieved_rps=result["rps"], delay_ms=delay,
                beats_total=beats_total)


def paced_while_scraped(peer, n, opts, delay_ms, every=1.0):
    """The paced run again (same pacing delay) while a scraper GETs /metrics every second."""
    stop, took = threading.Event(), []

    def scraper():
        while not stop.is_set() and len(took) < 1000:
            started = time.monotonic()
            try:
                took.append(scrape.scrape_once(peer.url, gzip=True)[0])
            except Exception:  # counted as a missing scrape
                pass
            stop.wait(max(0.0, every - (time.monotonic() - started)))

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    try:
        result = wrk.run_wrk(peer.url, peer.script, opts.duration,
                             env=dict(peer.wrk_env(n, True), DELAY_MS=delay_ms),
                             connections=opts.connections, threads=opts.threads)
    finally:
        stop.set()
        thread.join(150)
    return dict(result, delay_ms=delay_ms, scrapes=len(took),
                scrape_median_s=statistics.median(took) if took else None,
                scrape_max_s=max(took) if took else None)


def profile_bridge(workdir, source, n, opts, log):
    """Two py-spy recordings of a bridge under wrk (new connection per beat): wall and CPU."""
    peer = make_peer("bridge-sqlite", workdir, source)
    out = {"servers": n}
    try:
        peer.prefill(n, time_limit=opts.prefill_limit)
        peer.start()
        for view, gil_only in (("wall", False), ("cpu", True)):
            path = os.path.join(workdir, f"profile-{view}.txt")
            spy = profile.record(peer.process.pid, opts.duration, path, gil_only=gil_only)
            time.sleep(0.5)  # py-spy attaches before the load starts
            result = wrk_with_cpu(peer, n, opts, True)
            spy_out, _ = spy.communicate(timeout=opts.duration + 60)
            if spy.returncode != 0 or not os.path.exists(path):
                raise RuntimeError(f"py-spy failed: {spy_out[-400:]}")
            with open(path) as f:
                out[view] = profile.breakdown(f.read(), [source])
            out[view]["rps_while_profiled"] = result["rps"]
            out[view]["cpu_us_per_beat"] = result["cpu_us_per_beat"]
            log(f"  profile {view}: {out[view]['busy_samples']} busy samples")
    finally:
        peer.stop()
    return out


def execute(opts, workdir, source, source_desc, log=print, before_desc=""):
    """Run everything within opts.time_limit seconds; failures become rows, not crashes."""
    run = Run(opts, source_desc, before_source=before_desc, load_before=os.getloadavg())
    deadline = time.monotonic() + opts.time_limit
    postgres_missing = BridgePeer.unavailable("postgres", source)
    for n in opts.sizes:
        for name in [p for p in PEERS if p in opts.peers]:
            if name == "bridge-postgres" and postgres_missing:
                run.rows.append({"peer": name, "servers": n, "skipped": postgres_missing})
                continue
            if time.monotonic() > deadline:
                run.rows.append({"peer": name, "servers": n, "skipped": "time limit reached"})
                continue
            log(f"{name}, {n} servers")
            peer = make_peer(name, workdir, source, opts.before)
            try:
                run.rows.append(measure_peer(peer, n, opts, log))
            except (RuntimeError, AssertionError, OSError, ValueError, KeyError,
                    subprocess.SubprocessError, wrk.WrkError) as exc:
                log(f"  failed: {exc}")
                run.rows.append({"peer": name, "servers": n,
                                 "skipped": f"failed: {str(exc).splitlines()[0][:160]}"})
            finally:
                peer.stop()
    if opts.profile_size and "bridge-sqlite" in opts.peers and time.monotonic() < deadline:
        log(f"profiling bridge-sqlite, {opts.profile_size} servers")
        try:
            run.profile = profile_bridge(workdir, source, opts.profile_size, opts, log)
        except (RuntimeError, AssertionError, OSError, subprocess.SubprocessError,
                wrk.WrkError) as exc:
            run.profile = {"error": str(exc).splitlines()[0][:200]}
    run.load_after = os.getloadavg()
    run.elapsed = time.monotonic() - deadline + opts.time_limit
    return run
