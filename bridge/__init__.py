"""heartbeat-bridge: HTTP heartbeats from a fleet of servers, exposed to Prometheus."""
__version__ = "0.2.0"
