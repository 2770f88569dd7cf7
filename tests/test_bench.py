"""`python -m bench --quick` runs end to end and writes its report; speed is not asserted."""
import importlib.util
import subprocess
import sys

import pytest

from tests.tools import ROOT, require_binary

pytestmark = pytest.mark.live  # every test here starts a real program

BEAT_COLUMNS = ("| peer | servers | new conn beats/s | p50 ms | p99 ms | kept-alive beats/s |")
SCRAPE_COLUMNS = ("| peer | servers | series seen | plain s | plain MB | gzip s | gzip MB |")


def test_quick_bench_writes_a_report_with_every_peer_and_target(tmp_path):
    require_binary("wrk")
    require_binary("prometheus-pushgateway")
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    reports = list(tmp_path.glob("bench-*.md"))
    assert len(reports) == 1
    text = reports[0].read_text()
    assert text in proc.stdout  # printed as well as written
    assert BEAT_COLUMNS in text and SCRAPE_COLUMNS in text
    for peer in ("bridge-sqlite", "bridge-before", "pushgateway",
                 "pushgateway-no-consistency-check"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {peer} | 100 |"))
        assert "skipped" not in row, row
    # PostgreSQL is either measured or says why not.
    assert "| bridge-postgres | 100 |" in text
    targets = [line for line in text.split("## Targets")[1].split("##")[0].splitlines()
               if line.startswith("| ") and "bridge-sqlite" in line]
    assert len(targets) == 15  # 11, and beats/s and CPU per beat against bridge-before
    # One size: "the lead holds at the larger size" cannot be judged (n/a); the rest can.
    assert sum(line.endswith("**n/a** |") for line in targets) == 2, targets
    assert sum(line.endswith(("**PASS** |", "**MISS** |")) for line in targets) == 13, targets
    before = text.split("## Before and after")[1].split("##")[0]
    assert "| 100 |" in before
    scraped = text.split("## Beats while /metrics is scraped every second")[1].split("##")[0]
    assert "| bridge-sqlite | 100 |" in scraped and "| bridge-before | 100 |" in scraped
    # The /metrics check saw every prefilled server on every peer.
    scrape_rows = text.split(SCRAPE_COLUMNS)[1].splitlines()[2:5]
    assert all(row.split("|")[3].strip() == "100" for row in scrape_rows), scrape_rows
    assert importlib.util.find_spec("matplotlib"), "matplotlib is in the test extra"
    assert list(tmp_path.glob("bench-*.png"))
