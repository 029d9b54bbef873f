"""Shared pieces of the evaluation networks (VGGish, Cnn14, CLAP): weights files, framing, pooling,
the torchlibrosa-style log-mel frontend (PANNs, HTSAT).

A converted network is one safetensors file: the flat weights (names = NNX parameter paths joined
with '/') and, in the metadata, `kind` (e.g. "vggish") and `config` (the JSON of its config
dataclass). Layers use `Precision.HIGHEST`, so the metrics are float32-accurate on TPU too.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Mapping, Type, TypeVar

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imgen_jax.configs import config_from_dict, config_to_dict
from imgen_jax.errors import ImgenError

HIGHEST = jax.lax.Precision.HIGHEST
C = TypeVar("C")


def save_net(path: str | os.PathLike, kind: str, cfg, flat: Mapping[str, np.ndarray],
             extra: Mapping[str, str] | None = None) -> None:
    """Write `flat` (float32) with `kind` and `cfg` (and the strings `extra`, e.g. a tokenizer's files)
    in the metadata, atomically."""
    from imgen_jax.weights import save_safetensors

    meta = {**(extra or {}), "kind": kind, "config": json.dumps(config_to_dict(cfg))}
    save_safetensors(path, {k: np.asarray(v, np.float32) for k, v in flat.items()}, metadata=meta)


def read_meta(path: str | os.PathLike) -> dict[str, str]:
    """The metadata strings of a safetensors file written by `save_net`."""
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="numpy") as f:
        return dict(f.metadata() or {})


def read_net(path: str | os.PathLike, kind: str, cls: Type[C]) -> tuple[C, dict[str, np.ndarray]]:
    """(config, flat weights) of a file written by `save_net`; the wrong kind or config is one ImgenError."""
    from imgen_jax.weights import read_safetensors

    path = os.fspath(path)
    flat = read_safetensors(path)  # checks existence and readability first
    meta = read_meta(path)
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


def slaney_mel(f):
    """Slaney's mel scale (librosa's default): f / (200 / 3) below 1 kHz, 15 + 27 ln(f / 1000) / ln 6.4 above."""
    f = np.asarray(f, np.float64)
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * 27.0 / np.log(6.4)
    return np.where(f >= 1000.0, log_part, f * 3.0 / 200.0)


def slaney_hz(m):
    """Inverse of `slaney_mel`."""
    m = np.asarray(m, np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((m - 15.0) * np.log(6.4) / 27.0), m * 200.0 / 3.0)


@functools.lru_cache(maxsize=8)
def slaney_mel_filters(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float,
                       owner: str = "mel filters") -> np.ndarray:
    """Area-normalised Slaney mel filters [n_fft // 2 + 1, n_mels] float64 (= librosa.filters.mel(...).T,
    torchlibrosa's `LogmelFilterBank.melW`); `owner` names the config in the error for a bad range."""
    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ImgenError(f"{owner}: need 0 <= f_min < f_max <= {sample_rate / 2}, got {f_min}, {f_max}")
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = slaney_hz(np.linspace(slaney_mel(f_min), slaney_mel(f_max), n_mels + 2))
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - lo) / (mid - lo)
    down = (hi - freqs[:, None]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down)) * (2.0 / (hi - lo))


def power_log_mel(wav: jax.Array, sample_rate: int, window: int, hop: int, mel: np.ndarray, amin: float,
                  owner: str) -> jax.Array:
    """torchlibrosa's Spectrogram + LogmelFilterBank (PANNs, HTSAT): wav [B, N] -> dB [B, 1 + N // hop, mels].

    Centred STFT (reflect padding of window // 2 each side), periodic Hann window of n_fft = window,
    power |X|^2, the mel filters `mel` [window // 2 + 1, mels], 10 log10(max(mel, amin)) (ref 1, no top_db).
    """
    n = wav.shape[-1]
    pad = window // 2
    if n <= pad:
        raise ImgenError(f"{owner}: {n} samples is too short (need more than {pad} at {sample_rate} Hz)")
    x = jnp.pad(wav.astype(jnp.float32), ((0, 0), (pad, pad)), mode="reflect")
    frames = frame(x, window, hop, 1 + n // hop) * jnp.asarray(periodic_hann(window), jnp.float32)
    spec = jnp.fft.rfft(frames, axis=-1)
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    out = jnp.einsum("btf,fm->btm", power, jnp.asarray(mel, jnp.float32), precision=HIGHEST)
    return 10.0 * jnp.log10(jnp.maximum(out, amin))


class Affine(nnx.Module):
    """x * scale + bias over the last axis (a folded inference batch norm)."""

    def __init__(self, dim: int):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.scale[...] + self.bias[...]
