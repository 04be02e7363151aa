"""Serving's one thread for log store calls, and the group commit of impressions on it.

SQLite takes one writer at a time, and a single thread keeps the calls in arrival order without lock waits.
Impressions that queue up while the thread commits (and fsyncs) one batch are written together in the next
transaction, so under load one fsync serves many requests, and each request is still answered only once its own
impression is durable.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple, TypeVar

from drn.logstore import ImpressionRecord, LogStore
from drn.mind import NewsItem

T = TypeVar("T")


class PendingImpression(NamedTuple):
    """An impression waiting for the writer thread's next group commit; `committed` resolves once it is durable."""

    record: ImpressionRecord
    news: list[NewsItem]  # items this request described for the first time (or differently)
    committed: asyncio.Future  # resolved on the event loop


class LogWriter:
    """Runs log store calls on one thread, in order; `log_impression` group-commits. `logs` may be set after
    construction (serving opens its store at start)."""

    def __init__(self, logs: LogStore | None = None):
        self.logs = logs
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drn-logstore")
        self._pending: list[PendingImpression] = []  # appended on the event loop, taken by the writer thread
        self._queue_lock = threading.Lock()  # guards _pending and _draining
        self._draining = False  # the writer thread has been asked to drain and has not yet found the queue empty

    def run(self, call: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """`call(*args)` on the writer thread, after the calls submitted before it."""
        return asyncio.get_running_loop().run_in_executor(self._thread, call, *args)

    def log_impression(self, record: ImpressionRecord, news: list[NewsItem]) -> asyncio.Future[None]:
        """Queue an impression (and the items it introduced) for the next group commit; the future resolves once it
        is durable, or fails with what failed it.

        The writer thread commits everything queued in one transaction, then looks again: while one commit waits
        for its fsync, the requests arriving meanwhile gather into the next one. So one fsync per batch, one wake-up
        of the writer per busy spell and one call back into the event loop per batch."""
        loop = asyncio.get_running_loop()
        committed = loop.create_future()
        with self._queue_lock:
            self._pending.append(PendingImpression(record, news, committed))
            wake, self._draining = not self._draining, True
        if wake:
            self._thread.submit(self._drain, loop)
        return committed

    def shutdown(self) -> None:
        self._thread.shutdown(wait=True)

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the writer thread: commit batches until the queue is empty, handing each batch's outcome to the loop.
        Should anything escape (a closed loop, no memory), the impressions in hand and in the queue fail with it and
        the next one wakes the writer again: otherwise no later request would ever be answered."""
        batch: list[PendingImpression] = []
        try:
            while True:
                with self._queue_lock:
                    batch, self._pending = self._pending, []
                    if not batch:
                        self._draining = False
                        return
                loop.call_soon_threadsafe(settle, batch, self.commit(batch))
        except BaseException as e:
            with self._queue_lock:
                stranded, self._pending, self._draining = batch + self._pending, [], False
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(settle, stranded, [e] * len(stranded))
            raise

    def commit(self, batch: list[PendingImpression]) -> list[BaseException | None]:
        """Each impression's outcome (None: durable). When the batch fails, each is tried alone, so a failure reaches
        only the requests whose impressions fail on their own."""
        try:
            self.logs.log_impressions([p.record for p in batch], [item for p in batch for item in p.news])
            return [None] * len(batch)
        except Exception as e:
            if len(batch) == 1:
                return [e]
        outcomes: list[BaseException | None] = []
        for pending in batch:
            try:
                self.logs.log_impressions([pending.record], pending.news)
                outcomes.append(None)
            except Exception as alone:
                outcomes.append(alone)
        return outcomes


def settle(batch: list[PendingImpression], outcomes: list[BaseException | None]) -> None:
    """On the event loop: resolve a committed batch's futures, except those whose requests were cancelled meanwhile
    (their impressions are logged anyway)."""
    for pending, error in zip(batch, outcomes):
        if pending.committed.done():
            continue
        if error is None:
            pending.committed.set_result(None)
        else:
            pending.committed.set_exception(error)
