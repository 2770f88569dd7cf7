"""`python -m bench`: the bridge and the Pushgateway under the same load; see bench/README.md."""
import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import report
from bench.peers import PUSHGATEWAY, bridge_source
from bench.run import PEERS, Options, execute
from bench.wrk import WRK

RESULTS = Path(__file__).resolve().parent / "results"
BEFORE = "aa2681d"


def _sizes(text):
    sizes = tuple(int(s.replace("_", "")) for s in text.split(",") if s.strip())
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("expected sizes like 1000,10000,100000")
    return sizes


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--sizes", type=_sizes, default=(1000, 10000, 100000),
                   help="fleet sizes, comma-separated (default 1000,10000,100000)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per load run (10)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of unrecorded beats after each peer starts (2; 0: none)")
    p.add_argument("--quick", action="store_true",
                   help="tiny end-to-end check: 100 servers, 1 s runs, under a minute")
    p.add_argument("--bridge", default="HEAD",
                   help="git revision of bridge/ to measure, or 'worktree' (default HEAD)")
    p.add_argument("--before", default=BEFORE,
                   help=f"git revision the `bridge-before` peer runs (default {BEFORE}: gunicorn "
                        "gthread, before the event-loop worker)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where results go (bench/results)")
    p.add_argument("--peers", type=lambda t: tuple(x.strip() for x in t.split(",") if x.strip()),
                   default=PEERS, help=f"which peers (default all: {','.join(PEERS)})")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    p.add_argument("--time-limit", type=float, default=2400.0,
                   help="stop starting new measurements after this many seconds (2400)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for binary in (WRK, PUSHGATEWAY):
        if not Path(binary).exists():
            print(f"bench: {binary} is missing (make deb-deps installs it)", file=sys.stderr)
            return 2
    unknown = set(args.peers) - set(PEERS)
    if unknown:
        print(f"bench: unknown peers {sorted(unknown)}; choose from {', '.join(PEERS)}",
              file=sys.stderr)
        return 2
    opts = Options(sizes=args.sizes, duration=args.duration, connections=args.connections,
                   warmup=args.warmup,
                   time_limit=args.time_limit, peers=args.peers,
                   profile_size=0 if args.no_profile else min(10000, max(args.sizes)))
    if args.quick:
        opts = Options(sizes=(100,), duration=1.0, connections=8, scrapes=1, profile_size=0,
                       prefill_limit=30.0, time_limit=45.0, peers=args.peers, paced_attempts=1,
                       warmup=0.0)
    started = time.time()
    workdir = tempfile.mkdtemp(prefix="heartbeat-bench-")
    try:
        source, description = bridge_source(args.bridge, workdir)
        before, before_description = (bridge_source(args.before, workdir)
                                      if "bridge-before" in opts.peers else (None, ""))
        opts.before = before
        run = execute(opts, workdir, source, description,
                      log=lambda m: print(m, file=sys.stderr, flush=True),
                      before_desc=before_description)
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / ("bench-" + time.strftime("%Y%m%d-%H%M", time.localtime(started)))
        text = report.markdown(run, started)
        stem.with_suffix(".md").write_text(text)
        if importlib.util.find_spec("matplotlib"):
            report.plot(run, stem.with_suffix(".png"))
        else:
            print("bench: matplotlib is not installed: no plot", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(text)
    print(f"written: {stem}.md and {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
