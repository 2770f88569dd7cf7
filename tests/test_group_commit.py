"""Group commit: store.batch() on SQLite and PostgreSQL, and the writer that runs jobs in
batches and answers each request only after its batch committed."""
import asyncio
import threading
from contextlib import contextmanager

import pytest

from bridge.store import (
    BeatPolicy,
    RateLimitedError,
    StoreUnavailableError,
    UnknownServerError,
    open_store,
)
from bridge.validate import Beat
from bridge.writer import GroupWriter

POLICY = BeatPolicy(rate_limit_burst=1)


@pytest.fixture
def other(database_url, clock):
    """A second store on the same database: another worker's view."""
    s = open_store(database_url, clock=clock)
    yield s
    s.close()


def beats(store, server_id):
    try:
        return store.get(server_id).beats_total
    except UnknownServerError:
        return 0


def test_a_batch_is_invisible_to_others_until_it_commits_then_all_of_it_is(store, other):
    with store.batch():
        store.record_beat("web-1", Beat(), POLICY)
        store.record_beat("web-2", Beat(hostname="h2"), POLICY)
        assert beats(store, "web-1") == 1  # the batch reads its own writes
        assert beats(other, "web-1") == 0 and beats(other, "web-2") == 0
    assert beats(other, "web-1") == 1
    assert other.get("web-2").hostname == "h2"


def test_an_operation_that_raises_in_a_batch_undoes_only_itself(store, other):
    with store.batch():
        store.record_beat("web-1", Beat(), POLICY)
        with pytest.raises(RateLimitedError):  # burst 1: the second beat is refused
            store.record_beat("web-1", Beat(hostname="never"), POLICY)
        with pytest.raises(UnknownServerError):
            store.pause("nobody", until=None)
        store.record_beat("web-2", Beat(), POLICY)
    assert beats(other, "web-1") == 1 and beats(other, "web-2") == 1
    assert other.get("web-1").hostname is None


def test_a_batch_that_fails_keeps_nothing(store, other):
    with pytest.raises(ZeroDivisionError):
        with store.batch():
            store.record_beat("web-1", Beat(), POLICY)
            1 / 0
    assert beats(other, "web-1") == 0
    store.record_beat("web-1", Beat(), POLICY)  # the store works on afterwards
    assert beats(other, "web-1") == 1


def test_other_threads_are_not_part_of_a_batch(store, other):
    done = threading.Event()

    def elsewhere():
        store.add_rejections({"unauthorized": 1})  # waits for the batch on SQLite
        done.set()

    with store.batch():
        store.record_beat("web-1", Beat(), POLICY)
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join(0.2)
    thread.join(10)
    assert done.is_set()
    assert other.snapshot().rejected == {"unauthorized": 1}
    assert beats(other, "web-1") == 1


def test_batches_do_not_nest(store):
    with store.batch():
        with pytest.raises(RuntimeError):
            with store.batch():
                pass


def test_a_failed_commit_on_postgresql_keeps_nothing_and_says_unavailable(store, other,
                                                                         database_url):
    """A deferred constraint fails at COMMIT itself: the real failure group commit guards."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no deferred check to fail a COMMIT with")
    import psycopg
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN IF NEW.server_id = 'poison' THEN RAISE EXCEPTION 'no'; END IF; "
                     "RETURN NEW; END $$")
        conn.execute("CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON servers "
                     "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse()")
    with pytest.raises(StoreUnavailableError):
        with store.batch():
            store.record_beat("web-1", Beat(), POLICY)
            store.record_beat("poison", Beat(), POLICY)  # fine until COMMIT
    assert beats(other, "web-1") == 0
    store.record_beat("web-1", Beat(), POLICY)
    assert beats(other, "web-1") == 1


# -- the writer ------------------------------------------------------------------------------
def run_jobs(store, jobs, **options):
    """Submit every job at once from an event loop; their results, in order."""
    async def main():
        writer = GroupWriter(store, **options)
        writer.start(asyncio.get_running_loop())
        try:
            return await asyncio.gather(*(writer.submit(job, fail) for job, fail in jobs),
                                        return_exceptions=True)
        finally:
            await writer.stop()
    return asyncio.run(main())


def test_the_writer_answers_each_job_after_its_batch_committed(store, other):
    seen_by_others = []

    def beat(server_id):
        def job():
            store.record_beat(server_id, Beat(), POLICY)
            seen_by_others.append(beats(other, server_id))  # not committed yet
            return "ok"
        return job, lambda exc: "failed"

    results = run_jobs(store, [beat(f"web-{i}") for i in range(50)])
    assert results == ["ok"] * 50
    assert seen_by_others == [0] * 50
    assert all(beats(other, f"web-{i}") == 1 for i in range(50))


def test_a_job_that_raises_fails_only_itself(store, other):
    def boom():
        raise ValueError("a bug in one request's handling")

    results = run_jobs(store, [
        (lambda: store.record_beat("web-1", Beat(), POLICY) and "ok", lambda exc: "failed"),
        (boom, lambda exc: "failed"),
        (lambda: store.record_beat("web-3", Beat(), POLICY) and "ok", lambda exc: "failed")])
    assert results[0] == results[2] == "ok"
    assert isinstance(results[1], ValueError)
    assert (beats(other, "web-1"), beats(other, "web-3")) == (1, 1)


class FailingCommit:
    """A store whose batches fail at the end, as a COMMIT that the database refuses."""

    def __init__(self, store):
        self.store = store

    @contextmanager
    def batch(self):
        with pytest.raises(ZeroDivisionError), self.store.batch():
            yield
            1 / 0
        raise StoreUnavailableError("commit refused")


def test_a_failed_commit_fails_exactly_its_batch(store, other):
    results = run_jobs(FailingCommit(store), [
        (lambda i=i: store.record_beat(f"web-{i}", Beat(), POLICY) and "ok",
         lambda exc: f"503 {exc}") for i in range(5)])
    assert results == ["503 commit refused"] * 5
    assert all(beats(other, f"web-{i}") == 0 for i in range(5))
