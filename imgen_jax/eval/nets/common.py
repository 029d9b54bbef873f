"""Shared pieces of the evaluation networks (VGGish, Cnn14): weights files, framing, pooling.

A converted network is one safetensors file: the flat weights (names = NNX parameter paths joined
with '/') and, in the metadata, `kind` (e.g. "vggish") and `config` (the JSON of its config
dataclass). Layers use `Precision.HIGHEST`, so the metrics are float32-accurate on TPU too.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Mapping, Type, TypeVar

import jax
import numpy as np

from imgen_jax.configs import config_from_dict, config_to_dict
from imgen_jax.errors import ImgenError

HIGHEST = jax.lax.Precision.HIGHEST
C = TypeVar("C")


def save_net(path: str | os.PathLike, kind: str, cfg, flat: Mapping[str, np.ndarray]) -> None:
    """Write `flat` (float32) with `kind` and `cfg` in the metadata, atomically."""
    from imgen_jax.weights import save_safetensors

    meta = {"kind": kind, "config": json.dumps(config_to_dict(cfg))}
    save_safetensors(path, {k: np.asarray(v, np.float32) for k, v in flat.items()}, metadata=meta)


def read_net(path: str | os.PathLike, kind: str, cls: Type[C]) -> tuple[C, dict[str, np.ndarray]]:
    """(config, flat weights) of a file written by `save_net`; the wrong kind or config is one ImgenError."""
    from safetensors import safe_open

    from imgen_jax.weights import read_safetensors

    path = os.fspath(path)
    flat = read_safetensors(path)  # checks existence and readability first
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
    if meta.get("kind") != kind:
        raise ImgenError(f"{path}: metadata kind is {meta.get('kind')!r}, expected {kind!r} (convert the checkpoint "
                         f"with convert/{kind}_weights.py)")
    try:
        cfg_dict = json.loads(meta.get("config", ""))
    except json.JSONDecodeError:
        raise ImgenError(f"{path}: metadata field 'config' is not JSON") from None
    return config_from_dict(cls, cfg_dict, f"{path} [config]"), flat


def load_net(path: str | os.PathLike, kind: str, cls: Type[C], abstract: Callable[[C], object]):
    """(config, module): `abstract(config)` filled from `path` with every name and shape checked."""
    from imgen_jax.weights import load_into

    cfg, flat = read_net(path, kind, cls)
    module = abstract(cfg)
    load_into(module, flat, os.fspath(path))
    return cfg, module


def frame(x: jax.Array, length: int, hop: int, count: int) -> jax.Array:
    """Frames [..., count, length] of x [..., N], frame t starting at sample t * hop (no padding)."""
    idx = np.arange(length)[None, :] + hop * np.arange(count)[:, None]
    return x[..., idx]


def periodic_hann(length: int) -> np.ndarray:
    """The periodic Hann window [length] float64: 0.5 - 0.5 cos(2 pi n / length)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)


def pool2d(x: jax.Array, kind: str) -> jax.Array:
    """2x2 max or average pooling with stride 2 of x [B, H, W, C]; odd trailing rows/columns are dropped."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)
    return x.max(axis=(2, 4)) if kind == "max" else x.mean(axis=(2, 4))
