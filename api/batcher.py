"""Dynamic batching: concurrent requests' items are gathered for a few milliseconds and run as one batch.

On a CPU (and even more on a GPU) one forward pass over 32 images costs far less than 32 passes over one, so a
server answering many clients at once gains throughput by letting requests that arrive together share a pass.
The first item of a batch waits at most ``max_wait_ms`` for company, and only while company is coming: callers
announce a request when its work starts (:meth:`DynamicBatcher.coming`, around the photo's decoding), so a lone
client never waits. A full batch (``max_batch``) goes at once. With batching off, items run one at a time (a
single model, no concurrent forwards fighting for the cores).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Sequence


class DynamicBatcher:
    """Runs ``run_batch(items) -> results`` (same length, same order) on a background thread.

    Args:
        run_batch: processes a list of items; an exception fails every item of that batch.
        max_batch: most items per batch.
        max_wait_ms: how long the first item of a batch waits for others.
        enabled: False = no batching (each item alone, one at a time), for comparison.
    """

    def __init__(self, run_batch: Callable[[Sequence[Any]], Sequence[Any]], *, max_batch: int = 32,
                 max_wait_ms: float = 5.0, enabled: bool = True):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.run_batch = run_batch
        self.max_batch, self.max_wait = int(max_batch), max_wait_ms / 1000.0
        self.enabled = enabled
        self.batches = 0  # batches run (for tests and the load benchmark)
        self.items = 0
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._coming = 0  # requests announced (decoding, queued or in the running batch)
        self._count_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ppssl-batcher", daemon=True)
        if enabled:
            self._thread.start()

    @contextlib.contextmanager
    def coming(self):
        """Announce a request for the duration of its work (decoding, then :meth:`submit`): the batcher waits
        for announced requests, not for ones that may never come."""
        with self._count_lock:
            self._coming += 1
        try:
            yield
        finally:
            with self._count_lock:
                self._coming -= 1

    def _expected(self, in_batch: int) -> bool:
        """True while an announced request has not reached the queue yet (it is still decoding)."""
        return self._coming > in_batch + self._queue.qsize()

    def submit(self, item: Any, timeout: float | None = 120.0) -> Any:
        """Run ``item`` in the next batch and return its result (raises what the batch raised, or the exception
        ``run_batch`` returned in this item's place)."""
        if not self.enabled:
            with self._lock:
                self.batches += 1
                self.items += 1
                result = self.run_batch([item])[0]
        else:
            fut: Future = Future()
            self._queue.put((item, fut))
            result = fut.result(timeout=timeout)
        if isinstance(result, BaseException):
            raise result
        return result

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.perf_counter() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except queue.Empty:
                    pass
                left = deadline - time.perf_counter()
                if left <= 0 or not self._expected(len(batch)):
                    break
                try:
                    batch.append(self._queue.get(timeout=min(left, 0.001)))
                except queue.Empty:
                    continue
            self._run(batch)

    def _run(self, batch: list) -> None:
        futures = [f for _, f in batch]
        try:
            results = self.run_batch([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            for f in futures:
                f.set_exception(exc)
            return
        self.batches += 1
        self.items += len(batch)
        for f, r in zip(futures, results):
            f.set_result(r)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
