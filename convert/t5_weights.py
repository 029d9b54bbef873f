"""Hugging Face T5 encoder weights -> imgen_jax `T5Encoder` flat weights (numpy only).

Reads the keys of a `T5EncoderModel` / `T5ForConditionalGeneration` state dict (decoder and
LM-head keys are ignored), optionally under a prefix (`text_encoder.` in a HF MusicGen state
dict), and returns the flat names of `imgen_jax.t5` with per-layer weights stacked on a
leading layer axis. torch is only imported (by convert.common) when a checkpoint is read.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

import numpy as np

from convert.common import KeyReader, load_hf_weights, read_json, strip_prefix
from imgen_jax.configs import config_to_dict
from imgen_jax.errors import ImgenError
from imgen_jax.t5 import T5Config

# keys of a full encoder-decoder checkpoint that the encoder does not use
_IGNORED = ("decoder.", "lm_head.")
_EMBED_KEYS = ("shared.weight", "encoder.embed_tokens.weight")
_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.")


def _detect_config(sd: Mapping[str, np.ndarray], source: str) -> T5Config:
    """Sizes from weight shapes, for state dicts without a config (max distance and eps: T5 defaults)."""
    emb = next((sd[k] for k in _EMBED_KEYS if k in sd), None)
    rel = sd.get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    q = sd.get("encoder.block.0.layer.0.SelfAttention.q.weight")
    wi = sd.get("encoder.block.0.layer.1.DenseReluDense.wi.weight")
    wi0 = sd.get("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")
    ff = wi if wi is not None else wi0
    blocks = {int(m.group(1)) for k in sd if (m := _BLOCK.match(k))}
    missing = [
        name for name, arr in (
            ("shared.weight (or encoder.embed_tokens.weight)", emb),
            ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", rel),
            ("encoder.block.0.layer.0.SelfAttention.q.weight", q),
            ("encoder.block.0.layer.1.DenseReluDense.wi.weight (or wi_0)", ff),
        ) if arr is None or np.ndim(arr) != 2
    ]
    if missing:
        raise ImgenError(f"{source}: cannot infer the T5 sizes without a config; missing keys: {', '.join(missing)}")
    num_heads = int(rel.shape[1])
    inner = int(q.shape[0])
    if inner % num_heads:
        raise ImgenError(f"{source}: q projection width {inner} is not a multiple of {num_heads} heads")
    try:
        return T5Config(
            vocab_size=int(emb.shape[0]),
            d_model=int(emb.shape[1]),
            d_kv=inner // num_heads,
            d_ff=int(ff.shape[0]),
            num_layers=max(blocks) + 1,
            num_heads=num_heads,
            relative_attention_num_buckets=int(rel.shape[0]),
            feed_forward_proj="gated-gelu" if wi is None else "relu",
        )
    except ValueError as e:
        raise ImgenError(f"{source}: invalid T5 sizes from weight shapes: {e}") from None


def t5_from_hf(
    sd: Mapping[str, np.ndarray], hf_config: dict | None, source: str, prefix: str = ""
) -> tuple[T5Config, dict[str, np.ndarray]]:
    """(T5Config, flat weights) of the T5 encoder in a HF state dict.

    sd: {key: array}; only keys starting with `prefix` are considered (prefix removed).
    hf_config: the HF T5 config.json dict (or a MusicGen one with `text_encoder`); None to
      infer the sizes from the weight shapes.
    Missing, mis-shaped or unexpected keys raise one ImgenError listing them all.
    """
    sub = strip_prefix(sd, prefix) if prefix else dict(sd)
    if not any(k in sub for k in _EMBED_KEYS) and not any(_BLOCK.match(k) for k in sub):
        sample = ", ".join(sorted(sub)[:5]) if sub else "none"
        where = f" under prefix {prefix!r}" if prefix else ""
        raise ImgenError(
            f"{source}: not a T5 encoder state dict{where}: no 'shared.weight' or 'encoder.block.N.*' keys "
            f"(found {len(sub)} keys{': ' + sample if sub else ''})"
        )
    cfg = T5Config.from_hf(hf_config, source) if hf_config is not None else _detect_config(sub, source)

    # keys are looked up (and reported) with the prefix, as they are named in the source
    p = prefix
    reader = KeyReader({p + k: v for k, v in sub.items()}, source, ignore=tuple(p + x for x in _IGNORED))
    d, inner, f, n = cfg.d_model, cfg.inner_dim, cfg.d_ff, cfg.num_layers

    def take(key: str, shape: tuple[int, ...]):
        arr = reader.take(p + key, shape)
        return None if arr is None else np.asarray(arr, dtype=np.float32)

    # embeddings: shared.weight and encoder.embed_tokens.weight are the same tied matrix
    emb_key = next((k for k in _EMBED_KEYS if k in sub), _EMBED_KEYS[0])
    embed = take(emb_key, (cfg.vocab_size, d))
    reader.mark_used(p + k for k in _EMBED_KEYS)
    rel = take("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
               (cfg.relative_attention_num_buckets, cfg.num_heads))
    final = take("encoder.final_layer_norm.weight", (d,))

    ff_names = ("wi_0", "wi_1", "wo") if cfg.is_gated else ("wi", "wo")
    per_layer: dict[str, list] = {name: [] for name in (
        "layers/attn_norm/scale", "layers/attn/q/kernel", "layers/attn/k/kernel", "layers/attn/v/kernel",
        "layers/attn/o/kernel", "layers/ff_norm/scale", *(f"layers/ff/{w}/kernel" for w in ff_names),
    )}
    for i in range(n):
        blk = f"encoder.block.{i}.layer"
        per_layer["layers/attn_norm/scale"].append(take(f"{blk}.0.layer_norm.weight", (d,)))
        for w in ("q", "k", "v"):
            a = take(f"{blk}.0.SelfAttention.{w}.weight", (inner, d))
            per_layer[f"layers/attn/{w}/kernel"].append(None if a is None else a.T)
        a = take(f"{blk}.0.SelfAttention.o.weight", (d, inner))
        per_layer["layers/attn/o/kernel"].append(None if a is None else a.T)
        per_layer["layers/ff_norm/scale"].append(take(f"{blk}.1.layer_norm.weight", (d,)))
        for w in ff_names:
            shape = (d, f) if w == "wo" else (f, d)
            a = take(f"{blk}.1.DenseReluDense.{w}.weight", shape)
            per_layer[f"layers/ff/{w}/kernel"].append(None if a is None else a.T)

    reader.finish()

    flat: dict[str, np.ndarray] = {
        "embed/embedding": embed,
        "rel_bias/embedding": rel,
        "final_norm/scale": final,
    }
    for name, arrs in per_layer.items():
        flat[name] = np.ascontiguousarray(np.stack(arrs, axis=0))
    return cfg, flat


def convert_hf_t5_dir(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> str:
    """Convert a HF T5 snapshot directory (config.json, weights, optional spiece.model) into a
    converted model directory of kind 't5'; returns its path."""
    from imgen_jax.modeldir import TOKENIZER_NAME, write_model_dir

    hf_dir = os.fspath(hf_dir)
    if not os.path.isdir(hf_dir):
        raise ImgenError(f"{hf_dir}: Hugging Face T5 directory not found")
    cfg_path = os.path.join(hf_dir, "config.json")
    hf_config = read_json(cfg_path) if os.path.isfile(cfg_path) else None
    sd = load_hf_weights(hf_dir)
    cfg, flat = t5_from_hf(sd, hf_config, hf_dir)
    spiece = os.path.join(hf_dir, TOKENIZER_NAME)
    if os.path.isfile(spiece):
        from imgen_jax.t5 import T5Tokenizer

        T5Tokenizer(spiece)  # refuse an unreadable tokenizer now rather than at load time
    else:
        spiece = None
    return write_model_dir(
        out_dir, kind="t5", configs={"t5": config_to_dict(cfg)}, weights={"t5": flat},
        source=hf_dir, tokenizer_model=spiece, overwrite=overwrite,
    )


__all__ = ["t5_from_hf", "convert_hf_t5_dir"]
