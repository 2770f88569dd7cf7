"""Since when a bridge has heard beats, and how long it heard none: the time a bridge was
down or could not reach its store is no server's silence (docs/alerting.md)."""
from bridge.asgi import BridgeASGI
from bridge.state import build_state
from bridge.store import open_store
from tests.asgi_client import ServedApp
from tests.test_replicas import TcpProxy
from tests.tools import (
    FLEET_TOKEN,
    POSTGRES_BASE,
    FakeClock,
    make_settings,
    sample_map,
    value,
    wait_until,
)

AUTH = {"Authorization": f"Bearer {FLEET_TOKEN}"}


def gauges(client):
    s = sample_map(client.get("/metrics").get_data(as_text=True))
    return (value(s, "heartbeat_bridge_serving_since_seconds"),
            value(s, "heartbeat_bridge_unheard_seconds"))


def test_serve_hands_its_start_and_the_last_beat_it_found_to_every_worker(app_factory, clock):
    """`heartbeat-bridge serve` stamps HEARTBEAT_STARTED_AT and HEARTBEAT_HEARD_UNTIL once."""
    client = app_factory(started_at=clock.now - 20, heard_until=clock.now - 320).test_client()
    assert gauges(client) == (clock.now - 20, 300)
    clock.advance(60)
    assert client.post("/api/heartbeat/web-1/", headers=AUTH).status_code == 200
    assert gauges(client) == (clock.now - 80, 300)  # a stretch, not a moment


def test_a_bridge_started_on_an_old_store_reports_the_gap_since_its_last_beat(app_factory,
                                                                              clock, store):
    """In process (no `serve`): the app's start, and the latest beat the store held then."""
    client = app_factory().test_client()
    assert gauges(client) == (clock.now, 0)  # nothing heard ever: nothing to leave out
    assert client.post("/api/heartbeat/web-1/", headers=AUTH).status_code == 200
    clock.advance(600)  # the bridge is gone for 10 minutes; a new one starts on the store
    started = clock.now
    client = app_factory().test_client()
    clock.advance(5)
    assert gauges(client) == (started, 600)


def test_a_store_outage_starts_a_new_stretch_after_it(pg_schema):
    _, schema, _ = pg_schema
    proxy = TcpProxy(5432).start()
    url = POSTGRES_BASE.replace(":5432/", f":{proxy.port}/") + \
        f"?options=-csearch_path%3D{schema}"
    clock = FakeClock()
    store = open_store(url, clock=clock, pool_size=1)
    app = ServedApp(BridgeASGI(build_state(make_settings(url), store=store, clock=clock,
                                           rejection_flush_every=0)))
    try:
        client = app.test_client()
        started = clock.now
        clock.advance(5)
        assert client.post("/api/heartbeat/web-1/", headers=AUTH).status_code == 200
        last_beat = clock.now
        clock.advance(5)
        assert gauges(client) == (started, 0)

        proxy.cut()
        clock.advance(100)
        assert client.get("/metrics").status_code == 503  # no beat is heard either
        proxy.restore()
        clock.advance(20)
        wait_until(lambda: client.get("/metrics").status_code == 200, timeout=20,
                   interval=0.2, what="/metrics after the outage")
        since, unheard = gauges(client)
        assert since == clock.now  # the first snapshot after the outage
        assert unheard == clock.now - last_beat  # back to the last beat read before it
    finally:
        app.stop()
        proxy.stop()
        store.close()
