"""What only PostgreSQL has: several stores (replicas) racing on one database.

Everything else runs on both backends through the `database_url` fixture.
"""
import multiprocessing
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from bridge.store import (
    SCHEMA_VERSION,
    BeatPolicy,
    RateLimitedError,
    ServerExistsError,
    ServerLimitError,
    StoreError,
    StoreUnavailableError,
    open_store,
)
from bridge.validate import parse_beat

BEAT = parse_beat(b'{"interval": 30, "hostname": "h"}', "application/json")
NO_LIMIT = BeatPolicy(rate_limit_burst=0)


@pytest.fixture
def pg(pg_schema):
    """(admin connection, schema, URL) of a fresh schema: conftest's pg_schema."""
    return pg_schema


@pytest.fixture
def two_stores(pg):
    """Two stores on one schema: two replicas, each with its own pool."""
    stores = [open_store(pg[2], pool_size=4) for _ in range(2)]
    yield stores
    for s in stores:
        s.close()


def _run_together(n, func):
    """Call func(i) from n threads released at the same moment; return the results."""
    barrier = threading.Barrier(n)

    def call(i):
        barrier.wait(timeout=10)
        return func(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(call, range(n)))


def test_concurrent_beats_for_one_server_from_two_stores_are_all_counted(two_stores):
    threads, beats_each = 12, 25

    def beat(i):
        store = two_stores[i % 2]
        for _ in range(beats_each):
            store.record_beat("shared", BEAT, NO_LIMIT)

    _run_together(threads, beat)
    for store in two_stores:
        assert store.get("shared").beats_total == threads * beats_each


def test_concurrent_first_beats_register_a_server_once(two_stores):
    def beat(i):
        two_stores[i % 2].record_beat("new-one", BEAT, NO_LIMIT)

    _run_together(8, beat)
    servers = two_stores[0].list()
    assert [s.server_id for s in servers] == ["new-one"]
    assert servers[0].beats_total == 8


def test_registration_at_the_cap_from_two_stores_never_passes_it(two_stores):
    cap = 10
    policy = BeatPolicy(max_servers=cap, rate_limit_burst=0)

    def register_many(i):
        refused = 0
        for n in range(6):
            try:
                two_stores[i % 2].record_beat(f"s-{i}-{n}", BEAT, policy)
            except ServerLimitError:
                refused += 1
        return refused

    refused = _run_together(6, register_many)
    assert len(two_stores[1].list()) == cap
    assert sum(refused) == 6 * 6 - cap


def test_registration_through_the_admin_path_respects_the_cap_too(two_stores):
    def register(i):
        try:
            two_stores[i % 2].register(f"r-{i}", max_servers=5)
            return True
        except ServerLimitError:
            return False

    assert sum(_run_together(12, register)) == 5
    assert len(two_stores[0].list()) == 5


def test_stores_creating_the_schema_at_the_same_moment_all_start(pg):
    conn, schema, url = pg
    stores = _run_together(6, lambda i: open_store(url, pool_size=1))
    try:
        assert {s.schema_version() for s in stores} == {SCHEMA_VERSION}
        rows = conn.execute(f"SELECT key, value FROM {schema}.meta").fetchall()
        assert rows == [("schema_version", str(SCHEMA_VERSION))]
    finally:
        for s in stores:
            s.close()


def test_a_schema_newer_than_the_code_is_refused(pg):
    conn, schema, url = pg
    open_store(url).close()
    conn.execute(f"UPDATE {schema}.meta SET value = %s WHERE key = 'schema_version'",
                 (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match="newer than this bridge understands"):
        open_store(url)


def test_server_ids_sort_by_code_point_whatever_the_database_collation(pg):
    conn, schema, url = pg
    store = open_store(url)
    ids = ["b", "B", "a_1", "a-1", "a1", "\u00e4", "Z"]
    for server_id in ids:
        store.record_beat(server_id, BEAT, NO_LIMIT)
    assert [s.server_id for s in store.list()] == sorted(ids)
    store.close()
    (collation,) = conn.execute(
        "SELECT collation_name FROM information_schema.columns WHERE table_schema = %s "
        "AND table_name = 'servers' AND column_name = 'server_id'", (schema,)).fetchone()
    assert collation == "C"


def test_a_snapshot_is_one_consistent_read(two_stores):
    """Beats committed while a snapshot reads do not show up half in it."""
    writer, reader = two_stores
    for n in range(50):
        writer.record_beat(f"s{n:02}", BEAT, NO_LIMIT)
    stop = threading.Event()

    def beat_all():
        while not stop.is_set():
            for n in range(50):  # one transaction per server, same order every round
                writer.record_beat(f"s{n:02}", BEAT, NO_LIMIT)

    thread = threading.Thread(target=beat_all)
    thread.start()
    try:
        for _ in range(20):
            beats = [s.beats_total for s in reader.snapshot().servers]
            # Rounds go s00..s49 in order: a consistent read sees a non-increasing run
            # that drops by at most one, never a later server ahead of an earlier one.
            assert all(a >= b for a, b in zip(beats, beats[1:])), beats
            assert beats[0] - beats[-1] <= 1, beats
    finally:
        stop.set()
        thread.join(timeout=10)


def _beat_in_child(store, count, results):
    for _ in range(count):
        store.record_beat("forked", BEAT, NO_LIMIT)
    results.put(store.get("forked").beats_total)
    store.close()


def test_a_forked_process_opens_its_own_connections(pg):
    conn, schema, url = pg
    app_name = "fork-" + uuid.uuid4().hex[:8]
    store = open_store(f"{url}&application_name={app_name}")
    store.record_beat("forked", BEAT, NO_LIMIT)
    parent_backends = _backends(conn, app_name)
    assert parent_backends

    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_beat_in_child, args=(store, 20, results))
    child.start()
    for _ in range(20):  # the parent keeps beating meanwhile, on its own connections
        store.record_beat("forked", BEAT, NO_LIMIT)
    child.join(timeout=20)
    assert child.exitcode == 0
    assert results.get(timeout=1) >= 21
    # The child closed its pool; the parent's sessions were never touched by it.
    assert parent_backends <= _backends(conn, app_name)
    assert store.get("forked").beats_total == 41
    store.close()


def _backends(conn, app_name):
    rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                        (app_name,)).fetchall()
    return {pid for (pid,) in rows}


def test_an_unreachable_database_opens_and_every_call_fails_in_bounded_time():
    """A worker booting during an outage must start (gunicorn stops the whole replica when
    one cannot); its calls fail, within the pool timeout, saying why."""
    store = open_store("postgresql://postgres@127.0.0.1:1/test", timeout=1.0)
    try:
        for call in (store.ping, store.snapshot, lambda: store.record_beat("x", BEAT, NO_LIMIT)):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="127.0.0.1:1/test: .*refused"):
                call()
            assert time.monotonic() - started < 15  # a bounded wait, not a hang
    finally:
        store.close()


def test_a_malformed_url_is_a_store_error_not_a_crash():
    with pytest.raises(StoreError, match="invalid PostgreSQL URL"):
        open_store("postgresql://postgres@127.0.0.1/test?nonsense_option=1")


def test_an_error_message_never_shows_the_password():
    store = open_store("postgresql://postgres:s3cret-pw@127.0.0.1:1/test", timeout=0.5)
    with pytest.raises(StoreUnavailableError) as caught:
        store.ping()
    store.close()
    assert "refused" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)


def test_connections_are_returned_idle_after_errors(pg):
    """A failed transaction is rolled back: nothing half-written, no connection left in a
    transaction (the pool would warn and reset it)."""
    conn, schema, url = pg
    app_name = "idle-" + uuid.uuid4().hex[:8]
    store = open_store(f"{url}&application_name={app_name}", pool_size=1)
    store.register("dup")
    for _ in range(3):
        with pytest.raises(Exception):
            store.register("dup")
    states = conn.execute("SELECT state FROM pg_stat_activity WHERE application_name = %s",
                          (app_name,)).fetchall()
    assert states == [("idle",)]
    assert [s.server_id for s in store.list()] == ["dup"]
    store.close()



def test_the_rate_limit_holds_across_stores(pg):
    """The limiter's stored state is read under the row lock: `burst` beats pass, not more."""
    url = pg[2]
    now = [1_800_000_000.0]
    stores = [open_store(url, clock=lambda: now[0], pool_size=4) for _ in range(2)]
    policy = BeatPolicy(rate_limit_burst=5)
    try:
        stores[0].record_beat("fast", BEAT, policy)

        def beat(i):
            try:
                stores[i % 2].record_beat("fast", BEAT, policy)
                return True
            except RateLimitedError:
                return False

        accepted = _run_together(16, beat)
        assert sum(accepted) == 4
        assert stores[1].get("fast").beats_total == 5
    finally:
        for s in stores:
            s.close()


def test_registering_one_id_from_two_stores_at_once_succeeds_once(two_stores):
    """The others are told it exists (409), as on SQLite; none overwrites the winner's token."""
    for round_ in range(10):
        server_id = f"same-{round_}"

        def register(i):
            try:
                two_stores[i % 2].register(server_id, labels={"by": str(i)},
                                           token_hash=f"{i:064}")
                return i
            except ServerExistsError:
                return None

        winners = [i for i in _run_together(8, register) if i is not None]
        assert len(winners) == 1, (server_id, winners)
        assert two_stores[0].get(server_id).labels == {"by": str(winners[0])}
        assert two_stores[1].token_hashes(server_id) == [f"{winners[0]:064}"]


def test_first_beats_racing_to_register_an_id_share_its_rate_limit(pg):
    """Beats that found no row and waited on the registration lock use the winner's row.

    With burst 2, only 2 of 16 simultaneous first beats for a new id may pass on either store;
    a loser of the registration race must not start from an empty rate-limit state.
    """
    url = pg[2]
    now = [1_800_000_000.0]
    stores = [open_store(url, clock=lambda: now[0], pool_size=8) for _ in range(2)]
    policy = BeatPolicy(rate_limit_burst=2)
    try:
        for round_ in range(5):
            server_id = f"racer-{round_}"

            def beat(i):
                try:
                    stores[i % 2].record_beat(server_id, BEAT, policy)
                    return True
                except RateLimitedError:
                    return False

            accepted = _run_together(16, beat)
            assert sum(accepted) == 2, (server_id, accepted)
            assert stores[0].get(server_id).beats_total == 2
    finally:
        for s in stores:
            s.close()
