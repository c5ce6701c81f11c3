"""Batches made by threads of this process: the CPU data path of every pass (build, training, feature passes).

On a CPU the model's own threads already use every core. DataLoader worker processes beside them preempt those
threads (each op of the model then waits for its slowest thread) and start afresh for every pass; threads of
this process that make each batch between model steps cost less (docs/performance.md §1, §4; Pillow, hashlib
and numpy release the GIL). What runs in these threads must not run parallel torch ops: each thread would start
an OpenMP team of its own and slow the model's (``engine.preprocess.ToNormalizedFloat`` says how; numpy does
the data path's array work instead, ``tests/test_data_threads.py``). On a GPU, DataLoader worker processes
overlapping the GPU's work stay the better choice.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
B = TypeVar("B")


def thread_batches(get: Callable[[int], T], positions: Sequence[int], batch_size: int, threads: int,
                   collate: Callable[[list[T]], B], *, drop_last: bool = False, prefetch: bool = False,
                   name: str = "ppssl-data") -> Iterator[B]:
    """``collate([get(p) for p in chunk])`` for each ``batch_size`` chunk of ``positions``, in order.

    Args:
        get: one item by position (``dataset.__getitem__``); called from ``threads`` threads at once.
        positions: the order of the items.
        drop_last: skip a final chunk shorter than ``batch_size`` (training's whole batches).
        prefetch: make the next batch while the caller works on this one, in threads at the lowest scheduling
            priority (they take the cycles the caller leaves idle rather than preempt it); off: each batch is
            made when the caller asks for it, in turn with the caller's work.
        name: the threads' name prefix (they end when the generator is exhausted or closed).

    The batches do not depend on ``threads`` or ``prefetch`` when ``get`` is a pure function of the position.
    """
    from concurrent.futures import ThreadPoolExecutor

    positions = list(positions)
    end = len(positions) - batch_size + 1 if drop_last else len(positions)
    starts = range(0, max(end, 0), batch_size)
    init = lowest_priority if prefetch else None
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix=name, initializer=init) as pool:
        def make(s: int) -> B:
            return collate(list(pool.map(get, positions[s:s + batch_size])))

        if not prefetch:
            for s in starts:
                yield make(s)
            return
        with ThreadPoolExecutor(1, thread_name_prefix=f"{name}-ahead", initializer=init) as ahead:
            pending = None
            for s in starts:
                nxt = ahead.submit(make, s)
                if pending is not None:
                    yield pending.result()
                pending = nxt
            if pending is not None:
                yield pending.result()


def lowest_priority() -> None:
    """Nice 19 for the calling thread (Linux schedules threads, so this is per thread); elsewhere a no-op."""
    import os
    import threading

    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass
