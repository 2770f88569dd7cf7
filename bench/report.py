"""Results of a run as markdown (targets with PASS/MISS, then the measurements) and a plot."""
import math
import platform
import subprocess
import time

MB = 1 << 20
PG_DEFAULT = "pushgateway"
PG_FAST = "pushgateway-no-consistency-check"


def _rows(run, peer=None, n=None):
    return [r for r in run.rows if "skipped" not in r and (peer is None or r["peer"] == peer)
            and (n is None or r["servers"] == n)]


def _one(run, peer, n):
    rows = _rows(run, peer, n)
    return rows[0] if rows else None


def _ratio(a, b):
    """a / b; infinite when the peer managed nothing at all in the run (b == 0 < a)."""
    if a is None or b is None:
        return None
    if b == 0:
        return math.inf if a > 0 else None
    return a / b


def target_sizes(sizes):
    """The sizes the targets speak of (10,000 and 100,000), or the nearest a small run has."""
    sizes = sorted(sizes)
    mid = 10000 if 10000 in sizes else max([s for s in sizes if s <= 10000] or sizes[:1])
    large = 100000 if 100000 in sizes else sizes[-1]
    return mid, large


def targets(run):
    """(target, peer, servers, measured text, PASS/MISS/n/a) for every bridge backend measured."""
    mid, large = target_sizes(run.options.sizes)
    out = []
    bridges = sorted({r["peer"] for r in _rows(run) if r["peer"].startswith("bridge-")})
    for peer in bridges:
        b_mid, b_large = _one(run, peer, mid), _one(run, peer, large)
        d_mid, f_mid = _one(run, PG_DEFAULT, mid), _one(run, PG_FAST, mid)
        d_large, f_large = _one(run, PG_DEFAULT, large), _one(run, PG_FAST, large)

        def rps(row):
            return row["close"]["rps"] if row else None

        def check(name, n, value, ok, fmt):
            if value is None:
                out.append((name, peer, n, "not measured", "n/a"))
            else:
                text = ("inf (the Pushgateway completed no push in the run)"
                        if math.isinf(value) else fmt.format(value))
                out.append((name, peer, n, text, "PASS" if ok(value) else "MISS"))

        check("beats/s, new connection >= 2x Pushgateway default", mid,
              _ratio(rps(b_mid), rps(d_mid)), lambda v: v >= 2, "{:.2f}x")
        check("beats/s, new connection >= Pushgateway --push.disable-consistency-check", mid,
              _ratio(rps(b_mid), rps(f_mid)), lambda v: v >= 1, "{:.2f}x")
        check("beats/s, new connection >= 3,000", mid, rps(b_mid), lambda v: v >= 3000,
              "{:,.0f}/s")
        for label, peer_mid, peer_large in (("default", d_mid, d_large),
                                            ("no-consistency-check", f_mid, f_large)):
            r_mid, r_large = _ratio(rps(b_mid), rps(peer_mid)), _ratio(rps(b_large),
                                                                      rps(peer_large))
            held = None if r_mid is None or r_large is None or mid == large else (
                1.0 if math.isinf(r_mid) and math.isinf(r_large) else _ratio(r_large, r_mid))
            check(f"lead over Pushgateway {label} holds at {large:,} (ratio {large:,} / {mid:,})",
                  large, held, lambda v: v >= 0.95,
                  "{:.2f}" + (f" ({_fmt(r_large, '.2f')}x vs {_fmt(r_mid, '.2f')}x)"
                              if held is not None else ""))
        for mode in ("plain", "gzip"):
            mine = b_mid["scrape"][f"{mode}_s"] if b_mid else None
            theirs = d_mid["scrape"][f"{mode}_s"] if d_mid else None
            check(f"/metrics ({mode}) no slower than the Pushgateway's", mid,
                  mine if theirs else None, lambda v: v <= theirs,
                  "{:.3f} s" + (f" vs {theirs:.3f} s" if theirs else ""))
            check(f"/metrics ({mode}) < 1 s", large,
                  b_large["scrape"][f"{mode}_s"] if b_large else None, lambda v: v < 1,
                  "{:.3f} s")
        check("memory < 150 MB per process (largest process)", large,
              max(b_large["rss"]) / MB if b_large else None, lambda v: v < 150,
              "{:.0f} MB" + (f" (total {sum(b_large['rss']) / MB:.0f} MB)" if b_large else ""))
        fixed = b_mid["fixed_rate"] if b_mid else {}
        check("p99 beat latency < 50 ms at 80% of the measured maximum", mid,
              fixed.get("p99_ms"), lambda v: v < 50,
              "{:.1f} ms" + (f" at {fixed.get('achieved_rps', 0):,.0f}/s (new connection)"
                             if fixed else ""))
    return out


def _x(mine, theirs):
    ratio = _ratio(mine, theirs)
    return "-" if ratio is None else "inf" if math.isinf(ratio) else f"{ratio:.2f}x"


def _fmt(value, spec):
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else format(value, spec)


def markdown(run, started_at, extra_notes=()):
    opts = run.options
    lines = [f"# heartbeat-bridge vs Prometheus Pushgateway: {time.strftime('%Y-%m-%d %H:%M', time.localtime(started_at))}",
             "",
             f"- bridge: {run.bridge_source}, default settings except `HEARTBEAT_RATE_LIMIT_BURST=0`"
             " (see bench/README.md); SQLite WAL file in a temp dir",
             f"- peer: {_pushgateway_version()}, default settings; and with "
             "`--push.disable-consistency-check`",
             f"- load: wrk -t{opts.threads} -c{opts.connections}, {opts.duration:g} s per run, "
             "beats spread over all servers, every peer prefilled with all of them",
             f"- machine: {_cpus()} CPUs, Python {platform.python_version()}; load average "
             f"before {_load(run.load_before)}, after {_load(run.load_after)} "
             "(other work shared this machine)",
             "- ratios are bridge / Pushgateway measured in the same run", ""]
    lines += ["## Targets", "", "| target | peer | servers | measured | result |",
              "|---|---|---:|---|---|"]
    for name, peer, n, measured, verdict in targets(run):
        lines.append(f"| {name} | {peer} | {n:,} | {measured} | **{verdict}** |")
    lines += ["", "## Beats", "",
              "| peer | servers | new conn beats/s | p50 ms | p99 ms | kept-alive beats/s | "
              "p50 ms | p99 ms | non-2xx | vs PGW default | vs PGW no-check | CPU us/beat |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in run.rows:
        if "skipped" in row:
            lines.append(f"| {row['peer']} | {row['servers']:,} | skipped: {row['skipped']} "
                         "| | | | | | | | | |")
            continue
        c, k = row["close"], row["keepalive"]
        d, f = _one(run, PG_DEFAULT, row["servers"]), _one(run, PG_FAST, row["servers"])
        lines.append(
            f"| {row['peer']} | {row['servers']:,} | {c['rps']:,.0f} | {c['p50_ms']:.1f} | "
            f"{c['p99_ms']:.1f} | {k['rps']:,.0f} | {k['p50_ms']:.1f} | {k['p99_ms']:.1f} | "
            f"{c['non_2xx'] + k['non_2xx'] + c['socket_errors'] + k['socket_errors']} | "
            f"{_x(c['rps'], d and d['close']['rps'])} / "
            f"{_x(k['rps'], d and d['keepalive']['rps'])} | "
            f"{_x(c['rps'], f and f['close']['rps'])} / "
            f"{_x(k['rps'], f and f['keepalive']['rps'])} | "
            f"{_fmt(c.get('cpu_us_per_beat'), ',.0f')} / {_fmt(k.get('cpu_us_per_beat'), ',.0f')} |")
    lines += ["", "Ratios and CPU: new connection / kept alive. non-2xx counts wrk's status and "
              "socket errors of both runs. CPU us/beat: user + system CPU of the peer's processes "
              "during the run, divided by the beats accepted (less noisy than beats/s on a shared "
              "machine).", "",
              f"## Latency at a fixed rate ({opts.rate_fraction:.0%} of the new-connection maximum)",
              "", "| peer | servers | target /s | achieved /s | p50 ms | p99 ms | errors | "
              "pacing delay ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in _rows(run):
        fr = row["fixed_rate"]
        lines.append(f"| {row['peer']} | {row['servers']:,} | {fr['target_rps']:,.0f} | "
                     f"{fr['achieved_rps']:,.0f} | {fr['p50_ms']:.1f} | {fr['p99_ms']:.1f} | "
                     f"{fr['non_2xx'] + fr['socket_errors']} | {fr['delay_ms']} |")
    lines += ["", "New connection per beat, paced by wrk (each connection waits a fixed delay "
              "after each answer; wrk has no fixed-rate mode, so a stall delays later beats "
              "instead of queueing them: the p99 is a lower bound)."]
    lines += ["", "## /metrics and memory", "",
              "| peer | servers | series seen | plain s | plain MB | gzip s | gzip MB | "
              "RSS after beats MB | RSS after scrapes MB (total / largest process) | prefill+start s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in _rows(run):
        s = row["scrape"]
        lines.append(f"| {row['peer']} | {row['servers']:,} | {s['series']:,} | "
                     f"{s['plain_s']:.3f} | {s['plain_bytes'] / MB:.2f} | {s['gzip_s']:.3f} | "
                     f"{s['gzip_bytes'] / MB:.2f} | {sum(row['rss_after_beats']) / MB:.0f} | "
                     f"{sum(row['rss']) / MB:.0f} / {max(row['rss']) / MB:.0f} | "
                     f"{row['prefill_s']:.1f} |")
    lines += ["", "/metrics times are the median of a few scrapes to the last byte (one when a "
              "scrape takes over 10 s); RSS sums the gunicorn master and workers."]
    lines += _profile_lines(run.profile, _one(run, "bridge-sqlite", run.profile.get("servers")))
    if extra_notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in extra_notes]
    return "\n".join(lines) + "\n"


def _profile_lines(prof, unprofiled_row=None):
    if not prof:
        return []
    if "error" in prof:
        return ["", "## Where a beat's time goes", "", f"profile failed: {prof['error']}"]
    wall, cpu = prof["wall"], prof["cpu"]
    lines = ["", f"## Where a beat's time goes (bridge-sqlite, {prof['servers']:,} servers, "
             "new connection per beat, py-spy over all workers)", "",
             "| part | CPU (GIL held) | CPU us per beat | thread time (wall, waits included) |",
             "|---|---:|---:|---:|"]
    # The CPU cost of a beat from the unprofiled run at the same size when there is one:
    # the profiler perturbs the process it samples.
    per_beat = ((unprofiled_row or {}).get("close", {}).get("cpu_us_per_beat")
                or cpu.get("cpu_us_per_beat") or 0)
    for bucket in wall["shares"]:
        lines.append(f"| {bucket} | {cpu['shares'][bucket]:.1%} | "
                     f"{cpu['shares'][bucket] * per_beat:,.0f} | {wall['shares'][bucket]:.1%} |")
    lines.append(f"| **all** | 100% | {per_beat:,.0f} | 100% |")
    lines += ["", f"Samples: CPU {cpu['busy_samples']:,}, wall {wall['busy_samples']:,} busy "
              f"({wall['idle_samples']:,} idle thread samples left out); throughput while "
              f"profiled {cpu['rps_while_profiled']:,.0f} and {wall['rps_while_profiled']:,.0f} "
              "beats/s (py-spy costs CPU too). CPU us per beat: the bridge's CPU time over the "
              "beats it accepted in the unprofiled new-connection run at this size (else the "
              "profiled one: "
              f"{_fmt(cpu.get('cpu_us_per_beat'), ',.0f')} us), split by the CPU shares (samples that "
              "hold the GIL; C code that releases it, such as SQLite and socket calls, is "
              "under-counted there)."]
    return lines


def plot(run, path):
    """Beats/s against fleet size, one line per peer and connection mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for peer in sorted({r["peer"] for r in _rows(run)}):
        rows = sorted(_rows(run, peer), key=lambda r: r["servers"])
        xs = [r["servers"] for r in rows]
        line, = ax.plot(xs, [max(r["close"]["rps"], 0.1) for r in rows], marker="o",
                        label=f"{peer}, new connection")
        ax.plot(xs, [max(r["keepalive"]["rps"], 0.1) for r in rows], marker="s", linestyle="--",
                color=line.get_color(), label=f"{peer}, kept alive")
    ax.axhline(3000, color="grey", linewidth=0.8, linestyle=":", label="target 3,000 beats/s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    sizes = sorted({r["servers"] for r in _rows(run)})
    ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("servers (fleet size)")
    ax.set_ylabel("beats/s accepted (0 drawn at 0.1)")
    ax.set_title("Beats/s against fleet size (wrk, loopback, 2 CPUs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pushgateway_version():
    try:
        out = subprocess.run(["/usr/bin/prometheus-pushgateway", "--version"],
                             capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).splitlines()[0].replace("pushgateway, version",
                                                                   "Pushgateway")
    except (OSError, IndexError, subprocess.SubprocessError):
        return "Pushgateway (version unknown)"


def _cpus():
    import os
    return os.cpu_count()


def _load(avg):
    return " / ".join(f"{x:.2f}" for x in avg) if avg else "?"
