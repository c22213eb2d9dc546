"""Micro-batching for ``twostage serve``: requests that arrive together are scored together.

A request's coroutine calls :meth:`MicroBatcher.submit` and awaits its answer. One collector
task takes the waiting requests as a batch as soon as the model is free: when the first request
of a batch finds fewer than ``max_users`` users waiting, it waits at most ``max_wait_s`` for
more (the bounded wait; 0 takes only those already waiting), then the batch runs in one worker
thread (the model is called by one thread at a time) while new requests queue up for the next.
Under load the batches therefore grow with the concurrency without any added wait; idle, a
request pays at most ``max_wait_s``.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from typing import Any, Callable, Sequence


class ShuttingDown(RuntimeError):
    """The batcher was closed: no new request is taken."""


class MicroBatcher:
    """Collects submitted items into batches for ``run_batch`` (items -> results, same order).

    Args:
        run_batch: called in the worker thread with a list of items; returns one result each.
        size: ``size(item)`` -> how many users an item carries (the batch bound counts them).
        max_users: a batch takes requests until it holds this many users (a larger single
            request is a batch of its own).
        max_wait_s: the longest a batch's first request waits for others, >= 0.
    """

    def __init__(self, run_batch: Callable[[list], Sequence], size: Callable[[Any], int],
                 max_users: int, max_wait_s: float) -> None:
        if max_users < 1 or not 0 <= max_wait_s <= 1:
            raise ValueError(f"max_users={max_users} must be >= 1 and max_wait_s={max_wait_s} "
                             "in [0, 1] seconds")
        self.run_batch, self.size = run_batch, size
        self.max_users, self.max_wait_s = max_users, max_wait_s
        self.pending: collections.deque = collections.deque()
        self.waiting_users = 0
        self.batches = 0                      # how many batches ran (for /metadata and tests)
        self.largest = 0                      # the most requests one batch held
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._closed = False
        self._busy = False                    # a batch is in the worker
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the collector task on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def submit(self, item) -> Any:
        """The result of ``item``, computed in some batch.

        Raises:
            ShuttingDown: the batcher is closed; whatever ``run_batch`` raised for its batch.
        """
        if self._closed:
            raise ShuttingDown("the server is shutting down")
        future = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        self.waiting_users += self.size(item)
        self._arrived.set()
        if self.waiting_users >= self.max_users:
            self._full.set()
        return await future

    async def close(self) -> None:
        """Refuse new items, finish the batches of those already taken, stop the worker."""
        self._closed = True
        while self.pending or self._busy:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
        self._worker.shutdown(wait=True)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            if self.max_wait_s and self.waiting_users < self.max_users:
                try:
                    await asyncio.wait_for(self._full.wait(), self.max_wait_s)
                except asyncio.TimeoutError:
                    pass
            batch = self._take()
            items = [item for item, _ in batch]
            self._busy = True
            try:
                results = await loop.run_in_executor(self._worker, self.run_batch, items)
            except Exception as e:  # noqa: BLE001 - handed to every request of the batch
                results = [e] * len(batch)
            finally:
                self._busy = False
            for (_, future), result in zip(batch, results):
                if future.done():   # a request whose client went away was cancelled
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _take(self) -> list:
        """The waiting requests up to ``max_users`` users (at least one request)."""
        batch, users = [], 0
        while self.pending and (not batch or users + self.size(self.pending[0][0])
                                <= self.max_users):
            item, future = self.pending.popleft()
            users += self.size(item)
            batch.append((item, future))
        self.waiting_users -= users
        if not self.pending:
            self._arrived.clear()
        if self.waiting_users < self.max_users:
            self._full.clear()
        self.batches += 1
        self.largest = max(self.largest, len(batch))
        return batch
