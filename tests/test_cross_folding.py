"""The decode's folded cross-attention (`imgen_jax.models.lm.fold_cross_attention`): with the text fixed for a
whole decode, each layer's q projection is folded into the text keys and its out projection into the text
values once, so a step reads B x H x L x dim numbers twice instead of the two [dim, dim] kernels. Checked: the
folded block equals the layer's own cross-attention (masked text keys, a fusion's query delta) within 1e-5
relative; a KV-cached decode gives the same logits folded and unfolded; the automatic rule folds exactly when it
reads fewer bytes. (tests/test_generate.py's musicgen-small parity test against transformers decodes folded.)
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imgen_jax.models.lm import (
    LayerFusion, LMConfig, abstract_lm, fold_cross_attention, folded_cross_attention, folds_cross_attention,
)
from imgen_jax.weights import load_into, module_shapes

CFG = LMConfig(dim=64, num_heads=4, num_layers=2, ffn_dim=128, card=16, text_dim=8)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["w"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class QueryDelta(LayerFusion):
    """A fusion that only adds h @ w [layers, dim, dim] to the cross-attention query (as a LoRA does)."""

    w: jax.Array

    def cross_query_delta(self, h):
        return jnp.dot(h, self.w.astype(h.dtype))


def _lm(seed: int = 0):
    rng = np.random.default_rng(seed)
    lm = abstract_lm(CFG)
    flat = {}
    for name, (shape, _) in module_shapes(lm).items():
        scale = 1.0 / math.sqrt(shape[-2]) if len(shape) >= 2 else 0.1
        flat[name] = (rng.standard_normal(shape) * scale + (1.0 if name.endswith("scale") else 0.0)).astype(np.float32)
    load_into(lm, flat, "test")
    return lm, rng


def _rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def test_folded_block_equals_the_layer_cross_attention():
    lm, rng = _lm()
    B, S, L = 3, 2, 5
    g, s = nnx.split(lm.layers)
    layer = nnx.merge(g, jax.tree.map(lambda a: a[1], s))
    memory = jnp.asarray(rng.standard_normal((B, L, CFG.dim)), jnp.float32)
    k, v = layer.cross_attn.memory_kv(memory)
    h = jnp.asarray(rng.standard_normal((B, S, CFG.dim)), jnp.float32)
    mask = np.ones((B, L), bool)
    mask[1, 3:] = False
    mask[2, :] = False  # a row with no text at all (CFG's unconditional rows)
    bias = jnp.where(jnp.asarray(mask), 0.0, -1e9)[:, None, None, :].astype(jnp.float32)
    delta = QueryDelta(jnp.asarray(0.1 * rng.standard_normal((CFG.dim, CFG.dim)), jnp.float32))
    for fusion in (None, delta):
        cq = layer.cross_attn.q_proj(h)
        if fusion is not None:
            cq = cq + fusion.cross_query_delta(h)
        scale = 1.0 / math.sqrt(CFG.head_dim)
        logits = jnp.einsum("bshd,blhd->bhsl", cq.reshape(B, S, CFG.num_heads, -1), k) * scale + bias
        y = jnp.einsum("bhsl,blhd->bshd", jax.nn.softmax(logits, -1), v).reshape(B, S, -1)
        want = layer.cross_attn.out_proj(y)
        got = folded_cross_attention(h, fold_cross_attention(layer, k, v), k, bias, fusion)
        assert got.shape == (B, S, CFG.dim)
        assert _rel(got, want) <= 1e-5, _rel(got, want)


def test_decode_logits_folded_and_unfolded_agree():
    lm, rng = _lm(1)
    rows, L, steps = 4, 6, 5
    memory = jnp.asarray(rng.standard_normal((rows, L, CFG.dim)), jnp.float32)
    mask = np.ones((rows, L), np.int32)
    mask[1, 4:] = 0
    fusion = QueryDelta(jnp.asarray(0.1 * rng.standard_normal((CFG.num_layers, CFG.dim, CFG.dim)), jnp.float32))
    seq = jnp.asarray(rng.integers(0, CFG.card, (rows, CFG.num_codebooks, steps)), jnp.int32)
    outs = {}
    for fold in (False, True):
        cache = lm.init_cache(rows, steps + 3, memory, jnp.asarray(mask), fusion, per_layer=True, fold_cross=fold)
        assert (cache.cross_folded is not None) == fold
        logits = []
        for t in range(steps):
            out, cache = lm.extend(seq[:, :, t:t + 1], cache, fusion)
            logits.append(np.asarray(out))
        outs[fold] = np.concatenate(logits, axis=2)
    assert _rel(outs[True], outs[False]) <= 1e-5, _rel(outs[True], outs[False])


def test_folds_exactly_when_it_reads_fewer_bytes():
    lm, rng = _lm(2)
    for rows, L in ((2, 3), (2, 8), (4, 4), (1, 15), (1, 16)):
        want = rows * CFG.num_heads * L < CFG.dim  # folded: 2 x rows x H x L x dim numbers; kernels: 2 x dim x dim
        assert folds_cross_attention(rows, L, CFG) == want
        memory = jnp.zeros((rows, L, CFG.dim), jnp.float32)
        cache = lm.init_cache(rows, 4, memory, None, per_layer=True)
        assert (cache.cross_folded is not None) == want, (rows, L)
        if want:
            qk, vo = cache.cross_folded[0]
            assert qk.shape == (rows, CFG.dim, CFG.num_heads, L) and vo.shape == (rows, CFG.num_heads, L, CFG.dim)
    # the stacked (scanned) cache never folds
    assert lm.init_cache(2, 4, jnp.zeros((2, 3, CFG.dim)), None).cross_folded is None
