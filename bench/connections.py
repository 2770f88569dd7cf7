"""`python -m bench.connections`: thousands of kept-alive agents against a bridge started
with the file limits operators run it with (bench/README.md, "Connections").

Each scenario starts `heartbeat-bridge serve` (default settings, 4 workers, SQLite, the
servers prefilled) under `prlimit --nofile=SOFT:HARD`, as systemd or a container runtime
would start it; connects N agents that beat once and stay connected, idle; then sends beats
each on a new connection; reads what the bridge's log and /metrics say; measures the memory
of all the bridge's processes (PSS and RSS) before, with the N idle connections, and after
they closed. The client raises only its own file limit. Bounded in count and time.
"""
import argparse
import datetime
import multiprocessing
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Tuple

import requests

from bench.agents import Fleet, beat_request, once, percentile, raise_own_limit
from bench.peers import TOKEN, BridgePeer, bridge_source
from harness import ROOT, total, wait_until

RESULTS = ROOT / "bench" / "results"
# A hard limit "as high as the machine allows": systemd gives services 524288, but a process
# without CAP_SYS_RESOURCE (a container) cannot raise its hard limit past its own, and the
# bridge is started under this one. --hard sets it.
HIGH = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
PER_CLIENT = 5000  # agents per client process: each holds one socket per agent
# (name, soft, hard, agents): soft 1024 is systemd's default for a service without
# LimitNOFILE=; soft = hard = 1024 is a container whose runtime caps both.
SCENARIOS = [("soft 1024, hard high", 1024, HIGH, 5000),
             ("soft 1024, hard high", 1024, HIGH, 20000),
             ("soft = hard = 1024", 1024, 1024, 5000)]


class LimitedBridge(BridgePeer):
    """The bench's bridge peer started under prlimit."""

    def __init__(self, workdir: str, soft: int, hard: int, **kwargs: Any) -> None:
        super().__init__(workdir, **kwargs)
        self.nofile = f"--nofile={soft}:{hard}"

    def _start(self, argv, env=None, cwd=None, ready_path="/", timeout=30.0):
        return super()._start(["prlimit", self.nofile, "--", *argv], env=env, cwd=cwd,
                              ready_path=ready_path, timeout=timeout)


class Fleets:
    """`agents` kept-alive agents held by client processes of PER_CLIENT each (a process
    cannot hold more sockets than its own file limit)."""

    def __init__(self, port: int, agents: int) -> None:
        self.links = []
        for first in range(0, agents, PER_CLIENT):
            mine, theirs = multiprocessing.Pipe()
            count = min(PER_CLIENT, agents - first)
            child = multiprocessing.Process(target=_hold, args=(theirs, port, first, count),
                                            daemon=True)
            child.start()
            self.links.append((child, mine))

    def connect(self, time_limit: float, command: str = "connect") -> Counter:
        """Each agent beats on a new connection, kept alive (or closed after: "warm")."""
        for _, link in self.links:
            link.send((command, time_limit))
        return sum((link.recv() for _, link in self.links), Counter())

    def alive(self) -> int:
        for _, link in self.links:
            link.send(("alive", None))
        return sum(link.recv() for _, link in self.links)

    def disconnect(self) -> None:
        """Close every agent's connection; the client processes stay for connect()."""
        for _, link in self.links:
            link.send(("disconnect", None))
        for _, link in self.links:
            link.recv()

    def close(self) -> None:
        for child, link in self.links:
            if child.is_alive():
                link.send(("close", None))
                child.join(30)
        self.links = []


def _hold(link: Any, port: int, first: int, count: int) -> None:
    """A client process: connect `count` agents when told, report, close when told."""
    raise_own_limit(count + 256)
    fleet = Fleet(port, TOKEN, prefix="srv", first=first)
    while True:
        command, arg = link.recv()
        if command in ("connect", "warm"):  # the same agents, again if connected before
            fleet.close()
            fleet = Fleet(port, TOKEN, prefix="srv", first=first, keep=command == "connect")
            # a window per process: the processes together keep about 100 connecting
            link.send(fleet.connect(count, window=25, time_limit=arg))
        elif command == "alive":
            link.send(fleet.alive())
        elif command == "disconnect":
            fleet.close()
            link.send(None)
        else:
            fleet.close()
            return


def memory(pids: List[int]) -> Tuple[int, int]:
    """(PSS, RSS) in bytes of these processes together."""
    pss = rss = 0
    for pid in pids:
        try:
            pss += _field(f"/proc/{pid}/smaps_rollup", "Pss:")
            rss += _field(f"/proc/{pid}/status", "VmRSS:")
        except OSError:
            pass
    return pss, rss


def _field(path: str, name: str) -> int:
    with open(path) as handle:
        for line in handle:
            if line.startswith(name):
                return int(line.split()[1]) * 1024
    return 0


def connection_metrics(url: str) -> Dict[str, float]:
    """The connection families of one scrape; NaN each when /metrics was not answered (a
    bridge past its file limit resets new connections, scrapes included)."""
    try:
        text = requests.get(url + "/metrics", timeout=30).text
    except requests.RequestException:
        return dict.fromkeys(("open", "limit", "shed idle", "shed refused"), float("nan"))
    return {"open": total(text, "heartbeat_bridge_connections_open"),
            "limit": total(text, "heartbeat_bridge_connections_limit"),
            "shed idle": total(text, "heartbeat_bridge_connections_shed_total", reason="idle"),
            "shed refused": total(text, "heartbeat_bridge_connections_shed_total",
                                  reason="refused")}


def run(workdir: str, source: Path, soft: int, hard: int, agents: int, beats: int,
        time_limit: float) -> Dict[str, Any]:
    bridge = LimitedBridge(workdir, soft, hard, source=source)
    bridge.prefill(agents + beats)
    bridge.start()
    out: Dict[str, Any] = {}
    fleet = Fleets(bridge.port, agents)
    try:
        # What the bridge keeps per server it has heard from, before any kept-alive
        # connection: one beat from every agent, each connection closed after its answer.
        out["warm"] = fleet.connect(time_limit, "warm")
        # Every worker's render process up, as in use (each scrape lands on one worker).
        for _ in range(24):
            requests.get(bridge.url + "/metrics", timeout=30, headers={"Connection": "close"})
        bridge.wait_for_workers()
        out["memory before"] = memory(bridge.pids())
        started = time.monotonic()
        out["connect"] = fleet.connect(time_limit)
        out["connect seconds"] = time.monotonic() - started
        codes: Counter = Counter()
        latencies = []
        for i in range(beats):
            outcome, _, seconds = once(bridge.port, beat_request(f"srv-{agents + i}", TOKEN))
            codes[outcome] += 1
            latencies.append(seconds)
        out["new"], out["p50"], out["p99"] = codes, percentile(latencies, .5), percentile(
            latencies, .99)
        time.sleep(2)
        out["alive"] = fleet.alive()
        out["memory idle"] = memory(bridge.pids())
        out["metrics"] = connection_metrics(bridge.url)
        fleet.disconnect()
        out["memory after"] = _after_close(bridge)
        # Again with the same agents: their servers' state is in the bridge already, so
        # what the connections add and keep is theirs alone.
        fleet.connect(time_limit)
        time.sleep(2)
        out["alive again"] = fleet.alive()
        out["memory idle again"] = memory(bridge.pids())
        fleet.disconnect()
        out["memory after again"] = _after_close(bridge)
        log = bridge.process.log()
        out["start line"] = next((line.split("] ", 2)[-1] for line in log.splitlines()
                                  if "open-file limit" in line), "(none)")
        warnings = [line for line in log.splitlines() if "at its bound of" in line]
        out["warnings"] = len(warnings)
        out["first warning"] = warnings[0].split("] ", 2)[-1] if warnings else "(none)"
    finally:
        fleet.close()
        bridge.stop()
    return out


def _after_close(bridge: LimitedBridge) -> Tuple[int, int]:
    """The bridge's memory once the connections closed (none counted open), and 5 s more."""
    try:  # NaN < 10 is false: an unanswered scrape is asked again
        wait_until(lambda: connection_metrics(bridge.url)["open"] < 10, timeout=30,
                   what="connections closed")
    except AssertionError:
        pass  # a bridge without the connection gauges (an older revision)
    time.sleep(5)
    return memory(bridge.pids())


def _mb(value: int) -> str:
    return f"{value / 1e6:.1f}"


def report(rows: List[Tuple[str, int, int, int, Dict[str, Any]]], source: str,
           load: Tuple[str, str]) -> str:
    lines = [f"# Kept-alive agents under file limits ({datetime.datetime.now():%Y-%m-%d %H:%M})",
             "", f"Bridge: {source}; 4 workers (default), SQLite, servers prefilled.",
             f"Load before: {load[0]}", f"Load after: {load[1]}", "",
             "| limit (soft:hard) | agents | connect beats | still connected | beats on new "
             "connections | p50 / p99 ms | open / limit | shed idle / refused | warnings |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, soft, hard, agents, r in rows:
        m = r["metrics"]
        seen = (f"{m['open']:.0f} / {m['limit']:.0f} | {m['shed idle']:.0f} / "
                f"{m['shed refused']:.0f}") if m["open"] == m["open"] else (
                "/metrics unanswered | /metrics unanswered")
        lines.append(
            f"| {name} ({soft}:{hard}) | {agents} | {dict(r['warm'])} closed, "
            f"{dict(r['connect'])} kept alive in "
            f"{r['connect seconds']:.1f} s | {r['alive']} | {dict(r['new'])} | "
            f"{r['p50'] * 1000:.1f} / {r['p99'] * 1000:.1f} | {seen} | {r['warnings']} |")
    lines += ["", "Memory of all the bridge's processes, PSS / RSS in MB, after every agent "
              "beat once on a connection closed after its answer (what the bridge keeps per "
              "server is in 'before'); then the agents kept alive, closed, and kept alive "
              "again:", "",
              "| limit | agents | before | agents idle | per idle connection (PSS) | after "
              "they closed | again: idle | per idle connection (PSS) | after they closed |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, soft, hard, agents, r in rows:
        before, idle, after = r["memory before"], r["memory idle"], r["memory after"]
        again, after2 = r["memory idle again"], r["memory after again"]
        per = (idle[0] - before[0]) / max(1, r["alive"])
        per2 = (again[0] - after[0]) / max(1, r["alive again"])
        lines.append(f"| {soft}:{hard} | {agents} | {_mb(before[0])} / {_mb(before[1])} | "
                     f"{_mb(idle[0])} / {_mb(idle[1])} | {per / 1000:.1f} kB | "
                     f"{_mb(after[0])} / {_mb(after[1])} | {_mb(again[0])} / "
                     f"{_mb(again[1])} | {per2 / 1000:.1f} kB | {_mb(after2[0])} / "
                     f"{_mb(after2[1])} |")
    lines += ["", "Log, per run:", ""]
    for name, soft, hard, agents, r in rows:
        lines += [f"- {soft}:{hard}, {agents}: `{r['start line']}`; first shedding warning: "
                  f"`{r['first warning']}`"]
    return "\n".join(lines) + "\n"


def main(argv: List[str] = None) -> int:  # type: ignore[assignment]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bridge", default="worktree",
                        help="git revision to measure, or `worktree` (default)")
    parser.add_argument("--agents", default="",
                        help="comma-separated agent counts to run instead of the scenarios, "
                        "each under soft 1024 / hard high")
    parser.add_argument("--beats", type=int, default=500,
                        help="beats on new connections per scenario (default 500)")
    parser.add_argument("--nofile", default="", help="SOFT:HARD for --agents (default "
                        f"1024:{HIGH}, this process's hard limit)")
    parser.add_argument("--time-limit", type=float, default=300.0,
                        help="seconds to connect the agents, per scenario")
    args = parser.parse_args(argv)
    soft, hard = (int(x) for x in (args.nofile or f"1024:{HIGH}").split(":"))
    scenarios = ([("chosen", soft, hard, int(n)) for n in args.agents.split(",")]
                 if args.agents else SCENARIOS)
    with tempfile.TemporaryDirectory(prefix="bench-connections-") as workdir:
        source, described = bridge_source(args.bridge, workdir)
        load_before = _load()
        rows = []
        for name, soft, hard, agents in scenarios:
            print(f"{name}: {agents} agents ...", file=sys.stderr, flush=True)
            rows.append((name, soft, hard, agents,
                         run(workdir, source, soft, hard, agents, args.beats, args.time_limit)))
        load_after = _load()
    text = report(rows, described, (load_before, load_after))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"connections-{datetime.datetime.now():%Y%m%d-%H%M}.md"
    path.write_text(text)
    print(text)
    print(f"written to {path}", file=sys.stderr)
    return 0


def _load() -> str:
    """`uptime`'s load average, now."""
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return re.sub(r"^.*load average", "load average", uptime)


if __name__ == "__main__":
    sys.exit(main())
