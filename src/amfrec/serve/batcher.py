"""Dynamic batching: concurrent requests gathered into one model call.

`Batcher(fn, max_batch, max_wait_ms, in_flight)` calls the model off the event loop, one call at a time: in
a worker thread of its own, or, with `thread=False`, in whichever thread calls `run()` (the server runs it in
the main thread: torch's OpenMP pool keeps its workers spinning between operations only while its threads
are no more than the cores, so a second pool in a worker thread made each forward about 2x slower).
`await batcher(item)` queues the item; the loop takes the oldest waiting item, then keeps taking items
until it holds `max_batch`, or `max_wait_ms` have passed since it took that item
(so requests that queued during the previous call are joined by those their clients send next), or it holds
every request in flight (`in_flight()`, e.g. the server's admitted requests: a lone client never waits) and
at least as many as the previous call (clients answered together send again together, a few milliseconds
apart: 8 closed-loop clients then got batches of 6.7-7.6 items on average, not 4.3-4.8), and
calls `fn(items) -> results` once, one result per item, in order. An exception from `fn` is every item's
answer in that call. Items whose caller went away before the call are dropped.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

MAX_WAIT_MS = 10.0  # the default bound on a request's wait for company (the server's --max-wait-ms)


@dataclass
class _Waiting:
    item: Any
    future: Future


class Batcher:
    """One loop calling `fn` on batches of at most `max_batch` items (see the module doc)."""

    def __init__(
        self,
        fn: Callable[[list[Any]], list[Any]],
        max_batch: int = 16,
        max_wait_ms: float = MAX_WAIT_MS,
        in_flight: Callable[[], int] | None = None,
        thread: bool = True,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if not 0 <= max_wait_ms <= 1000:
            raise ValueError(f"max_wait_ms must be in [0, 1000], got {max_wait_ms}")
        self.fn, self.max_batch, self.max_wait_s = fn, max_batch, max_wait_ms / 1000
        self.in_flight = in_flight  # None: always wait up to max_wait_ms for a full batch
        # for /health: model calls made, items answered, seconds spent in fn
        self.calls, self.items, self.busy_s = 0, 0, 0.0
        self._queue: queue.SimpleQueue[_Waiting | None] = queue.SimpleQueue()
        self._closed = False
        self._last = 1  # the previous call's batch size
        self._thread = None
        if thread:
            self._thread = threading.Thread(target=self.run, name="amfrec-batcher", daemon=True)
            self._thread.start()

    def submit(self, item: Any) -> Future:
        """Queue one item; the future gets its result (or the call's exception)."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        waiting = _Waiting(item, Future())
        self._queue.put(waiting)
        return waiting.future

    async def __call__(self, item: Any) -> Any:
        return await asyncio.wrap_future(self.submit(item))

    def close(self) -> None:
        """Stop the loop after the items already queued (and join the worker thread, if it has one)."""
        self._closed = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(60)

    def _gather(self) -> list[_Waiting] | None:
        """The next batch (live items only; may be empty), or None once closed."""
        first = self._queue.get()
        if first is None:
            return None
        batch, deadline = [first], time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            expected = None if self.in_flight is None else max(self.in_flight(), self._last)
            if expected is not None and len(batch) >= expected and self._queue.empty():
                break  # nobody else is on the way (and the last call held no more)
            remaining = deadline - time.monotonic()
            try:
                nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)  # closing: answer this batch, then stop
                break
            batch.append(nxt)
        self._last = len(batch)
        return [w for w in batch if w.future.set_running_or_notify_cancel()]

    def run(self) -> None:
        """The loop: gather a batch, call `fn`, answer; returns after `close()`."""
        while (batch := self._gather()) is not None:
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results = self.fn([w.item for w in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch function gave {len(results)} results for {len(batch)} items")
            except Exception as e:  # every caller of this batch gets the error; the worker lives on
                for w in batch:
                    w.future.set_exception(e)
                continue
            self.calls, self.items = self.calls + 1, self.items + len(batch)
            self.busy_s += time.perf_counter() - start
            for w, result in zip(batch, results, strict=True):
                w.future.set_result(result)
