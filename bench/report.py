"""Results of a run as markdown (targets with PASS/MISS, then the measurements) and a plot."""
import math
import os
import platform
import subprocess
import time

MB = 1 << 20
PUSHGATEWAY = "pushgateway"
PUSHGATEWAY_FAST = "pushgateway-no-consistency-check"
BEFORE = "bridge-before"


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
        d_mid, f_mid = _one(run, PUSHGATEWAY, mid), _one(run, PUSHGATEWAY_FAST, mid)
        d_large, f_large = _one(run, PUSHGATEWAY, large), _one(run, PUSHGATEWAY_FAST, large)

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
        if peer == BEFORE:
            continue
        for n in sorted({mid, large}):  # issue 14: twice the beats per core of `before`
            mine, old = _one(run, peer, n), _one(run, BEFORE, n)
            for mode, label in (("close", "new connection"), ("keepalive", "kept alive")):
                check(f"beats/s, {label} >= 2x before", n,
                      _ratio(mine[mode]["rps"], old[mode]["rps"]) if mine and old else None,
                      lambda v: v >= 2, "{:.2f}x")
                check(f"CPU per beat, {label} <= 1/2 of before", n,
                      _ratio(old[mode]["cpu_us_per_beat"], mine[mode]["cpu_us_per_beat"])
                      if mine and old else None, lambda v: v >= 2, "{:.2f}x less")
    return out


def _pair(close, keepalive, peer_row):
    """Ratios to a Pushgateway row: new connection / kept alive."""
    if peer_row is None:
        return "- / -"
    return (f"{_x(close['rps'], peer_row['close']['rps'])} / "
            f"{_x(keepalive['rps'], peer_row['keepalive']['rps'])}")


def _x(mine, theirs):
    ratio = _ratio(mine, theirs)
    return "-" if ratio is None else "inf" if math.isinf(ratio) else f"{ratio:.2f}x"


def _fmt(value, spec):
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else format(value, spec)


def _table(header, rows, align):
    """A markdown table: header cells, rows of cells, one alignment mark per column."""
    return (["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def markdown(run, started_at):
    """The whole report: how it ran, the targets, then every measurement."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(started_at))
    return "\n".join([f"# heartbeat-bridge vs Prometheus Pushgateway: {when}", ""]
                     + _header(run) + _targets_section(run) + _before_section(run)
                     + _beats_section(run) + _paced_section(run) + _scraped_section(run)
                     + _scrape_section(run)
                     + _profile_lines(run.profile,
                                      _one(run, "bridge-sqlite", run.profile.get("servers")))
                     ) + "\n"


def _header(run):
    opts = run.options
    return [
        f"- bridge: {run.bridge_source}; default settings but a fleet token and "
        "`HEARTBEAT_RATE_LIMIT_BURST=0` (bench/README.md); SQLite: a WAL file in a temp dir; "
        "PostgreSQL: a fresh schema in the local `test` database",
        *([f"- before: {run.before_source} (the `bridge-before` rows), same settings"]
          if getattr(run, "before_source", "") else []),
        f"- peer: {_pushgateway_version()}, default settings; and with "
        "`--push.disable-consistency-check`",
        f"- load: wrk -t{opts.threads} -c{opts.connections}, {opts.duration:g} s per run, beats "
        "spread over all servers, every peer prefilled with all of them and warmed up with "
        f"{getattr(opts, 'warmup', 0):g} s of unrecorded beats after it started; the whole run "
        "took "
        f"{run.elapsed / 60:.1f} min",
        f"- machine: {os.cpu_count()} CPUs, Python {platform.python_version()}; load average "
        f"(1/5/15 min) before {_load(run.load_before)}, after {_load(run.load_after)}: "
        "other work shared this machine",
        "- ratios are bridge / Pushgateway, measured in the same run", ""]


def _targets_section(run):
    rows = [(name, peer, f"{n:,}", measured, f"**{verdict}**")
            for name, peer, n, measured, verdict in targets(run)]
    return ["## Targets", ""] + _table(("target", "peer", "servers", "measured", "result"),
                                       rows, ("---", "---", "---:", "---", "---")) + [""]


def _beats_section(run):
    rows = []
    for row in run.rows:
        if "skipped" in row:
            rows.append((row["peer"], f"{row['servers']:,}", f"skipped: {row['skipped']}")
                        + ("",) * 9)
            continue
        c, k = row["close"], row["keepalive"]
        d, f = _one(run, PUSHGATEWAY, row["servers"]), _one(run, PUSHGATEWAY_FAST, row["servers"])
        errors = c["non_2xx"] + k["non_2xx"] + c["socket_errors"] + k["socket_errors"]
        rows.append((
            row["peer"], f"{row['servers']:,}", f"{c['rps']:,.0f}", f"{c['p50_ms']:.1f}",
            f"{c['p99_ms']:.1f}", f"{k['rps']:,.0f}", f"{k['p50_ms']:.1f}",
            f"{k['p99_ms']:.1f}", errors,
            _pair(c, k, d), _pair(c, k, f),
            f"{_fmt(c.get('cpu_us_per_beat'), ',.0f')} / "
            f"{_fmt(k.get('cpu_us_per_beat'), ',.0f')}"))
    header = ("peer", "servers", "new conn beats/s", "p50 ms", "p99 ms", "kept-alive beats/s",
              "p50 ms", "p99 ms", "non-2xx", "vs PGW default", "vs PGW no-check", "CPU us/beat")
    return ["## Beats", ""] + _table(header, rows, ("---",) + ("---:",) * 11) + [
        "", "Ratios and CPU: new connection / kept alive. non-2xx counts wrk's status and "
        "socket errors of both runs. CPU us/beat: user + system CPU of the peer's processes "
        "during the run over the beats accepted (steadier than beats/s on a shared machine); "
        "for bridge-postgres it leaves out PostgreSQL's own CPU.",
        ""]


def _before_section(run):
    """bridge-sqlite against bridge-before, size by size: the change this run measures."""
    rows = []
    for n in sorted({r["servers"] for r in _rows(run, BEFORE)}):
        old, new = _one(run, BEFORE, n), _one(run, "bridge-sqlite", n)
        fast = _one(run, PUSHGATEWAY_FAST, n)
        if not (old and new):
            continue
        cells = [f"{n:,}"]
        for mode in ("close", "keepalive"):
            cells += [f"{old[mode]['rps']:,.0f} -> {new[mode]['rps']:,.0f}",
                      _x(new[mode]["rps"], old[mode]["rps"]),
                      f"{_fmt(old[mode]['cpu_us_per_beat'], ',.0f')} -> "
                      f"{_fmt(new[mode]['cpu_us_per_beat'], ',.0f')}"]
        cells.append(f"{old['fixed_rate']['p99_ms']:.1f} -> {new['fixed_rate']['p99_ms']:.1f}")
        cells.append(f"{_pair(old['close'], old['keepalive'], fast)} -> "
                     f"{_pair(new['close'], new['keepalive'], fast)}")
        rows.append(cells)
    if not rows:
        return []
    header = ("servers", "new conn beats/s", "ratio", "CPU us/beat", "kept-alive beats/s",
              "ratio", "CPU us/beat", "p99 ms at 80% of max", "vs PGW no-check (new / kept)")
    return ["## Before and after (bridge-before -> bridge-sqlite)", ""] + _table(
        header, rows, ("---:",) * 9) + [
        "", "Same run, same machine, same wrk load; before -> after. p99 at 80%: each "
        "bridge paced at 80% of its own new-connection maximum.", ""]


def _scraped_section(run):
    rows = []
    for row in _rows(run):
        sc = row.get("scraped")
        if not sc:
            continue
        rows.append((row["peer"], f"{row['servers']:,}", f"{sc['rps']:,.0f}",
                     f"{row['fixed_rate']['p99_ms']:.1f}", f"{sc['p50_ms']:.1f}",
                     f"{sc['p99_ms']:.1f}", f"{sc['max_ms']:.1f}",
                     sc["non_2xx"] + sc["socket_errors"], sc["scrapes"],
                     _fmt(sc["scrape_median_s"], ".2f"), _fmt(sc["scrape_max_s"], ".2f")))
    if not rows:
        return []
    header = ("peer", "servers", "beats/s", "p99 ms unscraped", "p50 ms", "p99 ms", "max ms",
              "errors", "scrapes", "scrape median s", "scrape max s")
    return ["## Beats while /metrics is scraped every second", ""] + _table(
        header, rows, ("---",) + ("---:",) * 10) + [
        "", "The paced run of the section above (new connection per beat, same pacing "
        "delay) again, while a client GETs /metrics (gzip) once a second, or back to back "
        "when a scrape takes longer.", ""]


def _paced_section(run):
    rows = []
    for row in _rows(run):
        fr = row["fixed_rate"]
        rows.append((row["peer"], f"{row['servers']:,}", f"{fr['target_rps']:,.0f}",
                     f"{fr['achieved_rps']:,.0f}", f"{fr['p50_ms']:.1f}", f"{fr['p99_ms']:.1f}",
                     fr["non_2xx"] + fr["socket_errors"], fr["delay_ms"]))
    header = ("peer", "servers", "target /s", "achieved /s", "p50 ms", "p99 ms", "errors",
              "pacing delay ms")
    return ([f"## Latency at a fixed rate ({run.options.rate_fraction:.0%} of the "
             "new-connection maximum)", ""]
            + _table(header, rows, ("---",) + ("---:",) * 7)
            + ["", "New connection per beat, paced by wrk: each connection waits a fixed delay "
               "after each answer (wrk has no fixed-rate mode), so a stall delays later beats "
               "instead of queueing them, and the p99 is a lower bound.", ""])


def _scrape_section(run):
    rows = []
    for row in _rows(run):
        s = row.get("scrape")
        if s is None:
            rows.append((row["peer"], f"{row['servers']:,}", "no /metrics", "", "", "", "",
                         f"{sum(row['rss_after_beats']) / MB:.0f}",
                         f"{sum(row['rss']) / MB:.0f} / {max(row['rss']) / MB:.0f}",
                         f"{row['prefill_s']:.1f}"))
            continue
        rows.append((row["peer"], f"{row['servers']:,}", f"{s['series']:,}",
                     f"{s['plain_s']:.3f}", f"{s['plain_bytes'] / MB:.2f}", f"{s['gzip_s']:.3f}",
                     f"{s['gzip_bytes'] / MB:.2f}", f"{sum(row['rss_after_beats']) / MB:.0f}",
                     f"{sum(row['rss']) / MB:.0f} / {max(row['rss']) / MB:.0f}",
                     f"{row['prefill_s']:.1f}"))
    header = ("peer", "servers", "series seen", "plain s", "plain MB", "gzip s", "gzip MB",
              "RSS after beats MB", "RSS after scrapes MB (total / largest process)",
              "prefill+start s")
    return ["## /metrics and memory", ""] + _table(header, rows, ("---",) + ("---:",) * 9) + [
        "", "/metrics: median time to the last byte of a few scrapes (one when a scrape takes "
        "over 10 s), once the peer is idle; series seen counts heartbeat_last_seen_seconds. "
        "RSS sums the gunicorn master, its workers and, once a scrape has started them, their "
        "render processes.", "",
        "`gunicorn-floor` is a reference, not a peer: gunicorn with the bridge's own "
        "gunicorn.conf.py serving a WSGI app that does nothing (bench/floor_app.py). Its "
        "beats/s and CPU per request are the ceiling for any beat endpoint under gunicorn "
        "on this machine.", ""]


def _profile_lines(prof, unprofiled_row=None):
    if not prof:
        return []
    if "error" in prof:
        return ["", "## Where a beat's time goes", "", f"profile failed: {prof['error']}"]
    wall, cpu = prof["wall"], prof["cpu"]
    # The CPU cost of a beat from the unprofiled run at the same size when there is one:
    # the profiler perturbs the process it samples.
    per_beat = ((unprofiled_row or {}).get("close", {}).get("cpu_us_per_beat")
                or cpu.get("cpu_us_per_beat") or 0)
    rows = [(bucket, f"{cpu['shares'][bucket]:.1%}", f"{cpu['shares'][bucket] * per_beat:,.0f}",
             f"{wall['shares'][bucket]:.1%}") for bucket in wall["shares"]]
    rows.append(("**all**", "100%", f"{per_beat:,.0f}", "100%"))
    header = ("part", "CPU (GIL held)", "CPU us per beat", "thread time (wall, waits included)")
    return (["", f"## Where a beat's time goes (bridge-sqlite, {prof['servers']:,} servers, "
             "new connection per beat, py-spy over all workers)", ""]
            + _table(header, rows, ("---", "---:", "---:", "---:"))
            + ["", f"Samples: CPU {cpu['busy_samples']:,}, wall {wall['busy_samples']:,} busy "
               f"({wall['idle_samples']:,} idle thread samples left out). Throughput while "
               f"profiled: {cpu['rps_while_profiled']:,.0f} and "
               f"{wall['rps_while_profiled']:,.0f} beats/s (py-spy costs CPU too). CPU us per "
               "beat: the bridge's CPU time per accepted beat in the unprofiled new-connection "
               "run at this size (in the profiled run: "
               f"{_fmt(cpu.get('cpu_us_per_beat'), ',.0f')} us), split by the CPU shares. "
               "Those count samples holding the GIL, so C code that releases it (SQLite, "
               "socket calls) is under-counted there; the wall view shows waits."])


def plot(run, path):
    """Beats/s against fleet size, one line per peer and connection mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for peer in sorted({r["peer"] for r in _rows(run)}):
        rows = sorted(_rows(run, peer), key=lambda r: r["servers"])
        xs = [r["servers"] for r in rows]
        style = {"color": "grey"} if peer == "gunicorn-floor" else {}
        label = f"{peer} (reference)" if peer == "gunicorn-floor" else peer
        line, = ax.plot(xs, [max(r["close"]["rps"], 0.1) for r in rows], marker="o",
                        label=f"{label}, new connection", **style)
        ax.plot(xs, [max(r["keepalive"]["rps"], 0.1) for r in rows], marker="s", linestyle="--",
                color=line.get_color(), label=f"{label}, kept alive")
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


def _load(avg):
    return " / ".join(f"{x:.2f}" for x in avg) if avg else "?"
