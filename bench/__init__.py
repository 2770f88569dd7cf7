"""Benchmarks: the bridge side by side with the Prometheus Pushgateway (`python -m bench`)."""
