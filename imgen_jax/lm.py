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
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imgen_jax.configs import config_from_dict, config_to_dict
from imgen_jax.errors import ImgenError
from imgen_jax.patterns import build_pattern, codebook_delays

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
    """Linear map without bias; kernel [in, out] (the transpose of PyTorch's weight)."""

    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (din, dout), jnp.float32) * (1.0 / math.sqrt(din)))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))


class LayerNorm(nnx.Module):
    """LayerNorm with scale and bias, statistics in float32."""

    def __init__(self, dim: int, eps: float, dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(self.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None, heads_major: bool = False) -> jax.Array:
    """Scaled dot-product attention. q [B,Q,H,D], k/v [B,K,H,D] (heads_major: [B,H,K,D]), bias broadcastable
    to [B,H,Q,K] -> [B,Q,H,D]."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    kv = "bhkd" if heads_major else "bkhd"
    logits = jnp.einsum(f"bqhd,{kv}->bhqk", q, k).astype(jnp.float32) * scale
    if bias is not None:
        logits = logits + bias
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum(f"bhqk,{kv}->bqhd", probs, v)


class AudioPrefix(NamedTuple):
    """Per-layer audio-fusion prefix entering one layer's self-attention (see imgen_jax.fusion).

    q, k, v: [B, Tc, H, D] projections of the condition sequence (k and v [B, H, Tc, D] on the heads-major
    path of a per-layer cache, see `MusicGenLM.extend`); gate: [] scalar.
    The layer adds gate * attention(q_self + q[positions], k, v) (not causal) before out_proj.
    """

    q: jax.Array
    k: jax.Array
    v: jax.Array
    gate: jax.Array


class CrossLoRA(NamedTuple):
    """LoRA on the cross-attention q and v projections (the text fusion of imgen_jax.fusion).

    Stacked over layers (leading layer axis) when passed to the model; one layer's slice inside the
    scanned body. Kernels are [in, out] (transposes of PyTorch's lora_A / lora_B weights):
    q_a, v_a: [dim, r]; q_b, v_b: [r, dim]; scale: [] (lora_alpha / r).
    q = x Wq + scale * ((x q_a) q_b); v = m Wv + scale * ((m v_a) v_b); k unchanged.
    """

    q_a: jax.Array
    q_b: jax.Array
    v_a: jax.Array
    v_b: jax.Array
    scale: jax.Array


def lora_delta(x: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array) -> jax.Array:
    """scale * ((x a) b), in the dtype of x (peft's `lora_B(lora_A(x)) * scaling`)."""
    return jnp.dot(jnp.dot(x, a.astype(x.dtype)), b.astype(x.dtype)) * scale.astype(x.dtype)


class SelfAttention(nnx.Module):
    """Causal multi-head self-attention with fused q/k/v projection (audiocraft's in_proj)."""

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.in_proj = Dense(cfg.dim, 3 * cfg.dim, rngs=rngs, dtype=dtype)
        self.out_proj = Dense(cfg.dim, cfg.dim, rngs=rngs, dtype=dtype)
        self.num_heads = cfg.num_heads

    def qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [B,S,dim] -> q, k, v each [B,S,H,D]."""
        B, S, _ = x.shape
        qkv = self.in_proj(x).reshape(B, S, 3, self.num_heads, -1)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


class CrossAttention(nnx.Module):
    """Multi-head attention from the sequence to the text memory; separate q and fused k/v projections."""

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.q_proj = Dense(cfg.dim, cfg.dim, rngs=rngs, dtype=dtype)
        self.kv_proj = Dense(cfg.dim, 2 * cfg.dim, rngs=rngs, dtype=dtype)
        self.out_proj = Dense(cfg.dim, cfg.dim, rngs=rngs, dtype=dtype)
        self.num_heads = cfg.num_heads

    def memory_kv(self, memory: jax.Array, lora: CrossLoRA | None = None) -> tuple[jax.Array, jax.Array]:
        """memory [B,L,dim] -> k, v each [B,L,H,D]; `lora` (this layer's slice) adds to v only."""
        B, L, _ = memory.shape
        kv = self.kv_proj(memory).reshape(B, L, 2, self.num_heads, -1)
        k, v = kv[:, :, 0], kv[:, :, 1]
        if lora is not None:
            x = memory.astype(v.dtype)
            v = v + lora_delta(x, lora.v_a, lora.v_b, lora.scale).reshape(B, L, self.num_heads, -1)
        return k, v


class DecoderLayer(nnx.Module):
    """Pre-norm layer: x += SA(norm1 x); x += CA(norm_cross x, memory); x += MLP(norm2 x)."""

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.norm1 = LayerNorm(cfg.dim, cfg.layer_norm_eps, dtype)
        self.self_attn = SelfAttention(cfg, rngs=rngs, dtype=dtype)
        self.norm_cross = LayerNorm(cfg.dim, cfg.layer_norm_eps, dtype)
        self.cross_attn = CrossAttention(cfg, rngs=rngs, dtype=dtype)
        self.norm2 = LayerNorm(cfg.dim, cfg.layer_norm_eps, dtype)
        self.linear1 = Dense(cfg.dim, cfg.ffn_dim, rngs=rngs, dtype=dtype)
        self.linear2 = Dense(cfg.ffn_dim, cfg.dim, rngs=rngs, dtype=dtype)

    def mlp(self, x: jax.Array) -> jax.Array:
        return self.linear2(jax.nn.gelu(self.linear1(x), approximate=False))

    def __call__(self, *args, **kw) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """One layer: `blocks` without the block outputs. Returns (x, (k, v) of this chunk [B,S,H,D])."""
        x, kv, _ = self.blocks(*args, **kw)
        return x, kv

    def blocks(
        self,
        x: jax.Array,
        self_kv: tuple[jax.Array, jax.Array] | None,
        self_bias: jax.Array,
        cross_kv: tuple[jax.Array, jax.Array],
        cross_bias: jax.Array | None,
        prefix: AudioPrefix | None = None,
        prefix_pos: jax.Array | None = None,
        lora: CrossLoRA | None = None,
        kv_heads_major: bool = False,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array], dict[str, jax.Array]]:
        """One layer, also returning its block outputs.

        x [B,S,dim]. self_kv: None (attend within x, `self_bias` [S,S] causal) or (k, v) [B,Smax,H,D]
        ([B,H,Smax,D] when kv_heads_major) caches already holding this chunk's keys (then `self_bias`
        [S,Smax]). cross_kv: text keys and
        values [B,L,H,D]; cross_bias [B,1,1,L] or None. prefix / prefix_pos [S]: the audio-fusion
        prefix and the condition position each query reads its q offset from (None: query i reads i). lora: this layer's slice
        of the cross-attention LoRA (its q part is applied here; its v part is in `cross_kv`).
        Returns (x, (k, v) of this chunk [B,S,H,D], {"self_attn_out", "cross_attn_out"}: each block's output
        [B,S,dim] after its out_proj, before the residual add).
        """
        h = self.norm1(x)
        q, k, v = self.self_attn.qkv(h)
        if self_kv is None:
            y = attention(q, k, v, self_bias)
        else:
            y = attention(q, self_kv[0], self_kv[1], self_bias, heads_major=kv_heads_major)
        if prefix is not None:
            # prefix_pos None: step i reads position i (teacher forcing); a slice, whose gradient is no scatter
            qp = prefix.q[:, : x.shape[1]] if prefix_pos is None else jnp.take(prefix.q, prefix_pos, axis=1)  # [B,S,H,D]
            y = y + prefix.gate.astype(y.dtype) * attention(q + qp, prefix.k, prefix.v, None, heads_major=kv_heads_major)
        B, S = x.shape[:2]
        sa_out = self.self_attn.out_proj(y.reshape(B, S, -1))
        x = x + sa_out

        h = self.norm_cross(x)
        cq = self.cross_attn.q_proj(h)
        if lora is not None:
            cq = cq + lora_delta(h.astype(cq.dtype), lora.q_a, lora.q_b, lora.scale)
        y = attention(cq.reshape(B, S, self.cross_attn.num_heads, -1), cross_kv[0], cross_kv[1], cross_bias)
        ca_out = self.cross_attn.out_proj(y.reshape(B, S, -1))
        x = x + ca_out

        x = x + self.mlp(self.norm2(x))
        return x, (k, v), {"self_attn_out": sa_out, "cross_attn_out": ca_out}


class KVCache(NamedTuple):
    """Decoding state: self-attention caches [layers, B, Smax, H, D] (or, from
    `init_cache(per_layer=True)`, tuples of one [B, H, Smax, D] array per layer), text keys/values
    [layers, B, L, H, D], the text key bias [B,1,1,L] (or None), the next position [] and the
    cross-attention LoRA (stacked CrossLoRA or None) whose v part is already in cross_v and whose
    q part every `extend` applies."""

    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]
    cross_k: jax.Array
    cross_v: jax.Array
    cross_bias: jax.Array | None
    pos: jax.Array
    lora: CrossLoRA | None = None
    layer_states: tuple | None = None  # per-layer cache only: each layer's weights, sliced once (init_cache)


def text_key_bias(mask: jax.Array | None) -> jax.Array | None:
    """Text padding mask [B,L] (1 = real token) -> additive key bias [B,1,1,L], or None for no masking."""
    if mask is None:
        return None
    return jnp.where(mask.astype(bool), 0.0, NEG_INF).astype(jnp.float32)[:, None, None, :]


class MusicGenLM(nnx.Module):
    """MusicGen LM. Parameters: emb [K, card+1, dim], text_proj (kernel [text_dim, dim], bias),
    layers/* (stacked over layers), out_norm, heads [K, dim, card]."""

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.cfg = cfg
        self.dtype = dtype
        K, D = cfg.num_codebooks, cfg.dim
        self.emb = nnx.Param(jax.random.normal(rngs.params(), (K, cfg.card + 1, D), jnp.float32))
        if cfg.text_proj:
            self.text_proj = nnx.Dict(
                kernel=nnx.Param(jax.random.normal(rngs.params(), (cfg.text_dim, D), jnp.float32) / math.sqrt(cfg.text_dim)),
                bias=nnx.Param(jnp.zeros((D,), jnp.float32)),
            )
        else:
            self.text_proj = None

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_layers(rngs: nnx.Rngs) -> DecoderLayer:
            return DecoderLayer(cfg, rngs=rngs, dtype=dtype)

        self.layers = make_layers(rngs)
        self.out_norm = LayerNorm(D, cfg.layer_norm_eps, dtype)
        self.heads = nnx.Param(jax.random.normal(rngs.params(), (K, D, cfg.card), jnp.float32) / math.sqrt(D))

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

    def cross_kv(self, memory: jax.Array, lora: CrossLoRA | None = None) -> tuple[jax.Array, jax.Array]:
        """Text keys/values for every layer: memory [B,L,dim] -> ([layers,B,L,H,D], [layers,B,L,H,D]).

        lora: optional stacked cross-attention LoRA (its v part is added to the values)."""
        g, s = nnx.split(self.layers)

        def body(_, xs):
            st, lo = xs
            layer = nnx.merge(g, st)
            return None, layer.cross_attn.memory_kv(memory, lo)

        _, (k, v) = jax.lax.scan(body, None, (s, lora))
        return k, v

    # ---- teacher forcing ----------------------------------------------------------------------
    def hidden(
        self,
        seq: jax.Array,
        memory: jax.Array,
        text_mask: jax.Array | None = None,
        prefixes: AudioPrefix | None = None,
        prefix_pos: jax.Array | None = None,
        lora: CrossLoRA | None = None,
        trace: bool = False,
    ) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """Teacher-forced final hidden states [B,S,dim] (before out_norm) of a pattern sequence [B,K,S].

        memory: [B,L,dim] from `text_memory`; text_mask [B,L] masks padded text keys (Hugging Face
        semantics) or None to attend to every key (audiocraft semantics: padded keys are zeros).
        prefixes: optional per-layer AudioPrefix stacked over layers (leading layer axis), with
        prefix_pos [S] the condition position each step reads its prefix query from (None: step i reads i).
        lora: optional cross-attention LoRA stacked over layers (imgen_jax.fusion's text fusion).
        trace: also return the intermediates {"input": the embedded input [B,S,dim], "self_attn_out",
        "cross_attn_out", "layer_out": per layer [layers,B,S,dim]} (DecoderLayer.blocks), for inspection.
        """
        S = seq.shape[-1]
        x = self.embed(seq)
        x0 = x
        causal = jnp.where(jnp.tril(jnp.ones((S, S), bool)), 0.0, NEG_INF).astype(jnp.float32)
        cross_bias = text_key_bias(text_mask)
        g, s = nnx.split(self.layers)

        def body(x, xs):
            st, pre, lo = xs
            layer = nnx.merge(g, st)
            x, _, outs = layer.blocks(x, None, causal, layer.cross_attn.memory_kv(memory, lo), cross_bias, pre,
                                      prefix_pos, lo)
            return x, (dict(outs, layer_out=x) if trace else None)

        x, per_layer = jax.lax.scan(body, x, (s, prefixes, lora))
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
        frames of codebook k) have NaN logits and mask False. `kw` goes to `hidden` (audio prefix).
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
        and differentiate). `kw` goes to `hidden`."""
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
        self, batch: int, max_len: int, memory: jax.Array, text_mask: jax.Array | None, lora: CrossLoRA | None = None,
        per_layer: bool = False,
    ) -> KVCache:
        """Empty self-attention cache of `max_len` steps plus the text keys/values computed once.

        lora: optional stacked cross-attention LoRA; kept in the cache, so every `extend` applies it.
        per_layer: one heads-major [B, H, max_len, D] key and value buffer per layer instead of one stacked
        [layers, B, max_len, H, D] buffer, and each layer's weights sliced out of the stack once, here
        (`layer_states`; a second copy of the layer weights while the cache lives); `extend` then runs the
        layers unrolled (see there)."""
        cfg = self.cfg
        ck, cv = self.cross_kv(memory, lora)
        layer_states = None
        if per_layer:
            shape = (batch, cfg.num_heads, max_len, cfg.head_dim)
            k = tuple(jnp.zeros(shape, self.dtype) for _ in range(cfg.num_layers))
            v = tuple(jnp.zeros(shape, self.dtype) for _ in range(cfg.num_layers))
            _, stacked = nnx.split(self.layers)
            # the barrier keeps XLA from sinking the slices back into a decode loop (re-copied every step)
            layer_states = jax.lax.optimization_barrier(
                tuple(jax.tree.map(lambda a: a[i], stacked) for i in range(cfg.num_layers))
            )
        else:
            shape = (cfg.num_layers, batch, max_len, cfg.num_heads, cfg.head_dim)
            k, v = jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)
        return KVCache(
            k=k, v=v, cross_k=ck, cross_v=cv, cross_bias=text_key_bias(text_mask), pos=jnp.zeros((), jnp.int32),
            lora=lora, layer_states=layer_states,
        )

    def extend(
        self,
        seq: jax.Array,
        cache: KVCache,
        prefixes: AudioPrefix | None = None,
        prefix_pos: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """Feed pattern steps seq [B,K,S] at positions cache.pos.. and return (logits [B,K,S,card], cache).

        Used both as prefill (S = prompt length) and as the one-step decode (S = 1). Keys and values
        are written into the cache in place (dynamic_update_slice on the carried buffers).
        With a per-layer cache (`init_cache(per_layer=True)`) the layers run as a Python loop over the
        cache's per-layer weights instead of a scan (same result): each step then reads every layer's
        weights and its own cache buffers in place, where a scan copies a dynamic slice of the weight
        stack and of the cache every step and transposes the cache for the attention (1.5x to 2x slower
        per step on CPU). The price: a longer compile and the second copy of the layer weights.
        prefixes / prefix_pos [S]: the audio-fusion prefix and the condition position of each step's
        prefix query (the caller clamps it); with a per-layer cache its k and v are heads-major
        [layers, B, H, Tc, D] (`heads_major_prefixes`, once before a decode loop). The cross-attention
        LoRA comes from `cache.lora`.
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
        n = self.cfg.num_layers

        def body(carry, xs):
            x, kc, vc = carry
            st, i, ck, cv, pre, lo = xs
            layer = nnx.merge(g, st)
            h = layer.norm1(x)
            _, k_new, v_new = layer.self_attn.qkv(h)
            kc = jax.lax.dynamic_update_slice(kc, k_new[None].astype(kc.dtype), (i, 0, pos0, 0, 0))
            vc = jax.lax.dynamic_update_slice(vc, v_new[None].astype(vc.dtype), (i, 0, pos0, 0, 0))
            x, _ = layer(x, (kc[i], vc[i]), bias, (ck, cv), cache.cross_bias, pre, prefix_pos, lo)
            return (x, kc, vc), None

        if per_layer:  # per-layer heads-major buffers: unrolled layers
            kc, vc = list(cache.k), list(cache.v)
            for i in range(n):
                ck, cv, pre, lo = jax.tree.map(lambda a: a[i], (cache.cross_k, cache.cross_v, prefixes, cache.lora))
                layer = nnx.merge(g, cache.layer_states[i])
                _, k_new, v_new = layer.self_attn.qkv(layer.norm1(x))
                kc[i] = jax.lax.dynamic_update_slice(kc[i], k_new.swapaxes(1, 2).astype(kc[i].dtype), (0, 0, pos0, 0))
                vc[i] = jax.lax.dynamic_update_slice(vc[i], v_new.swapaxes(1, 2).astype(vc[i].dtype), (0, 0, pos0, 0))
                x, _ = layer(
                    x, (kc[i], vc[i]), bias, (ck, cv), cache.cross_bias, pre, prefix_pos, lo, kv_heads_major=True
                )
            kc, vc = tuple(kc), tuple(vc)
        else:
            xs = (s, jnp.arange(n), cache.cross_k, cache.cross_v, prefixes, cache.lora)
            (x, kc, vc), _ = jax.lax.scan(body, (x, cache.k, cache.v), xs)
        return self.project_heads(x), cache._replace(k=kc, v=vc, pos=pos0 + S)


def heads_major_prefixes(prefixes: AudioPrefix) -> AudioPrefix:
    """Stacked prefixes with k and v [layers, B, Tc, H, D] -> [layers, B, H, Tc, D], the layout of the
    per-layer cache path of `MusicGenLM.extend` (transposed once, not in every decoding step)."""
    return prefixes._replace(k=prefixes.k.swapaxes(2, 3), v=prefixes.v.swapaxes(2, 3))


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
