"""`jit` with the XLA compiler options imgen_jax uses on each backend.

On CPU, XLA's YNNPACK dot fusions are about 20% slower than its default dot emitter for our fp32
programs (measured on a 2-core x86 VM: musicgen-small teacher-forced forward 2.9 s -> 2.4 s, and
a batch-1 decode step 106 -> 86 ms), so they are switched off, when this XLA knows the option.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.lru_cache(maxsize=None)
def compiler_options(backend: str | None = None) -> dict | None:
    """The compiler options for `backend` (default: JAX's default backend), None when there are none."""
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return None
    try:  # older XLA versions refuse unknown options at compile time
        jax.jit(lambda x: x + 1, compiler_options=_CPU_OPTIONS).lower(jnp.zeros(())).compile()
    except Exception:
        return None
    return dict(_CPU_OPTIONS)


def jit(fun: Callable, **kwargs: Any) -> Callable:
    """`jax.jit(fun, **kwargs)` with `compiler_options()` for the default backend."""
    return jax.jit(fun, compiler_options=compiler_options(), **kwargs)


_BACKEND_JITS: dict = {}


def backend_jit(fun: Callable, **kwargs: Any) -> Callable:
    """`jit(fun, **kwargs)` made once per (fun, kwargs, default backend) and kept: for module-level programs
    called again and again (the decode, the audio-fusion pass), so their compiled executables are reused.
    kwargs must be hashable (tuples, not lists)."""
    key = (fun, tuple(sorted(kwargs.items())), jax.default_backend())
    if key not in _BACKEND_JITS:
        _BACKEND_JITS[key] = jit(fun, **kwargs)
    return _BACKEND_JITS[key]


def jit_method(module, fn: Callable) -> Callable:
    """`fn(module, *arrays)` as one jitted program over the module's state, split once.

    The module's parameters are passed as jit arguments (not baked in as constants), so the
    compiled program is reused for any weights of the same shapes. `.lower(*arrays)` lowers that program.
    """
    from flax import nnx

    graphdef, state = nnx.split(module)
    run = jit(lambda state, *args: fn(nnx.merge(graphdef, state), *args))

    def call(*args):
        return run(state, *args)

    call.lower = lambda *args: run.lower(state, *args)  # the same program, e.g. to read its compiled HLO
    return call
