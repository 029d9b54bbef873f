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


def matrix_flops(jitted: Callable, *args) -> float:
    """FLOPs of the dot and convolution ops of `jitted(*args)`'s compiled program (`jitted`: a jax.jit or
    imgen_jax.xla.jit_method function, anything with `.lower`), every loop body times
    its trip count (imgen_jax.train.plan.analyse_hlo; XLA's cost_analysis would count a loop body once),
    summed over the devices the program runs on (a partitioned program's HLO is one device's share)."""
    import re

    from imgen_jax.train.plan import analyse_hlo

    text = jitted.lower(*args).compile().as_text()
    header = text.split("\n", 1)[0]
    devices = 1
    for field in ("num_partitions", "replica_count"):
        m = re.search(rf"{field}=(\d+)", header)
        devices *= int(m.group(1)) if m else 1
    return analyse_hlo(text).flops * devices


def matmul_rates(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """fp32 GFLOP/s of one [n, n] @ [n, n] product on this machine, measured now: {"xla": (with
    imgen_jax.xla's compiler options), "torch": (all threads)}; the sides alternate."""
    import jax.numpy as jnp
    import numpy as np
    import torch

    from imgen_jax.xla import jit

    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    ja, ta = jnp.asarray(a), torch.from_numpy(a)
    dot = jit(lambda x: jnp.dot(x, x, precision="highest"))
    med = alternate({"xla": lambda: dot(ja).block_until_ready(), "torch": lambda: torch.mm(ta, ta)}, repeats)
    return {side: 2.0 * n**3 / s / 1e9 for side, s in med.items()}


def floor_lines(flops: float, rates: dict[str, float], jax_s: float, torch_s: float, what: str = "",
                same_work: bool = True) -> list[str]:
    """The bound the matrix work puts on a benchmark: at XLA's measured matmul rate the dots alone take
    flops / rate seconds, so no fp32 program doing this work can beat torch by more than torch_s / that.
    same_work: the PyTorch side does the same matrix work (then its rate on it is printed too)."""
    floor = flops / (rates["xla"] * 1e9)
    pre = f"{what}: " if what else ""
    torch_rate = f"torch {flops / torch_s / 1e9:.0f} GFLOP/s; " if same_work else ""
    return [
        f"{pre}matrix work {flops / 1e9:.1f} GFLOP (compiled HLO: dot / convolution ops, loops x trip counts); "
        f"fp32 matmul rate measured now: XLA {rates['xla']:.0f} GFLOP/s, torch {rates['torch']:.0f} GFLOP/s",
        f"{pre}floor (the matrix work alone at XLA's rate) {floor:.2f} s: jax reaches {floor / jax_s:.0%} of it, "
        f"{torch_rate}best possible ratio here {torch_s / floor:.2f}x",
    ]
