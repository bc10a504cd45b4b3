"""Timing helpers shared by the benchmark scripts.

A script imports them as ``from _timing import best_time`` (running ``python benchmarks/X.py`` puts
``benchmarks/`` first on ``sys.path``). Every figure is wall-clock seconds from ``time.perf_counter``;
``sync`` (e.g. :func:`device_sync`) runs before and after each timed call so that queued CUDA work is
counted in the call that queued it.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable


def no_sync() -> None:
    """The ``sync`` of work that finishes when the call returns (CPU)."""


def device_sync(device) -> Callable[[], None]:
    """``torch.cuda.synchronize`` for a CUDA ``device`` (a ``torch.device`` or its name), else :func:`no_sync`."""
    import torch

    return torch.cuda.synchronize if torch.device(device).type == "cuda" else no_sync


@dataclass
class Timing:
    """What :func:`measure` saw: ``seconds`` (``reduce`` of ``times``), ``cpu_seconds`` (process CPU time of
    the fastest call), ``result`` (what the last call returned) and every call's wall time ``times``."""

    seconds: float
    cpu_seconds: float
    result: Any
    times: list[float]


def measure(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] = no_sync, *, warmup: bool = True,
            reduce: Callable[[list[float]], float] = min) -> Timing:
    """Call ``fn()`` ``repeats`` times (after one untimed call when ``warmup``); ``reduce`` is ``min`` (best
    time) or ``statistics.median``. Raises ``ValueError`` when ``repeats < 1``."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if warmup:
        fn()
        sync()
    times, cpu_times, result = [], [], None
    for _ in range(repeats):
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    fastest = min(range(repeats), key=times.__getitem__)
    return Timing(reduce(times), cpu_times[fastest], result, times)


def best_time(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] = no_sync, *,
              warmup: bool = True) -> float:
    """Fastest wall time of ``repeats`` calls of ``fn()`` (see :func:`measure`)."""
    return measure(fn, repeats, sync, warmup=warmup).seconds


def median_time(fn: Callable[[], Any], repeats: int, sync: Callable[[], None] = no_sync, *,
                warmup: bool = True) -> float:
    """Median wall time of ``repeats`` calls of ``fn()`` (see :func:`measure`)."""
    return measure(fn, repeats, sync, warmup=warmup, reduce=statistics.median).seconds


def timed_pair(first: Callable[[], Any], second: Callable[[], Any], repeats: int,
               sync: Callable[[], None] = no_sync) -> tuple[float, float]:
    """Median seconds of two functions run alternately ``repeats`` times each after one warm-up call each:
    fair on a machine shared with other work, whose load then hits both alike."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    first(), second()
    sync()
    times_first, times_second = [], []
    for _ in range(repeats):
        for fn, times in ((first, times_first), (second, times_second)):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times_first), statistics.median(times_second)


def matmul_flops(device="cpu", dtype=None, size: int = 3072, repeats: int = 3) -> float:
    """Achieved FLOP/s of a ``size`` x ``size`` matmul on ``device`` in ``dtype`` (default float32), best of
    ``repeats``: the machine's practical peak, measured in the same run as the figure it scales."""
    import torch

    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return 2 * size ** 3 / best_time(lambda: torch.mm(a, b), repeats, device_sync(device))
