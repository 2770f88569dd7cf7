"""The bridge's own request metrics: ordinary process metrics, merged across workers.

Under `heartbeat-bridge serve`, PROMETHEUS_MULTIPROC_DIR is set so every gunicorn
worker's counts are summed on each scrape; without it they are per-process.
"""
import time

from flask import g, request
from prometheus_client import Counter, Histogram
from prometheus_client.multiprocess import MultiProcessCollector


def init_app(app, registry, multiproc_dir=None):
    """Count and time every Flask request; return observe(handler, code, seconds) for others."""
    target = None if multiproc_dir else registry
    if multiproc_dir:
        MultiProcessCollector(registry, path=multiproc_dir)
    requests_total = Counter("heartbeat_bridge_http_requests", "HTTP requests answered.",
                             ["handler", "code"], registry=target)
    duration = Histogram("heartbeat_bridge_http_request_duration_seconds",
                         "Time to answer an HTTP request.", ["handler"], registry=target,
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                  1.0, 2.5))

    def observe(handler, code, seconds):
        requests_total.labels(handler, str(code)).inc()
        duration.labels(handler).observe(seconds)

    @app.before_request
    def start_timer():
        g.request_started = time.perf_counter()

    @app.after_request
    def observe_flask(response):
        started = g.get("request_started")
        if started is not None:
            observe(request.url_rule.endpoint if request.url_rule else "unmatched",
                    response.status_code, time.perf_counter() - started)
        return response

    return observe
