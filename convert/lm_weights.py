"""MusicGen LM weights: Hugging Face and audiocraft layouts -> imgen_jax `MusicGenLM` names.

Our names (kernels are [in, out], the transpose of PyTorch's weight; layer weights stacked
over a leading layer axis):

    emb                                  [K, card+1, dim]
    text_proj/kernel, text_proj/bias     [text_dim, dim], [dim]
    layers/norm1/{scale,bias}            [L, dim]
    layers/self_attn/in_proj/kernel      [L, dim, 3*dim]   (q | k | v)
    layers/self_attn/out_proj/kernel     [L, dim, dim]
    layers/norm_cross/{scale,bias}
    layers/cross_attn/q_proj/kernel      [L, dim, dim]
    layers/cross_attn/kv_proj/kernel     [L, dim, 2*dim]   (k | v)
    layers/cross_attn/out_proj/kernel
    layers/norm2/{scale,bias}
    layers/linear1/kernel, linear2/kernel [L, dim, ffn], [L, ffn, dim]
    out_norm/{scale,bias}
    heads                                [K, dim, card]

The documented renaming between the two PyTorch layouts (per layer i, codebook k), which
`lm_hf_to_audiocraft` applies and the tests use to build audiocraft-layout files:

    HF (MusicgenForConditionalGeneration)                  audiocraft LMModel state dict
    decoder.model.decoder.embed_tokens.{k}.weight          emb.{k}.weight
    decoder.model.decoder.layers.{i}.self_attn.{q,k,v}_proj.weight
                                                           transformer.layers.{i}.self_attn.in_proj_weight (q,k,v stacked)
    ...layers.{i}.self_attn.out_proj.weight                transformer.layers.{i}.self_attn.out_proj.weight
    ...layers.{i}.self_attn_layer_norm.{weight,bias}       transformer.layers.{i}.norm1.{weight,bias}
    ...layers.{i}.encoder_attn.{q,k,v}_proj.weight         transformer.layers.{i}.cross_attention.in_proj_weight
    ...layers.{i}.encoder_attn.out_proj.weight             transformer.layers.{i}.cross_attention.out_proj.weight
    ...layers.{i}.encoder_attn_layer_norm.{weight,bias}    transformer.layers.{i}.norm_cross.{weight,bias}
    ...layers.{i}.fc1.weight / fc2.weight                  transformer.layers.{i}.linear1.weight / linear2.weight
    ...layers.{i}.final_layer_norm.{weight,bias}           transformer.layers.{i}.norm2.{weight,bias}
    decoder.model.decoder.layer_norm.{weight,bias}         out_norm.{weight,bias}
    decoder.lm_heads.{k}.weight                            linears.{k}.weight
    enc_to_dec_proj.{weight,bias}                          condition_provider.conditioners.description.output_proj.{weight,bias}
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from convert.common import KeyReader
from imgen_jax.errors import ImgenError
from imgen_jax.models.lm import LMConfig

AC_TEXT_PROJ = "condition_provider.conditioners.description.output_proj"
HF_DEC = "decoder.model.decoder."


def _count(sd: Mapping[str, np.ndarray], pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in sd if (m := rx.match(k))}
    n = len(found)
    if found and found != set(range(n)):
        raise ImgenError(f"non-contiguous indices for {pattern}: {sorted(found)}")
    return n


def _stack(rows: list[np.ndarray | None]) -> np.ndarray | None:
    return None if any(r is None for r in rows) else np.stack(rows)


def _build(cfg: LMConfig, r: KeyReader, names: dict[str, str], text_proj_keys: tuple[str, str] | None) -> dict[str, np.ndarray]:
    """Common assembly: `names` maps our logical pieces to source key templates with {i}/{k}."""
    D, F, K, C, L = cfg.dim, cfg.ffn_dim, cfg.num_codebooks, cfg.card, cfg.num_layers
    flat: dict[str, np.ndarray | None] = {}
    flat["emb"] = _stack([r.take(names["emb"].format(k=k), (C + 1, D)) for k in range(K)])
    flat["heads"] = _stack([None if (w := r.take(names["head"].format(k=k), (C, D))) is None else w.T for k in range(K)])
    flat["out_norm/scale"] = r.take(names["out_norm"] + ".weight", (D,))
    flat["out_norm/bias"] = r.take(names["out_norm"] + ".bias", (D,))
    if text_proj_keys is not None:
        w = r.take(text_proj_keys[0], (D, cfg.text_dim))
        flat["text_proj/kernel"] = None if w is None else w.T
        flat["text_proj/bias"] = r.take(text_proj_keys[1], (D,))

    def per_layer(fn):
        return _stack([fn(i) for i in range(L)])

    def T(x):
        return None if x is None else x.T

    for ours, theirs in (("norm1", "norm1"), ("norm_cross", "norm_cross"), ("norm2", "norm2")):
        flat[f"layers/{ours}/scale"] = per_layer(lambda i: r.take(names[theirs].format(i=i) + ".weight", (D,)))
        flat[f"layers/{ours}/bias"] = per_layer(lambda i: r.take(names[theirs].format(i=i) + ".bias", (D,)))
    flat["layers/self_attn/in_proj/kernel"] = per_layer(lambda i: T(names["self_qkv"](r, i)))
    flat["layers/self_attn/out_proj/kernel"] = per_layer(lambda i: T(r.take(names["self_out"].format(i=i), (D, D))))

    cross = [names["cross_qkv"](r, i) for i in range(L)]  # [3*dim, dim] each: q | k | v
    flat["layers/cross_attn/q_proj/kernel"] = _stack([None if w is None else w[:D].T for w in cross])
    flat["layers/cross_attn/kv_proj/kernel"] = _stack([None if w is None else w[D:].T for w in cross])
    flat["layers/cross_attn/out_proj/kernel"] = per_layer(lambda i: T(r.take(names["cross_out"].format(i=i), (D, D))))
    flat["layers/linear1/kernel"] = per_layer(lambda i: T(r.take(names["linear1"].format(i=i), (F, D))))
    flat["layers/linear2/kernel"] = per_layer(lambda i: T(r.take(names["linear2"].format(i=i), (D, F))))
    r.finish()
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in flat.items()}  # type: ignore[arg-type]


def _qkv_from_in_proj(key_tmpl: str, D: int):
    return lambda r, i: r.take(key_tmpl.format(i=i), (3 * D, D))


def _qkv_from_separate(key_tmpl: str, D: int):
    def f(r, i):
        parts = [r.take(key_tmpl.format(i=i, p=p), (D, D)) for p in ("q", "k", "v")]
        return None if any(p is None for p in parts) else np.concatenate(parts, axis=0)

    return f


def _detect(sd, emb_rx: str, layer_rx: str, emb_key: str, lin1_key: str, source: str) -> tuple[int, int, int, int, int]:
    K = _count(sd, emb_rx)
    L = _count(sd, layer_rx)
    if K == 0 or L == 0:
        raise ImgenError(
            f"{source}: not a MusicGen LM checkpoint (no keys matching {emb_rx!r} / {layer_rx!r}; "
            f"first keys: {', '.join(sorted(sd)[:4])})"
        )
    rows, D = sd[emb_key].shape
    F = sd[lin1_key].shape[0] if lin1_key in sd else 4 * D
    return K, L, D, rows - 1, F


def lm_from_hf(
    sd: Mapping[str, np.ndarray], decoder_config: dict | None, source: str, text_dim: int | None = None
) -> tuple[LMConfig, dict[str, np.ndarray]]:
    """Hugging Face MusicgenForConditionalGeneration weights -> (LMConfig, our flat weights).

    `decoder_config` is config.json's "decoder" entry (None: sizes detected from the weights,
    heads = dim // 64 as in every released MusicGen). `text_dim` is the T5 width when
    `enc_to_dec_proj` exists (detected from its weight when None).
    """
    K, L, D, C, F = _detect(
        sd, re.escape(HF_DEC) + r"embed_tokens\.(\d+)\.weight$", re.escape(HF_DEC) + r"layers\.(\d+)\.",
        HF_DEC + "embed_tokens.0.weight", HF_DEC + "layers.0.fc1.weight", source,
    )
    dc = decoder_config or {}
    heads = int(dc.get("num_attention_heads", max(1, D // 64)))
    has_proj = "enc_to_dec_proj.weight" in sd
    tdim = text_dim if text_dim is not None else (sd["enc_to_dec_proj.weight"].shape[1] if has_proj else D)
    cfg = LMConfig(
        dim=D, num_heads=heads, num_layers=L, ffn_dim=F, num_codebooks=K, card=C, text_dim=tdim,
        audio_channels=int(dc.get("audio_channels", 1)), text_proj=has_proj,
    )
    for name, want in (("hidden_size", D), ("num_hidden_layers", L), ("num_codebooks", K), ("vocab_size", C), ("ffn_dim", F)):
        if name in dc and int(dc[name]) != want:
            raise ImgenError(f"{source}: config field decoder.{name} is {dc[name]} but the weights say {want}")
    lay = HF_DEC + "layers.{i}."
    names = {
        "emb": HF_DEC + "embed_tokens.{k}.weight",
        "head": "decoder.lm_heads.{k}.weight",
        "out_norm": HF_DEC + "layer_norm",
        "norm1": lay + "self_attn_layer_norm",
        "norm_cross": lay + "encoder_attn_layer_norm",
        "norm2": lay + "final_layer_norm",
        "self_qkv": _qkv_from_separate(lay + "self_attn.{p}_proj.weight", D),
        "self_out": lay + "self_attn.out_proj.weight",
        "cross_qkv": _qkv_from_separate(lay + "encoder_attn.{p}_proj.weight", D),
        "cross_out": lay + "encoder_attn.out_proj.weight",
        "linear1": lay + "fc1.weight",
        "linear2": lay + "fc2.weight",
    }
    lm_sd = {k: v for k, v in sd.items() if k.startswith("decoder.") or k.startswith("enc_to_dec_proj.")}
    r = KeyReader(lm_sd, source, ignore=("embed_positions.weights",))
    flat = _build(cfg, r, names, ("enc_to_dec_proj.weight", "enc_to_dec_proj.bias") if has_proj else None)
    return cfg, flat


def _audiocraft_heads(meta: Mapping[str, object], dim: int) -> int:
    """num_heads from the checkpoint's 'xp.cfg' YAML text when present, else dim // 64."""
    for key, val in meta.items():
        if key.endswith("xp.cfg") and isinstance(val, str):
            m = re.search(r"^transformer_lm:\s*\n((?:[ \t]+.*\n?)*)", val, re.M)
            if m and (h := re.search(r"^\s+num_heads:\s*(\d+)", m.group(1), re.M)):
                return int(h.group(1))
    return max(1, dim // 64)


def lm_from_audiocraft(
    sd: Mapping[str, np.ndarray], source: str, meta: Mapping[str, object] | None = None
) -> tuple[LMConfig, dict[str, np.ndarray]]:
    """audiocraft LMModel state dict (`state_dict.bin`'s 'best_state', prefix removed) -> (LMConfig, flat).

    Requires the text conditioner's `output_proj` (MusicGen's T5 -> LM projection).
    """
    K, L, D, C, F = _detect(
        sd, r"emb\.(\d+)\.weight$", r"transformer\.layers\.(\d+)\.", "emb.0.weight",
        "transformer.layers.0.linear1.weight", source,
    )
    proj_w = AC_TEXT_PROJ + ".weight"
    if proj_w not in sd:
        raise ImgenError(f"{source}: missing keys: {proj_w} (the T5 -> LM text projection of MusicGen's conditioner)")
    cfg = LMConfig(
        dim=D, num_heads=_audiocraft_heads(meta or {}, D), num_layers=L, ffn_dim=F, num_codebooks=K, card=C,
        text_dim=sd[proj_w].shape[1], audio_channels=2 if K == 8 else 1, text_proj=True,
    )
    lay = "transformer.layers.{i}."
    names = {
        "emb": "emb.{k}.weight",
        "head": "linears.{k}.weight",
        "out_norm": "out_norm",
        "norm1": lay + "norm1",
        "norm_cross": lay + "norm_cross",
        "norm2": lay + "norm2",
        "self_qkv": _qkv_from_in_proj(lay + "self_attn.in_proj_weight", D),
        "self_out": lay + "self_attn.out_proj.weight",
        "cross_qkv": _qkv_from_in_proj(lay + "cross_attention.in_proj_weight", D),
        "cross_out": lay + "cross_attention.out_proj.weight",
        "linear1": lay + "linear1.weight",
        "linear2": lay + "linear2.weight",
    }
    r = KeyReader(sd, source)
    flat = _build(cfg, r, names, (proj_w, AC_TEXT_PROJ + ".bias"))
    return cfg, flat


def lm_hf_to_audiocraft(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename a Hugging Face MusicGen LM state dict to audiocraft's LMModel layout (table above)."""
    out: dict[str, np.ndarray] = {}
    L = _count(sd, re.escape(HF_DEC) + r"layers\.(\d+)\.")
    K = _count(sd, re.escape(HF_DEC) + r"embed_tokens\.(\d+)\.weight$")
    for k in range(K):
        out[f"emb.{k}.weight"] = sd[HF_DEC + f"embed_tokens.{k}.weight"]
        out[f"linears.{k}.weight"] = sd[f"decoder.lm_heads.{k}.weight"]
    for p in ("weight", "bias"):
        out[f"out_norm.{p}"] = sd[HF_DEC + f"layer_norm.{p}"]
        out[f"{AC_TEXT_PROJ}.{p}"] = sd[f"enc_to_dec_proj.{p}"]
    for i in range(L):
        h, a = HF_DEC + f"layers.{i}.", f"transformer.layers.{i}."
        out[a + "self_attn.in_proj_weight"] = np.concatenate([sd[h + f"self_attn.{p}_proj.weight"] for p in "qkv"])
        out[a + "self_attn.out_proj.weight"] = sd[h + "self_attn.out_proj.weight"]
        out[a + "cross_attention.in_proj_weight"] = np.concatenate([sd[h + f"encoder_attn.{p}_proj.weight"] for p in "qkv"])
        out[a + "cross_attention.out_proj.weight"] = sd[h + "encoder_attn.out_proj.weight"]
        for hf_norm, ac_norm in (("self_attn_layer_norm", "norm1"), ("encoder_attn_layer_norm", "norm_cross"), ("final_layer_norm", "norm2")):
            for p in ("weight", "bias"):
                out[a + f"{ac_norm}.{p}"] = sd[h + f"{hf_norm}.{p}"]
        out[a + "linear1.weight"] = sd[h + "fc1.weight"]
        out[a + "linear2.weight"] = sd[h + "fc2.weight"]
    return out
