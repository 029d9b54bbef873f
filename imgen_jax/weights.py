"""Weights on disk: flat {name: array} safetensors files and their loading into NNX modules.

Names are the NNX state paths joined with '/', e.g. `layers/self_attn/in_proj/kernel`.
Stacked (scanned) layers carry a leading layer axis. Files are written atomically
(temporary file + rename), so an interrupted write never leaves a half-written file.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
from flax import nnx

from imgen_jax.errors import ImgenError


def module_shapes(module: nnx.Module) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{name: (shape, dtype)} of every parameter of `module` (works on abstract modules)."""
    flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
    return {"/".join(str(p) for p in path): (tuple(v.get_value().shape), np.dtype(v.get_value().dtype)) for path, v in flat}


def check_names_and_shapes(
    expected: Mapping[str, tuple[tuple[int, ...], np.dtype]],
    got: Mapping[str, np.ndarray],
    source: str,
) -> None:
    """Raise one ImgenError listing missing, unexpected and mis-shaped weights, if any."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    misshaped = sorted(
        f"{k} (expected {list(expected[k][0])}, got {list(got[k].shape)})"
        for k in set(expected) & set(got)
        if tuple(got[k].shape) != tuple(expected[k][0])
    )
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            shown = ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise ImgenError(f"{source}: weights do not fit the model; " + "; ".join(problems))


def load_into(module: nnx.Module, flat: Mapping[str, np.ndarray], source: str, dtype=None) -> None:
    """Fill the parameters of `module` from `flat`, after checking every name and shape.

    `dtype`, when given, casts floating weights (e.g. jnp.bfloat16 for inference).
    """
    import jax.numpy as jnp

    check_names_and_shapes(module_shapes(module), flat, source)
    state = nnx.state(module, nnx.Param)
    flat_state = nnx.to_flat_state(state)
    for path, var in flat_state:
        arr = np.asarray(flat["/".join(str(p) for p in path)])
        want = np.dtype(var.get_value().dtype) if dtype is None else np.dtype(dtype)
        if not np.issubdtype(arr.dtype, np.floating):
            want = arr.dtype
        var.set_value(jnp.asarray(arr, dtype=want))
    nnx.update(module, nnx.from_flat_state(flat_state))


def module_weights(module: nnx.Module) -> dict[str, np.ndarray]:
    """{name: numpy array} of every parameter of a concrete module."""
    flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
    return {"/".join(str(p) for p in path): np.asarray(v.get_value()) for path, v in flat}


def save_safetensors(path: str | os.PathLike, flat: Mapping[str, np.ndarray], metadata: dict | None = None) -> None:
    """Write `flat` to `path` atomically (temp file in the same directory, then rename)."""
    from safetensors.numpy import save_file

    from imgen_jax.files import atomic_file

    with atomic_file(path, ".safetensors") as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, tmp, metadata=metadata)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a safetensors file into numpy arrays; a missing or damaged file is one ImgenError."""
    from safetensors.numpy import load_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImgenError(f"{path}: weights file not found")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises several types for damaged headers
        raise ImgenError(f"{path}: not a readable safetensors file ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
