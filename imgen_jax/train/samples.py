"""Edited samples with the current adapters: wav files and a before / target / after spectrogram PNG.

Runs the real editing path (`imgen_jax.instruct.edit.Editor`: windowed KV-cached decoding with CFG, the LoRA
merged) on a few validation clips, on process 0 only.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from flax import nnx

from imgen_jax.audio import save_spectrograms, write_wav


def write_samples(out_dir: str, mg, ad_def, params, batch: dict, seed: int, count: int, seconds: float,
                  sampling) -> list[str]:
    """Edit the first `count` clips of `batch` (a host-local loader batch) with the base model `mg`
    (imgen_jax.api.MusicGen, float32) and the adapter parameters `params` (host arrays, pure dict),
    decoding with `sampling` (imgen_jax.generate.SamplingConfig, `train.config.samples_sampling`; seed
    replaced by `seed`, top_k capped at the codebook size); writes NN_{input,target,edited}.wav and
    NN.png under out_dir; returns the written paths."""
    from imgen_jax.instruct.edit import EditConfig, Editor

    if count <= 0:
        return []
    os.makedirs(out_dir, exist_ok=True)
    adapters = nnx.merge(ad_def, jax.tree.map(jax.numpy.asarray, params))
    editor = Editor(mg, adapters)
    lm, encodec = mg.lm, mg.encodec
    sr = editor.sample_rate
    n = batch["input"].shape[1] if seconds <= 0 else min(batch["input"].shape[1], int(seconds * sr))
    frames = encodec.cfg.num_frames(n)
    window = min(frames, editor.max_window)
    top_k = min(sampling.top_k, lm.cfg.card) if sampling.top_k else sampling.top_k
    cfg = EditConfig(dataclasses.replace(sampling, seed=seed, top_k=top_k), window_frames=window,
                     stride_frames=max(1, window // 2))
    count = min(count, len(batch["instruction"]))
    wavs = [np.asarray(batch["input"][i, :n], np.float32)[None] for i in range(count)]
    edited = editor.edit(wavs, list(batch["instruction"][:count]), cfg)
    paths = []
    for i in range(count):
        target = np.asarray(batch["target"][i, :n], np.float32)
        paths.append(write_wav(os.path.join(out_dir, f"{i:02d}_input.wav"), wavs[i], sr))
        paths.append(write_wav(os.path.join(out_dir, f"{i:02d}_target.wav"), target[None], sr))
        paths.append(write_wav(os.path.join(out_dir, f"{i:02d}_edited.wav"), edited[i], sr))
        paths.append(save_spectrograms(os.path.join(out_dir, f"{i:02d}.png"), [wavs[i][0], target, edited[i][0]],
                                       ["input", "target", f"edited: {batch['instruction'][i][-28:]}"], sr))
    return paths


__all__ = ["write_samples"]
