"""`/metrics` as a scraper sees it: time to the last byte and size, plain and gzip."""
import statistics
import time

import requests


def scrape_once(url, gzip):
    """(seconds, bytes on the wire, heartbeat_last_seen_seconds series) for one GET /metrics."""
    headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
    started = time.perf_counter()
    with requests.get(url + "/metrics", headers=headers, stream=True, timeout=120) as response:
        response.raise_for_status()
        wire = response.raw.read(decode_content=False)
        elapsed = time.perf_counter() - started
        if gzip and response.headers.get("Content-Encoding") != "gzip":
            raise RuntimeError(f"{url}/metrics ignored Accept-Encoding: gzip")
    text = wire
    if gzip:
        import zlib
        text = zlib.decompress(wire, 16 + zlib.MAX_WBITS)
    series = text.count(b"\nheartbeat_last_seen_seconds{")
    return elapsed, len(wire), series


def scrape(url, repeats=3, slow_s=10.0):
    """Median time of a few scrapes each way (one only when a scrape is very slow)."""
    out = {}
    for mode, gzip in (("plain", False), ("gzip", True)):
        runs = []
        for _ in range(repeats):
            runs.append(scrape_once(url, gzip))
            if runs[-1][0] > slow_s:
                break
        out[f"{mode}_s"] = statistics.median(r[0] for r in runs)
        out[f"{mode}_bytes"] = runs[-1][1]
        out["series"] = runs[-1][2]
    return out
