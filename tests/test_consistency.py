"""Copies that must stay equal: the version, and the agent's input rules (the agent is one
standalone file, so it repeats what it needs of the bridge instead of importing it)."""
import re

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import bridge
from agent import heartbeat_agent as agent
from bridge import validate
from tests.tools import ROOT

DIGITS_AND_UNITS = st.text(alphabet="0123456789.smhdwx -+e\n", max_size=12)


def test_the_version_is_written_once_and_every_copy_equals_it():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "bridge.__version__" }' in pyproject
    assert not re.search(r'(?m)^version = "', pyproject)
    openapi = yaml.safe_load((ROOT / "bridge" / "openapi.yaml").read_text())
    kustomization = yaml.safe_load(
        (ROOT / "deploy" / "kubernetes" / "base" / "kustomization.yaml").read_text())
    copies = {"agent VERSION": agent.VERSION,
              "openapi.yaml info.version": str(openapi["info"]["version"]),
              "kustomization newTag": str(kustomization["images"][0]["newTag"])}
    assert copies == dict.fromkeys(copies, bridge.__version__)


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(st.text(max_size=140) | st.from_regex(validate.SERVER_ID, fullmatch=True)
       | st.text(alphabet="aZ09._-\n/ é", max_size=130))
def test_the_agent_accepts_exactly_the_server_ids_the_bridge_accepts(text):
    assert bool(agent.SERVER_ID.match(text)) == bool(validate.SERVER_ID.match(text)), text


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(DIGITS_AND_UNITS)
def test_the_agent_reads_durations_as_the_bridge_does(text):
    ours = agent.DURATION.match(text.strip())
    bridges = validate._DURATION.match(text.strip())
    assert (ours and ours.groups()) == (bridges and bridges.groups()), text
    if ours:
        unit = ours.group(2)
        assert agent.UNITS[unit] == validate._UNITS[unit]
    assert agent.UNITS == validate._UNITS
