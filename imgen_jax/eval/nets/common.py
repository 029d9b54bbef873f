"""Shared pieces of the evaluation networks (VGGish, Cnn14, CLAP): weights files, framing, pooling,
the torchlibrosa-style log-mel frontend (PANNs, HTSAT), the 3x3 convolution (Winograd) of VGGish and Cnn14.

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


# Winograd minimal filtering F(m x m, 3 x 3) (Lavin & Gray 2016): a tile of (m + 2)^2 inputs gives m^2 outputs of
# a 3x3 correlation as Y = A^T [(G g G^T) * (B^T d B)] A, i.e. (m + 2)^2 products per m^2 outputs instead of 9 m^2.
# F(2, 3) uses the points 0, +-1, inf; F(4, 3) 0, +-1, +-2, inf (all transform coefficients exact in float32 but
# G's 1/6, 1/12, 1/24).
_WINOGRAD = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),  # B^T [4, 4]
        np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64),  # G [4, 3]
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)),  # A^T [2, 4]
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)),
}
WINOGRAD_TILE = 4  # output tile m of conv3x3's Winograd path (bench/conv3x3.py: fastest, errors ~1e-6)
# conv3x3's choice (bench/conv3x3.py): the Winograd transforms are memory-bound and the kernel transform costs
# (tile + 2)^2 C O floats per call, so Winograd pays where there are enough output pixels B * H * W per kernel and
# the channels make the matmuls dominate: C O / (C + O) >= WINOGRAD_MIN_WIDTH (VGGish's 64 -> 128 and wider)
WINOGRAD_MIN_PIXELS = 512
WINOGRAD_MIN_WIDTH = 32
WINOGRAD_CHUNK_BYTES = 16 << 20  # winograd3x3's working set per batch chunk (half this machine's 32 MiB L3)
IM2COL_MAX_PIXELS = 16  # maps this small (Cnn14's last block on a short clip) convolve as im2col + one matmul


def _mix(parts: list, matrix: np.ndarray) -> list:
    """[sum_j matrix[i, j] * parts[j] for each row i], skipping zero terms (the transforms as fused adds)."""
    out = []
    for row in matrix:
        acc = None
        for c, p in zip(row, parts):
            if c == 0:
                continue
            term = p if c == 1 else -p if c == -1 else p * np.float32(c)
            acc = term if acc is None else acc + term
        out.append(acc)
    return out


def xla_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 'SAME' correlation (no bias) of x [B, H, W, C] with kernel [3, 3, C, O] by XLA's convolution (nnx.Conv's)."""
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=HIGHEST)


def im2col3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 'SAME' correlation of x [B, H, W, C] with kernel [3, 3, C, O] as one matmul over [B, H, W, 9C]."""
    b, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)
    return jnp.einsum("bhwk,ko->bhwo", cols, kernel.reshape(9 * c, -1), precision=HIGHEST)  # rows in (i, j, c)


def winograd3x3(x: jax.Array, kernel: jax.Array, tile: int = WINOGRAD_TILE) -> jax.Array:
    """3x3 'SAME' correlation (zero padding 1, stride 1, no bias) of x [B, H, W, C] with kernel [3, 3, C, O]
    -> [B, H, W, O] by Winograd F(tile x tile, 3 x 3), tile 2 or 4.

    The kernel is transformed once ([(tile + 2)^2, C, O]); then, in chunks of the batch whose transformed tiles
    take at most WINOGRAD_CHUNK_BYTES (they stay in cache: up to ~2x faster per layer on large maps, ~5% on the
    whole VGGish, than the whole batch at once on a 2-core EPYC),
    the map is zero-padded to whole tiles, the overlapping (tile + 2)^2 input tiles are transformed, multiplied
    as (tile + 2)^2 matmuls [tiles, C] @ [C, O] (one dot_general, float32 at HIGHEST precision) and transformed
    back to tile x tile outputs, cropped to H x W.
    """
    if tile not in _WINOGRAD:
        raise ImgenError(f"winograd3x3: tile must be one of {sorted(_WINOGRAD)}, got {tile}")
    bt, g, at = _WINOGRAD[tile]
    a = tile + 2
    b, h, w, c = x.shape
    o = kernel.shape[-1]
    th, tw = -(-h // tile), -(-w // tile)
    span_h, span_w = tile * (th - 1) + 1, tile * (tw - 1) + 1
    u = jnp.stack(_mix([kernel[i] for i in range(3)], g))  # [a, 3, C, O]: G g
    u = jnp.stack(_mix([u[:, j] for j in range(3)], g), axis=1).reshape(a * a, c, o)  # G g G^T

    def chunk(xc: jax.Array) -> jax.Array:  # [b', H, W, C] -> [b', H, W, O]
        n = xc.shape[0]
        # each transform one axis at a time, stacking a (or tile) parts: XLA fuses a few wide adds per stage
        xp = jnp.pad(xc, ((0, 0), (1, th * tile + 1 - h), (1, tw * tile + 1 - w), (0, 0)))
        v = jnp.stack(_mix([xp[:, r:r + span_h:tile] for r in range(a)], bt))  # [a, b', th, W', C]: B^T d
        v = jnp.stack(_mix([v[:, :, :, s:s + span_w:tile] for s in range(a)], bt), axis=1)  # [a, a, b', th, tw, C]
        m = jnp.einsum("knc,kco->kno", v.reshape(a * a, n * th * tw, c), u, precision=HIGHEST)
        m = m.reshape(a, a, n, th, tw, o)
        y = jnp.stack(_mix([m[k] for k in range(a)], at), axis=3)  # [a, b', th, tile, tw, O]: A^T m
        y = jnp.stack(_mix([y[l] for l in range(a)], at), axis=-2)  # [b', th, tile, tw, tile, O]: A^T m A
        return y.reshape(n, th * tile, tw * tile, o)[:, :h, :w]

    per_item = a * a * th * tw * (c + o) * 4  # bytes of transformed input and product tiles per batch item
    chunks = -(-b // max(1, min(b, WINOGRAD_CHUNK_BYTES // per_item)))
    if chunks == 1:
        return chunk(x)
    size = -(-b // chunks)
    xs = jnp.pad(x, ((0, chunks * size - b), (0, 0), (0, 0), (0, 0))).reshape(chunks, size, h, w, c)
    return jax.lax.map(chunk, xs).reshape(chunks * size, h, w, o)[:b]


def conv3x3_path(b: int, h: int, w: int, c: int, o: int, tile: int = WINOGRAD_TILE) -> str:
    """How `conv3x3` computes a [B, H, W, C] -> [B, H, W, O] convolution: "im2col", "winograd" or "xla"."""
    if h * w <= IM2COL_MAX_PIXELS:
        return "im2col"
    if min(h, w) >= tile and b * h * w >= WINOGRAD_MIN_PIXELS and c * o >= WINOGRAD_MIN_WIDTH * (c + o):
        return "winograd"
    return "xla"


def conv3x3(x: jax.Array, kernel: jax.Array, bias: jax.Array, tile: int = WINOGRAD_TILE) -> jax.Array:
    """The 3x3 convolution of VGGish and Cnn14 (= nnx.Conv with padding 1, stride 1, HIGHEST precision): x
    [B, H, W, C], kernel [3, 3, C, O], bias [O] -> [B, H, W, O], float32.

    Wide layers on large enough maps use Winograd F(tile x tile, 3x3) (`winograd3x3`; F(4x4, 3x3) does 4x fewer
    multiplications than the direct convolution, whose XLA CPU kernel already runs near the matmul peak). Tiny
    maps (H * W <= IM2COL_MAX_PIXELS, where XLA's CPU convolution is ~100x slow) use im2col + one matmul; the
    rest XLA's convolution (`conv3x3_path` says which).
    """
    path = conv3x3_path(*x.shape, kernel.shape[-1], tile)
    if path == "im2col":
        return im2col3x3(x, kernel) + bias
    if path == "winograd":
        return winograd3x3(x, kernel, tile) + bias
    return xla_conv3x3(x, kernel) + bias
