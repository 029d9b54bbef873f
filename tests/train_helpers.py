"""Helpers of the training tests: a tiny converted MusicGen directory with random weights (no torch),
a tiny training config, and the subprocess runner for emulated multi-device meshes."""

from __future__ import annotations

import math
import os
import shutil

import numpy as np

from imgen_jax.models.encodec import EncodecConfig, abstract_encodec
from imgen_jax.models.lm import LMConfig, abstract_lm
from imgen_jax.modeldir import write_model_dir
from imgen_jax.models.t5 import T5Config, t5_abstract
from imgen_jax.weights import module_shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_LM = LMConfig(dim=32, num_heads=4, num_layers=2, ffn_dim=64, card=32, text_dim=24)
TINY_T5 = T5Config(vocab_size=256, d_model=24, d_kv=8, d_ff=48, num_layers=2, num_heads=3,
                   relative_attention_num_buckets=8, relative_attention_max_distance=16, layer_norm_epsilon=1e-6,
                   feed_forward_proj="relu")
# 2 kHz, hop 20: 100 frames/s; 4 codebooks of 32 = the LM's card
TINY_CODEC = EncodecConfig(sampling_rate=2000, num_filters=4, hidden_size=8, upsampling_ratios=(5, 4),
                           codebook_size=32, num_codebooks=4, num_lstm_layers=1)


def _random(module, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for name, (shape, _) in module_shapes(module).items():
        leaf = name.rsplit("/", 1)[-1]
        if leaf in ("scale",) and len(shape) <= 2:
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        elif leaf == "bias":
            v = 0.02 * rng.standard_normal(shape)
        elif leaf == "codebooks":
            v = rng.standard_normal(shape)
        elif len(shape) >= 2:
            fan_in = shape[-2] * (shape[-3] if leaf == "kernel" and len(shape) == 3 and "encoder" in name else 1)
            v = rng.standard_normal(shape) / math.sqrt(max(fan_in, 1))
        else:
            v = rng.standard_normal(shape)
        out[name] = v.astype(np.float32)
    return out


def make_tiny_model_dir(out: str, spm_model: str, seed: int = 0) -> str:
    """A converted MusicGen directory (lm + encodec + t5 + spiece.model) with random weights."""
    rng = np.random.default_rng(seed)
    weights = {"lm": _random(abstract_lm(TINY_LM), rng), "encodec": _random(abstract_encodec(TINY_CODEC), rng),
               "t5": _random(t5_abstract(TINY_T5), rng)}
    configs = {"lm": TINY_LM.to_dict(), "encodec": TINY_CODEC.to_dict(), "t5": TINY_T5.to_dict()}
    if os.path.exists(out):
        shutil.rmtree(out)
    return write_model_dir(out, "musicgen", configs, weights, "tests: random tiny", tokenizer_model=spm_model)


def tiny_config(model_dir: str, workdir: str, steps: int = 6, **overrides):
    """A training config on the synthetic source: 1 s clips at 2 kHz (100 frames), batch 8."""
    from imgen_jax.train.config import base_config

    c = base_config()
    c.workdir = workdir
    c.model.base_dir = model_dir
    c.model.lora_r = 4
    c.model.lora_alpha = 8.0
    c.model.pos_emb_frames = 101
    c.data.source = "synthetic"
    c.data.clip_seconds = 1.0
    c.data.sample_rate = TINY_CODEC.sampling_rate
    c.data.text_max_length = 16
    c.train.steps = steps
    c.train.batch_size = 8
    c.train.grad_accum = 1
    c.train.schedule_steps = 0
    c.train.grad_clip_norm = 0.0
    c.model.text_dropout = 0.0
    c.train.lr = 3e-3
    c.train.warmup_steps = 2
    c.train.log_every = 1
    c.eval.every = 0
    c.eval.batches = 1
    c.samples.every = 0
    c.checkpoint.every = steps
    c.checkpoint.keep = 2
    for k, v in overrides.items():
        sec, key = k.split(".")
        c[sec][key] = v
    return c
