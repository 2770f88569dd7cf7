"""Text a host or an operator sends that reads differently from what it is, against a live
bridge (gunicorn): durations in other scripts' digits or with a newline, and format
characters (bidi overrides, zero-width characters) in host text fields. Each is refused
with 422 and changes nothing."""
import pytest
import requests

from tests.tools import ADMIN_TOKEN, FLEET_TOKEN, Bridge

pytestmark = [pytest.mark.slow, pytest.mark.live]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Arabic-Indic three, Devanagari one, fullwidth two, a trailing newline, a space
BAD_DURATIONS = ["\u0663h", "\u0967d", "\uff12h", "1h\n", "1h ", "\n1h"]
# right-to-left override, first strong isolate, zero-width space and joiner, byte order mark,
# soft hyphen, Arabic letter mark
FORMAT_CHARACTERS = ["\u202e", "\u2068", "\u200b", "\u200d", "\ufeff", "\u00ad", "\u061c"]


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    db = tmp_path_factory.mktemp("input") / "bridge.db"
    started = Bridge(f"sqlite:///{db}", HEARTBEAT_TOKEN=FLEET_TOKEN,
                     HEARTBEAT_ADMIN_TOKEN=ADMIN_TOKEN, HEARTBEAT_RATE_LIMIT_BURST="0").start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def own(bridge):
    """(server id, its own token), enrolled."""
    token = bridge.beat("host-1", FLEET_TOKEN).json()["token"]
    assert bridge.beat("host-1", token).status_code == 200
    return "host-1", token


def server(bridge, server_id):
    return requests.get(f"{bridge.url}/api/servers/{server_id}", headers=ADMIN,
                        timeout=5).json()["server"]


def post(bridge, path, token, body):
    return requests.post(bridge.url + path, json=body, timeout=5,
                         headers={"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize("duration", BAD_DURATIONS, ids=ascii)
def test_durations_take_ascii_digits_only(bridge, own, duration):
    server_id, token = own
    before = server(bridge, server_id)
    for path, body, credential in [
            (f"/api/heartbeat/{server_id}/maintenance", {"for": duration}, token),
            (f"/api/heartbeat/{server_id}/goodbye", {"back_within": duration}, token),
            (f"/api/servers/{server_id}/pause", {"for": duration}, ADMIN_TOKEN),
            (f"/api/servers/{server_id}/token", {"keep_previous_for": duration}, ADMIN_TOKEN)]:
        response = post(bridge, path, credential, body)
        assert (response.status_code, response.json()["error"]) == (422, "invalid_field"), path
    assert server(bridge, server_id) == before
    assert post(bridge, f"/api/servers/{server_id}/pause", ADMIN_TOKEN,
                {"for": "1h"}).status_code == 200  # the ASCII spelling is taken
    post(bridge, f"/api/servers/{server_id}/resume", ADMIN_TOKEN, None)


@pytest.mark.parametrize("character", FORMAT_CHARACTERS, ids=ascii)
def test_host_text_fields_refuse_format_characters(bridge, own, character):
    server_id, token = own
    before = server(bridge, server_id)
    text = f"web{character}1"
    for path, body, credential in [
            (f"/api/heartbeat/{server_id}/", {"hostname": text}, token),
            (f"/api/heartbeat/{server_id}/", {"agent_version": text}, token),
            (f"/api/heartbeat/{server_id}/maintenance", {"for": "1h", "reason": text}, token),
            (f"/api/servers/{server_id}/pause", {"for": "1h", "reason": text}, ADMIN_TOKEN)]:
        response = post(bridge, path, credential, body)
        assert (response.status_code, response.json()["error"]) == (422, "invalid_field"), path
    assert server(bridge, server_id) == before
    accepted = post(bridge, f"/api/heartbeat/{server_id}/", token, {"hostname": "web\u00e91"})
    assert accepted.status_code == 200  # other non-ASCII text is fine
