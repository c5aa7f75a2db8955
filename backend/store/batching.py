"""``write_batched``'s leader/follower queue, shared by both stores.

Threads that arrive while a batch runs queue; the first becomes the leader and runs up to
``MAX_WRITE_BATCH`` queued items (its own first) in one transaction through the store's
``_run_batch``, then hands the lead to the oldest waiter, so no thread runs batches for
others for longer than one. Each store's ``_run_batch`` gives every item its result or
its error (a savepoint per item: one item's exception undoes only its own changes).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

MAX_WRITE_BATCH = 64
"""Batched writes run in one transaction at most: bounds how long a batch holds the
writer (a lease is well under a millisecond of work) and so the wait of a durable write
queued behind it."""


class BatchedWrite:
    """One queued ``write_batched`` call: its work, then its outcome."""

    __slots__ = ("done", "error", "lead", "result", "work")

    def __init__(self, work: Callable[[Any], Any]) -> None:
        self.work = work
        self.done = threading.Event()
        self.lead = False  # set (before done) when this waiter is to run the next batch
        self.result: Any = None
        self.error: BaseException | None = None


class WriteBatcher:
    """The queue and the lead; a store subclasses it and supplies ``_run_batch``."""

    def _init_batching(self) -> None:
        self._batch_lock = threading.Lock()  # guards the two below, never held around SQL
        self._batch_queue: list[BatchedWrite] = []
        self._batch_leader = False

    def _batched(self, work: Callable[[Any], T]) -> T:
        item = BatchedWrite(work)
        with self._batch_lock:
            self._batch_queue.append(item)
            lead = not self._batch_leader
            self._batch_leader = True
        if not lead:
            item.done.wait()  # until our batch ran, or the lead is handed to us
            lead = item.lead
        if lead:
            self._lead_batch()
        if item.error is not None:
            raise item.error
        result: T = item.result
        return result

    def _lead_batch(self) -> None:
        with self._batch_lock:
            batch = self._batch_queue[:MAX_WRITE_BATCH]
            del self._batch_queue[:MAX_WRITE_BATCH]
        self._run_batch(batch)
        with self._batch_lock:
            successor = self._batch_queue[0] if self._batch_queue else None
            if successor is None:
                self._batch_leader = False
            else:
                successor.lead = True
        for item in batch:
            item.done.set()
        if successor is not None:
            successor.done.set()

    def _run_batch(self, batch: list[BatchedWrite]) -> None:
        raise NotImplementedError
