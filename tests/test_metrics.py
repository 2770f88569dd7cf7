"""Every metric, asserted through real /metrics output (text, OpenMetrics, gzip, promtool)."""
import gzip
import platform
import subprocess

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

from bridge import __version__
from tests.tools import ADMIN_TOKEN, FLEET_TOKEN, require_binary, sample_map, value

AUTH = {"Authorization": f"Bearer {FLEET_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def scrape(client, **kwargs):
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200
    return response


@pytest.fixture
def full_client(app_factory):
    return app_factory(metric_set="full").test_client()


def make_fleet(client, clock):
    """web-1 beat twice with every field; db-1 registered with labels, paused, never seen."""
    start = clock.now
    client.post("/api/heartbeat/web-1/", headers=AUTH, json={
        "interval": 15, "boot_time": start - 3600, "sent_at": start + 1.5,
        "hostname": "web-1.example.org", "agent_version": "0.1.0", "seq": 0})
    clock.advance(15)
    client.post("/api/heartbeat/web-1/", headers=AUTH, json={"interval": 15, "seq": 1})
    client.post("/api/servers", headers=ADMIN, json={
        "server_id": "db-1", "interval": 60, "labels": {"team": "db", "env": "prod"}})
    client.post("/api/servers/db-1/pause", headers=ADMIN, json={"for": "2h",
                                                                "reason": "disk swap"})
    client.post("/api/heartbeat/bad id/", headers=AUTH)  # one rejection
    return start


@pytest.fixture
def fleet(client, clock):
    return make_fleet(client, clock)


def per_server_series(samples, server_id):
    return sorted(name for name, labels in samples if dict(labels).get("server_id") == server_id)


def test_the_lean_set_has_last_seen_and_interval_and_only_what_a_state_needs(client, clock,
                                                                             fleet):
    s = sample_map(scrape(client).get_data(as_text=True))
    web = {"server_id": "web-1"}
    db = {"server_id": "db-1", "team": "db", "env": "prod"}
    assert value(s, "heartbeat_last_seen_seconds", **web) == fleet + 15
    assert value(s, "heartbeat_interval_seconds", **web) == 15
    # booted an hour ago, clock 1.5 s ahead, not excused: nothing else to say
    assert per_server_series(s, "web-1") == ["heartbeat_interval_seconds",
                                             "heartbeat_last_seen_seconds"]
    # paused for 2 hours (never seen, but the pause excuses it: no registration time)
    assert value(s, "heartbeat_excused_until_seconds", **db) == clock.now + 7200
    assert value(s, "heartbeat_maintenance_info", server_id="db-1", reason="disk swap") == 1
    assert per_server_series(s, "db-1") == [
        "heartbeat_excused_until_seconds", "heartbeat_interval_seconds",
        "heartbeat_last_seen_seconds", "heartbeat_maintenance_info"]


def test_the_lean_set_shows_a_reboot_a_skew_and_a_registration_while_they_matter(client, clock):
    start = clock.now
    client.post("/api/heartbeat/web-1/", headers=AUTH, json={
        "boot_time": start - 120, "sent_at": start - 75})
    client.post("/api/servers", headers=ADMIN, json={"server_id": "new-1", "labels": {"team": "x"}})
    s = sample_map(scrape(client).get_data(as_text=True))
    assert value(s, "heartbeat_boot_time_seconds", server_id="web-1") == start - 120
    assert value(s, "heartbeat_clock_skew_seconds", server_id="web-1") == pytest.approx(-75)
    assert value(s, "heartbeat_registered_timestamp_seconds", server_id="new-1",
                 team="x") == start
    assert len(per_server_series(s, "web-1")) == 4
    clock.advance(900)  # the boot is 17 minutes old: no longer exported
    client.post("/api/heartbeat/web-1/", headers=AUTH, json={"sent_at": clock.now + 0.2})
    client.post("/api/heartbeat/new-1/", headers=AUTH)
    s = sample_map(scrape(client).get_data(as_text=True))
    assert per_server_series(s, "web-1") == ["heartbeat_interval_seconds",
                                             "heartbeat_last_seen_seconds"]
    assert per_server_series(s, "new-1") == ["heartbeat_interval_seconds",
                                             "heartbeat_last_seen_seconds"]


def test_retired_and_away_servers_are_excused_until_their_end(client, clock):
    for server_id in ("gone-1", "away-1"):
        client.post(f"/api/heartbeat/{server_id}/", headers=AUTH)
    client.post("/api/servers/gone-1/retire", headers=ADMIN)
    client.post("/api/heartbeat/away-1/goodbye", headers=AUTH, json={"back_within": "1h"})
    s = sample_map(scrape(client).get_data(as_text=True))
    assert value(s, "heartbeat_excused_until_seconds", server_id="gone-1") == float("inf")
    assert value(s, "heartbeat_excused_until_seconds", server_id="away-1") == clock.now + 3600
    clock.advance(3601)
    s = sample_map(scrape(client).get_data(as_text=True))
    assert ("heartbeat_excused_until_seconds", (("server_id", "away-1"),)) not in s


def test_every_full_set_metric_has_its_documented_value(full_client, clock):
    fleet = make_fleet(full_client, clock)
    s = sample_map(scrape(full_client).get_data(as_text=True))
    web = {"server_id": "web-1"}
    db = {"server_id": "db-1", "team": "db", "env": "prod"}
    assert value(s, "heartbeat_last_seen_seconds", **web) == fleet + 15
    assert value(s, "heartbeat_interval_seconds", **web) == 15
    assert value(s, "heartbeat_beats_total", **web) == 2
    assert value(s, "heartbeat_paused", **web) == 0
    assert value(s, "heartbeat_maintenance_until_seconds", **web) == 0
    assert value(s, "heartbeat_registered_timestamp_seconds", **web) == fleet
    assert value(s, "heartbeat_boot_time_seconds", **web) == fleet - 3600
    assert value(s, "heartbeat_clock_skew_seconds", **web) == pytest.approx(1.5)
    assert value(s, "heartbeat_expected_back_seconds", **web) == 0
    assert value(s, "heartbeat_retired", **web) == 0
    assert value(s, "heartbeat_agent_info", server_id="web-1", hostname="web-1.example.org",
                 agent_version="0.1.0") == 1
    assert len(per_server_series(s, "web-1")) == 11
    # registered, labelled, paused, never seen
    assert value(s, "heartbeat_last_seen_seconds", **db) == 0
    assert value(s, "heartbeat_interval_seconds", **db) == 60
    assert value(s, "heartbeat_beats_total", **db) == 0
    assert value(s, "heartbeat_paused", **db) == 1
    assert value(s, "heartbeat_maintenance_until_seconds", **db) == clock.now + 7200
    assert value(s, "heartbeat_excused_until_seconds", **db) == clock.now + 7200
    assert value(s, "heartbeat_agent_info", server_id="db-1", hostname="", agent_version="") == 1
    assert ("heartbeat_boot_time_seconds", tuple(sorted(db.items()))) not in s


def test_serving_since_is_exported_on_the_store_clock(client, clock, fleet):
    s = sample_map(scrape(client).get_data(as_text=True))
    assert value(s, "heartbeat_bridge_serving_since_seconds") <= clock.now
    since = value(s, "heartbeat_bridge_serving_since_seconds")
    clock.advance(100)
    s = sample_map(scrape(client).get_data(as_text=True))
    assert value(s, "heartbeat_bridge_serving_since_seconds") == since


def test_bridge_level_metrics(client, fleet):
    s = sample_map(scrape(client).get_data(as_text=True))
    assert value(s, "heartbeat_registered_servers") == 2
    assert value(s, "heartbeat_paused_servers") == 1
    assert value(s, "heartbeat_max_servers") == 100000
    assert value(s, "heartbeat_rejected_total", reason="invalid_server_id") == 1
    assert value(s, "heartbeat_store_up") == 1
    assert 0 <= value(s, "heartbeat_scrape_duration_seconds") < 5
    assert value(s, "heartbeat_bridge_build_info", version=__version__,
                 python_version=platform.python_version()) == 1
    assert value(s, "heartbeat_bridge_http_requests_total", handler="beat", code="200") == 2


def test_bridge_time_is_the_clock_that_stamps_beats_read_at_each_scrape(client, clock, fleet):
    # The fake clock is far from the machine's: the gauge must follow the store's clock.
    s = sample_map(scrape(client).get_data(as_text=True))
    assert value(s, "heartbeat_bridge_time_seconds") == clock.now
    clock.advance(95)
    for accept in ("text/plain", "application/openmetrics-text; version=1.0.0"):
        text = scrape(client, headers={"Accept": accept}).get_data(as_text=True)
        s = sample_map(text, om_parse if "openmetrics" in accept else
                       text_string_to_metric_families)
        # silence on one clock: bridge time minus the last beat, both stamped by the store
        silence = (value(s, "heartbeat_bridge_time_seconds")
                   - value(s, "heartbeat_last_seen_seconds", server_id="web-1"))
        assert silence == 95
    assert "# TYPE heartbeat_bridge_time_seconds gauge" in scrape(client).get_data(as_text=True)


def test_a_timed_pause_ends_by_itself(full_client, client, clock):
    make_fleet(full_client, clock)
    clock.advance(7201)
    db = {"server_id": "db-1", "team": "db", "env": "prod"}
    s = sample_map(scrape(full_client).get_data(as_text=True))
    assert value(s, "heartbeat_paused", **db) == 0
    assert value(s, "heartbeat_maintenance_until_seconds", **db) == 0
    assert value(s, "heartbeat_paused_servers") == 0
    s = sample_map(scrape(client).get_data(as_text=True))  # lean: the never-seen grace starts
    assert per_server_series(s, "db-1") == [
        "heartbeat_interval_seconds", "heartbeat_last_seen_seconds",
        "heartbeat_registered_timestamp_seconds"]


def test_removed_servers_disappear_at_once(client, fleet):
    assert client.delete("/api/servers/web-1", headers=ADMIN).status_code == 204
    text = scrape(client).get_data(as_text=True)
    assert 'server_id="web-1"' not in text
    assert 'server_id="db-1"' in text


def test_relabelled_servers_change_at_once(client, fleet):
    client.patch("/api/servers/db-1", headers=ADMIN, json={"labels": {"team": "storage"}})
    s = sample_map(scrape(client).get_data(as_text=True))
    assert value(s, "heartbeat_excused_until_seconds", server_id="db-1", team="storage") > 0
    assert not any(dict(k[1]).get("team") == "db" for k in s)


def test_openmetrics_is_negotiated(client, fleet):
    response = scrape(client, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.content_type.startswith("application/openmetrics-text")
    text = response.get_data(as_text=True)
    assert text.endswith("# EOF\n")
    s = sample_map(text, om_parse)
    assert value(s, "heartbeat_last_seen_seconds", server_id="web-1") == fleet + 15


def test_gzip_is_served_when_asked(client, fleet):
    response = scrape(client, headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    assert b"heartbeat_last_seen_seconds" in gzip.decompress(response.get_data())


def test_samples_carry_no_timestamps(client, fleet):
    for family in text_string_to_metric_families(scrape(client).get_data(as_text=True)):
        assert all(s.timestamp is None for s in family.samples)


NASTY_LABELS = {"team": 'quote " backslash \\ newline-free', "env": "ünïcödé ✓", "site": ""}


@pytest.mark.live
def test_values_that_need_escaping_come_out_valid(full_client, tmp_path):
    require_binary("promtool")
    client = full_client
    assert client.post("/api/servers", headers=ADMIN, json={
        "server_id": "a.b_c-D9", "labels": NASTY_LABELS}).status_code == 201
    client.post("/api/heartbeat/a.b_c-D9/", headers=AUTH, json={
        "hostname": 'host"with\\quotes', "agent_version": "1.0 {beta}"})
    text = scrape(client).get_data(as_text=True)
    s = sample_map(text)
    assert value(s, "heartbeat_beats_total", server_id="a.b_c-D9", **NASTY_LABELS) == 1
    assert value(s, "heartbeat_agent_info", server_id="a.b_c-D9", hostname='host"with\\quotes',
                 agent_version="1.0 {beta}") == 1
    result = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_metrics_refuses_other_methods(client):
    assert client.post("/metrics").status_code == 405
