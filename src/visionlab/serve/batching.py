"""Dynamic batching: concurrent requests are gathered into one forward pass.

The shape of LitServe's loop: items wait in a deque until ``max_batch_size`` of them are there
or ``max_wait_ms`` has passed since the first one, then the whole batch runs in the model's own
worker thread, so the event loop never blocks on the model. Each item gets its own result (or
its own exception: a failed batch is run again item by item) through its future, in the order
the items were submitted. Should the loop itself ever stop, every request waiting and every
later one gets :class:`BatcherStopped` at once instead of waiting for ever, and ``stopped``
says why (the server's ``/ready`` reports it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

__all__ = ["Batcher", "BatcherStopped"]

log = logging.getLogger("visionlab.serve")


class BatcherStopped(RuntimeError):
    """The batch loop has stopped: nothing submitted will run."""


class Batcher:
    """Runs ``fn(items) -> results`` (one result per item, same order) on batches of items."""

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], max_batch_size: int = 16, max_wait_ms: float = 10.0,
                 name: str = "model", on_batch: Callable[[int, float], None] | None = None,
                 executor: ThreadPoolExecutor | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.fn, self.name, self.max_batch_size, self.max_wait = fn, name, int(max_batch_size), float(max_wait_ms) / 1000.0
        self.on_batch = on_batch  # (batch size, seconds of the forward pass), e.g. for metrics
        self._items: deque[tuple[Any, asyncio.Future]] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._batch: list[tuple[Any, asyncio.Future]] = []  # the items in the forward pass now
        self._closing = False
        self.stopped: str | None = None  # why the loop has stopped, once it has
        # the thread the model runs in; pass one shared by every model so that torch is only ever called
        # from one thread (each thread that calls into OpenMP gets a team of its own, and on a CPU the
        # idle team's spinning threads halve the busy one's speed: 77 -> 42 img/s measured)
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"visionlab-{name}")

    @property
    def running(self) -> int:
        """Items in the forward pass now."""
        return len(self._batch)

    @property
    def depth(self) -> int:
        """Items waiting for the model (not counting the batch running now)."""
        return len(self._items)

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())
        self._task.add_done_callback(self._on_stop)

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Queue the items and wait for their results (in order); a failed item raises its error."""
        if self._task is None:
            raise RuntimeError("Batcher.start() was not called")
        if self.stopped is not None:
            raise BatcherStopped(self.stopped)
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._items.extend(zip(items, futures))
        self._wake.set()
        return list(await asyncio.gather(*futures))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._items:
                self._wake.clear()
                await self._wake.wait()
            deadline = loop.time() + self.max_wait
            while len(self._items) < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except asyncio.TimeoutError:  # not the built-in TimeoutError before Python 3.11
                    break
            batch = [self._items.popleft() for _ in range(min(self.max_batch_size, len(self._items)))]
            batch = [(item, fut) for item, fut in batch if not fut.done()]  # a cancelled request's items are dropped
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        """One forward pass. When it fails, each item runs again alone, so that one bad item (a
        MemoryError on one huge image) fails only its own request, not the whole batch."""
        self._batch = batch  # kept if the loop dies here: _on_stop answers them
        try:
            outcomes: list[Any] = await self._forward([item for item, _ in batch])
        except Exception as exc:
            outcomes = [exc] if len(batch) == 1 else [None if fut.done() else await self._alone(item) for item, fut in batch]
        self._batch = []
        for (_, fut), outcome in zip(batch, outcomes):
            if fut.done():
                continue
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)

    async def _forward(self, items: list[Any]) -> list[Any]:
        t0 = time.perf_counter()
        results = await asyncio.get_running_loop().run_in_executor(self._executor, self.fn, items)
        if len(results) != len(items):
            raise RuntimeError(f"the model returned {len(results)} results for {len(items)} inputs")
        if self.on_batch is not None:
            self.on_batch(len(items), time.perf_counter() - t0)
        return list(results)

    async def _alone(self, item: Any) -> Any:
        """The result of the item in a batch of its own, or the exception it raised."""
        try:
            return (await self._forward([item]))[0]
        except Exception as exc:
            return exc

    def _on_stop(self, task: asyncio.Task) -> None:
        """The loop has ended: every request waiting, and every later one, gets BatcherStopped."""
        if self._closing:
            self.stopped = "the server is shutting down"
        else:
            exc = None if task.cancelled() else task.exception()
            how = f"stopped ({type(exc).__name__}: {exc})" if exc else "was cancelled"
            self.stopped = f"the batch loop of model {self.name!r} {how}"
            log.error("%s; it answers no more requests", self.stopped, exc_info=exc)
        for _, fut in [*self._batch, *self._items]:
            if not fut.done():
                fut.set_exception(BatcherStopped(self.stopped))
        self._batch, self._items = [], deque()

    async def close(self) -> None:
        """Stop after the items already queued are answered (those of requests given up, e.g. cut off at
        the end of the drain, are not waited for: the loop would drop them only at its batch deadline)."""
        while any(not fut.done() for _, fut in self._items) or self.running:
            await asyncio.sleep(0.01)
        if self._task is not None and not self._task.done():  # a loop that died has been reported already
            self._closing = True
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._own_executor:
            self._executor.shutdown(wait=True)
