"""The fast per-server rendering is byte-identical to prometheus_client's own encoders."""
import string

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.exposition import choose_encoder

from bridge.exposition import _Families, render_servers
from bridge.metric_table import METRIC_SETS, server_families
from bridge.store import Server, Snapshot
from bridge.validate import SERVER_ID

ENCODERS = {
    "text": choose_encoder("")[0],
    "text-1.0": choose_encoder("text/plain; version=1.0.0; escaping=allow-utf-8")[0],
    "openmetrics": choose_encoder("application/openmetrics-text; version=1.0.0")[0],
    "openmetrics-utf8": choose_encoder(
        "application/openmetrics-text; version=1.0.0; escaping=allow-utf-8")[0],
}

server_ids = st.from_regex(SERVER_ID, fullmatch=True)
label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,10}", fullmatch=True).filter(
    lambda n: not n.startswith("__") and n != "server_id")
label_values = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
times = st.floats(min_value=0, max_value=2**33, allow_nan=False)
maybe = lambda strategy: st.none() | strategy  # noqa: E731


@st.composite
def servers(draw):
    labels = draw(st.dictionaries(label_names, label_values, max_size=4))
    return Server(
        server_id=draw(server_ids), labels=labels,
        registered_interval=draw(maybe(st.floats(1, 86400))),
        declared_interval=draw(maybe(st.floats(1, 86400))),
        last_seen=draw(times), beats_total=draw(st.integers(0, 2**53)),
        paused=draw(st.booleans()), paused_until=draw(maybe(times)),
        created_at=draw(times), hostname=draw(maybe(label_values)),
        agent_version=draw(maybe(label_values)), boot_time=draw(maybe(times)),
        clock_skew=draw(maybe(st.floats(-1e6, 1e6) | st.sampled_from([-10.0, 10.0, 10.5]))),
        expected_back=draw(maybe(times)), retired_at=draw(maybe(times)))


def reference(snapshot, encoder, metric_set="lean"):
    return encoder(_Families(list(server_families(snapshot, 30.0, metric_set)))).decode(
    ).replace("# EOF\n", "")


# A `now` close to the drawn times, so that recent boots and timed excuses occur.
@settings(max_examples=150, deadline=None)
@given(fleet=st.lists(servers(), max_size=8, unique_by=lambda s: s.server_id),
       now=times | st.sampled_from([0.0, 1000.0, 2**33]),
       encoder=st.sampled_from(sorted(ENCODERS)),
       metric_set=st.sampled_from(METRIC_SETS))
def test_fast_rendering_equals_the_library(fleet, now, encoder, metric_set):
    snapshot = Snapshot(sorted(fleet), {}, now)
    assert render_servers(snapshot, 30.0, ENCODERS[encoder], metric_set) == reference(
        snapshot, ENCODERS[encoder], metric_set)


def test_excuses_boots_and_skews_render_like_the_library_in_both_sets():
    now = 1e9
    fleet = [Server("away", {"team": "a"}, last_seen=now - 5, expected_back=now + 60,
                    boot_time=now - 60, clock_skew=-75.0),
             Server("booted", {"team": "a"}, last_seen=now - 5, boot_time=now - 60,
                    clock_skew=0.2),
             Server("paused", {}, last_seen=now - 5, paused=True, pause_reason="disk"),
             Server("retired", {}, last_seen=now - 5, retired_at=now - 1),
             Server("skewed", {}, last_seen=now - 5, boot_time=now - 86400, clock_skew=75.0),
             Server("unseen", {"team": 'q"'}, created_at=now - 100)]
    snapshot = Snapshot(fleet, {}, now)
    for metric_set in METRIC_SETS:
        for encoder in ENCODERS.values():
            assert render_servers(snapshot, 30.0, encoder, metric_set) == reference(
                snapshot, encoder, metric_set)


def test_shared_label_sets_and_escapes_render_like_the_library():
    shared = {"team": 'a"b\\c\nd', "zone": "é", "app": ""}
    fleet = [Server(f"s{i}", shared if i % 2 else {"team": "x"}, last_seen=1e9 + i,
                    hostname='h"\\' + string.printable[i], agent_version="1\n0")
             for i in range(20)]
    snapshot = Snapshot(fleet, {}, 1e9)
    for encoder in ENCODERS.values():
        for metric_set in METRIC_SETS:
            assert render_servers(snapshot, 30.0, encoder, metric_set) == reference(
                snapshot, encoder, metric_set)
