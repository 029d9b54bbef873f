"""Instruct-MusicGen's adapters: audio fusion (the official CPTransformer) and text fusion (LoRA).

Only the parameters of `InstructAdapters` train; the MusicGen LM stays frozen and its layers are
shared, never copied: the audio fusion pass runs the LM's own stacked layer weights, sliced to the
adapter layers inside the traced function.

Audio fusion (SEMANTICS.md, "Audio fusion"). With A = adapter_layers, start = num_layers - A and
condition codes c_codes [B, K, Tc] (the official forward appends one frame of the special token,
so Tc = T + 1 in training):

    c = sum_k emb[k](c_codes[:, k])                      (the LM's own embeddings, no positions)
    o = pos_emb[0, :Tc]
    for j in 0..A-1, with the LM's layer i = start + j (norm1, self_attn, norm2, linear1, linear2):
        h = norm1(o) + (c @ merge_linear[j] + pos_emb[j + 1, :Tc])
        q_j, k_j, v_j = self-attention projections of h (heads split)
        o = o + out_proj(causal_attention(q_j, k_j, v_j));  o = o + mlp(norm2(o))

and LM layer i adds `gates[j] * attention(q + q_j[pos], k_j, v_j)` (not causal) to its own causal
self-attention output, per head, before out_proj. The prefixes are stacked over ALL LM layers so the
LM keeps one scanned layer body: layers below `start` get zero q/k/v and a zero gate, which adds
exactly 0.

Text fusion: LoRA on every LM layer's cross-attention q and v projections,
q = x Wq + (alpha / r) (x A_q^T) B_q^T, likewise v; k unchanged.

Both reach the LM through one plug-in, `InstructFusion` (an `imgen_jax.models.lm.LayerFusion`): the audio
prefix is its `self_attention_extra` hook, the LoRA its `cross_query_delta` / `cross_value_delta`
hooks. `FusionConfig.mode` selects the parts: "both" (the official model), "audio" (audio fusion
only, no LoRA) or "text" (LoRA only, no audio fusion): the paper's missing ablations.

Parameter names (flat, as stored in `adapters.safetensors`; kernels are [in, out], the transpose
of PyTorch's weight):

    merge_linear   [A, dim, dim]        cp_transformer.merge_linear.{j}.weight^T       (modes both, audio)
    pos_emb        [A + 1, P, dim]      cp_transformer.pos_emb (P = pos_emb_frames, 501)
    gates          [A]                  cp_transformer.gates
    lora_q/a       [L, dim, r]          ...layers.{i}.cross_attention.q_proj.lora_A.default.weight^T  (both, text)
    lora_q/b       [L, r, dim]          ...layers.{i}.cross_attention.q_proj.lora_B.default.weight^T
    lora_v/a, lora_v/b                  the same for v_proj
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imgen_jax.axes import param
from imgen_jax.configs import config_from_dict, config_to_dict
from imgen_jax.errors import ImgenError
from imgen_jax.models.lm import NEG_INF, LayerFusion, LMConfig, MusicGenLM, attention, scan_layers

COMPONENT = "adapters"
MODES = ("both", "audio", "text")  # FusionConfig.mode: audio fusion + LoRA, audio fusion only, LoRA only


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """Shape of the Instruct-MusicGen adapters of an LM with `num_layers` layers of width `dim`.

    The audio fusion sits on the last `adapter_layers` LM layers (start_layer = num_layers -
    adapter_layers; the official model: 48 of 48); LoRA (rank lora_r, scaling lora_alpha / lora_r;
    official: 32, 64) on the cross-attention of every layer; pos_emb covers `pos_emb_frames`
    condition frames (official: 501 = 500 frames + the appended special frame). mode: which parts exist,
    "both" (official), "audio" (no LoRA) or "text" (no audio fusion).
    """

    dim: int = 2048
    num_layers: int = 48
    adapter_layers: int = 48
    lora_r: int = 32
    lora_alpha: float = 64.0
    pos_emb_frames: int = 501
    mode: str = "both"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} must be one of {MODES}")
        if not 1 <= self.adapter_layers <= self.num_layers:
            raise ValueError(f"adapter_layers {self.adapter_layers} must be in 1..num_layers ({self.num_layers})")
        for name in ("dim", "lora_r", "pos_emb_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def start_layer(self) -> int:
        return self.num_layers - self.adapter_layers

    @property
    def lora_scaling(self) -> float:
        return self.lora_alpha / self.lora_r

    @property
    def has_audio(self) -> bool:
        return self.mode in ("both", "audio")

    @property
    def has_lora(self) -> bool:
        return self.mode in ("both", "text")

    @staticmethod
    def for_lm(lm_cfg: LMConfig, adapter_layers: int | None = None, **kw) -> "FusionConfig":
        """The adapters of `lm_cfg` (all layers by default, as the official model)."""
        layers = lm_cfg.num_layers if adapter_layers is None else adapter_layers
        return FusionConfig(dim=lm_cfg.dim, num_layers=lm_cfg.num_layers, adapter_layers=layers, **kw)

    def check_lm(self, lm_cfg: LMConfig, source: str = "adapters") -> None:
        """One ImgenError when these adapters do not fit an LM of config `lm_cfg`."""
        if (self.dim, self.num_layers) != (lm_cfg.dim, lm_cfg.num_layers):
            raise ImgenError(
                f"{source}: adapters for an LM of width {self.dim} with {self.num_layers} layers do not fit "
                f"this LM (width {lm_cfg.dim}, {lm_cfg.num_layers} layers)"
            )

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @staticmethod
    def from_dict(d: dict, source: str = "adapters config") -> "FusionConfig":
        return config_from_dict(FusionConfig, d, source)


class InstructAdapters(nnx.Module):
    """The trainable parameters of Instruct-MusicGen (names and layout in the module docstring).

    Initialised as the official code: merge_linear and LoRA A uniform in +-1/sqrt(dim) (PyTorch's
    Linear / peft's kaiming_uniform(a=sqrt(5))), pos_emb standard normal, gates and LoRA B zero, so
    fresh adapters leave the LM's output unchanged.
    """

    def __init__(self, cfg: FusionConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        A, D, L, r, P = cfg.adapter_layers, cfg.dim, cfg.num_layers, cfg.lora_r, cfg.pos_emb_frames
        bound = 1.0 / math.sqrt(D)

        def uniform(shape):
            return jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound)

        # logical axis names (imgen_jax.axes): the stacked adapter / LM layer axis is "layers"
        if cfg.has_audio:
            self.merge_linear = param(uniform((A, D, D)), "layers", "embed", "embed")
            self.pos_emb = param(jax.random.normal(rngs.params(), (A + 1, P, D), jnp.float32), "fusion_slots", "frames",
                                 "embed")
            self.gates = param(jnp.zeros((A,), jnp.float32), "layers")

        def lora():
            return nnx.Dict(a=param(uniform((L, D, r)), "layers", "embed", "lora_rank"),
                            b=param(jnp.zeros((L, r, D), jnp.float32), "layers", "lora_rank", "embed"))

        if cfg.has_lora:
            self.lora_q = lora()
            self.lora_v = lora()


def init_adapters(cfg: FusionConfig, seed: int = 0) -> InstructAdapters:
    """Fresh adapters (gates and LoRA B zero: the LM's output is unchanged)."""
    return InstructAdapters(cfg, rngs=nnx.Rngs(seed))


def abstract_adapters(cfg: FusionConfig) -> InstructAdapters:
    """Adapters whose parameters are shape placeholders, to be filled by `weights.load_into`."""
    return nnx.eval_shape(lambda: InstructAdapters(cfg, rngs=nnx.Rngs(0)))


# ---- audio fusion ---------------------------------------------------------------------------------
def condition_embedding(lm: MusicGenLM, cond_codes: jax.Array) -> jax.Array:
    """Sum of the LM's own codebook embeddings of condition codes [B,K,Tc] -> [B,Tc,dim] (no positions)."""
    emb = lm.emb[...]
    x = sum(jnp.take(emb[k], cond_codes[:, k], axis=0) for k in range(lm.cfg.num_codebooks))
    return x.astype(lm.dtype)


def audio_fusion_pass(
    lm: MusicGenLM, adapters: InstructAdapters, cond_codes: jax.Array, trace: bool = False
) -> tuple[tuple[jax.Array, jax.Array, jax.Array, jax.Array], dict[str, jax.Array] | None]:
    """The audio-fusion prefix of every LM layer, computed once per clip, and with `trace` the pass's
    intermediates (the official CPTransformer's tensors).

    cond_codes [B, K, Tc] int, the special frame already appended (see `instruct.append_special`).
    Returns ((q, k, v) [num_layers, B, Tc, H, D], gate [num_layers]) - layers below start_layer hold
    zeros with a zero gate - and the trace {"sum_code": c [B,Tc,dim], "cond": c @ merge_linear[j] +
    pos_emb[j+1] [A,B,Tc,dim], "o_out": the fusion stream after adapter layer j [A,B,Tc,dim]} or None.
    Runs the LM's own layers start_layer.. (a slice of its stacked weights inside the traced function).
    """
    cfg, lcfg = adapters.cfg, lm.cfg
    cfg.check_lm(lcfg)
    if not cfg.has_audio:
        raise ImgenError(f"adapters of mode {cfg.mode!r} have no audio fusion")
    B, K, Tc = cond_codes.shape
    if K != lcfg.num_codebooks:
        raise ImgenError(f"condition codes have {K} codebooks, the LM has {lcfg.num_codebooks}")
    if Tc > cfg.pos_emb_frames:
        raise ImgenError(
            f"condition of {Tc} frames (special frame included) is longer than the adapters' positional table "
            f"({cfg.pos_emb_frames} frames)"
        )
    start, dtype = cfg.start_layer, lm.dtype
    c = condition_embedding(lm, cond_codes)
    pos = adapters.pos_emb[...][:, :Tc].astype(dtype)  # [A+1, Tc, dim]
    merge = adapters.merge_linear[...]
    o = jnp.broadcast_to(pos[0][None], (B, Tc, lcfg.dim))
    causal = jnp.where(jnp.tril(jnp.ones((Tc, Tc), bool)), 0.0, NEG_INF).astype(jnp.float32)
    g, s = nnx.split(lm.layers)
    s_adapted = jax.tree.map(lambda a: a[start:], s)

    def body(o, xs):
        st, w, pe = xs
        layer = nnx.merge(g, st)
        cond = jnp.dot(c, w.astype(dtype)) + pe[None]
        h = layer.norm1(o) + cond
        q, k, v = layer.self_attn.qkv(h)
        y = attention(q, k, v, causal)
        o = o + layer.self_attn.out_proj(y.reshape(B, Tc, -1))
        o = o + layer.mlp(layer.norm2(o))
        return o, ((q, k, v), {"cond": cond, "o_out": o} if trace else None)

    _, ((q, k, v), per_layer) = scan_layers(body, o, (s_adapted, merge, pos[1:]), lm.remat, lm.unroll_layers)
    gate = adapters.gates[...]
    if start:
        pad = [(start, 0)] + [(0, 0)] * 4
        q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
        gate = jnp.pad(gate, (start, 0))
    return (q, k, v, gate), (dict(per_layer, sum_code=c) if trace else None)


def lora_delta(x: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """scale * ((x a) b), in the dtype of x (peft's `lora_B(lora_A(x)) * scaling`)."""
    return jnp.dot(jnp.dot(x, a.astype(x.dtype)), b.astype(x.dtype)) * jnp.asarray(scale, x.dtype)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["q", "k", "v", "gate", "q_a", "q_b", "v_a", "v_b"],
    meta_fields=["lora_scale", "clamp", "heads_major"],
)
@dataclasses.dataclass(frozen=True)
class InstructFusion(LayerFusion):
    """Instruct-MusicGen's fusion as an `imgen_jax.models.lm.LayerFusion`, stacked over the LM's layers.

    Audio fusion (None in mode "text"): q, k, v [layers, B, Tc, H, D] (when heads_major, the decode's layout:
    k [layers, B, H, D, Tc], v [layers, B, H, Tc, D]) from `audio_fusion_pass`, gate [layers]; with n times as many query rows as prefix rows
    (classifier-free guidance: n = 2) prefix row b serves query rows b, B + b, ...; the query at position
    p reads q[min(p, clamp)]
    (clamp None: Tc - 1; teacher forcing: query i reads i). LoRA (None in mode "audio"): q_a, v_a
    [layers, dim, r], q_b, v_b [layers, r, dim], scaled by lora_scale = alpha / r.
    """

    q: jax.Array | None = None
    k: jax.Array | None = None
    v: jax.Array | None = None
    gate: jax.Array | None = None
    q_a: jax.Array | None = None
    q_b: jax.Array | None = None
    v_a: jax.Array | None = None
    v_b: jax.Array | None = None
    lora_scale: float = 1.0
    clamp: int | None = None
    heads_major: bool = False

    def self_attention_extra(self, q, positions):
        if self.q is None:
            return None
        if positions is None:  # teacher forcing: query i reads prefix position i (a slice: no scatter in the gradient)
            qp = self.q[:, : q.shape[1]]
        else:
            clamp = self.clamp if self.clamp is not None else self.q.shape[1] - 1
            qp = jnp.take(self.q, jnp.minimum(positions, clamp), axis=1)
        rows, prefix_rows = q.shape[0], self.q.shape[0]
        if rows == prefix_rows:
            y = attention(q + qp.astype(q.dtype), self.k, self.v, None, heads_major=self.heads_major,
                          keys_transposed=self.heads_major)
            return self.gate.astype(y.dtype) * y
        # classifier-free guidance: the conditional and unconditional halves share one prefix (for_guidance):
        # group g of query rows (rows g*B .. g*B + B - 1) attends to it in its own attention. In the decode
        # (S = 1) each is then a matrix-vector product per head, which XLA:CPU streams at about three times
        # the rate of one product with the groups folded into the query axis (2 rows per head): the prefix is
        # read once per group, but faster (bench/RESULTS.md).
        groups = rows // prefix_rows
        qg = q.reshape(groups, prefix_rows, *q.shape[1:]) + qp.astype(q.dtype)[None]
        y = jnp.concatenate([attention(qg[i], self.k, self.v, None, heads_major=self.heads_major,
                                       keys_transposed=self.heads_major) for i in range(groups)], axis=0)
        return self.gate.astype(y.dtype) * y

    def cross_query_delta(self, h):
        return None if self.q_a is None else lora_delta(h, self.q_a, self.q_b, self.lora_scale)

    def cross_value_delta(self, memory):
        return None if self.v_a is None else lora_delta(memory, self.v_a, self.v_b, self.lora_scale)

    def for_guidance(self) -> "InstructFusion":
        # the unconditional rows keep the audio condition (only the text is dropped), so both halves of a
        # CFG batch read the same prefix: keep one copy (B rows); self_attention_extra serves 2B query rows
        return self

    def for_decoding(self, heads_major: bool) -> "InstructFusion":
        if self.q is None or heads_major == self.heads_major:
            return self
        # keys [layers,B,H,D,Tc]: stored as the per-step dot reads them (else XLA copies them every step)
        return dataclasses.replace(self, k=self.k.transpose(0, 1, 3, 4, 2), v=self.v.swapaxes(2, 3),
                                   heads_major=heads_major)


def instruct_fusion(
    lm: MusicGenLM, adapters: InstructAdapters, cond_ext: jax.Array | None, clamp: int | None = None
) -> InstructFusion:
    """The `InstructFusion` of `adapters` for condition codes cond_ext [B, K, Tc] (special frame appended;
    unused, may be None, in mode "text"); clamp: the largest prefix position a decoding query reads."""
    cfg = adapters.cfg
    parts = {}
    if cfg.has_audio:
        (q, k, v, gate), _ = audio_fusion_pass(lm, adapters, cond_ext)
        parts.update(q=q, k=k, v=v, gate=gate, clamp=clamp)
    if cfg.has_lora:
        parts.update(q_a=adapters.lora_q["a"][...], q_b=adapters.lora_q["b"][...], v_a=adapters.lora_v["a"][...],
                     v_b=adapters.lora_v["b"][...], lora_scale=float(cfg.lora_scaling))
    return InstructFusion(**parts)


# ---- adapters in a converted model directory -------------------------------------------------------
def save_adapters(model_dir: str | os.PathLike, cfg: FusionConfig, flat: dict[str, np.ndarray]) -> None:
    """Add (or replace) the `adapters` component of an existing converted directory.

    The directory is replaced as one unit (imgen_jax.files.atomic_update_dir): a temporary sibling
    gets hard links to every other file of `model_dir` plus the new `adapters.safetensors` and the
    new config.json, everything is fsynced, and the sibling then takes the name `model_dir` (the
    real path, when `model_dir` is a symlink). Guarantee, on Linux: at every instant, even when the
    process is killed, `model_dir` holds either the whole old directory (old config.json with the
    old adapters or none) or the whole new one, never new weights beside an old config.json; a
    kill may leave a `.tmp-<name>-*` sibling to delete. Elsewhere the swap takes two renames and a
    kill between them leaves the old directory in `.old-<name>-*/dir` (imgen_jax.files). The
    adapters must fit the directory's LM when it has one.
    """
    from imgen_jax.files import atomic_update_dir
    from imgen_jax.modeldir import CONFIG_NAME, read_model_config
    from imgen_jax.weights import check_names_and_shapes, module_shapes, save_safetensors

    model_dir = os.fspath(model_dir)
    meta = read_model_config(model_dir)
    if "lm" in meta:
        cfg.check_lm(LMConfig.from_dict(meta["lm"], f"{model_dir}/{CONFIG_NAME} [lm]"), model_dir)
    check_names_and_shapes(module_shapes(abstract_adapters(cfg)), flat, f"{model_dir} [adapters]")
    meta[COMPONENT] = cfg.to_dict()
    with atomic_update_dir(os.path.realpath(model_dir), (f"{COMPONENT}.safetensors", CONFIG_NAME)) as tmp:
        save_safetensors(os.path.join(tmp, f"{COMPONENT}.safetensors"), flat)
        with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)


def read_adapters(model_dir: str | os.PathLike) -> tuple[FusionConfig, dict[str, np.ndarray]]:
    """(FusionConfig, flat weights) of the `adapters` component of a converted directory."""
    from imgen_jax.modeldir import CONFIG_NAME, read_component

    cfg_dict, flat = read_component(model_dir, COMPONENT)
    return FusionConfig.from_dict(cfg_dict, f"{os.fspath(model_dir)}/{CONFIG_NAME} [{COMPONENT}]"), flat


def load_adapters(model_dir: str | os.PathLike, lm_cfg: LMConfig | None = None) -> InstructAdapters:
    """Load the `adapters` component of a converted directory (checked against `lm_cfg`, or against
    the directory's own LM config when it has one)."""
    from imgen_jax.modeldir import CONFIG_NAME, read_model_config
    from imgen_jax.weights import load_into

    model_dir = os.fspath(model_dir)
    cfg, flat = read_adapters(model_dir)
    if lm_cfg is None:
        meta = read_model_config(model_dir)
        if "lm" in meta:
            lm_cfg = LMConfig.from_dict(meta["lm"], f"{model_dir}/{CONFIG_NAME} [lm]")
    if lm_cfg is not None:
        cfg.check_lm(lm_cfg, model_dir)
    adapters = abstract_adapters(cfg)
    load_into(adapters, flat, f"{model_dir}/{COMPONENT}.safetensors")
    return adapters


__all__ = [
    "MODES", "FusionConfig", "InstructAdapters", "init_adapters", "abstract_adapters", "condition_embedding",
    "audio_fusion_pass", "lora_delta", "InstructFusion", "instruct_fusion", "save_adapters", "read_adapters",
    "load_adapters",
]
