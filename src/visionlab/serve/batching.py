"""Dynamic batching: concurrent requests are gathered into one forward pass.

The shape of LitServe's loop: items wait in a deque until ``max_batch_size`` of them are there
or ``max_wait_ms`` has passed since the first one, then the whole batch runs in the model's own
worker thread, so the event loop never blocks on the model. Each item gets its own result (or
the batch's exception) through its future, in the order the items were submitted.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

__all__ = ["Batcher"]


class Batcher:
    """Runs ``fn(items) -> results`` (one result per item, same order) on batches of items."""

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], max_batch_size: int = 16, max_wait_ms: float = 10.0,
                 name: str = "model", on_batch: Callable[[int, float], None] | None = None,
                 executor: ThreadPoolExecutor | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.fn, self.max_batch_size, self.max_wait = fn, int(max_batch_size), float(max_wait_ms) / 1000.0
        self.on_batch = on_batch  # (batch size, seconds of the forward pass), e.g. for metrics
        self._items: deque[tuple[Any, asyncio.Future]] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # the thread the model runs in; pass one shared by every model so that torch is only ever called
        # from one thread (each thread that calls into OpenMP gets a team of its own, and on a CPU the
        # idle team's spinning threads halve the busy one's speed: 77 -> 42 img/s measured)
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"visionlab-{name}")
        self.running = 0  # items in the forward pass now

    @property
    def depth(self) -> int:
        """Items waiting for the model (not counting the batch running now)."""
        return len(self._items)

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Queue the items and wait for their results (in order); a failed batch raises its error."""
        if self._task is None:
            raise RuntimeError("Batcher.start() was not called")
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
                except TimeoutError:
                    break
            batch = [self._items.popleft() for _ in range(min(self.max_batch_size, len(self._items)))]
            batch = [(item, fut) for item, fut in batch if not fut.done()]  # a cancelled request's items are dropped
            if not batch:
                continue
            self.running = len(batch)
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.fn, [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the model returned {len(results)} results for {len(batch)} inputs")
            except Exception as exc:  # every request of the batch gets the error; the loop goes on
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                self.running = 0
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - t0)
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)

    async def close(self) -> None:
        """Stop after the items already queued are answered."""
        while self._items or self.running:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._own_executor:
            self._executor.shutdown(wait=True)
