"""Enrolment under real concurrency: a host's first beat with its own token and a fleet-token
beat for the same id, sent at the same moment to two live replicas sharing one store. Once
the host's own token is used, only it speaks for the id, whichever request wins."""
import threading

import pytest
import requests

from tests.tools import FLEET_TOKEN

pytestmark = [pytest.mark.slow, pytest.mark.live]
TRIES = 50


def beat(session, bridge, server_id, token):
    return session.post(f"{bridge.url}/api/heartbeat/{server_id}/", json={},
                        headers={"Authorization": f"Bearer {token}"}, timeout=15)


def race(first, second, tries):
    """Per try: enrol an id, then the host's own-token beat on `first` and a fleet-token beat
    on `second`, released together; return the ids whose host token fails afterwards, with
    what each request got."""
    sessions = [requests.Session(), requests.Session()]
    lost = []
    for n in range(tries):
        server_id = f"race-{n}"
        token = beat(sessions[0], first, server_id, FLEET_TOKEN).json()["token"]
        beat(sessions[1], second, "warm-up", FLEET_TOKEN)  # both connections open now
        gate = threading.Barrier(2)
        answers = {}

        def send(name, session, bridge, credential):
            gate.wait()
            answers[name] = beat(session, bridge, server_id, credential).status_code

        threads = [threading.Thread(target=send, args=("host", sessions[0], first, token)),
                   threading.Thread(target=send, args=("fleet", sessions[1], second,
                                                       FLEET_TOKEN))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        after = beat(sessions[0], first, server_id, token).status_code
        fleet_after = beat(sessions[1], second, server_id, FLEET_TOKEN).status_code
        if (after, fleet_after) != (200, 401) or answers.get("host") != 200:
            lost.append((server_id, answers, after, fleet_after))
    return lost


def test_the_hosts_own_token_wins_every_race_on_postgresql(live_bridge, pg_url):
    first, second = live_bridge(pg_url), live_bridge(pg_url)
    assert race(first, second, TRIES) == []


def test_the_hosts_own_token_wins_every_race_on_sqlite(live_bridge, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = live_bridge(url), live_bridge(url)
    assert race(first, second, 40) == []
