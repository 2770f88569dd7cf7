"""`python -m bench.status_page`: the status page at fleet scale (issue 17), one run.

A fleet seeded straight into a SQLite store (default 100,000 servers: 97% up, the rest
late, down, never seen, paused, away or retired), `heartbeat-bridge serve` with default
settings and a public page, a paced wrk beat load on the up servers, and:

1. beats alone, beats with 10 viewers refreshing every 5 s, twice each, alternating: the
   beat p99 with and without viewers, and the bridge's CPU (all its processes) per
   refresh; then the viewers alone (no beats): bridge CPU per refresh per viewer. A viewer
   is an HTTP client doing exactly what status.js does (same URL, If-None-Match), so the
   browsers' own CPU does not compete with the bridge on this small machine;
2. headless Chromium (Debian's /usr/bin/chromium): first render of counts and the first
   page of problem servers, on a cold snapshot and on a warm one; main-thread long tasks
   over 20 s of auto-refresh; a filter keystroke until its rows show, in the opening view
   and in "All servers".

Writes bench/results/status-page-<date>-<time>.md. Figures from a shared machine move by
tens of percent between runs: the report says what else was running (load average).
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench import wrk
from bench.peers import TOKEN, BridgePeer, bridge_source, cpu_by_pid, cpu_since

RESULTS = Path(__file__).resolve().parent / "results"
CHROMIUM = "/usr/bin/chromium"
# The mix of a large fleet (per 100,000): the rest is up.
MIX = {"late": 1000, "down": 1000, "never": 500, "paused": 300, "away": 200, "retired": 500}
PAGE_VIEW = "state=problems&q=&sort=state&order=asc&page=1&per_page=100"  # as status.js asks


def seed(database_url, n):
    """Run with the measured source on PYTHONPATH: N servers straight into its store."""
    from bridge.store import open_store
    from bridge.store.sql import ALL_COLUMNS
    rng = random.Random(17)
    now = time.time()
    scale = n / 100000
    counts = {kind: max(1, round(k * scale)) for kind, k in MIX.items()}
    up = n - sum(counts.values())
    base = dict.fromkeys(ALL_COLUMNS)
    base.update(beats_total=1, paused=0, created_at=now - 86400, hostname="bench",
                agent_version="bench", seq=1)
    for column in ("token_confirmed",):  # NOT NULL in later schemas
        if column in base:
            base[column] = 0

    def rows():
        for i in range(n):
            kind = "up" if i < up else next(k for k, first in starts.items() if i >= first)
            row = dict(base, server_id=f"srv-{i}" if kind == "up" else f"{kind}-{i}",
                       labels=json.dumps({"team": f"t{i % 20}", "env": "prod" if i % 4 else
                                          "staging"}, sort_keys=True, separators=(",", ":")),
                       hostname=f"host-{i}.example")
            # Up and late servers promise an hour (registered: beats do not change it), so
            # the mix holds for the whole run; the wrk beats keep the up ones up.
            row.update({
                "up": dict(registered_interval=3600.0, last_seen=now - rng.uniform(0, 600)),
                "late": dict(registered_interval=3600.0, last_seen=now - rng.uniform(5500, 9000)),
                "down": dict(registered_interval=30.0, last_seen=now - rng.uniform(200, 90000)),
                "never": dict(last_seen=0.0),
                "paused": dict(registered_interval=30.0, last_seen=now - 5000, paused=1,
                               paused_until=now + 86400, pause_reason="kernel upgrade"),
                "away": dict(registered_interval=30.0, last_seen=now - 600,
                             expected_back=now + 86400),
                "retired": dict(last_seen=now - 86400 * 3, retired_at=now - 86400),
            }[kind])
            yield tuple(row[c] for c in ALL_COLUMNS)

    starts, first = {}, up
    for kind, k in counts.items():
        starts[kind] = first
        first += k
    starts = dict(sorted(starts.items(), key=lambda kv: -kv[1]))  # latest start first
    store = open_store(database_url, pool_size=1)
    try:
        store.import_rows(rows(), {})
    finally:
        store.close()
    return up


class Viewers:
    """N clients that each GET the page's view every `every` s, with If-None-Match."""

    def __init__(self, url, n, every=5.0):
        self.url, self.n, self.every = url, n, every
        self.stop = threading.Event()
        self.statuses, self.seconds = [], []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(n)]

    def _run(self, index):
        session, etag = requests.Session(), None
        time.sleep(self.every * index / self.n)  # spread, as tabs opened at different times
        while not self.stop.is_set():
            started = time.monotonic()
            headers = {"Accept": "application/json"}
            if etag:
                headers["If-None-Match"] = etag
            try:
                response = session.get(f"{self.url}/api/status?{PAGE_VIEW}", headers=headers,
                                       timeout=10)
                etag = response.headers.get("ETag", etag)
                self.statuses.append(response.status_code)
                self.seconds.append(time.monotonic() - started)
            except requests.RequestException:
                self.statuses.append(0)
            self.stop.wait(max(0.0, self.every - (time.monotonic() - started)))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)


def beat_phase(peer, up, duration, viewers):
    """Paced beats on the up servers, with `viewers` refreshing meanwhile (0: none)."""
    cpu = cpu_by_pid(peer.pids())
    env = {"TOKEN": TOKEN, "SERVERS": up, "CLOSE": 0, "DELAY_MS": 10}
    if viewers:
        with Viewers(peer.url, viewers) as v:
            result = wrk.run_wrk(peer.url, "beat.lua", duration, env=env, connections=16)
        refreshes, statuses = len(v.statuses), v.statuses
    else:
        result = wrk.run_wrk(peer.url, "beat.lua", duration, env=env, connections=16)
        refreshes, statuses = 0, []
    return dict(result, cpu_s=cpu_since(peer, cpu), refreshes=refreshes,
                not_modified=statuses.count(304), errors=sum(s not in (200, 304) for s in statuses))


def viewers_alone(peer, duration, n=10):
    """Bridge CPU with the viewers and nothing else, less the same time idle."""
    cpu = cpu_by_pid(peer.pids())
    time.sleep(duration)
    idle = cpu_since(peer, cpu)
    cpu = cpu_by_pid(peer.pids())
    with Viewers(peer.url, n) as v:
        time.sleep(duration)
    used = cpu_since(peer, cpu)
    refreshes = max(1, len(v.statuses))
    return {"cpu_s": used, "idle_cpu_s": idle, "refreshes": len(v.statuses),
            "not_modified": v.statuses.count(304), "ms_per_refresh": 1000 * used / refreshes,
            "net_ms_per_refresh": 1000 * (used - idle) / refreshes,
            "median_answer_ms": 1000 * statistics.median(v.seconds) if v.seconds else None}


ALL_SHOWN = "(n) => document.getElementById('shown').textContent.endsWith(' of ' + n)"
BROWSER_JS = {
    "rendered": """() => document.querySelectorAll('#servers tbody tr').length > 0
        && document.getElementById('count-total').textContent !== '-' && performance.now()""",
    "observe": """() => {
        window.longTasks = [];
        new PerformanceObserver((list) => {
            for (const entry of list.getEntries()) window.longTasks.push(entry.duration);
        }).observe({type: 'longtask', buffered: true});
    }""",
}


def browser_phase(peer, max_age, servers):
    from playwright.sync_api import sync_playwright
    out = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            for label in ("cold", "warm"):
                if label == "cold":
                    time.sleep(max_age + 0.5)  # every cached snapshot is stale
                page.goto(peer.url + "/")
                # ms from navigation start until counts and rows are in the DOM
                out[f"first_render_{label}_ms"] = page.wait_for_function(
                    BROWSER_JS["rendered"], timeout=30000, polling=10).json_value()
            out["rows"] = page.locator("#servers tbody tr").count()
            out["counts"] = {s: page.text_content(f"#count-{s}") for s in (
                "down", "late", "never_seen", "away", "paused", "up", "retired", "total")}
            page.evaluate(BROWSER_JS["observe"])
            page.wait_for_timeout(20000)  # four auto-refreshes
            tasks = page.evaluate("window.longTasks")
            out["long_tasks"] = {"count": len(tasks), "total_ms": sum(tasks),
                                 "max_ms": max(tasks, default=0.0)}
            out["filter_problems_ms"] = keystroke(page, "t7")
            page.fill("#filter", "")
            page.click("button[data-view=all]")
            page.wait_for_function(ALL_SHOWN, arg=str(servers), timeout=30000)
            out["filter_all_cold_ms"] = keystroke(page, "team=t3")
            page.fill("#filter", "")
            page.wait_for_function(ALL_SHOWN, arg=str(servers), timeout=30000)
            out["filter_all_warm_ms"] = keystroke(page, "team=t5")
            page.wait_for_timeout(1000 * (max_age + 0.5))  # the whole fleet's snapshot expires
            out["filter_all_expired_ms"] = keystroke(page, "team=t7", settle=False)
        finally:
            browser.close()
    return out


def keystroke(page, text, settle=True):
    """Type `text` (its last character is the keystroke timed): ms from that key's input
    event until the rows it selects are drawn (the first redraw of the rows or #shown)."""
    if settle:
        page.fill("#filter", text[:-1])
        page.wait_for_timeout(700)  # let that settle and its answer show
    else:
        page.evaluate("(t) => { document.getElementById('filter').value = t; }", text[:-1])
    page.evaluate("""() => {
        window.keyAt = null; window.shownAt = null;
        document.getElementById('filter').addEventListener('input',
            () => { window.keyAt = performance.now(); }, {once: true});
        const observer = new MutationObserver(() => {
            if (window.keyAt === null) return;
            window.shownAt = performance.now();  // after the whole synchronous redraw
            observer.disconnect();
        });
        observer.observe(document.getElementById('shown'), {childList: true,
                                                            characterData: true, subtree: true});
        observer.observe(document.querySelector('#servers tbody'), {childList: true});
    }""")
    page.keyboard.type(text[-1])
    page.wait_for_function("() => window.shownAt !== null", timeout=30000, polling=10)
    return page.evaluate("window.shownAt - window.keyAt")


def load_average():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.status_page", description=__doc__)
    p.add_argument("--servers", type=int, default=100000)
    p.add_argument("--viewers", type=int, default=10)
    p.add_argument("--duration", type=float, default=20.0, help="seconds per phase (20)")
    p.add_argument("--bridge", default="HEAD", help="git revision of bridge/, or 'worktree'")
    p.add_argument("--max-age", type=float, default=10.0,
                   help="HEARTBEAT_STATUS_MAX_AGE of the bridge (its default, 10)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if not Path(CHROMIUM).exists() or not Path(wrk.WRK).exists():
        sys.exit(f"needs {CHROMIUM} and {wrk.WRK} (make deb-deps)")
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-status-") as workdir:
        source, described = bridge_source(args.bridge, workdir)
        peer = BridgePeer(workdir, source=source, settings={
            "HEARTBEAT_STATUS_PUBLIC": "true", "HEARTBEAT_STATUS_MAX_AGE": str(args.max_age)})
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", "import sys; from bench.status_page import seed; "
             "print(seed(sys.argv[1], int(sys.argv[2])))", peer.database_url,
             str(args.servers)], env=peer._env(), cwd=source, check=True, timeout=600,
            capture_output=True, text=True).stdout
        up, seeded_s = int(out.split()[-1]), time.monotonic() - started
        peer.start()
        try:
            max_age = args.max_age
            api = requests.get(f"{peer.url}/api/status?{PAGE_VIEW}", timeout=30)
            body = api.json()
            phases = []
            for viewers in (0, args.viewers) * 3:
                phases.append(dict(beat_phase(peer, up, args.duration, viewers),
                                   viewers=viewers))
            alone = viewers_alone(peer, args.duration, args.viewers)
            browser = browser_phase(peer, max_age, args.servers)
        finally:
            peer.stop()
    text = report(args, described, load_before, load_average(), seeded_s, body,
                  len(api.content), phases, alone, browser)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / time.strftime("status-page-%Y%m%d-%H%M.md", time.gmtime())
    path.write_text(text)
    print(text)
    print(f"written to {path}")


def report(args, described, load_before, load_after, seeded_s, body, size, phases, alone,
           browser):
    without = [p for p in phases if not p["viewers"]]
    with_ = [p for p in phases if p["viewers"]]
    p99_without = statistics.median(p["p99_ms"] for p in without)
    p99_with = statistics.median(p["p99_ms"] for p in with_)
    change = (p99_with - p99_without) / p99_without if p99_without else 0.0
    cpu_rate = {k: statistics.mean(p["cpu_s"] / args.duration for p in v)
                for k, v in (("without", without), ("with", with_))}
    refreshes = statistics.mean(p["refreshes"] for p in with_)
    delta_ms = 1000 * (cpu_rate["with"] - cpu_rate["without"]) * args.duration / max(1, refreshes)
    longest = browser["long_tasks"]

    def verdict(ok):
        return "PASS" if ok else "MISS"

    lines = [
        f"# Status page at {args.servers:,} servers "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"Bridge: {described}. `python -m bench.status_page --servers {args.servers} "
        f"--max-age {args.max_age:g}` (HEARTBEAT_STATUS_MAX_AGE).",
        f"Machine: {os.cpu_count()} CPUs, shared with other work; load average {load_before}"
        f" before, {load_after} after. Figures move by tens of percent between runs.",
        f"Fleet seeded into SQLite in {seeded_s:.0f} s; counts at start: "
        f"{json.dumps(body['counts'])}; the opening view's answer: {size:,} bytes, "
        f"{len(body['servers'])} rows of {body['matched']:,}.",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| first render, counts + first page of problem servers < 1 s | "
        f"{browser['first_render_cold_ms']:.0f} ms on a cold snapshot, "
        f"{browser['first_render_warm_ms']:.0f} ms on a warm one (from navigation start) | "
        f"{verdict(browser['first_render_cold_ms'] < 1000)} |",
        f"| bridge CPU per refresh per viewer < 20 ms | {alone['net_ms_per_refresh']:.1f} ms "
        f"(viewers alone, {alone['refreshes']} refreshes of which {alone['not_modified']} "
        f"304, less the bridge idle as long; {alone['ms_per_refresh']:.1f} ms without "
        f"subtracting); {delta_ms:.1f} ms from CPU with minus without viewers under beats | "
        f"{verdict(alone['net_ms_per_refresh'] < 20)} |",
        f"| {args.viewers} viewers every 5 s change beat p99 < 10% | median p99 "
        f"{p99_without:.2f} ms without, {p99_with:.2f} ms with ({change:+.0%}); per phase "
        f"below | {verdict(change < 0.10)} |",
        f"| main-thread long tasks < 200 ms over 20 s of auto-refresh | {longest['count']} "
        f"long tasks, {longest['total_ms']:.0f} ms in all, longest {longest['max_ms']:.0f} ms "
        f"| {verdict(longest['total_ms'] < 200)} |",
        f"| a filter keystroke shows its result < 300 ms | {browser['filter_problems_ms']:.0f}"
        f" ms in the opening view; in All servers {browser['filter_all_cold_ms']:.0f} ms "
        f"(first after the switch), {browser['filter_all_warm_ms']:.0f} ms (next), "
        f"{browser['filter_all_expired_ms']:.0f} ms once its snapshot expired | "
        f"{verdict(max(browser['filter_problems_ms'], browser['filter_all_warm_ms']) < 300)} |",
        "",
        "Keystroke times include the page's 80 ms typing pause before it asks the bridge.",
        "",
        "## Beat phases (wrk, 16 kept-alive connections, 10 ms pause after each answer)",
        "",
        "| phase | viewers | beats/s | p50 ms | p99 ms | bridge CPU s | refreshes | 304 | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, p in enumerate(phases, 1):
        lines.append(f"| {n} | {p['viewers']} | {p['rps']:.0f} | {p['p50_ms']:.2f} | "
                     f"{p['p99_ms']:.2f} | {p['cpu_s']:.2f} | {p['refreshes']} | "
                     f"{p['not_modified']} | {p['errors'] + p['non_2xx']} |")
    lines += ["", "## Browser", "", "```json", json.dumps(browser, indent=2), "```", "",
              "## Viewers alone", "", "```json", json.dumps(alone, indent=2), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
