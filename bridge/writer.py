"""One writer thread per worker: the event loop hands it jobs, it runs them in batches.

A job is a plain function doing store calls (the whole handling of one beat). The loop
hands the jobs submitted in one turn of it to the writer together (one wake-up of the
writer thread per turn, not per request); the writer takes every job queued meanwhile
(in batches of at most `max_batch`), runs each inside one `store.batch()`
(one transaction, one write-lock hand-off, one COMMIT), and only then resolves each job's
future in the loop. So the loop never waits on the store, and a request is answered only
after what it wrote is durable. A job that raises fails only itself; a batch whose BEGIN
or COMMIT fails answers every job of it with `fail(exc)`: nothing of it was acknowledged.
"""
import asyncio
import logging
import queue
import threading
from typing import Any, Callable, List, Optional, Tuple

from bridge.store import Store

Job = Callable[[], Any]
Fail = Callable[[BaseException], Any]
Outcome = Tuple["asyncio.Future[Any]", Any, Optional[BaseException]]

log = logging.getLogger("bridge")
_STOP = object()


class GroupWriter:
    """Group commit for one process. submit() is called from the loop; the rest runs on the
    writer thread."""

    def __init__(self, store: Store, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._pending: List[Any] = []  # submitted in this turn of the loop, not handed over

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def submit(self, job: Job, fail: Fail) -> "asyncio.Future[Any]":
        """A future for job()'s result once its batch committed (or fail(exc) if it did not)."""
        assert self._loop is not None, "start() first"
        future = self._loop.create_future()
        if not self._pending:
            self._loop.call_soon(self._hand_over)
        self._pending.append((job, fail, future))
        return future

    def _hand_over(self) -> None:
        """The loop's turn is over: give the writer what it submitted, in one put."""
        jobs, self._pending = self._pending, []
        self._queue.put(jobs)

    async def stop(self) -> None:
        """Finish what is queued, then end the thread."""
        if self._thread is not None:
            if self._pending:
                self._hand_over()
            self._queue.put(_STOP)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None

    def _run(self) -> None:
        assert self._loop is not None
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            jobs = list(first)
            while len(jobs) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stopping = True
                    break
                jobs.extend(more)
            for start in range(0, len(jobs), self.max_batch):
                outcomes = self._run_batch(jobs[start:start + self.max_batch])
                try:
                    self._loop.call_soon_threadsafe(_resolve, outcomes)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    return

    def _run_batch(self, jobs: List[Any]) -> List[Outcome]:
        """[(future, result, exception)] for each job."""
        outcomes: List[Outcome] = []
        try:
            with self.store.batch():
                for job, _, future in jobs:
                    try:
                        outcomes.append((future, job(), None))
                    except Exception as exc:  # a bug in one job must not fail the others
                        log.exception("a queued store job failed")
                        outcomes.append((future, None, exc))
        except Exception as exc:  # BEGIN or COMMIT failed: the whole batch was rolled back
            log.error("group commit of %d requests failed, none acknowledged: %s",
                      len(jobs), exc)
            outcomes = []
            for _, fail, future in jobs:
                try:
                    outcomes.append((future, fail(exc), None))
                except Exception as error:
                    outcomes.append((future, None, error))
        return outcomes


def _resolve(outcomes: List[Outcome]) -> None:
    for future, result, exc in outcomes:
        if future.done():  # cancelled: the request's task is gone
            continue
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)
