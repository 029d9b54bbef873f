"""Hugging Face T5 encoder weights -> imgen_jax `T5Encoder` flat weights (numpy only).

Reads the keys of a `T5EncoderModel` / `T5ForConditionalGeneration` state dict (decoder and
LM-head keys are ignored), optionally under a prefix (`text_encoder.` in a HF MusicGen state
dict), and returns the flat names of `imgen_jax.models.t5` with per-layer weights stacked on a
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
from imgen_jax.models.t5 import T5Config

# keys of a full encoder-decoder checkpoint that the encoder does not use
_IGNORED = ("decoder.", "lm_head.")
_EMBED_KEYS = ("shared.weight", "encoder.embed_tokens.weight")
_BLOCK = re.compile(r"^encoder\.block\.(\d+)\.")
_MUSICGEN_PREFIX = "text_encoder."  # the T5 of a HF MusicgenForConditionalGeneration state dict


def _has_t5_keys(sd: Mapping[str, np.ndarray]) -> bool:
    return any(k in sd for k in _EMBED_KEYS) or any(_BLOCK.match(k) for k in sd)


def _weight_sizes(sd: Mapping[str, np.ndarray]) -> dict:
    """The T5Config fields that the present weights determine ({} entries for absent keys), plus
    `gated` (wi_0/wi_1 vs wi). Max distance and eps leave no trace in the weights."""
    sizes: dict = {}
    emb = next((sd[k] for k in _EMBED_KEYS if k in sd and np.ndim(sd[k]) == 2), None)
    if emb is not None:
        sizes["vocab_size"], sizes["d_model"] = int(emb.shape[0]), int(emb.shape[1])
    rel = sd.get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    if rel is not None and np.ndim(rel) == 2:
        sizes["relative_attention_num_buckets"], sizes["num_heads"] = int(rel.shape[0]), int(rel.shape[1])
    q = sd.get("encoder.block.0.layer.0.SelfAttention.q.weight")
    if q is not None and np.ndim(q) == 2 and "num_heads" in sizes and q.shape[0] % sizes["num_heads"] == 0:
        sizes["d_kv"] = int(q.shape[0]) // sizes["num_heads"]
    ff = "encoder.block.0.layer.1.DenseReluDense"
    wi = sd.get(f"{ff}.wi.weight")
    wi0 = sd.get(f"{ff}.wi_0.weight")
    if wi is not None or wi0 is not None:
        sizes["gated"] = wi is None
        w = wi if wi is not None else wi0
        if np.ndim(w) == 2:
            sizes["d_ff"] = int(w.shape[0])
    blocks = {int(m.group(1)) for k in sd if (m := _BLOCK.match(k))}
    if blocks:
        sizes["num_layers"] = max(blocks) + 1
    return sizes


def _check_config(cfg: T5Config, sizes: dict, source: str) -> None:
    """One ImgenError naming every config field that the weight shapes contradict."""
    problems = []
    for field in ("num_layers", "d_model", "num_heads", "d_kv", "d_ff", "vocab_size", "relative_attention_num_buckets"):
        if field in sizes and getattr(cfg, field) != sizes[field]:
            problems.append(f"{field} is {getattr(cfg, field)} but the weights say {sizes[field]}")
    if "gated" in sizes and cfg.is_gated != sizes["gated"]:
        said = lambda g: "gated" if g else "not gated"  # noqa: E731
        problems.append(
            f"feed_forward_proj is {cfg.feed_forward_proj!r} ({said(cfg.is_gated)}) but the weights say "
            f"{said(sizes['gated'])} ({'wi_0/wi_1' if sizes['gated'] else 'wi'})"
        )
    if problems:
        raise ImgenError(f"{source}: the T5 config disagrees with the weights: " + "; ".join(problems))


def _detect_config(sd: Mapping[str, np.ndarray], source: str) -> T5Config:
    """Sizes from weight shapes, for state dicts without a config.

    relative_attention_max_distance and layer_norm_epsilon take T5's defaults (128, 1e-6), and a
    gated feed-forward is taken to be gated-gelu (t5 v1.1): the weights do not say otherwise.
    """
    sizes = _weight_sizes(sd)
    needed = {
        "shared.weight (or encoder.embed_tokens.weight)": "vocab_size",
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": "num_heads",
        "encoder.block.0.layer.0.SelfAttention.q.weight": "d_kv",
        "encoder.block.0.layer.1.DenseReluDense.wi.weight (or wi_0)": "d_ff",
    }
    missing = [key for key, field in needed.items() if field not in sizes]
    if missing:
        raise ImgenError(
            f"{source}: cannot infer the T5 sizes without a config; missing or mis-shaped keys: {', '.join(missing)}"
        )
    try:
        return T5Config(
            vocab_size=sizes["vocab_size"],
            d_model=sizes["d_model"],
            d_kv=sizes["d_kv"],
            d_ff=sizes["d_ff"],
            num_layers=sizes["num_layers"],
            num_heads=sizes["num_heads"],
            relative_attention_num_buckets=sizes["relative_attention_num_buckets"],
            feed_forward_proj="gated-gelu" if sizes["gated"] else "relu",
        )
    except ValueError as e:
        raise ImgenError(f"{source}: invalid T5 sizes from weight shapes: {e}") from None


def t5_from_hf(
    sd: Mapping[str, np.ndarray], hf_config: dict | None, source: str, prefix: str = ""
) -> tuple[T5Config, dict[str, np.ndarray]]:
    """(T5Config, flat weights) of the T5 encoder in a HF state dict.

    sd: {key: array}; only keys starting with `prefix` are considered (prefix removed). Without a
      prefix, a whole HF MusicGen state dict is recognised and its `text_encoder.` keys are used.
    hf_config: the HF T5 config.json dict (or a MusicGen one with `text_encoder`); None to
      infer the sizes from the weight shapes (then max distance 128, eps 1e-6, gated = gated-gelu).
    A config whose sizes the weight shapes contradict raises one ImgenError naming each field
    ("num_layers is 3 but the weights say 2"); missing, mis-shaped or unexpected keys raise one
    ImgenError listing them all.
    """
    sub = strip_prefix(sd, prefix) if prefix else dict(sd)
    if not prefix and not _has_t5_keys(sub) and _has_t5_keys(strip_prefix(sd, _MUSICGEN_PREFIX)):
        # a whole HF MusicGen state dict (e.g. a MusicGen snapshot given as the T5 source)
        prefix = _MUSICGEN_PREFIX
        sub = strip_prefix(sd, prefix)
    if not _has_t5_keys(sub):
        sample = ", ".join(sorted(sub)[:5]) if sub else "none"
        where = f" under prefix {prefix!r}" if prefix else ""
        raise ImgenError(
            f"{source}: not a T5 encoder state dict{where}: no 'shared.weight' or 'encoder.block.N.*' keys "
            f"(found {len(sub)} keys{': ' + sample if sub else ''})"
        )
    if hf_config is not None:
        cfg = T5Config.from_hf(hf_config, source)
        _check_config(cfg, _weight_sizes(sub), source)
    else:
        cfg = _detect_config(sub, source)

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
    converted model directory of kind 't5'; returns its path.

    The spiece.model, when present, is checked (readable, T5-style, no more ids than the
    embedding has rows) and copied next to the weights; `imgen_jax.models.t5.load_t5` reads it back."""
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
        from imgen_jax.models.t5 import T5Tokenizer

        from imgen_jax.models.t5 import check_tokenizer_fits

        # refuse an unreadable or mismatched tokenizer now rather than at load time
        check_tokenizer_fits(T5Tokenizer(spiece), cfg, spiece)
    else:
        spiece = None
    return write_model_dir(
        out_dir, kind="t5", configs={"t5": config_to_dict(cfg)}, weights={"t5": flat},
        source=hf_dir, tokenizer_model=spiece, overwrite=overwrite,
    )


__all__ = ["t5_from_hf", "convert_hf_t5_dir"]
