"""`python -m bench.prometheus_cost`: what a fleet costs the Prometheus that scrapes it.

For each fleet size, a fresh real Prometheus scrapes one peer at a time, side by side in
one run: the bridge with `HEARTBEAT_METRICS=full` (the per-server families of earlier
versions), the bridge with the lean default, and the Pushgateway holding the same fleet
(one group per server, started with `--push.disable-consistency-check`, which changes
nothing in what it exposes). After `--scrapes` scrapes it reads Prometheus' own
`prometheus_tsdb_head_series`, its RSS (from /proc) and Go heap in use, and the target's
`scrape_samples_scraped` and `scrape_duration_seconds`. Writes a markdown report to
`bench/results/prometheus-cost-<date>-<time>.md`; run it under `flock /tmp/bench.lock`.
"""
import argparse
import datetime
import tempfile
import time
from pathlib import Path

import requests
import yaml

from bench.peers import BridgePeer, PushgatewayPeer, bridge_source, rss_bytes
from harness import ROOT, Process, find_binary, free_port, wait_until

RESULTS = ROOT / "bench" / "results"
PEERS = ("bridge-full", "bridge-lean", "pushgateway")


class Scraper:
    """A fresh Prometheus (own TSDB directory) scraping one target, no rules."""

    def __init__(self, workdir, target_port, interval):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config = {"global": {"scrape_interval": f"{interval}s",
                             "scrape_timeout": f"{interval}s"},
                  "scrape_configs": [{"job_name": "target", "honor_labels": True,
                                      "static_configs": [
                                          {"targets": [f"127.0.0.1:{target_port}"]}]}]}
        path = workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.process = Process([find_binary("prometheus"), f"--config.file={path}",
                                f"--storage.tsdb.path={workdir / 'tsdb'}",
                                f"--web.listen-address=127.0.0.1:{self.port}"],
                               name="prometheus").start()
        wait_until(lambda: requests.get(self.url + "/-/ready", timeout=2).ok, timeout=30,
                   what="prometheus ready")

    def value(self, expr):
        answer = requests.get(self.url + "/api/v1/query", params={"query": expr},
                              timeout=30).json()
        result = answer["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def own(self, name):
        """A gauge of Prometheus' own /metrics."""
        for line in requests.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return None

    def stop(self):
        self.process.stop()


def measure(peer, n, scrapes, interval, workdir):
    """One peer at one size: prefill, start, `scrapes` scrapes by a fresh Prometheus."""
    started = time.monotonic()
    peer.prefill(n, time_limit=900.0)
    peer.start()
    scraper = None
    try:
        scraper = Scraper(workdir / f"prom-{peer.name}-{n}", peer.port, interval)
        done = f'count_over_time(scrape_samples_scraped{{job="target"}}[1h]) >= {scrapes}'
        wait_until(lambda: scraper.value(done) is not None,
                   timeout=scrapes * interval + 300, interval=1.0,
                   what=f"{scrapes} scrapes of {peer.name}")
        samples = scraper.value('scrape_samples_scraped{job="target"}')
        row = {
            "peer": peer.name, "servers": n,
            "samples": samples,
            "per_server": samples / n,
            "head_series": scraper.own("prometheus_tsdb_head_series"),
            "rss": rss_bytes(scraper.process.pid),
            "heap": scraper.own("go_memstats_heap_inuse_bytes"),
            "scrape_s": scraper.value('scrape_duration_seconds{job="target"}'),
            "up": scraper.value('up{job="target"}'),
            "seconds": time.monotonic() - started,
        }
    finally:
        if scraper:
            scraper.stop()
        peer.stop()
    return row


def make_peer(name, workdir, source):
    if name == "pushgateway":
        return PushgatewayPeer(workdir, consistency_check=False)
    metric_set = name.split("-", 1)[1]
    peer = BridgePeer(workdir, "sqlite", source, settings={"HEARTBEAT_METRICS": metric_set})
    peer.name = name
    return peer


def report(rows, args, source, loads):
    mb = 1024 * 1024
    lines = [f"# Prometheus' cost of a fleet ({datetime.datetime.now():%Y-%m-%d %H:%M})", "",
             f"Bridge: {source}. One fresh Prometheus per peer and size, scrape every "
             f"{args.interval} s, read after {args.scrapes} scrapes. Load average before "
             f"{loads[0]}, after {loads[1]}.", "",
             "| servers | peer | samples per scrape | per server | head series | "
             "Prometheus RSS MB | Go heap in use MB | scrape s | up |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['servers']:,} | {r['peer']} | {r['samples']:,.0f} | "
                     f"{r['per_server']:.2f} | {r['head_series']:,.0f} | {r['rss'] / mb:,.0f} | "
                     f"{r['heap'] / mb:,.0f} | {r['scrape_s']:.2f} | {r['up']:.0f} |")
    lines += ["", "Ratios, same size, same run:", "",
              "| servers | head series lean / full | RSS lean / full | head series lean / "
              "Pushgateway | RSS lean / Pushgateway |", "|---|---|---|---|---|"]
    for n in args.sizes:
        by = {r["peer"].split("-no-")[0]: r for r in rows if r["servers"] == n}
        if set(PEERS) <= set(by):
            lean, full, push = by["bridge-lean"], by["bridge-full"], by["pushgateway"]
            lines.append(f"| {n:,} | {lean['head_series'] / full['head_series']:.2f} | "
                         f"{lean['rss'] / full['rss']:.2f} | "
                         f"{lean['head_series'] / push['head_series']:.2f} | "
                         f"{lean['rss'] / push['rss']:.2f} |")
    return "\n".join(lines) + "\n"


def load_average():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000",
                        type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--scrapes", type=int, default=4)
    parser.add_argument("--interval", type=int, default=15, help="scrape interval, seconds")
    parser.add_argument("--peers", default=",".join(PEERS), type=lambda s: s.split(","))
    parser.add_argument("--bridge", default="HEAD", help="git revision, or worktree")
    args = parser.parse_args(argv)
    find_binary("prometheus")
    loads = [load_average()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-prometheus-cost-") as tmp:
        workdir = Path(tmp)
        source, described = bridge_source(args.bridge, workdir)
        for n in args.sizes:
            for name in args.peers:
                row = measure(make_peer(name, workdir, source), n, args.scrapes,
                              args.interval, workdir)
                print(row, flush=True)
                rows.append(row)
    loads.append(load_average())
    text = report(rows, args, described, loads)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"prometheus-cost-{datetime.datetime.now():%Y%m%d-%H%M}.md"
    out.write_text(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
