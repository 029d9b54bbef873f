"""Hybrid Transformer Demucs (HTDemucs, demucs 4.x) in Flax NNX, inference only: the P-Demucs separator.

Recipe (demucs 4.1.0 `demucs.htdemucs.HTDemucs` in eval mode, the published `htdemucs` model
`955717e8`: drums / bass / other / vocals, stereo, 44.1 kHz, channels 48, depth 4, dconv_mode 3,
bottom_channels 512, t_layers 5, segment 39/5 s = 343,980 samples; complex as channels, so no
Wiener filtering):

    spectrogram  L = segment samples, hop = nfft / 4 = 1024, le = ceil(L / hop) frames. The mix is
                 reflect-padded by 3 hop / 2 = 1536 on the left and 1536 + le hop - L on the right;
                 frame k covers padded samples [k hop, k hop + nfft) (torch.stft's own centring is
                 never reached), periodic Hann window, rfft scaled by 1 / sqrt(nfft), Nyquist bin
                 dropped: [B, A, nfft / 2, le] complex -> 2A real channels (a0 re, a0 im, a1 re, ...)
    inverse      per source, the Nyquist bin and 2 empty frames each side are added back, frames are
                 irfft * sqrt(nfft) * window, overlap-added, divided by the summed squared window
                 (torch.istft), and the samples [nfft / 2 + 1536, ... + L) of the sum are kept
    normalise    freq branch: (x - mean) / (1e-5 + std) over (C, F, T) per example (std with N - 1);
                 time branch: the same over (A, L); both undone on the outputs
    encoder      per layer (freq branch: convs over frequency with kernel [8, 1], stride [4, 1],
                 padding [2, 0]; time branch: conv1d kernel 8, stride 4, padding 2 after right-padding
                 to a multiple of 4): conv -> (+ injected time branch when the branches merge) ->
                 GroupNorm (layers >= norm_starts) -> GELU -> DConv -> 1x1 conv to 2C -> GroupNorm
                 -> GLU. After the first freq layer: + freq_emb * emb_scale * embedding[F] (freq axis)
    DConv        depth 2, dilation 2^d: conv k3 C -> C / 8, GroupNorm(1), GELU, conv 1x1 -> 2C,
                 GroupNorm(1), GLU, LayerScale, residual; freq tensors run it along time per bin
    transformer  1x1 convs to bottom_channels (512) around it; freq tokens in (t, f) order + 2-D
                 sinusoidal embedding, time tokens + 1-D sinusoidal embedding (cos | sin halves),
                 each after its input LayerNorm; layers alternate self (even) / cross (odd)
                 attention, pre-norm, GELU MLP x4, LayerScale on both residuals, GroupNorm(1) over
                 (tokens, channels) after each layer; a cross layer reads the other branch's input
    decoder      (+ skip) -> conv k3 (3 x 3 on the freq branch) to 2C -> GroupNorm -> GLU -> DConv ->
                 transposed conv (kernel 8, stride 4) -> GroupNorm -> crop 2 each side (freq) /
                 [2, 2 + length) (time) -> GELU except the last layer
    output       freq branch -> complex spectrogram -> inverse STFT; + time branch; [B, S, A, L]

Inference driver (`separate`, = `demucs.api.Separator.separate_tensor`, which the 4.1.0 CLI
`python -m demucs.separate` runs, with one model, shifts=0, split=True, overlap=0.25,
segment = the model's segment):

    ref = mix.mean(0); mix' = (mix - ref.mean()) / (ref.std() + 1e-8)      (std with N - 1)
    segments of L samples start every stride = int(0.75 L) samples (offsets 0, stride, ... < n);
    a segment shorter than L (the last ones) is centred in an L window taken from the mix itself
    (real neighbouring samples, zeros only beyond the ends), separated, and centre-trimmed back;
    outputs are overlap-added with a triangle weight (1..L/2, L - L/2..1, divided by its max)
    and divided by the summed weights; out * (ref.std() + 1e-8) + ref.mean().

Differences from the reference, all documented choices: demucs 4.0.1's CLI normalised with
`ref.std()` (no 1e-8: a silent mix gives NaN there, zeros here); the CLI's default is shifts=1
(one random shift of up to 0.5 s, so its output is random); ours is shifts=0 (deterministic), and
`separate(..., shifts=k, seed=s)` reproduces the shift procedure with seeded offsets. A mono mix is
duplicated to the model's channels here (as demucs' `convert_audio` does); the output always has
the model's channels. The forward is jitted for one fixed shape [batch, A, L], so a mix of any
length compiles once. Weights: convert/htdemucs_weights.py; parity: tests/test_eval_demucs.py.

Use:

    sep = htdemucs_separator(load_htdemucs("htdemucs.safetensors"), batch_size=1)
    stems = sep.separate(mix)          # mix [2 or 1, n] float32 at 44.1 kHz -> [4, 2, n]
    vocals = stems[sep.sources.index("vocals")]

`sep.forward` is the jitted model, [batch_size, A, L] -> [batch_size, S, A, L]. On CPU one published
segment (7.8 s) is about 345 GFLOP (~40 s of PyTorch on 2 CPU cores); `batch_size` > 1 pays off on accelerators.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imgen_jax.errors import ImgenError
from imgen_jax.eval.nets.common import HIGHEST, frame, load_net, periodic_hann

KIND = "htdemucs"
EPS_NORM = 1e-5  # GroupNorm / LayerNorm eps (PyTorch defaults) and the input normalisation's
SOURCES = ("drums", "bass", "other", "vocals")


@dataclasses.dataclass(frozen=True)
class HTDemucsConfig:
    """HTDemucs sizes (the `kwargs` of demucs' model package); defaults = the published `htdemucs`.

    `segment_length` is demucs' training length int(segment * samplerate) in samples (the published
    segment is Fraction(39, 5) s). Options HTDemucs has but the published models do not use
    (multi_freqs, Wiener filtering / cac=False, sparse attention, CAPE / scaled embeddings, group norms
    inside the transformer) are refused by the converter.
    """

    sources: tuple[str, ...] = SOURCES
    audio_channels: int = 2
    samplerate: int = 44100
    segment_length: int = 343980
    channels: int = 48
    channels_time: int | None = None
    growth: float = 2.0
    nfft: int = 4096
    depth: int = 4
    rewrite: bool = True
    freq_emb: float = 0.2
    emb_scale: float = 10.0
    kernel_size: int = 8
    time_stride: int = 2
    stride: int = 4
    context: int = 1
    context_enc: int = 0
    norm_starts: int = 4
    norm_groups: int = 4
    dconv_mode: int = 3
    dconv_depth: int = 2
    dconv_comp: float = 8.0
    bottom_channels: int = 512
    t_layers: int = 5
    t_hidden_scale: float = 4.0
    t_heads: int = 8
    t_norm_in: bool = True
    t_norm_first: bool = True
    t_norm_out: bool = True
    t_max_period: float = 10000.0
    t_layer_scale: bool = True
    t_gelu: bool = True
    t_weight_pos_embed: float = 1.0
    t_cross_first: bool = False


# ------------------------------------------------------------------ layer plan (mirrors HTDemucs.__init__)


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """One encoder index: the freq-branch layer's settings and the time-branch layer's (if any)."""

    freq: bool  # the freq-branch layer still convolves over frequency
    kernel: int
    stride: int
    pad: bool
    norm: bool
    last_freq: bool  # time branch merges into the freq branch here (its layer is conv-only)
    chin_z: int
    chout_z: int
    chin: int
    chout: int
    dec_chout_z: int  # the freq decoder's output channels
    dec_chout: int
    freqs_out: int  # frequency bins after this layer


def layer_plan(cfg: HTDemucsConfig) -> list[LayerPlan]:
    """The per-index channel / kernel settings HTDemucs.__init__ derives from its kwargs."""
    plans = []
    chin = cfg.audio_channels
    chin_z = 2 * chin
    chout = cfg.channels_time or cfg.channels
    chout_z = cfg.channels
    freqs = cfg.nfft // 2
    for index in range(cfg.depth):
        freq = freqs > 1
        stri, ker = cfg.stride, cfg.kernel_size
        if not freq:
            ker, stri = 2 * cfg.time_stride, cfg.time_stride
        pad, last_freq = True, False
        if freq and freqs <= cfg.kernel_size:
            ker, pad, last_freq = freqs, False, True
        if last_freq:
            chout_z = max(chout, chout_z)
            chout = chout_z
        enc_in_z, enc_in = chin_z, chin
        if index == 0:
            chin = cfg.audio_channels * len(cfg.sources)
            chin_z = 2 * chin
        if freq:
            freqs = 1 if freqs <= cfg.kernel_size else freqs // cfg.stride
        plans.append(LayerPlan(freq, ker, stri, pad, index >= cfg.norm_starts, last_freq,
                               enc_in_z, chout_z, enc_in, chout, chin_z, chin, freqs))
        chin, chin_z = chout, chout_z
        chout, chout_z = int(cfg.growth * chout), int(cfg.growth * chout_z)
    return plans


# ------------------------------------------------------------------ primitives (channels last)


def _zeros(*shape: int) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, jnp.float32))


class Conv(nnx.Module):
    """Convolution over 1 or 2 leading spatial axes of x [B, *spatial, Cin]; kernel [*k, Cin, Cout].

    `transpose=True` is PyTorch's ConvTranspose (no padding): length (L - 1) * stride + k.
    """

    def __init__(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int] = (1,),
                 padding: Sequence[int] = (0,), dilation: int = 1, transpose: bool = False):
        self.kernel = _zeros(*kernel, cin, cout)
        self.bias = _zeros(cout)
        self.stride = tuple(stride)
        self.padding = tuple(padding)
        self.dilation = dilation
        self.transpose = transpose

    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.kernel[...]
        nd = w.ndim - 2
        dn = ("NWC", "WIO", "NWC") if nd == 1 else ("NHWC", "HWIO", "NHWC")
        if self.transpose:
            k = w.shape[:nd]
            y = jax.lax.conv_general_dilated(
                x, jnp.flip(w, axis=tuple(range(nd))), window_strides=(1,) * nd,
                padding=[(kk - 1, kk - 1) for kk in k], lhs_dilation=self.stride,
                dimension_numbers=dn, precision=HIGHEST)
        else:
            y = jax.lax.conv_general_dilated(
                x, w, window_strides=self.stride, padding=[(p, p) for p in self.padding],
                rhs_dilation=(self.dilation,) * nd, dimension_numbers=dn, precision=HIGHEST)
        return y + self.bias[...]


class Norm(nnx.Module):
    """GroupNorm(groups, dim) of x [B, ..., dim] over everything but the batch (per group);
    groups=0 is a LayerNorm over the last axis. eps 1e-5, biased variance (PyTorch)."""

    def __init__(self, dim: int, groups: int = 1):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = _zeros(dim)
        self.groups = groups

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.groups == 0:
            mean = x.mean(-1, keepdims=True)
            var = ((x - mean) ** 2).mean(-1, keepdims=True)
            y = (x - mean) / jnp.sqrt(var + EPS_NORM)
        else:
            g = x.reshape(*x.shape[:-1], self.groups, x.shape[-1] // self.groups)
            axes = tuple(range(1, g.ndim - 2)) + (g.ndim - 1,)
            mean = g.mean(axes, keepdims=True)
            var = ((g - mean) ** 2).mean(axes, keepdims=True)
            y = ((g - mean) / jnp.sqrt(var + EPS_NORM)).reshape(x.shape)
        return y * self.scale[...] + self.bias[...]


def _glu(x: jax.Array) -> jax.Array:
    a, b = jnp.split(x, 2, axis=-1)
    return a * jax.nn.sigmoid(b)


def _gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


class Dense(nnx.Module):
    """x [..., din] @ kernel [din, dout] + bias."""

    def __init__(self, din: int, dout: int):
        self.kernel = _zeros(din, dout)
        self.bias = _zeros(dout)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("...i,io->...o", x, self.kernel[...], precision=HIGHEST) + self.bias[...]


class DConvLayer(nnx.Module):
    def __init__(self, channels: int, hidden: int, dilation: int):
        self.conv1 = Conv(channels, hidden, (3,), padding=(dilation,), dilation=dilation)
        self.norm1 = Norm(hidden)
        self.conv2 = Conv(hidden, 2 * channels, (1,))
        self.norm2 = Norm(2 * channels)
        self.scale = _zeros(channels)  # LayerScale

    def __call__(self, x: jax.Array) -> jax.Array:
        y = _gelu(self.norm1(self.conv1(x)))
        return x + self.scale[...] * _glu(self.norm2(self.conv2(y)))


class DConv(nnx.Module):
    """Residual dilated-conv branch over time, x [B, T, C] (a freq tensor [B, F, T, C] per bin)."""

    def __init__(self, channels: int, cfg: HTDemucsConfig):
        hidden = int(channels / cfg.dconv_comp)
        self.layers = nnx.List([DConvLayer(channels, hidden, 2 ** d) for d in range(cfg.dconv_depth)])

    def __call__(self, x: jax.Array) -> jax.Array:
        shape = x.shape
        x = x.reshape(-1, *shape[-2:])
        for layer in self.layers:
            x = layer(x)
        return x.reshape(shape)


class EncLayer(nnx.Module):
    """HEncLayer: freq (x [B, F, T, C], convs over F) or time (x [B, T, C])."""

    def __init__(self, chin: int, chout: int, *, freq: bool, kernel: int, stride: int, pad: bool, norm: bool,
                 empty: bool, dconv: bool, cfg: HTDemucsConfig):
        self.freq, self.stride, self.empty = freq, stride, empty
        p = kernel // 4 if pad else 0
        if freq:
            self.conv = Conv(chin, chout, (kernel, 1), (stride, 1), (p, 0))
        else:
            self.conv = Conv(chin, chout, (kernel,), (stride,), (p,))
        if empty:
            return
        ctx = cfg.context_enc
        self.norm1 = Norm(chout, cfg.norm_groups) if norm else None
        k = (1 + 2 * ctx,) * (2 if freq else 1)
        self.rewrite = Conv(chout, 2 * chout, k, (1,) * len(k), (ctx,) * len(k)) if cfg.rewrite else None
        self.norm2 = Norm(2 * chout, cfg.norm_groups) if norm and cfg.rewrite else None
        self.dconv = DConv(chout, cfg) if dconv else None

    def __call__(self, x: jax.Array, inject: jax.Array | None = None) -> jax.Array:
        if not self.freq:
            if x.ndim == 4:  # [B, F, T, C] -> [B, T, C * F] (PyTorch's view(B, C * F, T))
                b, f, t, c = x.shape
                x = x.transpose(0, 2, 3, 1).reshape(b, t, c * f)
            le = x.shape[1]
            if le % self.stride:
                x = jnp.pad(x, ((0, 0), (0, self.stride - le % self.stride), (0, 0)))
        y = self.conv(x)
        if self.empty:
            return y
        if inject is not None:
            y = y + (inject[:, None] if inject.ndim == 3 and y.ndim == 4 else inject)
        y = _gelu(self.norm1(y) if self.norm1 is not None else y)
        if self.dconv is not None:
            y = self.dconv(y)
        if self.rewrite is None:
            return y
        z = self.rewrite(y)
        return _glu(self.norm2(z) if self.norm2 is not None else z)


class DecLayer(nnx.Module):
    """HDecLayer: (x, skip, length) -> (output, pre), `pre` being the input of the transposed conv."""

    def __init__(self, chin: int, chout: int, *, freq: bool, kernel: int, stride: int, pad: bool, norm: bool,
                 empty: bool, last: bool, dconv: bool, cfg: HTDemucsConfig):
        self.freq, self.empty, self.last, self.chin = freq, empty, last, chin
        self.pad = kernel // 4 if pad else 0
        k = (kernel, 1) if freq else (kernel,)
        s = (stride, 1) if freq else (stride,)
        self.conv_tr = Conv(chin, chout, k, s, transpose=True)
        self.norm2 = Norm(chout, cfg.norm_groups) if norm else None
        if empty:
            return
        c = cfg.context
        kr = (1 + 2 * c,) * len(k)
        self.rewrite = Conv(chin, 2 * chin, kr, (1,) * len(k), (c,) * len(k)) if cfg.rewrite else None
        self.norm1 = Norm(2 * chin, cfg.norm_groups) if norm and cfg.rewrite else None
        self.dconv = DConv(chin, cfg) if dconv else None

    def __call__(self, x: jax.Array, skip: jax.Array | None, length: int) -> tuple[jax.Array, jax.Array]:
        if self.freq and x.ndim == 3:  # [B, T, C * F] -> [B, F, T, C]
            b, t, cf = x.shape
            x = x.reshape(b, t, self.chin, cf // self.chin).transpose(0, 3, 1, 2)
        if not self.empty:
            x = x + skip
            y = x
            if self.rewrite is not None:
                z = self.rewrite(x)
                y = _glu(self.norm1(z) if self.norm1 is not None else z)
            if self.dconv is not None:
                y = self.dconv(y)
        else:
            y = x
        z = self.conv_tr(y)
        z = self.norm2(z) if self.norm2 is not None else z
        if self.freq:
            if self.pad:
                z = z[:, self.pad:-self.pad]
        else:
            z = z[:, self.pad:self.pad + length]
        if not self.last:
            z = _gelu(z)
        return z, y


# ------------------------------------------------------------------ cross-domain transformer


def sin_embedding(length: int, dim: int, max_period: float) -> np.ndarray:
    """demucs' 1-D embedding [length, dim] float32: cos | sin of pos / max_period^(i / (dim / 2 - 1))."""
    half = dim // 2
    pos = np.arange(length, dtype=np.float32)[:, None]
    div = np.float32(max_period) ** (np.arange(half, dtype=np.float32) / np.float32(half - 1))
    phase = pos / div
    return np.concatenate([np.cos(phase), np.sin(phase)], axis=-1).astype(np.float32)


def sin_embedding_2d(dim: int, height: int, width: int, max_period: float) -> np.ndarray:
    """demucs' 2-D embedding as tokens [width * height, dim] (t-major): the first half of the
    channels encode the time (width) position, sin / cos interleaved, the second half the frequency."""
    if dim % 4:
        raise ImgenError(f"HTDemucs: transformer width {dim} must be a multiple of 4")
    half = dim // 2
    div = np.exp(np.arange(0.0, half, 2, dtype=np.float32) * np.float32(-(math.log(max_period) / half)))
    pe = np.zeros((width, height, dim), np.float32)
    pw = np.arange(width, dtype=np.float32)[:, None] * div  # [W, half / 2]
    ph = np.arange(height, dtype=np.float32)[:, None] * div
    pe[:, :, 0:half:2] = np.sin(pw)[:, None]
    pe[:, :, 1:half:2] = np.cos(pw)[:, None]
    pe[:, :, half::2] = np.sin(ph)[None]
    pe[:, :, half + 1::2] = np.cos(ph)[None]
    return pe.reshape(width * height, dim)


class Attention(nnx.Module):
    """nn.MultiheadAttention (batch first): in_proj [d, 3d] (q | k | v), out_proj [d, d]."""

    def __init__(self, dim: int, heads: int):
        self.in_proj = Dense(dim, 3 * dim)
        self.out_proj = Dense(dim, dim)
        self.heads = heads

    def __call__(self, q: jax.Array, kv: jax.Array) -> jax.Array:
        d = q.shape[-1]
        w, b = self.in_proj.kernel[...], self.in_proj.bias[...]
        h, hd = self.heads, d // self.heads

        def proj(x, i):
            y = jnp.einsum("bti,io->bto", x, w[:, i * d:(i + 1) * d], precision=HIGHEST) + b[i * d:(i + 1) * d]
            return y.reshape(*y.shape[:2], h, hd)

        qh, kh, vh = proj(q, 0), proj(kv, 1), proj(kv, 2)
        scores = jnp.einsum("bqhd,bkhd->bhqk", qh / math.sqrt(hd), kh, precision=HIGHEST)
        out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), vh, precision=HIGHEST)
        return self.out_proj(out.reshape(*q.shape[:2], d))


class TransformerLayer(nnx.Module):
    """MyTransformerEncoderLayer (cross=False) or CrossTransformerEncoderLayer (cross=True), pre-norm."""

    def __init__(self, dim: int, cfg: HTDemucsConfig, cross: bool):
        self.cross = cross
        if cross:
            self.cross_attn = Attention(dim, cfg.t_heads)
        else:
            self.self_attn = Attention(dim, cfg.t_heads)
        hidden = int(dim * cfg.t_hidden_scale)
        self.linear1 = Dense(dim, hidden)
        self.linear2 = Dense(hidden, dim)
        self.norm1 = Norm(dim, 0)
        self.norm2 = Norm(dim, 0)
        self.norm3 = Norm(dim, 0) if cross else None
        self.norm_out = Norm(dim, 1) if cfg.t_norm_out and cfg.t_norm_first else None
        self.gamma_1 = _zeros(dim) if cfg.t_layer_scale else None
        self.gamma_2 = _zeros(dim) if cfg.t_layer_scale else None
        self.gelu = cfg.t_gelu
        self.norm_first = cfg.t_norm_first

    def _ff(self, x: jax.Array) -> jax.Array:
        h = self.linear1(x)
        return self.linear2(_gelu(h) if self.gelu else jax.nn.relu(h))

    def _scaled(self, gamma, x: jax.Array) -> jax.Array:
        return x if gamma is None else gamma[...] * x

    def __call__(self, x: jax.Array, other: jax.Array | None = None) -> jax.Array:
        if self.cross:
            attn = lambda a, b: self.cross_attn(a, b)  # noqa: E731
            norm_ff = self.norm3
        else:
            attn = lambda a, b: self.self_attn(a, a)  # noqa: E731
            norm_ff = self.norm2
        if self.norm_first:
            kv = self.norm2(other) if self.cross else None
            x = x + self._scaled(self.gamma_1, attn(self.norm1(x), kv))
            x = x + self._scaled(self.gamma_2, self._ff(norm_ff(x)))
            if self.norm_out is not None:
                x = self.norm_out(x)
        else:
            x = self.norm1(x + self._scaled(self.gamma_1, attn(x, other)))
            x = self.norm2(x + self._scaled(self.gamma_2, self._ff(x)))
        return x


class CrossTransformer(nnx.Module):
    """CrossTransformerEncoder: x [B, F, T1, C] (freq) and xt [B, T2, C] (time) -> same shapes."""

    def __init__(self, dim: int, cfg: HTDemucsConfig):
        self.cfg = cfg
        self.norm_in = Norm(dim, 0) if cfg.t_norm_in else None
        self.norm_in_t = Norm(dim, 0) if cfg.t_norm_in else None
        parity = 1 if cfg.t_cross_first else 0
        self.layers = nnx.List([TransformerLayer(dim, cfg, i % 2 != parity) for i in range(cfg.t_layers)])
        self.layers_t = nnx.List([TransformerLayer(dim, cfg, i % 2 != parity) for i in range(cfg.t_layers)])

    def __call__(self, x: jax.Array, xt: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.cfg
        b, f, t1, c = x.shape
        x = x.transpose(0, 2, 1, 3).reshape(b, t1 * f, c)
        if self.norm_in is not None:
            x = self.norm_in(x)
        x = x + cfg.t_weight_pos_embed * jnp.asarray(sin_embedding_2d(c, f, t1, cfg.t_max_period))
        if self.norm_in_t is not None:
            xt = self.norm_in_t(xt)
        xt = xt + cfg.t_weight_pos_embed * jnp.asarray(sin_embedding(xt.shape[1], c, cfg.t_max_period))
        for layer, layer_t in zip(self.layers, self.layers_t):
            if layer.cross:
                x, xt = layer(x, xt), layer_t(xt, x)
            else:
                x, xt = layer(x), layer_t(xt)
        return x.reshape(b, t1, f, c).transpose(0, 2, 1, 3), xt


# ------------------------------------------------------------------ STFT (demucs.spec + HTDemucs._spec/_ispec)


def spectrogram(mix: jax.Array, nfft: int) -> jax.Array:
    """HTDemucs._spec: mix [B, A, L] -> complex [B, A, nfft / 2, ceil(L / hop)] (hop = nfft / 4)."""
    hop = nfft // 4
    n = mix.shape[-1]
    le = -(-n // hop)
    pad = hop // 2 * 3
    right = pad + le * hop - n
    if n <= max(pad, right):
        raise ImgenError(f"HTDemucs: {n} samples is too short for the spectrogram (need more than {max(pad, right)})")
    x = jnp.pad(mix, ((0, 0), (0, 0), (pad, right)), mode="reflect")
    frames = frame(x, nfft, hop, le) * jnp.asarray(periodic_hann(nfft), jnp.float32)  # [B, A, le, nfft]
    z = jnp.fft.rfft(frames, axis=-1)[..., : nfft // 2] * (1.0 / math.sqrt(nfft))
    return jnp.swapaxes(z, -1, -2)


def inverse_spectrogram(z: jax.Array, length: int, nfft: int) -> jax.Array:
    """HTDemucs._ispec: complex [..., nfft / 2, le] -> [..., length] (torch.istft, normalized, centred)."""
    hop = nfft // 4
    if nfft % hop:
        raise ImgenError("HTDemucs: nfft must be a multiple of 4")
    le = z.shape[-1]
    z = jnp.pad(z, [(0, 0)] * (z.ndim - 2) + [(0, 1), (2, 2)])
    n_frames = le + 4
    window = periodic_hann(nfft)
    frames = jnp.fft.irfft(jnp.swapaxes(z, -1, -2), n=nfft, axis=-1) * math.sqrt(nfft)
    frames = frames * jnp.asarray(window, jnp.float32)  # [..., n_frames, nfft]
    r = nfft // hop
    parts = frames.reshape(*frames.shape[:-1], r, hop)
    total = (n_frames + r - 1) * hop
    out = jnp.zeros((*frames.shape[:-2], total), jnp.float32)
    env = np.zeros(total)
    for j in range(r):
        out = out.at[..., j * hop: j * hop + n_frames * hop].add(parts[..., j, :].reshape(*frames.shape[:-2], -1))
    for t in range(n_frames):
        env[t * hop: t * hop + nfft] += window ** 2
    start = nfft // 2 + hop // 2 * 3
    env = env[start: start + length]
    if env.min() < 1e-11:
        raise ImgenError("HTDemucs: the inverse STFT window envelope vanishes")
    return out[..., start: start + length] / jnp.asarray(env, jnp.float32)


# ------------------------------------------------------------------ the model


def _std(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Standard deviation with N - 1 (PyTorch's default), keepdims."""
    n = math.prod(x.shape[a] for a in axes)
    mean = x.mean(axes, keepdims=True)
    return jnp.sqrt(((x - mean) ** 2).sum(axes, keepdims=True) / (n - 1))


class HTDemucs(nnx.Module):
    """HTDemucs: mix [B, A, L] (L <= segment_length) -> sources [B, S, A, L]."""

    def __init__(self, cfg: HTDemucsConfig = HTDemucsConfig()):
        self.cfg = cfg
        plans = layer_plan(cfg)
        self.encoder = nnx.List()
        self.tencoder = nnx.List()
        decoder, tdecoder = [], []
        enc_dconv, dec_dconv = bool(cfg.dconv_mode & 1), bool(cfg.dconv_mode & 2)
        for index, p in enumerate(plans):
            kw = dict(freq=p.freq, kernel=p.kernel, stride=p.stride, pad=p.pad, norm=p.norm)
            kwt = dict(freq=False, kernel=cfg.kernel_size, stride=cfg.stride, pad=True, norm=p.norm)
            self.encoder.append(EncLayer(p.chin_z, p.chout_z, empty=False, dconv=enc_dconv, cfg=cfg, **kw))
            if p.freq:
                self.tencoder.append(EncLayer(p.chin, p.chout, empty=p.last_freq, dconv=enc_dconv, cfg=cfg, **kwt))
                tdecoder.insert(0, DecLayer(p.chout, p.dec_chout, empty=p.last_freq, last=index == 0,
                                            dconv=dec_dconv, cfg=cfg, **kwt))
            decoder.insert(0, DecLayer(p.chout_z, p.dec_chout_z, empty=False, last=index == 0,
                                       dconv=dec_dconv, cfg=cfg, **kw))
        self.decoder = nnx.List(decoder)
        self.tdecoder = nnx.List(tdecoder)
        self.freq_emb = _zeros(plans[0].freqs_out, plans[0].chout_z) if cfg.freq_emb else None
        dim = int(cfg.channels * cfg.growth ** (cfg.depth - 1))
        bottom = cfg.bottom_channels
        self.channel_upsampler = Dense(dim, bottom) if bottom else None
        self.channel_downsampler = Dense(bottom, dim) if bottom else None
        self.channel_upsampler_t = Dense(dim, bottom) if bottom else None
        self.channel_downsampler_t = Dense(bottom, dim) if bottom else None
        dim = bottom or dim
        self.crosstransformer = CrossTransformer(dim, cfg) if cfg.t_layers else None

    def __call__(self, mix: jax.Array) -> jax.Array:
        cfg = self.cfg
        b, a, length = mix.shape
        seg = cfg.segment_length
        if length > seg:
            raise ImgenError(f"HTDemucs: {length} samples is longer than the model's segment ({seg}); use separate()")
        mix = mix.astype(jnp.float32)
        if length < seg:
            mix = jnp.pad(mix, ((0, 0), (0, 0), (0, seg - length)))
        z = spectrogram(mix, cfg.nfft)  # [B, A, F, T]
        _, _, fq, t = z.shape
        x = jnp.stack([jnp.real(z), jnp.imag(z)], axis=2).reshape(b, 2 * a, fq, t).transpose(0, 2, 3, 1)
        mean = x.mean((1, 2, 3), keepdims=True)
        std = _std(x, (1, 2, 3))
        x = (x - mean) / (EPS_NORM + std)  # [B, F, T, 2A]
        xt = mix.transpose(0, 2, 1)  # [B, L, A]
        meant = xt.mean((1, 2), keepdims=True)
        stdt = _std(xt, (1, 2))
        xt = (xt - meant) / (EPS_NORM + stdt)

        saved, saved_t, lengths, lengths_t = [], [], [], []
        for idx, encode in enumerate(self.encoder):
            lengths.append(x.shape[2] if x.ndim == 4 else x.shape[1])
            inject = None
            if idx < len(self.tencoder):
                lengths_t.append(xt.shape[1])
                tenc = self.tencoder[idx]
                xt = tenc(xt)
                if not tenc.empty:
                    saved_t.append(xt)
                else:
                    inject = xt
            x = encode(x, inject)
            if idx == 0 and self.freq_emb is not None:
                emb = self.freq_emb[...] * cfg.emb_scale  # [F, C]
                x = x + cfg.freq_emb * emb[None, :, None, :]
            saved.append(x)

        if self.crosstransformer is not None:
            if self.channel_upsampler is not None:
                x, xt = self.channel_upsampler(x), self.channel_upsampler_t(xt)
            x, xt = self.crosstransformer(x, xt)
            if self.channel_downsampler is not None:
                x, xt = self.channel_downsampler(x), self.channel_downsampler_t(xt)

        offset = cfg.depth - len(self.tdecoder)
        for idx, decode in enumerate(self.decoder):
            x, pre = decode(x, saved.pop(-1), lengths.pop(-1))
            if idx >= offset:
                tdec = self.tdecoder[idx - offset]
                length_t = lengths_t.pop(-1)
                if tdec.empty:
                    xt, _ = tdec(pre[:, 0], None, length_t)
                else:
                    xt, _ = tdec(xt, saved_t.pop(-1), length_t)

        s = len(cfg.sources)
        x = x * std + mean  # [B, F, T, S * 2A]
        x = x.reshape(b, fq, t, s, a, 2).transpose(0, 3, 4, 1, 2, 5)  # [B, S, A, F, T, re|im]
        spec_out = inverse_spectrogram(jax.lax.complex(x[..., 0], x[..., 1]), seg, cfg.nfft)
        xt = xt * stdt + meant  # [B, L, S * A]
        xt = xt.reshape(b, seg, s, a).transpose(0, 2, 3, 1)
        return (xt + spec_out)[..., :length]


def abstract_htdemucs(cfg: HTDemucsConfig = HTDemucsConfig()) -> HTDemucs:
    """An HTDemucs with abstract (shape-only) parameters, to be filled by `load_htdemucs`."""
    return nnx.eval_shape(lambda: HTDemucs(cfg))


def load_htdemucs(path: str | os.PathLike) -> HTDemucs:
    """The HTDemucs of a file written by convert/htdemucs_weights.py (names and shapes checked)."""
    return load_net(path, KIND, HTDemucsConfig, abstract_htdemucs)[1]


# ------------------------------------------------------------------ inference driver (demucs.apply.apply_model)


def transition_weight(segment: int) -> np.ndarray:
    """apply_model's triangle weight [segment] float32: 1..segment//2, segment - segment//2..1, / max."""
    w = np.concatenate([np.arange(1, segment // 2 + 1), np.arange(segment - segment // 2, 0, -1)]).astype(np.float32)
    return w / w.max()


def chunk_offsets(n: int, segment: int, overlap: float) -> list[int]:
    """Start samples of the segments apply_model cuts a mix of n samples into."""
    return list(range(0, n, int((1 - overlap) * segment)))


def centred_window(mix: np.ndarray, offset: int, length: int, target: int) -> np.ndarray:
    """TensorChunk(mix, offset, length).padded(target): mix[..., offset:offset + length] centred in a
    `target` window whose margins come from the mix around it (zeros beyond its ends)."""
    n = mix.shape[-1]
    length = min(n - offset, length)
    start = offset - (target - length) // 2
    end = start + target
    lo, hi = max(0, start), min(n, end)
    return np.pad(mix[..., lo:hi], [(0, 0)] * (mix.ndim - 1) + [(lo - start, end - hi)])


class Separator:
    """`separate(mix [A or 1, n] float32 at 44.1 kHz) -> [S, A, n]` with an HTDemucs; see the module doc."""

    name = "htdemucs"

    def __init__(self, model: HTDemucs, batch_size: int = 1, overlap: float = 0.25):
        from imgen_jax.xla import jit_method

        if not 0.0 <= overlap < 1.0:
            raise ImgenError(f"htdemucs: overlap must be in [0, 1), got {overlap}")
        self.model = model
        self.cfg = model.cfg
        self.sample_rate = self.cfg.samplerate
        self.sources = tuple(self.cfg.sources)
        self.channels = self.cfg.audio_channels
        self.batch_size = int(batch_size)
        self.overlap = overlap
        self.forward = jit_method(model, HTDemucs.__call__)  # [batch, A, L] -> [batch, S, A, L], jitted

    def apply(self, mix: np.ndarray) -> np.ndarray:
        """apply_model(shifts=0, split=True): mix [A, n] (already normalised) -> [S, A, n] float32.

        Segments go through the jitted forward `batch_size` at a time (the last batch zero-filled),
        so every call has the shape [batch_size, A, L].
        """
        seg, bs = self.cfg.segment_length, self.batch_size
        n = mix.shape[-1]
        offsets = chunk_offsets(n, seg, self.overlap)
        weight = transition_weight(seg)
        out = np.zeros((len(self.sources), mix.shape[0], n), np.float32)
        total = np.zeros(n, np.float32)
        for i in range(0, len(offsets), bs):
            batch = offsets[i:i + bs]
            windows = np.zeros((bs, mix.shape[0], seg), np.float32)
            for j, o in enumerate(batch):
                windows[j] = centred_window(mix, o, seg, seg)
            outs = np.asarray(self.forward(jnp.asarray(windows)))
            for o, chunk in zip(batch, outs):
                length = min(n - o, seg)
                d = seg - length
                out[..., o:o + length] += weight[:length] * chunk[..., d // 2: d // 2 + length]  # center_trim
                total[o:o + length] += weight[:length]
        return out / total

    def separate(self, mix: np.ndarray, shifts: int = 0, seed: int = 0) -> np.ndarray:
        """mix [A, n] or [1, n] (duplicated to A channels) float32 at 44.1 kHz -> [S, A, n] float32.

        `shifts=k` averages k runs on the mix shifted by random offsets in [0, 0.5 s] drawn by
        `random.Random(seed).randint` (apply_model's procedure with a seeded generator).
        """
        mix = np.asarray(mix, np.float32)
        if mix.ndim != 2 or mix.shape[0] not in (1, self.channels) or mix.shape[1] == 0:
            raise ImgenError(f"htdemucs: mix must be [1 or {self.channels}, samples > 0] at {self.sample_rate} Hz, "
                             f"got shape {list(mix.shape)}")
        if mix.shape[0] == 1 and self.channels > 1:
            mix = np.repeat(mix, self.channels, axis=0)
        ref = mix.astype(np.float64).mean(0)
        mean = ref.mean()
        std = (ref.std(ddof=1) if ref.size > 1 else 0.0) + 1e-8
        x = ((mix - mean) / std).astype(np.float32)
        if shifts:
            n = x.shape[-1]
            max_shift = int(0.5 * self.sample_rate)
            padded = np.pad(x, ((0, 0), (max_shift, max_shift)))
            rng = random.Random(seed)
            out = np.zeros((len(self.sources), *x.shape), np.float32)
            for _ in range(shifts):
                off = rng.randint(0, max_shift)
                out += self.apply(padded[:, off: off + n + max_shift - off])[..., max_shift - off:]
            out /= shifts
        else:
            out = self.apply(x)
        return (out * std + mean).astype(np.float32)


def htdemucs_separator(model: HTDemucs, batch_size: int = 1) -> Separator:
    """The separator over `model`: `.name`, `.sample_rate`, `.sources`, `.channels`, `.separate(mix)`."""
    return Separator(model, batch_size=batch_size)
