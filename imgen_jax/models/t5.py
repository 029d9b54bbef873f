"""T5 text encoder (as used by MusicGen's text conditioner, t5-base) and its sentencepiece tokenizer.

The encoder follows Hugging Face's `T5EncoderModel` exactly (no dropout):

    h = embed(ids)                                        # [B, L, D], no scaling
    bias = rel_bias(bucket(k - q))                        # [H, L, L], computed once, shared by all layers
    for each layer:                                       # stacked weights, one scanned layer body
        h = h + o(attn(rms(h) @ q, rms(h) @ k, rms(h) @ v, bias, mask))   # no 1/sqrt(d) scaling
        h = h + ff(rms(h))                                # relu: wo(relu(wi x)); gated: wo(act(wi_0 x) * wi_1 x)
    out = rms(h)                                          # final norm

RMS norm is T5's: no mean subtraction, no bias, variance in float32. Padded keys get the most
negative float32 added (as HF), so a fully padded row attends uniformly to all of its positions,
again as HF. Padded query positions are computed like any other (HF does the same).

Weight names (NNX state paths, '/'-joined; per-layer weights carry a leading layer axis [N, ...]):

    embed/embedding              [V, D]
    rel_bias/embedding           [num_buckets, H]
    layers/attn_norm/scale       [N, D]
    layers/attn/{q,k,v}/kernel   [N, D, H*d_kv]
    layers/attn/o/kernel         [N, H*d_kv, D]
    layers/ff_norm/scale         [N, D]
    layers/ff/wi/kernel          [N, D, F]       (relu / gelu ...)
    layers/ff/{wi_0,wi_1}/kernel [N, D, F]       (gated-*)
    layers/ff/wo/kernel          [N, F, D]
    final_norm/scale             [D]

The runtime never imports torch or transformers; `convert/t5_weights.py` writes these names.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imgen_jax.axes import STACKED, metadata, param
from imgen_jax.configs import config_from_dict, config_to_dict
from imgen_jax.errors import ImgenError

# Feed-forward activations T5 checkpoints use; HF maps "gated-gelu" to the tanh approximation.
_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}

# HF T5Config defaults, used for fields a config.json leaves out.
_HF_DEFAULTS = dict(
    vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
    relative_attention_num_buckets=32, relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6, feed_forward_proj="relu",
)


def _parse_ff_proj(proj: str) -> tuple[bool, str]:
    """(gated, activation name) of a `feed_forward_proj` string, as HF's T5Config reads it."""
    parts = str(proj).split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise ValueError(f"feed_forward_proj {proj!r} is not 'ACT' or 'gated-ACT'")
    gated = len(parts) == 2
    act = parts[-1]
    if proj == "gated-gelu":
        act = "gelu_new"
    if act not in _ACTIVATIONS:
        raise ValueError(f"feed_forward_proj {proj!r}: activation {act!r} not supported (one of {sorted(_ACTIVATIONS)})")
    return gated, act


@dataclass(frozen=True)
class T5Config:
    """Sizes of a T5 encoder. Defaults are t5-base (the text encoder of every MusicGen size)."""

    vocab_size: int = 32128
    d_model: int = 768
    d_kv: int = 64
    d_ff: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # "relu" (t5) or "gated-gelu" (t5 v1.1, flan-t5)

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.relative_attention_num_buckets < 4:
            raise ValueError("relative_attention_num_buckets must be at least 4")
        _parse_ff_proj(self.feed_forward_proj)

    @property
    def is_gated(self) -> bool:
        return _parse_ff_proj(self.feed_forward_proj)[0]

    @property
    def activation(self) -> str:
        return _parse_ff_proj(self.feed_forward_proj)[1]

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "t5 config") -> "T5Config":
        return config_from_dict(cls, d, source)

    @classmethod
    def from_hf(cls, hf: dict, source: str = "config.json") -> "T5Config":
        """From a Hugging Face T5 `config.json` dict (or a MusicGen one, via its `text_encoder` entry).

        Fields the dict leaves out take HF's T5Config defaults (t5-small sizes), as HF would.
        """
        if not isinstance(hf, dict):
            raise ImgenError(f"{source}: expected a JSON object, got {type(hf).__name__}")
        if "d_model" not in hf and isinstance(hf.get("text_encoder"), dict):
            hf = hf["text_encoder"]
            source = f"{source} (text_encoder)"
        mt = hf.get("model_type")
        if mt is not None and mt not in ("t5", "mt5", "umt5"):
            raise ImgenError(f"{source}: model_type is {mt!r}, not a T5 config")
        kw = {k: hf.get(k, default) for k, default in _HF_DEFAULTS.items()}
        if kw["num_layers"] is None:
            kw["num_layers"] = _HF_DEFAULTS["num_layers"]
        try:
            kw["layer_norm_epsilon"] = float(kw["layer_norm_epsilon"])
            return cls(**kw)
        except (TypeError, ValueError) as e:
            raise ImgenError(f"{source}: invalid T5 config: {e}") from None


# --------------------------------------------------------------------------------------------
# relative position buckets


def relative_position_bucket(
    relative_position: np.ndarray, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True
) -> np.ndarray:
    """T5's bucket of each relative position (memory - query), as HF computes it (float32 log).

    Half the buckets (per direction when bidirectional) are exact small distances, the rest
    logarithmically wider bins up to `max_distance`; larger distances share the last bucket.
    """
    rel = np.asarray(relative_position, dtype=np.int64)
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).astype(np.int64) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    with np.errstate(divide="ignore"):
        ratio = (np.maximum(rel, 1).astype(np.float32) / np.float32(max_exact)).astype(np.float32)
        scaled = (np.log(ratio).astype(np.float32) / np.float32(math.log(max_distance / max_exact))).astype(np.float32)
        scaled = (scaled * np.float32(num_buckets - max_exact)).astype(np.float32)
    large = max_exact + np.trunc(scaled).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(is_small, rel, large)


@lru_cache(maxsize=64)
def _bucket_matrix(length_q: int, length_k: int, num_buckets: int, max_distance: int) -> np.ndarray:
    ctx = np.arange(length_q)[:, None]
    mem = np.arange(length_k)[None, :]
    out = relative_position_bucket(mem - ctx, num_buckets, max_distance, bidirectional=True).astype(np.int32)
    out.setflags(write=False)
    return out


# --------------------------------------------------------------------------------------------
# modules


class T5RMSNorm(nnx.Module):
    """T5LayerNorm: x * rsqrt(mean(x^2) + eps) * scale, statistics in float32. [..., D] -> [..., D]."""

    def __init__(self, dim: int, eps: float, *, dtype=jnp.float32):
        self.scale = param(jnp.ones((dim,), jnp.float32), "embed")
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + self.eps)
        return (self.scale[...].astype(jnp.float32) * y).astype(self.dtype)


def _linear(din: int, dout: int, dtype, param_dtype, rngs: nnx.Rngs, std: float, axes: tuple[str, str]) -> nnx.Linear:
    """Bias-free linear map, kernel [din, dout] with the logical axis names `axes` (imgen_jax.axes)."""
    return nnx.Linear(
        din, dout, use_bias=False, dtype=dtype, param_dtype=param_dtype,
        kernel_init=nnx.initializers.normal(std), rngs=rngs, kernel_metadata=metadata(*axes),
    )


class T5Attention(nnx.Module):
    """Bidirectional multi-head self-attention without 1/sqrt(d) scaling, plus an additive bias.

    x [B, L, D], bias [H, L, L] (float32), key_mask [B, L] (bool, True = attend) -> [B, L, D].
    """

    def __init__(self, cfg: T5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, inner = cfg.d_model, cfg.inner_dim
        self.num_heads, self.d_kv, self.dtype = cfg.num_heads, cfg.d_kv, dtype
        cols, rows = ("embed", "heads"), ("heads", "embed")
        self.q = _linear(d, inner, dtype, param_dtype, rngs, (d * cfg.d_kv) ** -0.5, cols)
        self.k = _linear(d, inner, dtype, param_dtype, rngs, d ** -0.5, cols)
        self.v = _linear(d, inner, dtype, param_dtype, rngs, d ** -0.5, cols)
        self.o = _linear(inner, d, dtype, param_dtype, rngs, inner ** -0.5, rows)

    def __call__(self, x: jax.Array, bias: jax.Array, key_mask: jax.Array) -> jax.Array:
        b, l, _ = x.shape
        heads = (b, l, self.num_heads, self.d_kv)
        q = self.q(x).reshape(heads)
        k = self.k(x).reshape(heads)
        v = self.v(x).reshape(heads)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        scores = scores.astype(jnp.float32) + bias[None].astype(jnp.float32)
        # HF adds finfo(float32).min at padded keys; q.k + min rounds to min exactly in float32,
        # so replacing equals adding (and a fully padded row becomes uniform, as in HF).
        scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(self.dtype)).reshape(b, l, self.num_heads * self.d_kv)
        return self.o(out)


class T5FeedForward(nnx.Module):
    """relu/gelu: wo(act(wi x)); gated-*: wo(act(wi_0 x) * wi_1 x). [B, L, D] -> [B, L, D]."""

    def __init__(self, cfg: T5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.d_ff
        self.gated, act = cfg.is_gated, cfg.activation
        self.act_name = act
        if self.gated:
            self.wi_0 = _linear(d, f, dtype, param_dtype, rngs, d ** -0.5, ("embed", "mlp"))
            self.wi_1 = _linear(d, f, dtype, param_dtype, rngs, d ** -0.5, ("embed", "mlp"))
        else:
            self.wi = _linear(d, f, dtype, param_dtype, rngs, d ** -0.5, ("embed", "mlp"))
        self.wo = _linear(f, d, dtype, param_dtype, rngs, f ** -0.5, ("mlp", "embed"))

    def __call__(self, x: jax.Array) -> jax.Array:
        act = _ACTIVATIONS[self.act_name]
        if self.gated:
            h = act(self.wi_0(x)) * self.wi_1(x)
        else:
            h = act(self.wi(x))
        return self.wo(h)


class T5Layer(nnx.Module):
    """One pre-norm encoder block: h + attn(norm(h)), then h + ff(norm(h)). Residual stream float32."""

    def __init__(self, cfg: T5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        eps = cfg.layer_norm_epsilon
        self.attn_norm = T5RMSNorm(cfg.d_model, eps, dtype=dtype)
        self.attn = T5Attention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ff_norm = T5RMSNorm(cfg.d_model, eps, dtype=dtype)
        self.ff = T5FeedForward(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, h: jax.Array, bias: jax.Array, key_mask: jax.Array) -> jax.Array:
        """h [B, L, D] float32, bias [H, L, L], key_mask [B, L] bool -> [B, L, D] float32."""
        h = h + self.attn(self.attn_norm(h), bias, key_mask).astype(jnp.float32)
        h = h + self.ff(self.ff_norm(h)).astype(jnp.float32)
        return h


class T5Encoder(nnx.Module):
    """T5 encoder stack (HF `T5EncoderModel` semantics) with stacked, scanned layers.

    Args:
      cfg: sizes.
      dtype: compute dtype of the matmuls (float32 default; bfloat16 on accelerators). Norm
        statistics, attention scores and softmax, and the residual stream stay float32.
      param_dtype: storage dtype of freshly initialised parameters.
    """

    def __init__(self, cfg: T5Config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        self.embed = nnx.Embed(
            cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=param_dtype,
            embedding_init=nnx.initializers.normal(1.0), rngs=rngs, embedding_metadata=metadata("text_vocab", "embed"),
        )
        self.rel_bias = nnx.Embed(
            cfg.relative_attention_num_buckets, cfg.num_heads, dtype=jnp.float32, param_dtype=param_dtype,
            embedding_init=nnx.initializers.normal(cfg.d_model ** -0.5), rngs=rngs,
            embedding_metadata=metadata("rel_buckets", "rel_heads"),
        )

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=cfg.num_layers, transform_metadata=STACKED)
        def make_layers(r: nnx.Rngs) -> T5Layer:
            return T5Layer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=r)

        self.layers = make_layers(rngs)
        self.final_norm = T5RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, dtype=jnp.float32)

    def position_bias(self, length: int) -> jax.Array:
        """Bucketed bidirectional relative position bias [H, L, L] (float32), shared by all layers."""
        buckets = _bucket_matrix(
            int(length), int(length), self.cfg.relative_attention_num_buckets, self.cfg.relative_attention_max_distance
        )
        values = jnp.take(self.rel_bias.embedding[...].astype(jnp.float32), jnp.asarray(buckets), axis=0)  # [L, L, H]
        return jnp.transpose(values, (2, 0, 1))

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """input_ids [B, L] int, attention_mask [B, L] (1 = token, 0 = padding; None = all tokens)
        -> last hidden state [B, L, d_model] float32 (the same at padded positions as HF's)."""
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2:
            raise ImgenError(f"T5Encoder: input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            key_mask = jnp.ones(input_ids.shape, bool)
        else:
            attention_mask = jnp.asarray(attention_mask)
            if attention_mask.shape != input_ids.shape:
                raise ImgenError(
                    f"T5Encoder: attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
                )
            key_mask = attention_mask.astype(bool)
        h = self.embed(input_ids.astype(jnp.int32)).astype(jnp.float32)
        bias = self.position_bias(input_ids.shape[1])

        graphdef, state = nnx.split(self.layers)

        def body(carry, layer_state):
            layer = nnx.merge(graphdef, layer_state)
            return layer(carry, bias, key_mask), None

        h, _ = jax.lax.scan(body, h, state)
        return self.final_norm(h).astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# tokenizer


class T5Tokenizer:
    """T5's sentencepiece tokenizer, giving the ids of transformers' `T5Tokenizer` built from the same
    `spiece.model`: each text is split on the special tokens (`<pad>`, `</s>`, `<unk>`,
    `<extra_id_0..N-1>`, matched literally), the pieces between them are sentencepiece-encoded,
    and `</s>` is appended. A batch is padded to its longest row (or to `max_length`) with `<pad>`
    (id 0 for T5). Checked against transformers 5's `T5Tokenizer` (tests/test_t5.py).

    `<extra_id_i>` has id `sp_size + extra_ids - 1 - i` (after the sentencepiece vocabulary).
    Pure sentencepiece + numpy: no torch, no transformers.

    Usage: `ids, mask = tok(["Add drums.", "No bass."], max_length=64, padding="max_length")`
    gives int32 [2, 64] arrays for `T5Encoder(ids, mask)`.
    """

    PAD, EOS, UNK = "<pad>", "</s>", "<unk>"

    def __init__(self, model_file: str | os.PathLike, extra_ids: int = 100):
        import sentencepiece as spm

        path = os.fspath(model_file)
        if not os.path.isfile(path):
            raise ImgenError(f"{path}: sentencepiece model file not found")
        try:
            with open(path, "rb") as f:
                proto = f.read()
            sp = spm.SentencePieceProcessor()
            sp.LoadFromSerializedProto(proto)
        except Exception as e:
            msg = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            raise ImgenError(f"{path}: not a readable sentencepiece model ({msg})") from None
        self.path = path
        self.sp = sp
        n = sp.get_piece_size()
        ids = {}
        for tok in (self.PAD, self.EOS, self.UNK):
            i = sp.piece_to_id(tok)
            if sp.id_to_piece(i) != tok:
                raise ImgenError(f"{path}: not a T5 sentencepiece model (no {tok} piece)")
            ids[tok] = i
        self.pad_id, self.eos_id, self.unk_id = ids[self.PAD], ids[self.EOS], ids[self.UNK]
        self.extra_ids = int(extra_ids)
        self.special: dict[str, int] = dict(ids)
        for i in range(self.extra_ids):
            self.special.setdefault(f"<extra_id_{i}>", n + self.extra_ids - 1 - i)
        self.vocab_size = n + self.extra_ids
        # longest first, so that no special token shadows a longer one
        alts = sorted(self.special, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(t) for t in alts) + ")")

    def encode(self, text: str) -> list[int]:
        """The ids of one text, `</s>` appended, untruncated."""
        if not isinstance(text, str):
            raise ImgenError(f"T5Tokenizer: expected a string, got {type(text).__name__}")
        ids: list[int] = []
        for i, part in enumerate(self._split.split(text)):
            if i % 2 == 1:
                ids.append(self.special[part])
            elif part:
                ids.extend(self.sp.encode(part))
        ids.append(self.eos_id)
        return ids

    def __call__(
        self, texts: Sequence[str] | str, max_length: int | None = None, padding: str = "longest"
    ) -> tuple[np.ndarray, np.ndarray]:
        """texts (B strings, or one string) -> (ids int32 [B, L], mask int32 [B, L]; 1 = token, 0 = padding).

        Each row is the text's ids followed by `</s>`, right-padded with `<pad>` (mask 0). With
        `max_length`, longer rows keep their first max_length - 1 ids and `</s>` (HF's
        `truncation=True, max_length=...`). `padding="longest"` pads to the longest row (HF's
        `padding=True`, what MusicGen and audiocraft use); `padding="max_length"` pads every row to
        exactly `max_length` (a fixed [B, L] for a jitted encoder; needs `max_length`).
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1
        ):
            raise ImgenError(f"T5Tokenizer: max_length must be a positive integer, got {max_length!r}")
        if padding not in ("longest", "max_length"):
            raise ImgenError(f"T5Tokenizer: padding must be 'longest' or 'max_length', got {padding!r}")
        if padding == "max_length" and max_length is None:
            raise ImgenError("T5Tokenizer: padding='max_length' needs max_length")
        rows = []
        for t in texts:
            ids = self.encode(t)
            if max_length is not None and len(ids) > max_length:
                ids = ids[: max_length - 1] + [self.eos_id]
            rows.append(ids)
        width = int(max_length) if padding == "max_length" else max((len(r) for r in rows), default=0)
        out = np.full((len(rows), width), self.pad_id, np.int32)
        mask = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return out, mask

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a row of ids, special tokens dropped."""
        n = self.sp.get_piece_size()
        keep = [int(i) for i in ids if 0 <= int(i) < n and int(i) not in (self.pad_id, self.eos_id)]
        return self.sp.decode(keep)


# --------------------------------------------------------------------------------------------
# loading


def t5_abstract(cfg: T5Config, dtype=jnp.float32, param_dtype=jnp.float32) -> T5Encoder:
    """A T5Encoder with abstract (shape-only) parameters, to be filled by `weights.load_into`."""
    return nnx.eval_shape(lambda: T5Encoder(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))


def load_t5(
    model_dir: str | os.PathLike, dtype=jnp.float32, param_dtype=None
) -> tuple[T5Encoder, T5Tokenizer | None]:
    """Load the `t5` component of a converted model directory (kind 't5' or 'musicgen').

    Args:
      model_dir: a directory written by the converters (`imgen convert`; see imgen_jax.modeldir).
      dtype: compute dtype of the encoder's matmuls (float32, or bfloat16 on accelerators).
      param_dtype: dtype the stored float32 weights are cast to (None keeps float32).

    Returns:
      (encoder, tokenizer): a concrete `T5Encoder` (call it as `encoder(ids, mask)`, or
      `nnx.split` it for `jax.jit`), and the `T5Tokenizer` of the directory's `spiece.model`,
      or None when the directory has no tokenizer.

    Raises ImgenError (one line) for a missing or damaged directory, weights that do not fit the
    config, an unreadable `spiece.model`, or a tokenizer with more ids than the embedding has rows.
    """
    from imgen_jax.modeldir import TOKENIZER_NAME, read_component
    from imgen_jax.weights import load_into

    model_dir = os.fspath(model_dir)
    cfg_dict, flat = read_component(model_dir, "t5")
    cfg = T5Config.from_dict(cfg_dict, f"{os.path.join(model_dir, 'config.json')} (t5)")
    model = t5_abstract(cfg, dtype=dtype, param_dtype=jnp.float32 if param_dtype is None else param_dtype)
    load_into(model, flat, os.path.join(model_dir, "t5.safetensors"), dtype=param_dtype)
    spiece = os.path.join(model_dir, TOKENIZER_NAME)
    tokenizer = None
    if os.path.isfile(spiece):
        tokenizer = T5Tokenizer(spiece)
        check_tokenizer_fits(tokenizer, cfg, spiece)
    return model, tokenizer


def check_tokenizer_fits(tokenizer: T5Tokenizer, cfg: T5Config, source: str) -> None:
    """ImgenError when the tokenizer can produce ids the encoder's embedding has no row for."""
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ImgenError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} ids ({tokenizer.vocab_size - tokenizer.extra_ids} "
            f"pieces + {tokenizer.extra_ids} sentinels) but the T5 embedding has only {cfg.vocab_size} rows "
            "(tokenizer and weights are from different models?)"
        )


__all__ = [
    "T5Config",
    "T5Encoder",
    "T5Tokenizer",
    "load_t5",
    "t5_abstract",
    "check_tokenizer_fits",
    "relative_position_bucket",
]
