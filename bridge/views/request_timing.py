"""Every Flask request counted and timed into the bridge's request metrics."""
import time

from flask import Flask, Response, g, request

from bridge.http_metrics import Observe


def init_app(app: Flask, observe: Observe) -> None:
    """Time each request from before_request to after_request, by its endpoint's name."""

    @app.before_request
    def start_timer() -> None:
        g.request_started = time.perf_counter()

    @app.after_request
    def observe_flask(response: Response) -> Response:
        started = g.get("request_started")
        if started is not None:
            observe(request.url_rule.endpoint if request.url_rule else "unmatched",
                    response.status_code, time.perf_counter() - started)
        return response
