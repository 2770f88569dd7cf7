"""`python -m bench.fleet`: the footprint a fleet sees, side by side with the Pushgateway.

For each peer (default: the bridge and the Pushgateway's fastest mode):

1. **At rest**: 10 servers, one beat each, then 40 scrapes of /metrics and 40 refreshes of
   the status page's JSON (the bridge only: the Pushgateway has no such page), a settle,
   then the PSS of every process of the peer.
2. **Paced**: N servers (default 10,000) prefilled, then beats at a fixed rate (default 333
   and 1,000 beats/s: a fleet of 10,000 at 30 s and at 10 s) for `--duration` seconds,
   once with a new connection per beat and once kept alive: the rate reached, p99, and the
   peer's CPU per beat (every process of it, /proc).
3. **After load**: 3 scrapes, a settle, then the PSS of every process.

PSS (proportional set size, /proc/<pid>/smaps_rollup) splits a page shared by several
processes between them, so the sum over a peer's processes is what the peer costs the host.
Pacing: wrk waits DELAY_MS after each answer on each of its connections, calibrated once to
the latency it saw (bench/run.py `paced`). Run it under `flock /tmp/bench.lock`.
"""
import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from bench import scrape
from bench.peers import BridgePeer, PushgatewayPeer, bridge_source, cpu_by_pid, cpu_since
from bench.run import Options, paced, settle

RESULTS = Path(__file__).resolve().parent / "results"
PEERS = ("bridge-sqlite", "pushgateway-no-consistency-check")


def pss_bytes(pid):
    """Proportional set size of one process, from /proc (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def footprint(peer):
    """[(pid, PSS bytes)] of every process of the peer, largest first."""
    return sorted(((pid, pss_bytes(pid)) for pid in peer.pids()), key=lambda p: -p[1])


def make_peer(name, workdir, source, settings):
    if name == "bridge-sqlite":
        return BridgePeer(workdir, "sqlite", source, settings=settings)
    return PushgatewayPeer(workdir, consistency_check=(name == "pushgateway"))


def at_rest(peer, scrapes=40, refreshes=40, servers=10):
    """Footprint after a small fleet's first minutes: beats, scrapes, status refreshes."""
    peer.prefill(servers)
    peer.start()
    session = requests.Session()
    for server_id in (f"srv-{i}" for i in range(servers)):
        raw = peer.request(server_id, close=False).decode()
        head, _, body = raw.partition("\r\n\r\n")
        method, path = head.split(" ", 2)[:2]
        headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:])
        headers.pop("Host", None)
        session.request(method, peer.url + path, data=body.encode(), headers=headers,
                        timeout=10).raise_for_status()
    for _ in range(scrapes):
        session.get(peer.url + "/metrics", timeout=30).raise_for_status()
    status = isinstance(peer, BridgePeer)
    for _ in range(refreshes if status else 0):
        session.get(peer.url + "/api/status?state=problems&page=1&per_page=100",
                    timeout=30).raise_for_status()
    settle(peer.pids())
    return {"processes": footprint(peer), "status_refreshes": refreshes if status else 0}


def paced_run(peer, n, rate, close, duration):
    """Beats at about `rate` per second, ids spread over n: rate, p99, CPU per beat."""
    connections = max(4, min(64, round(rate / 40)))  # each waits ~25 ms between beats
    opts = Options(duration=duration, connections=connections, threads=2, rate_fraction=1.0,
                   paced_attempts=2)
    before = cpu_by_pid(peer.pids())
    started = time.monotonic()
    result = paced(peer, n, opts, rate, close=close)
    # paced() may run twice (calibration): CPU over both, beats over both
    beats = result["beats_total"]
    result["cpu_us_per_beat"] = 1e6 * cpu_since(peer, before) / beats if beats else None
    result["elapsed_s"] = time.monotonic() - started
    return result


@dataclass
class Args:
    peers: tuple
    servers: int
    rates: tuple
    duration: float
    source: Path
    settings: dict


def run_peer(name, args, workdir, log):
    row = {"peer": name}
    peer = make_peer(name, workdir, args.source, args.settings)
    try:
        row["rest"] = at_rest(peer)
        log(f"{name} at rest: {_mb(row['rest']['processes'])} MB PSS over "
            f"{len(row['rest']['processes'])} processes")
    finally:
        peer.stop()
    peer = make_peer(name, workdir, args.source, args.settings)
    try:
        peer.prefill(args.servers)
        peer.start()
        row["paced"] = []
        for rate in args.rates:
            for mode, close in (("close", True), ("keepalive", False)):
                result = paced_run(peer, args.servers, rate, close, args.duration)
                result.update(rate=rate, mode=mode)
                row["paced"].append(result)
                log(f"{name} {rate}/s {mode}: {result['achieved_rps']:.0f}/s, p99 "
                    f"{result['p99_ms']:.1f} ms, CPU {result['cpu_us_per_beat']:.0f} us/beat")
        scrape.scrape(peer.url, repeats=3)
        settle(peer.pids())
        row["after"] = footprint(peer)
        log(f"{name} after load: {_mb(row['after'])} MB PSS over {len(row['after'])} processes")
    finally:
        peer.stop()
    return row


def _mb(processes):
    return f"{sum(p for _, p in processes) / 2**20:.1f}"


def markdown(rows, args, load_before, load_after, description):
    """The report: at rest, paced CPU per beat, PSS after load; bridge / Pushgateway ratios."""
    by = {row["peer"]: row for row in rows}
    peer_names = [r["peer"] for r in rows]
    out = [f"# Fleet footprint, {time.strftime('%Y-%m-%d %H:%M')}", "",
           f"Bridge: {description}. Load average before {_load(load_before)}, after "
           f"{_load(load_after)}. {args.servers} servers for the paced runs, "
           f"{args.duration:g} s each.", "",
           "## At rest (10 servers, 40 scrapes, 40 status refreshes)", "",
           "| peer | processes | PSS, MB (all) | PSS per process, MB |", "|---|---:|---:|---|"]
    for name in peer_names:
        procs = by[name]["rest"]["processes"]
        out.append(f"| {name} | {len(procs)} | {_mb(procs)} | "
                   f"{', '.join(f'{p / 2**20:.1f}' for _, p in procs)} |")
    out += ["", "## Paced beats: CPU per beat (all processes of the peer)", "",
            "| peer | target/s | connection | achieved/s | p99 ms | CPU us/beat |",
            "|---|---:|---|---:|---:|---:|"]
    for name in peer_names:
        for r in by[name]["paced"]:
            out.append(f"| {name} | {r['rate']} | {r['mode']} | {r['achieved_rps']:.0f} | "
                       f"{r['p99_ms']:.1f} | {r['cpu_us_per_beat']:.0f} |")
    out += ["", f"## After the paced load and 3 scrapes ({args.servers} servers)", "",
            "| peer | processes | PSS, MB (all) | PSS per process, MB |", "|---|---:|---:|---|"]
    for name in peer_names:
        procs = by[name]["after"]
        out.append(f"| {name} | {len(procs)} | {_mb(procs)} | "
                   f"{', '.join(f'{p / 2**20:.1f}' for _, p in procs)} |")
    if len(peer_names) == 2:
        a, b = (by[n] for n in peer_names)
        out += ["", f"## Ratios, {peer_names[0]} / {peer_names[1]}", "",
                "| what | ratio |", "|---|---:|"]
        for ra, rb in zip(a["paced"], b["paced"]):
            if ra["cpu_us_per_beat"] and rb["cpu_us_per_beat"]:
                out.append(f"| CPU per beat, {ra['rate']}/s {ra['mode']} | "
                           f"{ra['cpu_us_per_beat'] / rb['cpu_us_per_beat']:.2f}x |")
        for what, key in (("PSS at rest", "rest"), ("PSS after load", "after")):
            pa = sum(p for _, p in (a[key]["processes"] if key == "rest" else a[key]))
            pb = sum(p for _, p in (b[key]["processes"] if key == "rest" else b[key]))
            out.append(f"| {what} | {pa / pb:.2f}x |")
    return "\n".join(out) + "\n"


def _load(avg):
    return " / ".join(f"{x:.2f}" for x in avg)


def _settings(pairs):
    return dict(pair.split("=", 1) for pair in pairs)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n")[0])
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--servers", type=int, default=10000)
    p.add_argument("--rates", default="333,1000", help="beats/s, comma-separated (333,1000)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per paced run (10)")
    p.add_argument("--bridge", default="worktree",
                   help="git revision of bridge/ to measure, or 'worktree' (the default)")
    p.add_argument("--set", action="append", default=[], metavar="HEARTBEAT_X=V",
                   help="a bridge setting for this run (repeatable)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    workdir = tempfile.mkdtemp(prefix="heartbeat-fleet-")
    source, description = bridge_source(a.bridge, workdir)
    settings = dict({"HEARTBEAT_STATUS_PUBLIC": "true"}, **_settings(a.set))
    args = Args(tuple(x for x in a.peers.split(",") if x), a.servers,
                tuple(int(x) for x in a.rates.split(",") if x), a.duration, Path(source),
                settings)
    if a.set:
        description += " with " + ", ".join(a.set)
    load_before = os.getloadavg()
    rows = [run_peer(name, args, workdir, lambda m: print(m, file=sys.stderr, flush=True))
            for name in args.peers]
    text = markdown(rows, args, load_before, os.getloadavg(), description)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / ("fleet-" + time.strftime("%Y%m%d-%H%M") + ".md")
    path.write_text(text)
    print(text)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
