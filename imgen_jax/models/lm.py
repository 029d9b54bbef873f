"""The MusicGen language model in Flax NNX.

Sum of K codebook embeddings (card + 1 rows; row `card` is the special token) plus sinusoidal
positions, pre-norm transformer layers (causal self-attention, cross-attention to the text
memory, GELU MLP; LayerNorm eps 1e-5; no linear biases), a final LayerNorm and K linear heads.
The text memory is the T5 hidden state mapped by `text_proj` (audiocraft's conditioner
`output_proj`, Hugging Face's `enc_to_dec_proj`) and multiplied by the text padding mask.

Layers are stacked (leading layer axis on every layer weight) and applied with
`jax.lax.scan`, so all model sizes compile one layer body.

Three entry points share one layer body:
- `__call__` / `logits`: teacher-forced logits for a whole pattern sequence [B, K, S].
- `prefill`: runs a prompt through the model filling a self-attention KV cache, and computes
  the cross-attention keys/values of the text memory once.
- `step`: one decoding step (or a few) against the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imgen_jax.axes import STACKED, param
from imgen_jax.configs import config_from_dict, config_to_dict
from imgen_jax.errors import ImgenError
from imgen_jax.models.patterns import build_pattern, codebook_delays

NEG_INF = -1e30  # finite "minus infinity": fully masked rows stay finite (uniform), never NaN


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Architecture of a MusicGen LM. Presets: `LMConfig.preset('small' | 'medium' | 'large' | '*-stereo')`."""

    dim: int = 1024
    num_heads: int = 16
    num_layers: int = 24
    ffn_dim: int = 4096
    num_codebooks: int = 4
    card: int = 2048
    text_dim: int = 768
    audio_channels: int = 1
    text_proj: bool = True
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        codebook_delays(self.num_codebooks, self.audio_channels)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def special_token(self) -> int:
        return self.card

    @property
    def delays(self) -> tuple[int, ...]:
        return codebook_delays(self.num_codebooks, self.audio_channels)

    @staticmethod
    def preset(name: str) -> "LMConfig":
        sizes = {"small": (1024, 16, 24), "medium": (1536, 24, 48), "large": (2048, 32, 48)}
        base, _, stereo = name.partition("-")
        if base not in sizes or stereo not in ("", "stereo"):
            raise ImgenError(f"unknown MusicGen size {name!r}; expected one of small, medium, large (optionally -stereo)")
        dim, heads, layers = sizes[base]
        return LMConfig(
            dim=dim, num_heads=heads, num_layers=layers, ffn_dim=4 * dim,
            num_codebooks=8 if stereo else 4, audio_channels=2 if stereo else 1,
        )

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @staticmethod
    def from_dict(d: dict, source: str = "lm config") -> "LMConfig":
        return config_from_dict(LMConfig, d, source)


def sinusoidal_positions(positions: jax.Array, dim: int) -> jax.Array:
    """[..., dim] float32: concat(cos, sin) of pos / 10000^(i / (dim/2 - 1)), as MusicGen."""
    half = dim // 2
    inv = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000.0) / (half - 1)))
    phase = positions.astype(jnp.float32)[..., None] * inv
    return jnp.concatenate([jnp.cos(phase), jnp.sin(phase)], axis=-1)


class Dense(nnx.Module):
    """Linear map without bias; kernel [in, out] (the transpose of PyTorch's weight), its two dimensions
    named `axes` (logical axis names, imgen_jax.axes)."""

    def __init__(self, din: int, dout: int, *, axes: tuple[str, str], rngs: nnx.Rngs, dtype=jnp.float32):
        self.kernel = param(jax.random.normal(rngs.params(), (din, dout), jnp.float32) * (1.0 / math.sqrt(din)), *axes)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis of x [..., dim] (float32; scale, bias [dim]).

    Its gradient is written out (`_layer_norm_bwd`): autodiff of the statistics gives XLA a chain of reduces and
    broadcasts that it fuses into slow per-element code on CPU (a probe of 12 pre-norm blocks [604, 512],
    forward + backward: 112 -> 88 ms); the values are the same to float32 rounding."""
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
    centred = x - x.mean(-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.square(centred).mean(-1, keepdims=True) + eps)
    normed = centred * rstd
    return normed * scale + bias, (normed, rstd, scale, bias)


def _layer_norm_bwd(eps, residuals, dy):
    normed, rstd, scale, bias = residuals  # bias: for its dtype
    g = dy * scale
    dx = rstd * (g - g.mean(-1, keepdims=True) - normed * (g * normed).mean(-1, keepdims=True))
    lead = tuple(range(dy.ndim - 1))
    return dx, (dy * normed).sum(lead).astype(scale.dtype), dy.sum(lead).astype(bias.dtype)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nnx.Module):
    """LayerNorm with scale and bias [dim] (logical axis `embed`), statistics in float32 (`layer_norm`)."""

    def __init__(self, dim: int, eps: float, dtype=jnp.float32):
        self.scale = param(jnp.ones((dim,), jnp.float32), "embed")
        self.bias = param(jnp.zeros((dim,), jnp.float32), "embed")
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x.astype(jnp.float32), self.scale[...], self.bias[...], self.eps).astype(self.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None, heads_major: bool = False,
              keys_transposed: bool = False) -> jax.Array:
    """Scaled dot-product attention. q [B,Q,H,D], k/v [B,K,H,D] (heads_major: [B,H,K,D]; keys_transposed:
    k [B,H,D,K], the layout XLA:CPU's batched dot reads without a copy), bias broadcastable to [B,H,Q,K]
    -> [B,Q,H,D]."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    kv = "bhkd" if heads_major else "bkhd"
    logits = jnp.einsum(f"bqhd,{'bhdk' if keys_transposed else kv}->bhqk", q, k).astype(jnp.float32) * scale
    if bias is not None:
        logits = logits + bias
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum(f"bhqk,{kv}->bqhd", probs, v)


class LayerFusion:
    """A conditioning plug-in of `MusicGenLM` (None: plain MusicGen): the hooks each layer calls where a
    fusion design adds something. Instruct-MusicGen's audio fusion + LoRA (imgen_jax.instruct.fusion.InstructFusion)
    is one implementation; a new design subclasses this and overrides the hooks it needs.

    A fusion is a pytree (e.g. `jax.tree_util.register_dataclass`) whose array leaves are stacked over the
    LM's layers (leading axis = num_layers); static settings go in its metadata. The LM slices it per layer
    (`lax.scan` or indexing), so the hooks run on ONE layer's slice; `for_guidance` and `for_decoding` run
    on the stacked fusion, once per decode. A hook returning None adds nothing. Hooks (shapes of one layer):

    - self_attention_extra(q, positions): q [B,S,H,D] the layer's self-attention queries; positions: None
      in teacher forcing (queries are steps 0..S-1) or [S] int, the absolute positions of the queries
      (decoding). Returns [B,S,H,D], added to the self-attention output (per head) before out_proj.
    - cross_query_delta(h): h [B,S,dim] the normed input of the cross-attention -> [B,S,dim] added to its
      query projection.
    - cross_value_delta(memory): memory [B,L,dim] -> [B,L,dim] added to the text values (computed with the
      text keys / values: once per decode, before the loop).
    - for_guidance(): the fusion for a classifier-free-guidance batch of 2B rows (the B conditional rows,
      then the B unconditional ones) from the one for B rows. It may keep arrays of B rows that both halves
      share when its hooks accept 2B-row inputs against them (InstructFusion does: one copy of its prefix).
    - for_decoding(heads_major): the fusion as the KV-cached decode wants it, once before the loop;
      heads_major True: the LM's per-layer cache path, whose attention takes keys / values [B,H,T,D].
    """

    def self_attention_extra(self, q: jax.Array, positions: jax.Array | None) -> jax.Array | None:
        return None

    def cross_query_delta(self, h: jax.Array) -> jax.Array | None:
        return None

    def cross_value_delta(self, memory: jax.Array) -> jax.Array | None:
        return None

    def for_guidance(self) -> "LayerFusion":
        return self

    def for_decoding(self, heads_major: bool) -> "LayerFusion":
        return self


def _layer(tree, i: int):
    """Layer i of a pytree stacked over layers (None stays None; a tuple from `layer_slices` is indexed)."""
    if isinstance(tree, tuple):
        return tree[i]
    return jax.tree.map(lambda a: a[i], tree)


def layer_slices(tree, num_layers: int) -> tuple | None:
    """A pytree stacked over layers as a tuple of its per-layer slices, sliced once here: for a decode loop
    over unrolled layers. The barrier keeps XLA from sinking the slices back into the loop, where each
    would be copied out of the stack on every step (None stays None)."""
    if tree is None:
        return None
    return jax.lax.optimization_barrier(tuple(_layer(tree, i) for i in range(num_layers)))


class SelfAttention(nnx.Module):
    """Causal multi-head self-attention with fused q/k/v projection (audiocraft's in_proj)."""

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.in_proj = Dense(cfg.dim, 3 * cfg.dim, axes=("embed", "fused_heads"), rngs=rngs, dtype=dtype)
        self.out_proj = Dense(cfg.dim, cfg.dim, axes=("heads", "embed"), rngs=rngs, dtype=dtype)
        self.num_heads = cfg.num_heads

    def qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [B,S,dim] -> q, k, v each [B,S,H,D]."""
        B, S, _ = x.shape
        qkv = self.in_proj(x).reshape(B, S, 3, self.num_heads, -1)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


class CrossAttention(nnx.Module):
    """Multi-head attention from the sequence to the text memory; separate q and fused k/v projections."""

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.q_proj = Dense(cfg.dim, cfg.dim, axes=("embed", "heads"), rngs=rngs, dtype=dtype)
        self.kv_proj = Dense(cfg.dim, 2 * cfg.dim, axes=("embed", "fused_heads"), rngs=rngs, dtype=dtype)
        self.out_proj = Dense(cfg.dim, cfg.dim, axes=("heads", "embed"), rngs=rngs, dtype=dtype)
        self.num_heads = cfg.num_heads

    def memory_kv(self, memory: jax.Array, fusion: LayerFusion | None = None) -> tuple[jax.Array, jax.Array]:
        """memory [B,L,dim] -> k, v each [B,L,H,D]; `fusion` (this layer's slice) may add to the values."""
        B, L, _ = memory.shape
        kv = self.kv_proj(memory).reshape(B, L, 2, self.num_heads, -1)
        k, v = kv[:, :, 0], kv[:, :, 1]
        dv = None if fusion is None else fusion.cross_value_delta(memory.astype(v.dtype))
        if dv is not None:
            v = v + dv.astype(v.dtype).reshape(B, L, self.num_heads, -1)
        return k, v


class DecoderLayer(nnx.Module):
    """Pre-norm layer: x += SA(norm1 x); x += CA(norm_cross x, memory); x += MLP(norm2 x)."""

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.norm1 = LayerNorm(cfg.dim, cfg.layer_norm_eps, dtype)
        self.self_attn = SelfAttention(cfg, rngs=rngs, dtype=dtype)
        self.norm_cross = LayerNorm(cfg.dim, cfg.layer_norm_eps, dtype)
        self.cross_attn = CrossAttention(cfg, rngs=rngs, dtype=dtype)
        self.norm2 = LayerNorm(cfg.dim, cfg.layer_norm_eps, dtype)
        self.linear1 = Dense(cfg.dim, cfg.ffn_dim, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.linear2 = Dense(cfg.ffn_dim, cfg.dim, axes=("mlp", "embed"), rngs=rngs, dtype=dtype)

    def mlp(self, x: jax.Array) -> jax.Array:
        return self.linear2(jax.nn.gelu(self.linear1(x), approximate=False))

    def __call__(
        self,
        x: jax.Array,
        self_bias: jax.Array,
        cross_kv: tuple[jax.Array, jax.Array],
        cross_bias: jax.Array | None,
        fusion: LayerFusion | None = None,
        positions: jax.Array | None = None,
        kv_store=None,
        kv_heads_major: bool = False,
        cross_folded: tuple[jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """One layer. Returns (x [B,S,dim], {"self_attn_out", "cross_attn_out"}: each block's output [B,S,dim]
        after its out_proj, before the residual add).

        x [B,S,dim]. self_bias: [S,S] (attention within x) or [S,Smax] (against a cache). cross_kv: this
        layer's text keys and values [B,L,H,D]; cross_bias [B,1,1,L] or None. fusion: this layer's slice of a
        `LayerFusion` (or None); positions: None (teacher forcing, queries 0..S-1) or [S] the queries' absolute
        positions, for the fusion. kv_store: None (attend within x) or a function (k, v) [B,S,H,D] -> (keys,
        values) of the whole cache with this chunk written ([B,Smax,H,D], or [B,H,Smax,D] when kv_heads_major):
        the decode path's cache write, with the q/k/v this layer computed once. cross_folded: this layer's
        `fold_cross_attention` arrays (decode only): the cross-attention then reads them instead of its q / out
        projections (cross_kv's keys still serve a fusion's query delta).
        """
        h = self.norm1(x)
        q, k, v = self.self_attn.qkv(h)
        if kv_store is not None:
            k, v = kv_store(k, v)
        y = attention(q, k, v, self_bias, heads_major=kv_store is not None and kv_heads_major)
        extra = None if fusion is None else fusion.self_attention_extra(q, positions)
        if extra is not None:
            y = y + extra.astype(y.dtype)
        B, S = x.shape[:2]
        sa_out = self.self_attn.out_proj(y.reshape(B, S, -1))
        x = x + sa_out

        h = self.norm_cross(x)
        if cross_folded is not None:
            ca_out = folded_cross_attention(h, cross_folded, cross_kv[0], cross_bias, fusion)
        else:
            cq = self.cross_attn.q_proj(h)
            dq = None if fusion is None else fusion.cross_query_delta(h.astype(cq.dtype))
            if dq is not None:
                cq = cq + dq.astype(cq.dtype)
            y = attention(cq.reshape(B, S, self.cross_attn.num_heads, -1), cross_kv[0], cross_kv[1], cross_bias)
            ca_out = self.cross_attn.out_proj(y.reshape(B, S, -1))
        x = x + ca_out

        x = x + self.mlp(self.norm2(x))
        return x, {"self_attn_out": sa_out, "cross_attn_out": ca_out}


class KVCache(NamedTuple):
    """Decoding state: self-attention caches [layers, B, Smax, H, D] (or, from
    `init_cache(per_layer=True)`, tuples of one [B, H, Smax, D] array per layer), text keys/values
    [layers, B, L, H, D] (a fusion's value deltas included), the text key bias [B,1,1,L] (or None) and the
    next position []."""

    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]
    cross_k: jax.Array
    cross_v: jax.Array
    cross_bias: jax.Array | None
    pos: jax.Array
    layer_states: tuple | None = None  # per-layer cache only: each layer's weights, sliced once (init_cache)
    cross_folded: tuple | None = None  # per-layer cache only: each layer's fold_cross_attention arrays, or None


def text_key_bias(mask: jax.Array | None) -> jax.Array | None:
    """Text padding mask [B,L] (1 = real token) -> additive key bias [B,1,1,L], or None for no masking."""
    if mask is None:
        return None
    return jnp.where(mask.astype(bool), 0.0, NEG_INF).astype(jnp.float32)[:, None, None, :]


def fold_cross_attention(layer: "DecoderLayer", k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One layer's cross-attention folded with its text keys / values, for a decode whose text is fixed:
    k, v [B,L,H,D] -> (qk [B,dim,H,L] = q_proj's kernel times the keys, scaled by 1/sqrt(D); vo [B,H,L,dim] = the
    values times out_proj's kernel). A step then reads these instead of the two [dim, dim] kernels: fewer bytes
    when B * H * L < dim (`folds_cross_attention`), e.g. 2 x 16 x 12 < 1024 for a short prompt under CFG."""
    H, D = k.shape[2], k.shape[3]
    dtype = layer.cross_attn.q_proj.dtype
    wq = layer.cross_attn.q_proj.kernel[...].astype(dtype)
    wo = layer.cross_attn.out_proj.kernel[...].astype(dtype)
    qk = jnp.einsum("dhe,blhe->bdhl", wq.reshape(wq.shape[0], H, D), k.astype(dtype)) * (1.0 / math.sqrt(D))
    vo = jnp.einsum("blhe,hed->bhld", v.astype(dtype), wo.reshape(H, D, wo.shape[1]))
    return qk, vo


def folds_cross_attention(batch: int, text_len: int, cfg: "LMConfig") -> bool:
    """Whether a decode of `batch` rows over `text_len` text tokens reads fewer bytes per step with the
    cross-attention folded (`fold_cross_attention`: 2 x batch x H x L x dim) than with its q / out kernels
    (2 x dim x dim)."""
    return batch * cfg.num_heads * text_len < cfg.dim


def folded_cross_attention(h: jax.Array, folded: tuple[jax.Array, jax.Array], k: jax.Array, bias: jax.Array | None,
                           fusion: "LayerFusion | None") -> jax.Array:
    """The cross-attention block's output [B,S,dim] (out_proj included) from its normed input h [B,S,dim] and
    `fold_cross_attention`'s (qk, vo); k [B,L,H,D] the text keys, for a fusion's query delta; bias [B,1,1,L]
    or None. Same result as the unfolded block up to float rounding (the products are associated differently)."""
    qk, vo = folded
    B, S = h.shape[:2]
    H, D = k.shape[2], k.shape[3]
    logits = jnp.einsum("bsd,bdhl->bhsl", h.astype(qk.dtype), qk)
    dq = None if fusion is None else fusion.cross_query_delta(h.astype(qk.dtype))
    if dq is not None:
        logits = logits + jnp.einsum("bshe,blhe->bhsl", dq.astype(k.dtype).reshape(B, S, H, D), k) * (1.0 / math.sqrt(D))
    logits = logits.astype(jnp.float32)
    if bias is not None:
        logits = logits + bias
    probs = jax.nn.softmax(logits, axis=-1).astype(vo.dtype)
    return jnp.einsum("bhsl,bhld->bsd", probs, vo)


REMAT = {  # rematerialisation policies of a scanned layer body (`remat_body`)
    "none": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def remat_body(body, remat: str):
    """A `lax.scan` body under `jax.checkpoint` with the named policy, for training: "none" (the body itself:
    every intermediate the backward pass needs is kept, per layer), "dots" (only the results of matmuls without
    batch dimensions, the projections, are kept; the rest of the layer is recomputed in the backward pass),
    "full" (only the layer's inputs are kept; the whole layer is recomputed). Same values and gradients."""
    if remat not in REMAT:
        raise ImgenError(f"config.model.remat: {remat!r} is not one of {tuple(REMAT)}")
    if REMAT[remat] is None:
        return body
    return jax.checkpoint(body, policy=REMAT[remat], prevent_cse=False)


def scan_layers(body, carry, xs, remat: str = "none", unroll: bool = False):
    """`jax.lax.scan(remat_body(body, remat), carry, xs)` over the stacked layers of a teacher-forced pass
    (MusicGenLM.hidden, the audio-fusion pass). unroll: every layer's body emitted in the program (scan's
    unroll=True) instead of a loop over one body: the backward pass then reads each layer's residuals as
    its own buffers instead of through dynamic slices of stacked ones (bench/train_step.py: the CPU train
    step 10-20% faster), for a larger program whose compile time grows with the layers (not for TPU:
    docs/scaling.md)."""
    return jax.lax.scan(remat_body(body, remat), carry, xs, unroll=True if unroll else 1)


class MusicGenLM(nnx.Module):
    """MusicGen LM. Parameters: emb [K, card+1, dim], text_proj (kernel [text_dim, dim], bias),
    layers/* (stacked over layers), out_norm, heads [K, dim, card].

    `remat` ("none" | "dots" | "full", see `remat_body`): how the teacher-forced layer scan (`hidden`) and the
    audio-fusion pass (imgen_jax.instruct.fusion) rematerialise in the backward pass; `unroll_layers`: whether those
    two passes emit every layer instead of a loop (`scan_layers`). The train step sets both on the instance it
    merges (imgen_jax.train.step)."""

    remat: str = "none"
    unroll_layers: bool = False

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.cfg = cfg
        self.dtype = dtype
        K, D = cfg.num_codebooks, cfg.dim
        self.emb = param(jax.random.normal(rngs.params(), (K, cfg.card + 1, D), jnp.float32), "codebooks", "codes", "embed")
        if cfg.text_proj:
            self.text_proj = nnx.Dict(
                kernel=param(jax.random.normal(rngs.params(), (cfg.text_dim, D), jnp.float32) / math.sqrt(cfg.text_dim),
                             "text_embed", "embed"),
                bias=param(jnp.zeros((D,), jnp.float32), "embed"),
            )
        else:
            self.text_proj = None

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=STACKED)  # leading logical axis "layers"
        def make_layers(rngs: nnx.Rngs) -> DecoderLayer:
            return DecoderLayer(cfg, rngs=rngs, dtype=dtype)

        self.layers = make_layers(rngs)
        self.out_norm = LayerNorm(D, cfg.layer_norm_eps, dtype)
        self.heads = param(jax.random.normal(rngs.params(), (K, D, cfg.card), jnp.float32) / math.sqrt(D),
                           "codebooks", "embed", "vocab")

    # ---- inputs -------------------------------------------------------------------------------
    def text_memory(self, text_hidden: jax.Array, text_mask: jax.Array | None) -> jax.Array:
        """T5 hidden states [B,L,text_dim] -> cross-attention memory [B,L,dim] (projected, padding zeroed)."""
        m = text_hidden.astype(jnp.float32)
        if self.text_proj is not None:
            m = m @ self.text_proj["kernel"][...] + self.text_proj["bias"][...]
        if text_mask is not None:
            m = m * text_mask[..., None].astype(m.dtype)
        return m.astype(self.dtype)

    def embed(self, seq: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
        """Pattern tokens [B,K,S] at positions offset..offset+S-1 -> [B,S,dim]."""
        emb = self.emb[...]
        x = sum(jnp.take(emb[k], seq[:, k], axis=0) for k in range(self.cfg.num_codebooks))
        pos = jnp.arange(seq.shape[-1]) + offset
        return (x + sinusoidal_positions(pos, self.cfg.dim)[None]).astype(self.dtype)

    def project_heads(self, x: jax.Array) -> jax.Array:
        """Final hidden [B,S,dim] -> logits [B,K,S,card] float32 (after out_norm)."""
        h = self.out_norm(x)
        K = self.cfg.num_codebooks
        # one batched [B*S, dim] x [dim, card] product per codebook: reads `heads` in its stored layout
        # (a plain "bsd,kdc->bksc" contraction makes XLA transpose all of `heads` on every call)
        hk = jnp.broadcast_to(h[None], (K,) + h.shape)
        out = jnp.einsum("kbsd,kdc->kbsc", hk, self.heads[...].astype(h.dtype))
        return out.transpose(1, 0, 2, 3).astype(jnp.float32)

    def cross_kv(self, memory: jax.Array, fusion: LayerFusion | None = None) -> tuple[jax.Array, jax.Array]:
        """Text keys/values for every layer: memory [B,L,dim] -> ([layers,B,L,H,D], [layers,B,L,H,D]).

        fusion: an optional `LayerFusion` stacked over layers (its `cross_value_delta` adds to the values)."""
        g, s = nnx.split(self.layers)

        def body(_, xs):
            st, fu = xs
            layer = nnx.merge(g, st)
            return None, layer.cross_attn.memory_kv(memory, fu)

        _, (k, v) = jax.lax.scan(body, None, (s, fusion))
        return k, v

    # ---- teacher forcing ----------------------------------------------------------------------
    def hidden(
        self,
        seq: jax.Array,
        memory: jax.Array,
        text_mask: jax.Array | None = None,
        fusion: LayerFusion | None = None,
        trace: bool = False,
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """Teacher-forced final hidden states [B,S,dim] (before out_norm) of a pattern sequence [B,K,S].

        memory: [B,L,dim] from `text_memory`; text_mask [B,L] masks padded text keys (Hugging Face
        semantics) or None to attend to every key (audiocraft semantics: padded keys are zeros).
        fusion: an optional `LayerFusion` stacked over layers (its hooks see positions None: step i is
        query i). trace: also return the intermediates {"input": the embedded input [B,S,dim],
        "self_attn_out", "cross_attn_out", "layer_out": per layer [layers,B,S,dim]}, for inspection.
        """
        S = seq.shape[-1]
        x = self.embed(seq)
        x0 = x
        causal = jnp.where(jnp.tril(jnp.ones((S, S), bool)), 0.0, NEG_INF).astype(jnp.float32)
        cross_bias = text_key_bias(text_mask)
        g, s = nnx.split(self.layers)

        def body(x, xs):
            st, fu = xs
            layer = nnx.merge(g, st)
            x, outs = layer(x, causal, layer.cross_attn.memory_kv(memory, fu), cross_bias, fu)
            return x, (dict(outs, layer_out=x) if trace else None)

        x, per_layer = scan_layers(body, x, (s, fusion), self.remat, self.unroll_layers)
        return (x, dict(per_layer, input=x0)) if trace else x

    def __call__(self, seq: jax.Array, memory: jax.Array, text_mask: jax.Array | None = None, **kw) -> jax.Array:
        """Teacher-forced logits [B,K,S,card] (float32) of a pattern sequence [B,K,S]."""
        return self.project_heads(self.hidden(seq, memory, text_mask, **kw))

    def frame_logits(
        self, codes: jax.Array, memory: jax.Array, text_mask: jax.Array | None = None, **kw
    ) -> tuple[jax.Array, jax.Array]:
        """Teacher-forced logits aligned with the frames, as audiocraft's `LMModel.compute_predictions`.

        codes [B,K,T] (frames, no special tokens) -> (logits [B,K,T,card] float32, mask [B,K,T] bool).
        The pattern keeps only its T+1 fully defined steps; the logits of frame t of codebook k are
        the head-k output at step t + delays[k]. Frames without such a step (the last delays[k]
        frames of codebook k) have NaN logits and mask False. `kw` goes to `hidden` (fusion).
        """
        delays = self.cfg.delays
        T = codes.shape[-1]
        seq = build_pattern(codes, self.cfg.special_token, delays, num_steps=T + 1)
        logits = self(seq, memory, text_mask, **kw)  # [B,K,T+1,card]
        steps = np.arange(T)[None, :] + np.asarray(delays)[:, None]  # [K,T]
        valid = steps < T
        idx = np.minimum(steps, T)
        picked = jnp.take_along_axis(logits, jnp.asarray(idx)[None, :, :, None], axis=2)
        mask = jnp.broadcast_to(jnp.asarray(valid)[None], codes.shape)
        return jnp.where(mask[..., None], picked, jnp.nan), mask

    def frame_loss(self, codes: jax.Array, memory: jax.Array, text_mask: jax.Array | None = None, **kw) -> jax.Array:
        """Mean cross-entropy of the frames' teacher-forced logits against codes [B,K,T] over the valid
        frames: the same number as `masked_cross_entropy(*frame_logits(...))` (imgen_jax.instruct), computed
        per codebook on the valid steps only (no [B,K,T,card] logits with NaN padding to build, mask
        and differentiate). `kw` goes to `hidden` (fusion)."""
        delays = self.cfg.delays
        B, K, T = codes.shape
        seq = build_pattern(codes, self.cfg.special_token, delays, num_steps=T + 1)
        h = self.out_norm(self.hidden(seq, memory, text_mask, **kw))  # [B,T+1,dim]
        heads = self.heads[...]
        total, count = jnp.zeros((), jnp.float32), 0
        for k, d in enumerate(delays):
            n = T - d
            if n <= 0:
                continue
            logits = jnp.einsum("bsd,dc->bsc", h[:, d:T], heads[k].astype(h.dtype)).astype(jnp.float32)
            logp = jax.nn.log_softmax(logits, axis=-1)
            total = total - jnp.take_along_axis(logp, codes[:, k, :n, None].astype(jnp.int32), axis=-1).sum()
            count += B * n
        return total / max(count, 1)

    # ---- KV-cached decoding -------------------------------------------------------------------
    def init_cache(
        self, batch: int, max_len: int, memory: jax.Array, text_mask: jax.Array | None,
        fusion: LayerFusion | None = None, per_layer: bool = False, fold_cross: bool | None = None,
    ) -> KVCache:
        """Empty self-attention cache of `max_len` steps plus the text keys/values computed once.

        fusion: the `LayerFusion` the decode runs with (its value deltas go into the text values once, here).
        per_layer: one heads-major [B, H, max_len, D] key and value buffer per layer instead of one stacked
        [layers, B, max_len, H, D] buffer, and each layer's weights sliced out of the stack once, here
        (`layer_states`; a second copy of the layer weights while the cache lives); `extend` then runs the
        layers unrolled (see there). fold_cross (per-layer cache only): fold each layer's cross-attention with
        the text keys / values once, here (`fold_cross_attention`); None: when that reads fewer bytes per step
        (`folds_cross_attention`)."""
        cfg = self.cfg
        ck, cv = self.cross_kv(memory, fusion)
        layer_states = folded = None
        if per_layer:
            shape = (batch, cfg.num_heads, max_len, cfg.head_dim)
            k = tuple(jnp.zeros(shape, self.dtype) for _ in range(cfg.num_layers))
            v = tuple(jnp.zeros(shape, self.dtype) for _ in range(cfg.num_layers))
            g, stacked = nnx.split(self.layers)
            layer_states = layer_slices(stacked, cfg.num_layers)
            if fold_cross is None:
                fold_cross = folds_cross_attention(batch, memory.shape[1], cfg)
            if fold_cross:
                folded = tuple(fold_cross_attention(nnx.merge(g, layer_states[i]), ck[i], cv[i])
                               for i in range(cfg.num_layers))
        else:
            shape = (cfg.num_layers, batch, max_len, cfg.num_heads, cfg.head_dim)
            k, v = jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)
        return KVCache(
            k=k, v=v, cross_k=ck, cross_v=cv, cross_bias=text_key_bias(text_mask), pos=jnp.zeros((), jnp.int32),
            layer_states=layer_states, cross_folded=folded,
        )

    def extend(self, seq: jax.Array, cache: KVCache, fusion: LayerFusion | None = None) -> tuple[jax.Array, KVCache]:
        """Feed pattern steps seq [B,K,S] at positions cache.pos.. and return (logits [B,K,S,card], cache).

        Used both as prefill (S = prompt length) and as the one-step decode (S = 1). Keys and values
        are written into the cache in place (dynamic_update_slice on the carried buffers).
        With a per-layer cache (`init_cache(per_layer=True)`) the layers run as a Python loop over the
        cache's per-layer weights instead of a scan (same result): each step then reads every layer's
        weights and its own cache buffers in place, where a scan copies a dynamic slice of the weight
        stack and of the cache every step and transposes the cache for the attention (1.5x to 2x slower
        per step on CPU). The price: a longer compile and the second copy of the layer weights.
        fusion: the `LayerFusion` of `init_cache`, after `for_decoding(per_layer)`; its hooks see the
        queries' absolute positions. With a per-layer cache it may also be `layer_slices(fusion, layers)`
        (what a decode loop should pass: the stacked fusion would be sliced on every step).
        """
        S = seq.shape[-1]
        per_layer = isinstance(cache.k, (tuple, list))
        Smax = (cache.k[0] if per_layer else cache.k).shape[2]
        pos0 = cache.pos
        x = self.embed(seq, pos0)
        qpos = pos0 + jnp.arange(S)
        kpos = jnp.arange(Smax)
        bias = jnp.where(kpos[None, :] <= qpos[:, None], 0.0, NEG_INF).astype(jnp.float32)
        g, s = nnx.split(self.layers)

        if per_layer:  # per-layer heads-major buffers [B,H,Smax,D]: unrolled layers
            kc, vc = list(cache.k), list(cache.v)
            for i in range(self.cfg.num_layers):
                def store(k_new, v_new, i=i):
                    kc[i] = jax.lax.dynamic_update_slice(kc[i], k_new.swapaxes(1, 2).astype(kc[i].dtype), (0, 0, pos0, 0))
                    vc[i] = jax.lax.dynamic_update_slice(vc[i], v_new.swapaxes(1, 2).astype(vc[i].dtype), (0, 0, pos0, 0))
                    return kc[i], vc[i]

                layer = nnx.merge(g, cache.layer_states[i])
                x, _ = layer(x, bias, (cache.cross_k[i], cache.cross_v[i]), cache.cross_bias, _layer(fusion, i), qpos,
                             store, kv_heads_major=True,
                             cross_folded=None if cache.cross_folded is None else cache.cross_folded[i])
            return self.project_heads(x), cache._replace(k=tuple(kc), v=tuple(vc), pos=pos0 + S)

        def body(carry, xs):  # stacked buffers [layers,B,Smax,H,D] carried through the scan, written in place
            x, kc, vc = carry
            st, i, ck, cv, fu = xs
            out = {}

            def store(k_new, v_new):
                out["k"] = jax.lax.dynamic_update_slice(kc, k_new[None].astype(kc.dtype), (i, 0, pos0, 0, 0))
                out["v"] = jax.lax.dynamic_update_slice(vc, v_new[None].astype(vc.dtype), (i, 0, pos0, 0, 0))
                return out["k"][i], out["v"][i]

            x, _ = nnx.merge(g, st)(x, bias, (ck, cv), cache.cross_bias, fu, qpos, store)
            return (x, out["k"], out["v"]), None

        xs = (s, jnp.arange(self.cfg.num_layers), cache.cross_k, cache.cross_v, fusion)
        (x, kc, vc), _ = jax.lax.scan(body, (x, cache.k, cache.v), xs)
        return self.project_heads(x), cache._replace(k=kc, v=vc, pos=pos0 + S)


def init_lm(cfg: LMConfig, seed: int = 0, dtype=jnp.float32) -> MusicGenLM:
    """A MusicGen LM with random weights (for tests and benchmarks)."""
    return MusicGenLM(cfg, rngs=nnx.Rngs(seed), dtype=dtype)


def abstract_lm(cfg: LMConfig, dtype=jnp.float32) -> MusicGenLM:
    """A MusicGen LM whose parameters are shape placeholders, to be filled by `weights.load_into`."""
    return nnx.eval_shape(lambda: MusicGenLM(cfg, rngs=nnx.Rngs(0), dtype=dtype))


def load_lm(model_dir: str, dtype=jnp.float32, param_dtype=None) -> MusicGenLM:
    """Load the `lm` component of a converted model directory (see imgen_jax.modeldir)."""
    from imgen_jax.modeldir import load_component

    return load_component(model_dir, "lm", LMConfig.from_dict, lambda cfg: abstract_lm(cfg, dtype), param_dtype)[1]
