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


def load_average() -> str:
    """The machine's 1/5/15-minute load averages, for the benchmark log (other work slows both sides)."""
    return "load average (1/5/15 min): " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def alternate(sides: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each side, timed in turns (A B A B ...) so that background load hits all sides
    alike; `warmup` untimed calls of each side first. Every `fn` must block until its result is ready."""
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def device_line() -> str:
    """One line naming the JAX backend and devices, for the benchmark header."""
    import jax

    devs = jax.devices()
    return f"jax {jax.__version__} on {devs[0].platform}: {len(devs)} x {devs[0].device_kind}; cpu cores {os.cpu_count()}"
