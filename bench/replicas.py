"""Beats/s: two bridge replicas on one PostgreSQL against one bridge on SQLite, same load.

    .venv/bin/python -m bench.replicas [--duration 15] [--threads 2] [--connections 32]

The same wrk load (threads x connections, ids random over --servers, every server
prefilled so runs measure beats, not registrations) goes to:

- sqlite-1: one bridge on a SQLite file;
- postgres-1: one bridge on PostgreSQL (what the backend costs, without the second replica);
- postgres-2: two bridges on one PostgreSQL schema, the load split between them (two wrk
  processes, each with half the threads and connections; beats/s summed).

Each bridge runs `heartbeat-bridge serve` with --workers workers, rate limit off. Needs
/usr/bin/wrk and PostgreSQL at 127.0.0.1:5432 (database `test`). Bounded: every wrk run
stops after --duration s (+30 s timeout); every process started is stopped.
"""
import argparse
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

from bench.wrk import run_wrk
from bridge.store import open_store
from bridge.store.sql import ALL_COLUMNS
from harness import Bridge

TOKEN = "bench-fleet-token-0123"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def prefill(url, servers):
    """Every server registered with one beat, so the load measures beats."""
    now = time.time()
    defaults = dict(labels="{}", declared_interval=30.0, last_seen=now, beats_total=1,
                    paused=0, created_at=now, hostname="bench", agent_version="bench")
    rows = [tuple({**defaults, "server_id": f"s{n}"}.get(c) for c in ALL_COLUMNS)
            for n in range(1, servers + 1)]
    store = open_store(url)
    try:
        store.import_rows(rows, {})
    finally:
        store.close()


def run(urls, opts):
    """Start one bridge per URL, split the wrk load over them, return the summed result."""
    settings = dict(HEARTBEAT_TOKEN=TOKEN, HEARTBEAT_RATE_LIMIT_BURST="0",
                    HEARTBEAT_WORKERS=str(opts.workers), HEARTBEAT_LOG_LEVEL="warning")
    bridges = []
    try:
        for url in urls:
            bridges.append(Bridge(url, **settings).start())
        n = len(bridges)
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(lambda i: run_wrk(
                bridges[i].url, "replicas.lua", opts.duration,
                env={"TOKEN": TOKEN, "SERVERS": opts.servers, "SEED": i},
                threads=max(1, opts.threads // n), connections=opts.connections // n),
                range(n)))
    finally:
        for bridge in bridges:
            bridge.stop()
    return {
        "rps": sum(r["rps"] for r in results),
        "non_2xx": sum(r["non_2xx"] for r in results),
        "socket_errors": sum(r["socket_errors"] for r in results),
        "p50_ms": max(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--servers", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per bridge")
    parser.add_argument("--pg-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a PostgreSQL session setting for the bridges (e.g. "
                             "synchronous_commit=off), passed in the URL's options")
    opts = parser.parse_args(argv)

    import psycopg
    admin = psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3)
    schemas = []

    def postgres_url():
        schema = "bench_" + uuid.uuid4().hex[:10]
        admin.execute(f"CREATE SCHEMA {schema}")
        schemas.append(schema)
        options = "".join(f"%20-c{quote(setting, safe='')}" for setting in opts.pg_setting)
        url = f"{POSTGRES}?options=-csearch_path%3D{schema}{options}"
        prefill(url, opts.servers)
        return url

    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
            sqlite = f"sqlite:///{tmp}/heartbeat.db"
            prefill(sqlite, opts.servers)
            rows.append(("sqlite-1", "1 bridge, SQLite", run([sqlite], opts)))
        url = postgres_url()
        rows.append(("postgres-1", "1 bridge, PostgreSQL", run([url], opts)))
        url = postgres_url()
        rows.append(("postgres-2", "2 bridges, one PostgreSQL", run([url, url], opts)))
    finally:
        for schema in schemas:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()

    print(f"wrk -t{opts.threads} -c{opts.connections} -d{opts.duration:g}s (split over the "
          f"replicas), {opts.servers} servers, {opts.workers} workers per bridge, "
          f"PostgreSQL settings: {', '.join(opts.pg_setting) or 'defaults'}\n")
    print("| setup | | beats/s | p50 ms | p99 ms | non-2xx | socket errors |")
    print("|---|---|---:|---:|---:|---:|---:|")
    base = rows[0][2]["rps"] or 1.0
    for name, what, r in rows:
        print(f"| {name} | {what} | {r['rps']:.0f} ({r['rps'] / base:.2f}x) | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['non_2xx']} | {r['socket_errors']} |")


if __name__ == "__main__":
    main()
