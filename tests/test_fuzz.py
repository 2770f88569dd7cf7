"""Schemathesis against a LIVE bridge (gunicorn, SQLite), from bridge/openapi.yaml.

For every operation a few hundred generated requests, valid and invalid, seeded
(`derandomize`), with the real fleet and admin tokens: no 5xx, and every answer conforms
to the description (status documented, content type, JSON bodies and required headers).
"""
import collections
import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.tools import ADMIN_TOKEN, FLEET_TOKEN, ROOT, Bridge

pytestmark = pytest.mark.live  # every test here starts a real program

# 413 is a refusal too: the 4096-byte limit on a whole body is not a JSON Schema keyword.
CONFIG = SchemathesisConfig.from_dict({"checks": {
    "negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 405, 409, 413, 415,
                                                      422, 429]},
    "positive_data_acceptance": {"expected-statuses": ["2xx", 401, 403, 404, 409, 413, 429]},
}})
schema = schemathesis.openapi.from_path(ROOT / "bridge" / "openapi.yaml", config=CONFIG)

# Bounded for `make test` on two cores (about 40 s); HEARTBEAT_FUZZ_EXAMPLES=300 for a deep run.
EXAMPLES_PER_OPERATION = int(os.environ.get("HEARTBEAT_FUZZ_EXAMPLES", "60"))
MAX_SERVERS = 300  # small, so that the cap (403) is reached while fuzzing
# Valid-looking input these operations still refuse, and the description cannot say why:
# a duration over its limit ("9999w"), an `until` in the past, a maintenance without an end.
POSITIVE_MAY_BE_REFUSED = {"goodbye", "startMaintenance", "pauseServer", "rotateToken"}
SEEN = collections.Counter()  # (operation, status) -> count, for the summary


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    db = tmp_path_factory.mktemp("fuzz") / "bridge.db"
    started = Bridge(f"sqlite:///{db}", HEARTBEAT_TOKEN=FLEET_TOKEN,
                     HEARTBEAT_ADMIN_TOKEN=ADMIN_TOKEN, HEARTBEAT_MAX_SERVERS=str(MAX_SERVERS),
                     HEARTBEAT_WORKERS="2", HEARTBEAT_THREADS="4").start()
    yield started
    started.stop()
    if SEEN:  # what was sent and what came back, for the log of a run
        by_status = collections.Counter()
        for (_, status), n in SEEN.items():
            by_status[status] += n
        print(f"\nfuzzed {sum(SEEN.values())} requests over {len({op for op, _ in SEEN})} "
              f"operations; statuses: {dict(sorted(by_status.items()))}")


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        yield s


def token_for(path):
    """The token an honest client of this path holds."""
    return FLEET_TOKEN if path.startswith("/api/heartbeat/") else ADMIN_TOKEN


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink])
def test_every_answer_conforms_and_nothing_is_a_server_error(case, bridge, session):
    headers = {"Authorization": f"Bearer {token_for(case.path)}"}
    response = case.call(base_url=bridge.url, session=session, headers=headers, timeout=10)
    SEEN[(case.operation.definition.raw.get("operationId", case.path), response.status_code)] += 1
    assert response.status_code < 500, response.text
    log = bridge.log()
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]
    excluded = ([positive_data_acceptance]
                if case.operation.definition.raw.get("operationId") in POSITIVE_MAY_BE_REFUSED
                else [])
    case.validate_response(response, headers=headers, excluded_checks=excluded,
                           transport_kwargs={"base_url": bridge.url, "session": session,
                                             "headers": headers, "timeout": 10})
