"""Who may say what, against live bridges under gunicorn: the threat model in docs/security.md,
row by row, the attacks a host holding the fleet token tried, the agent enrolling itself in
every mode, and two PostgreSQL replicas sharing one enrolment."""
import os
import stat
import subprocess
import sys

import pytest
import requests

from tests.tools import ADMIN_TOKEN, FLEET_TOKEN, ROOT, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.live]
STATUS_TOKEN = "status-token-0123456789"
AGENT = ROOT / "agent" / "heartbeat_agent.py"


def call(bridge, method, path, token=None, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(method, bridge.url + path, headers=headers, timeout=10, **kwargs)


def enrol(bridge, server_id):
    """A host's first beat with the fleet token, then one with the token it was issued."""
    token = call(bridge, "POST", f"/api/heartbeat/{server_id}/", FLEET_TOKEN).json()["token"]
    assert call(bridge, "POST", f"/api/heartbeat/{server_id}/", token).status_code == 200
    return token


def test_each_credential_can_do_what_the_threat_model_says_and_nothing_more(live_bridge):
    bridge = live_bridge(HEARTBEAT_STATUS_TOKEN=STATUS_TOKEN)
    own = enrol(bridge, "web-1")
    enrol(bridge, "web-2")
    beat, goodbye, maintenance = ("/api/heartbeat/{}/", "/api/heartbeat/{}/goodbye",
                                  "/api/heartbeat/{}/maintenance")
    rows = [  # (credential, method, path, body, expected status)
        # the fleet token: enrols a new id, and nothing for an enrolled one
        (FLEET_TOKEN, "POST", beat.format("new-1"), None, 200),
        (FLEET_TOKEN, "POST", goodbye.format("new-1"), {"retire": True}, 403),
        (FLEET_TOKEN, "POST", beat.format("web-2"), None, 401),
        (FLEET_TOKEN, "POST", goodbye.format("web-2"), {"retire": True}, 401),
        (FLEET_TOKEN, "POST", maintenance.format("web-2"), {"for": "1h"}, 401),
        (FLEET_TOKEN, "DELETE", maintenance.format("web-2"), None, 401),
        (FLEET_TOKEN, "GET", "/api/servers", None, 401),
        (FLEET_TOKEN, "GET", "/api/status", None, 401),
        # a server's own token: its own server, bounded
        (own, "POST", beat.format("web-1"), {"interval": 30}, 200),
        (own, "POST", maintenance.format("web-1"), {"for": "2h"}, 200),
        (own, "POST", maintenance.format("web-1"), {"for": "30d"}, 422),
        (own, "DELETE", maintenance.format("web-1"), None, 200),
        (own, "POST", beat.format("web-1"), {"interval": 86400}, 422),
        (own, "POST", beat.format("web-2"), None, 401),
        (own, "POST", goodbye.format("web-2"), None, 401),
        (own, "GET", "/api/servers", None, 401),
        (own, "GET", "/api/status", None, 401),
        # the status token reads
        (STATUS_TOKEN, "GET", "/api/status", None, 200),
        (STATUS_TOKEN, "POST", beat.format("web-1"), None, 401),
        (STATUS_TOKEN, "GET", "/api/servers", None, 401),
        # the admin token manages, and is no host
        (ADMIN_TOKEN, "GET", "/api/servers", None, 200),
        (ADMIN_TOKEN, "POST", "/api/servers/web-2/pause", {"for": "1h"}, 200),
        (ADMIN_TOKEN, "POST", beat.format("web-1"), None, 401),
    ]
    got = [(method, path, call(bridge, method, path, token, json=body).status_code)
           for token, method, path, body, _ in rows]
    assert got == [(method, path, status) for _, method, path, _, status in rows]
    # the refusal HeartbeatEnrolmentConflict pages on names its id in the log, never a token
    assert "the fleet token was refused for 'web-2'" in bridge.log()
    assert FLEET_TOKEN not in bridge.log()


def test_a_compromised_host_cannot_silence_the_fleet(live_bridge):
    bridge = live_bridge()
    fleet = [f"web-{n}" for n in range(4)]
    tokens = {server_id: enrol(bridge, server_id) for server_id in fleet}
    before = call(bridge, "GET", "/api/servers", ADMIN_TOKEN).json()["servers"]
    attacks = [("POST", "/maintenance", b'{"until": NaN}'),
               ("POST", "/maintenance", b'{"until": 1e300}'),
               ("POST", "/maintenance", b'{"until": Infinity}'),
               ("POST", "/goodbye", b'{"retire": true}'),
               ("POST", "/", b'{"interval": 86400}'),
               ("DELETE", "/maintenance", b"")]
    for server_id in fleet:
        for method, action, body in attacks:
            response = requests.request(
                method, f"{bridge.url}/api/heartbeat/{server_id}{action}", data=body,
                timeout=10, headers={"Authorization": f"Bearer {FLEET_TOKEN}",
                                     "Content-Type": "application/json"})
            assert (response.status_code, response.json()["error"]) == (401, "enrolled")
    after = call(bridge, "GET", "/api/servers", ADMIN_TOKEN).json()["servers"]
    assert after == before
    counted = f'heartbeat_rejected_total{{reason="enrolled"}} {len(fleet) * len(attacks)}.0'
    wait_until(lambda: counted in bridge.metrics(), what="the rejections counted")  # batched
    for server_id, token in tokens.items():  # every host still beats with its own token
        assert call(bridge, "POST", f"/api/heartbeat/{server_id}/", token).status_code == 200


def test_enrolment_off_restores_the_fleet_token_for_every_server(live_bridge):
    bridge = live_bridge(HEARTBEAT_ENROLMENT="off")
    answer = call(bridge, "POST", "/api/heartbeat/web-1/", FLEET_TOKEN).json()
    assert "token" not in answer
    assert call(bridge, "POST", "/api/heartbeat/web-1/goodbye", FLEET_TOKEN).status_code == 200


def test_a_token_issued_by_one_replica_works_on_the_other(live_bridge, pg_url):
    first, second = live_bridge(pg_url), live_bridge(pg_url)
    token = call(first, "POST", "/api/heartbeat/db-1/", FLEET_TOKEN).json()["token"]
    assert call(second, "POST", "/api/heartbeat/db-1/", token).status_code == 200
    refused = call(first, "POST", "/api/heartbeat/db-1/", FLEET_TOKEN)
    assert (refused.status_code, refused.json()["error"]) == (401, "enrolled")
    revoked = call(second, "DELETE", "/api/servers/db-1/token", ADMIN_TOKEN)
    assert revoked.json()["server"]["enrolment"] == "open"
    assert call(first, "POST", "/api/heartbeat/db-1/", token).status_code == 401
    assert "token" in call(first, "POST", "/api/heartbeat/db-1/", FLEET_TOKEN).json()


def agent(bridge, state_dir, *flags, token=FLEET_TOKEN):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTBEAT_")}
    env.update(HEARTBEAT_URL=bridge.url, HEARTBEAT_SERVER_ID="host-1", HEARTBEAT_TOKEN=token,
               HEARTBEAT_STATE_DIR=str(state_dir))
    done = subprocess.run([sys.executable, AGENT, "--config", os.devnull, *flags], env=env,
                          capture_output=True, text=True, timeout=30)
    return done.returncode, done.stdout + done.stderr


def test_the_agent_enrols_itself_and_speaks_with_its_own_token_in_every_mode(live_bridge,
                                                                            tmp_path):
    bridge = live_bridge()
    state = tmp_path / "state"
    code, out = agent(bridge, state, "--once")
    assert code == 0, out
    kept = state / "host-1.token"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    token = kept.read_text().strip()
    assert token not in out and FLEET_TOKEN not in out
    code, out = agent(bridge, state, "--check")
    assert code == 0 and f"state file {kept}" in out and token not in out, out
    assert call(bridge, "POST", "/api/heartbeat/host-1/", FLEET_TOKEN).status_code == 401
    for flags in (("--maintenance", "1h"), ("--maintenance", "end"), ("--goodbye",),
                  ("--once",)):
        code, out = agent(bridge, state, *flags)
        assert code == 0, (flags, out)
    assert kept.read_text().strip() == token  # no new token once enrolled
    server = call(bridge, "GET", "/api/servers/host-1", ADMIN_TOKEN).json()["server"]
    assert (server["enrolment"], server["beats_total"]) == ("enrolled", 3)


def test_an_agent_whose_token_was_revoked_enrols_again(live_bridge, tmp_path):
    bridge = live_bridge()
    state = tmp_path / "state"
    assert agent(bridge, state, "--once")[0] == 0
    old = (state / "host-1.token").read_text()
    assert agent(bridge, state, "--once")[0] == 0  # confirms it
    call(bridge, "DELETE", "/api/servers/host-1/token", ADMIN_TOKEN)
    code, out = agent(bridge, state, "--once")
    assert code == 0 and "enrolling again" in out, out
    assert (state / "host-1.token").read_text() != old


def test_an_agent_that_cannot_keep_its_token_warns_and_goes_on(live_bridge, tmp_path):
    bridge = live_bridge()
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the state directory should be")
    for _ in range(2):
        code, out = agent(bridge, blocked / "sub", "--once")
        assert code == 0 and "warning: cannot keep the token" in out, out
    server = call(bridge, "GET", "/api/servers/host-1", ADMIN_TOKEN).json()["server"]
    assert (server["enrolment"], server["beats_total"]) == ("pending", 2)


def test_no_answer_that_carries_a_token_or_admin_data_may_be_cached(live_bridge):
    bridge = live_bridge(HEARTBEAT_STATUS_TOKEN=STATUS_TOKEN)
    issued = call(bridge, "POST", "/api/heartbeat/web-1/", FLEET_TOKEN)
    own = issued.json()["token"]
    answers = [
        issued,
        call(bridge, "POST", "/api/heartbeat/web-1/", own),
        call(bridge, "POST", "/api/heartbeat/web-1/", "wrong-token-0123"),
        call(bridge, "GET", "/api/servers", ADMIN_TOKEN),
        call(bridge, "GET", "/api/servers", "wrong-token-0123"),
        call(bridge, "POST", "/api/servers", ADMIN_TOKEN, json={"server_id": "db-1",
                                                                "token": True}),
        call(bridge, "POST", "/api/servers/db-1/token", ADMIN_TOKEN),
        call(bridge, "GET", "/api/servers/ghost", ADMIN_TOKEN),
        call(bridge, "GET", "/api/status", STATUS_TOKEN),
        call(bridge, "GET", "/", STATUS_TOKEN),
    ]
    for answer in answers:
        assert answer.headers.get("Cache-Control") == "no-store", answer.url
        assert answer.headers.get("X-Content-Type-Options") == "nosniff", answer.url


def test_a_pinned_interval_keeps_no_declaration_over_the_cap(live_bridge):
    bridge = live_bridge()
    own = enrol(bridge, "batch-1")
    call(bridge, "PATCH", "/api/servers/batch-1", ADMIN_TOKEN, json={"interval": 7200})
    assert call(bridge, "POST", "/api/heartbeat/batch-1/", own,
                json={"interval": 86400}).status_code == 200
    unpinned = call(bridge, "PATCH", "/api/servers/batch-1", ADMIN_TOKEN,
                    json={"interval": None}).json()["server"]
    assert unpinned["declared_interval"] is None and unpinned["interval"] == 30
