"""LAION-CLAP (Wu et al. 2023) in Flax NNX: HTSAT audio tower, RoBERTa text tower, projections: the CLAP score.

The layout is laion_clap 1.1.7's non-fusion `CLAP` with `amodel="HTSAT-base", tmodel="roberta"`, the
model of the published `music_audioset_epoch_15_esc_90.14.pt` that the paper's evaluation loads
(`CLAP_Module(enable_fusion=False, amodel="HTSAT-base")`). HTSAT-tiny checkpoints (630k-*.pt,
non-fusion) have the same layout with other sizes; the converter reads the sizes from the weights.

Audio recipe (`CLAP_Module.get_audio_embedding_from_data(x, use_tensor=False)`, `prepare_audio` here):

    input      mono float at 48 kHz (the caller resamples; laion_clap's file path uses librosa at 48 kHz)
    quantize   the int16 round trip the hook applies when use_tensor=False: clip to [-1, 1], x * 32767
               cast to int16 (truncation toward zero), / 32767 (ClapConfig.quantize, on by default)
    length     clip_samples = 480,000 (10 s). Shorter: "repeatpad": the clip tiled floor(480000 / n)
               times, then zeros to 10 s. Longer: laion_clap's "rand_trunc" takes a 10 s window at a
               uniformly random offset (np.random); we take the first 10 s, so the score is
               deterministic (the paper's 5 / 10 s clips never reach this branch)
    frontend   torchlibrosa as in HTSAT: centred STFT (reflect padding 512), periodic Hann window 1024,
               hop 480 -> 1001 frames; power; 64 Slaney mel bands 50 Hz - 14 kHz; 10 log10(max(., 1e-10))
    bn0        batch norm over the mel bands (inference statistics; folded to an affine at conversion)
    image      bicubic (a = -0.75, align_corners) resize of the time axis 1001 -> 1024 frames, then the
               1024 x 64 log-mel folded into a 256 x 256 image: row = 64 * (frame // 256) + band,
               column = frame % 256 (HTSAT's `reshape_wav2img`)
    swin       4 x 4 patches (stride 4) -> 128 channels, LayerNorm; four stages of (2, 2, 12, 2) Swin
               blocks (window 8, alternate blocks shifted by 4 with the -100 region mask; no shift in
               the last stage, whose 8 x 8 map is one window), heads (4, 8, 16, 32), patch merging
               between stages; final LayerNorm
    embedding  mean over the 8 x 8 tokens [1024] (HTSAT's `embedding`; the tscam / head layers are not
               used) -> audio_projection (Linear 1024-512, ReLU, Linear 512-512) -> L2 normalised [512]

Text recipe (`CLAP_Module.get_text_embedding(texts)`): the text as given (laion_clap adds no
template; imgen_jax.eval.metrics.clap chooses the caption), roberta-base's byte-level BPE
(imgen_jax.eval.nets.bpe) to 77 tokens: `<s>` ids[:75] `</s>`, padded with `<pad>` (id 1) and
attention mask 0. RoBERTa-base (post-LayerNorm BERT layers, exact GELU, eps 1e-5; positions
pad_id + 1 + index over the non-pad tokens, as Hugging Face's `create_position_ids_from_input_ids`)
-> pooler tanh(dense(h[<s>])) -> text_projection (Linear 768-512, ReLU, Linear 512-512) -> L2 normalised.

Both embeddings are L2-normalised, so the CLAP score is their dot product. `clap_scorer(model)` is the
`imgen eval` plug-in: jitted, batched (batches padded to a power of two up to `batch_size`, so
each size compiles once); `--clap imgen_jax.eval.nets.clap:clap_plugin=PATH` loads it through
imgen_jax.eval.plugins.

Weight names (NNX paths; stacked layers carry a leading axis): audio/bn0/{scale,bias},
audio/patch_embed/{kernel,bias}, audio/patch_norm, audio/stages/{i}/pairs/{a,b}/{norm1,attn/qkv,
attn/proj,attn/bias_table,norm2,fc1,fc2} [depth / 2, ...], audio/stages/{i}/merge/{norm,reduction},
audio/norm, text/{word,position,token_type}_embeddings, text/embed_norm, text/layers/{q,k,v,o,
attn_norm,ff_in,ff_out,ff_norm} [layers, ...], text/pooler, {audio,text}_projection/{fc1,fc2};
see convert/clap_weights.py for the mapping from laion_clap's names.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imgen_jax.errors import ImgenError
from imgen_jax.eval.nets.bpe import RobertaBPE
from imgen_jax.eval.nets.common import HIGHEST, Affine, load_net, power_log_mel, read_meta, slaney_mel_filters

KIND = "clap"
VOCAB_META, MERGES_META = "tokenizer_vocab_json", "tokenizer_merges_txt"


@dataclasses.dataclass(frozen=True)
class ClapConfig:
    """Sizes and input settings. Defaults: `music_audioset_epoch_15_esc_90.14.pt` (HTSAT-base + roberta-base)."""

    # audio input and frontend (laion_clap's model_configs/HTSAT-base.json audio_cfg)
    sample_rate: int = 48000
    clip_samples: int = 480000
    window: int = 1024
    hop: int = 480
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 14000.0
    amin: float = 1e-10
    quantize: bool = True  # the hook's int16 round trip (use_tensor=False)
    # HTSAT Swin transformer
    spec_size: int = 256
    patch_size: int = 4
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 12, 2)
    heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 8
    mlp_ratio: float = 4.0
    # RoBERTa (roberta-base)
    vocab_size: int = 50265
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_ff: int = 3072
    max_positions: int = 514
    type_vocab_size: int = 1
    pad_id: int = 1
    context_length: int = 77
    text_eps: float = 1e-5
    # joint embedding
    joint_dim: int = 512

    def __post_init__(self):
        if len(self.depths) != len(self.heads) or any(d % 2 for d in self.depths):
            raise ValueError(f"depths {self.depths} must be even and as many as heads {self.heads}")
        if self.spec_size % self.n_mels or self.spec_size % (self.patch_size * 2 ** (len(self.depths) - 1)):
            raise ValueError(f"spec_size {self.spec_size} must be a multiple of n_mels {self.n_mels} and of "
                             f"patch_size * 2^(stages - 1)")
        if self.frames > self.spec_size * self.freq_ratio:
            raise ValueError(f"{self.frames} frames exceed HTSAT's {self.spec_size * self.freq_ratio}")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} is not a multiple of text_heads {self.text_heads}")

    @property
    def freq_ratio(self) -> int:
        return self.spec_size // self.n_mels

    @property
    def frames(self) -> int:
        """STFT frames of one clip: 1 + clip_samples // hop (1001)."""
        return 1 + self.clip_samples // self.hop

    @property
    def audio_width(self) -> int:
        """Channels of HTSAT's last stage (its embedding size): embed_dim * 2^(stages - 1)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    def resolution(self, stage: int) -> int:
        """Side of the square token map of `stage`."""
        return self.spec_size // self.patch_size // 2 ** stage


# ------------------------------------------------------------------------------------------------ input


def prepare_audio(wav: np.ndarray, cfg: ClapConfig = ClapConfig()) -> np.ndarray:
    """One mono clip at cfg.sample_rate [N] -> the model's input [clip_samples] float32 (quantize,
    repeat-pad or take the first clip_samples; see the module docstring)."""
    x = np.asarray(wav)
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
        raise ImgenError(f"CLAP: expected a 1-D float waveform at {cfg.sample_rate} Hz, got {x.dtype} {x.shape}")
    if x.size == 0:
        raise ImgenError("CLAP: empty waveform")
    if cfg.quantize:
        x = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16) / 32767.0  # in x's own dtype, as laion_clap
    x = x.astype(np.float32)
    n, want = x.size, cfg.clip_samples
    if n > want:
        return x[:want]
    if n < want:
        x = np.tile(x, int(want / n))
        x = np.pad(x, (0, want - x.size))
    return x


@functools.lru_cache(maxsize=8)
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] float32 weights of PyTorch's bicubic resize (a = -0.75, align_corners=True, edge
    indices clamped), computed in float32 as its CPU kernel does."""
    a = np.float32(-0.75)
    scale = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0)
    src = scale * np.arange(n_out, dtype=np.float32)
    idx = np.clip(np.floor(src), 0, n_in - 1).astype(np.int64)
    t = np.clip(src - idx.astype(np.float32), 0, 1).astype(np.float32)

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1).astype(np.float32)
    out = np.zeros((n_out, n_in), np.float32)
    for j in range(4):
        np.add.at(out, (np.arange(n_out), np.clip(idx - 1 + j, 0, n_in - 1)), weights[:, j])
    return out


# ------------------------------------------------------------------------------------------------ HTSAT


@functools.lru_cache(maxsize=8)
def relative_index(window: int) -> np.ndarray:
    """Swin's relative position index [w*w, w*w] into the bias table [(2w - 1)^2, heads]."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


@functools.lru_cache(maxsize=16)
def shift_mask(resolution: int, window: int, shift: int) -> np.ndarray:
    """The shifted-window attention mask [windows, w*w, w*w]: 0 within a region, -100 across regions."""
    img = np.zeros((resolution, resolution), np.float32)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for h in cuts:
        for w in cuts:
            img[h, w] = label
            label += 1
    win = partition(img[None, :, :, None], window).reshape(-1, window * window)
    diff = win[:, None, :] - win[:, :, None]
    return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


def partition(x, window: int):
    """[B, H, W, C] -> windows [B * H/w * W/w, w, w, C] (row-major over windows)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c)


def unpartition(x, window: int, h: int, w: int):
    """Inverse of `partition`: [B * H/w * W/w, w, w, C] -> [B, H, W, C]."""
    c = x.shape[-1]
    x = x.reshape(-1, h // window, w // window, window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def _linear(din: int, dout: int, rngs: nnx.Rngs, bias: bool = True) -> nnx.Linear:
    return nnx.Linear(din, dout, use_bias=bias, precision=HIGHEST, rngs=rngs)


def _norm(dim: int, rngs: nnx.Rngs, eps: float = 1e-5) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=eps, rngs=rngs)


class WindowAttention(nnx.Module):
    """Multi-head self-attention within windows, with Swin's relative position bias."""

    def __init__(self, dim: int, heads: int, window: int, *, rngs: nnx.Rngs):
        self.heads, self.window = heads, window
        self.qkv = _linear(dim, 3 * dim, rngs)
        self.proj = _linear(dim, dim, rngs)
        self.bias_table = nnx.Param(jnp.zeros(((2 * window - 1) ** 2, heads), jnp.float32))

    def __call__(self, x: jax.Array, mask: np.ndarray | None) -> jax.Array:
        """x [Bw, N, C] (Bw = batch * windows, N = w*w), mask [windows, N, N] or None -> [Bw, N, C]."""
        bw, n, c = x.shape
        d = c // self.heads
        q, k, v = jnp.moveaxis(self.qkv(x).reshape(bw, n, 3, self.heads, d), 2, 0)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q * d ** -0.5, k, precision=HIGHEST)
        bias = self.bias_table[...][relative_index(self.window).reshape(-1)].reshape(n, n, self.heads)
        scores = scores + jnp.transpose(bias, (2, 0, 1))[None]
        if mask is not None:
            nw = mask.shape[0]
            scores = (scores.reshape(bw // nw, nw, self.heads, n, n) + jnp.asarray(mask)[None, :, None]).reshape(scores.shape)
        probs = jax.nn.softmax(scores, axis=-1)
        return self.proj(jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=HIGHEST).reshape(bw, n, c))


class SwinBlock(nnx.Module):
    """x + W-MSA(norm1(x)) (cyclically shifted by `shift`), then x + MLP(norm2(x)); x [B, R*R, C]."""

    def __init__(self, dim: int, heads: int, window: int, resolution: int, shift: int, mlp_ratio: float,
                 *, rngs: nnx.Rngs):
        self.window, self.resolution, self.shift = window, resolution, shift
        self.norm1 = _norm(dim, rngs)
        self.attn = WindowAttention(dim, heads, window, rngs=rngs)
        self.norm2 = _norm(dim, rngs)
        hidden = int(dim * mlp_ratio)
        self.fc1 = _linear(dim, hidden, rngs)
        self.fc2 = _linear(hidden, dim, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, l, c = x.shape
        r, w, s = self.resolution, self.window, self.shift
        h = self.norm1(x).reshape(b, r, r, c)
        if s:
            h = jnp.roll(h, (-s, -s), axis=(1, 2))
        h = self.attn(partition(h, w).reshape(-1, w * w, c), shift_mask(r, w, s) if s else None)
        h = unpartition(h.reshape(-1, w, w, c), w, r, r)
        if s:
            h = jnp.roll(h, (s, s), axis=(1, 2))
        x = x + h.reshape(b, l, c)
        return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))


class SwinPair(nnx.Module):
    """Two Swin blocks, the second shifted (HTSAT alternates shift 0 / window // 2)."""

    def __init__(self, dim: int, heads: int, window: int, resolution: int, mlp_ratio: float, *, rngs: nnx.Rngs):
        shift = 0 if resolution <= window else window // 2  # a map of one window is never shifted
        window = min(window, resolution)
        self.a = SwinBlock(dim, heads, window, resolution, 0, mlp_ratio, rngs=rngs)
        self.b = SwinBlock(dim, heads, window, resolution, shift, mlp_ratio, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.b(self.a(x))


class PatchMerging(nnx.Module):
    """[B, R*R, C] -> [B, R/2*R/2, 2C]: each 2 x 2 neighbourhood concatenated (Swin's order), LayerNorm, Linear."""

    def __init__(self, dim: int, resolution: int, *, rngs: nnx.Rngs):
        self.resolution = resolution
        self.norm = _norm(4 * dim, rngs)
        self.reduction = _linear(4 * dim, 2 * dim, rngs, bias=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, _, c = x.shape
        r = self.resolution
        x = x.reshape(b, r, r, c)
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))


def _scan(stack: nnx.Module, x: jax.Array, *args) -> jax.Array:
    """Run the layers stacked in `stack` (built under nnx.vmap) over x in order with jax.lax.scan."""
    graphdef, state = nnx.split(stack)

    def body(h, layer_state):
        return nnx.merge(graphdef, layer_state)(h, *args), None

    return jax.lax.scan(body, x, state)[0]


class Stage(nnx.Module):
    """depth Swin blocks (scanned in pairs), then patch merging unless it is the last stage."""

    def __init__(self, cfg: ClapConfig, i: int, *, rngs: nnx.Rngs):
        dim, res = cfg.embed_dim * 2 ** i, cfg.resolution(i)

        @nnx.split_rngs(splits=cfg.depths[i] // 2)
        @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=cfg.depths[i] // 2)
        def make(r: nnx.Rngs) -> SwinPair:
            return SwinPair(dim, cfg.heads[i], cfg.window_size, res, cfg.mlp_ratio, rngs=r)

        self.pairs = make(rngs)
        self.merge = PatchMerging(dim, res, rngs=rngs) if i < len(cfg.depths) - 1 else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _scan(self.pairs, x)
        return x if self.merge is None else self.merge(x)


class HTSAT(nnx.Module):
    """HTSAT-Swin audio tower: clips [B, clip_samples] -> embedding [B, audio_width] (token mean)."""

    def __init__(self, cfg: ClapConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.bn0 = Affine(cfg.n_mels)
        p = cfg.patch_size
        self.patch_embed = nnx.Conv(1, cfg.embed_dim, (p, p), strides=(p, p), padding="VALID", precision=HIGHEST, rngs=rngs)
        self.patch_norm = _norm(cfg.embed_dim, rngs)
        self.stages = nnx.List([Stage(cfg, i, rngs=rngs) for i in range(len(cfg.depths))])
        self.norm = _norm(cfg.audio_width, rngs)

    def image(self, wav: jax.Array) -> jax.Array:
        """clips [B, clip_samples] -> HTSAT's input image [B, spec_size, spec_size] (log-mel, bn0, resize, fold)."""
        cfg = self.cfg
        mel = slaney_mel_filters(cfg.sample_rate, cfg.window, cfg.n_mels, cfg.f_min, cfg.f_max, "ClapConfig")
        x = self.bn0(power_log_mel(wav, cfg.sample_rate, cfg.window, cfg.hop, mel, cfg.amin, "CLAP"))  # [B, T, M]
        t_out = cfg.spec_size * cfg.freq_ratio
        if x.shape[1] != t_out:
            x = jnp.einsum("ot,btm->bom", jnp.asarray(bicubic_matrix(x.shape[1], t_out)), x, precision=HIGHEST)
        b = x.shape[0]
        x = x.reshape(b, cfg.freq_ratio, cfg.spec_size, cfg.n_mels)  # [B, chunk, frame, band]
        return x.transpose(0, 1, 3, 2).reshape(b, cfg.spec_size, cfg.spec_size)

    def __call__(self, wav: jax.Array) -> jax.Array:
        x = self.patch_embed(self.image(wav)[..., None])  # [B, R, R, C]
        x = self.patch_norm(x.reshape(x.shape[0], -1, x.shape[-1]))
        for stage in self.stages:
            x = stage(x)
        return self.norm(x).mean(axis=1)


# ---------------------------------------------------------------------------------------------- RoBERTa


class RobertaLayer(nnx.Module):
    """BERT's post-LayerNorm encoder layer: h = LN(h + attn(h)); h = LN(h + ff(h))."""

    def __init__(self, cfg: ClapConfig, *, rngs: nnx.Rngs):
        d = cfg.text_width
        self.heads = cfg.text_heads
        self.q, self.k, self.v, self.o = (_linear(d, d, rngs) for _ in range(4))
        self.attn_norm = _norm(d, rngs, cfg.text_eps)
        self.ff_in = _linear(d, cfg.text_ff, rngs)
        self.ff_out = _linear(cfg.text_ff, d, rngs)
        self.ff_norm = _norm(d, rngs, cfg.text_eps)

    def __call__(self, h: jax.Array, key_mask: jax.Array) -> jax.Array:
        """h [B, L, D], key_mask [B, L] bool (True = token) -> [B, L, D]."""
        b, l, d = h.shape
        split = lambda t: t.reshape(b, l, self.heads, d // self.heads)
        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=HIGHEST) * (d // self.heads) ** -0.5
        scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        att = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v, precision=HIGHEST).reshape(b, l, d)
        h = self.attn_norm(h + self.o(att))
        return self.ff_norm(h + self.ff_out(jax.nn.gelu(self.ff_in(h), approximate=False)))


class Roberta(nnx.Module):
    """RoBERTa encoder + pooler: ids, attention mask [B, L] -> pooled [B, text_width] = tanh(dense(h[:, 0]))."""

    def __init__(self, cfg: ClapConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d = cfg.text_width
        self.word_embeddings = nnx.Embed(cfg.vocab_size, d, rngs=rngs)
        self.position_embeddings = nnx.Embed(cfg.max_positions, d, rngs=rngs)
        self.token_type_embeddings = nnx.Embed(cfg.type_vocab_size, d, rngs=rngs)
        self.embed_norm = _norm(d, rngs, cfg.text_eps)

        @nnx.split_rngs(splits=cfg.text_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=cfg.text_layers)
        def make(r: nnx.Rngs) -> RobertaLayer:
            return RobertaLayer(cfg, rngs=r)

        self.layers = make(rngs)
        self.pooler = _linear(d, d, rngs)

    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        real = ids != self.cfg.pad_id
        positions = jnp.cumsum(real, axis=1) * real + self.cfg.pad_id
        h = self.word_embeddings(ids) + self.position_embeddings(positions) + self.token_type_embeddings.embedding[...][0]
        h = _scan(self.layers, self.embed_norm(h), mask.astype(bool))
        return jnp.tanh(self.pooler(h[:, 0]))


# ------------------------------------------------------------------------------------------------- CLAP


class Projection(nnx.Module):
    """laion_clap's projection: Linear, ReLU, Linear."""

    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.fc1 = _linear(din, dout, rngs)
        self.fc2 = _linear(dout, dout, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.relu(self.fc1(x)))


def _l2_normalise(x: jax.Array) -> jax.Array:
    """x / max(||x||, 1e-12) over the last axis (torch.nn.functional.normalize)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ClapModel(nnx.Module):
    """CLAP: `embed_audio(clips [B, clip_samples])` and `embed_text(ids, mask [B, context_length])`
    -> L2-normalised [B, joint_dim]. Inputs are prepared by `prepare_audio` / `tokenizer`
    (a RobertaBPE, set by `load_clap`); `clap_scorer` does both."""

    def __init__(self, cfg: ClapConfig = ClapConfig(), *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.audio = HTSAT(cfg, rngs=rngs)
        self.text = Roberta(cfg, rngs=rngs)
        self.audio_projection = Projection(cfg.audio_width, cfg.joint_dim, rngs=rngs)
        self.text_projection = Projection(cfg.text_width, cfg.joint_dim, rngs=rngs)
        self.tokenizer: RobertaBPE | None = None

    def embed_audio(self, clips: jax.Array) -> jax.Array:
        """clips [B, clip_samples] at sample_rate (after `prepare_audio`) -> [B, joint_dim]."""
        return _l2_normalise(self.audio_projection(self.audio(clips)))

    def embed_text(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        """ids, attention mask [B, context_length] int -> [B, joint_dim]."""
        return _l2_normalise(self.text_projection(self.text(ids, mask)))


def abstract_clap(cfg: ClapConfig = ClapConfig()) -> ClapModel:
    """A ClapModel with abstract (shape-only) parameters, to be filled by `load_clap`."""
    return nnx.eval_shape(lambda: ClapModel(cfg, rngs=nnx.Rngs(0)))


def load_clap(path: str | os.PathLike) -> ClapModel:
    """The CLAP model (weights and tokenizer) of a file written by convert/clap_weights.py."""
    model = load_net(path, KIND, ClapConfig, abstract_clap)[1]
    meta = read_meta(path)
    if VOCAB_META not in meta or MERGES_META not in meta:
        raise ImgenError(f"{os.fspath(path)}: no tokenizer in the metadata (convert with convert/clap_weights.py)")
    model.tokenizer = RobertaBPE.from_strings(meta[VOCAB_META], meta[MERGES_META], f"{os.fspath(path)} [tokenizer]")
    return model


class ClapScorer:
    """The `imgen eval` CLAP plug-in over a ClapModel: `embed_audio(wavs)`, `embed_text(texts)` -> [n, joint_dim]."""

    name = "clap"

    def __init__(self, model: ClapModel, batch_size: int = 8):
        from imgen_jax.xla import jit_method

        if model.tokenizer is None:
            raise ImgenError("clap_scorer: the model has no tokenizer (load it with load_clap)")
        self.cfg, self.tokenizer, self.batch_size = model.cfg, model.tokenizer, int(batch_size)
        self.sample_rate = model.cfg.sample_rate
        self._audio = jit_method(model, ClapModel.embed_audio)
        self._text = jit_method(model, ClapModel.embed_text)

    def _batched(self, fn, *arrays: np.ndarray) -> np.ndarray:
        """fn over rows of `arrays` in batches of batch_size; the last padded (by repeating its first
        row) to the next power of two, so that only a few shapes ever compile."""
        n, out = len(arrays[0]), []
        for start in range(0, n, self.batch_size):
            chunk = [a[start:start + self.batch_size] for a in arrays]
            m = len(chunk[0])
            size = min(self.batch_size, 1 << (m - 1).bit_length())
            chunk = [np.concatenate([c, np.repeat(c[:1], size - m, axis=0)]) for c in chunk]
            out.append(np.asarray(fn(*chunk))[:m])
        return np.concatenate(out).astype(np.float32)

    def embed_audio(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """Mono float clips at 48 kHz (any lengths) -> L2-normalised embeddings [n, joint_dim] float32."""
        if len(wavs) == 0:
            return np.zeros((0, self.cfg.joint_dim), np.float32)
        return self._batched(self._audio, np.stack([prepare_audio(w, self.cfg) for w in wavs]))

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> L2-normalised embeddings [n, joint_dim] float32."""
        if len(texts) == 0:
            return np.zeros((0, self.cfg.joint_dim), np.float32)
        return self._batched(self._text, *self.tokenizer.batch(list(texts), self.cfg.context_length))


def clap_scorer(model: ClapModel, batch_size: int = 8) -> ClapScorer:
    """The jitted, batched CLAP plug-in of `imgen eval` (name "clap", sample_rate 48000)."""
    return ClapScorer(model, batch_size)


def clap_plugin(model_dir: str | None = None, arg: str | None = None) -> ClapScorer:
    """`imgen eval --clap imgen_jax.eval.nets.clap:clap_plugin=PATH`: the scorer of the converted file PATH."""
    if not arg:
        raise ImgenError("clap plug-in: give the converted CLAP file, imgen_jax.eval.nets.clap:clap_plugin=PATH")
    return clap_scorer(load_clap(arg))
