"""Shared helpers of the benchmarks: repo on sys.path, timing with medians, the closing line."""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmup` untimed calls.

    `fn` must block until its result is ready (call .block_until_ready() on JAX outputs).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed_once(fn: Callable[[], object]) -> float:
    """Wall time of one call (used for first-call compile time)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def device_line() -> str:
    """One line naming the JAX backend and devices, for the benchmark header."""
    import jax

    devs = jax.devices()
    return f"jax {jax.__version__} on {devs[0].platform}: {len(devs)} x {devs[0].device_kind}; cpu cores {os.cpu_count()}"
