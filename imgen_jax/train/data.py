"""Training batches: instruction triplets (imgen_jax.data) or a synthetic source, tokenised for the step.

A loader yields host-local batches {"input": float32 [b, N], "target": float32 [b, N] (mono,
N = clip_seconds * sample_rate), "instruction": list[str], "task": list[str], "stem": list[str]}
and has `get_state()` / `set_state(state)` (JSON) so a restored run reads the same next batch.
`encode_batch` turns one into the arrays of the jitted step: the audio plus the instructions'
T5 ids and mask [b, text_max_length] int32 (fixed-length padding: static shapes).
"""

from __future__ import annotations

import os
from typing import Iterator

import ml_collections
import numpy as np

from imgen_jax.errors import ImgenError
from imgen_jax.vocab import FOUR_STEMS, TASKS, instruction

SYNTHETIC_STEMS = FOUR_STEMS


class SyntheticTriplets:
    """A deterministic stand-in for the triplet loader (tests, benchmarks): 4 "stems" per example,
    each a decaying tone at a stem-specific pitch with random onsets; input / target mixes and the
    official instruction text follow the task (add: input lacks the stem, target has it; remove:
    the reverse; extract: target is the stem alone). Batch n depends only on (seed, shard, n)."""

    def __init__(self, batch_size: int, num_samples: int, sample_rate: int, tasks=TASKS,
                 seed: int = 0, shard_index: int = 0, shard_count: int = 1):
        self.batch_size, self.num_samples, self.sample_rate = batch_size, num_samples, sample_rate
        self.tasks, self.seed, self.shard_index, self.shard_count = tuple(tasks), seed, shard_index, shard_count
        self.index = 0

    def get_state(self) -> dict:
        return {"index": self.index, "seed": self.seed, "shard_index": self.shard_index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])

    def __iter__(self) -> "SyntheticTriplets":
        return self

    def _stem(self, rng: np.random.Generator, k: int) -> np.ndarray:
        t = np.arange(self.num_samples) / self.sample_rate
        f0 = self.sample_rate / (6.0 + 5.0 * k)  # well below Nyquist, distinct per stem
        out = np.zeros(self.num_samples, np.float32)
        for onset in rng.uniform(0, max(t[-1], 1e-3), size=3):
            env = np.where(t >= onset, np.exp(-(t - onset) * (4.0 + 3 * k)), 0.0)
            out += (0.25 * env * np.sin(2 * np.pi * f0 * (1 + 0.05 * rng.standard_normal()) * t)).astype(np.float32)
        return out

    def __next__(self) -> dict:
        rng = np.random.default_rng([self.seed, self.shard_index, self.index])
        self.index += 1
        rows = {"input": [], "target": [], "instruction": [], "task": [], "stem": []}
        for _ in range(self.batch_size):
            stems = [self._stem(rng, k) for k in range(len(SYNTHETIC_STEMS))]
            k = int(rng.integers(len(stems)))
            task = self.tasks[int(rng.integers(len(self.tasks)))]
            full, rest = sum(stems), sum(s for i, s in enumerate(stems) if i != k)
            inp, tgt = {"add": (rest, full), "remove": (full, rest), "extract": (full, stems[k])}[task]
            rows["input"].append(inp)
            rows["target"].append(tgt)
            rows["instruction"].append(instruction(task, SYNTHETIC_STEMS[k]))
            rows["task"].append(task)
            rows["stem"].append(SYNTHETIC_STEMS[k])
        rows["input"] = np.stack(rows["input"]).astype(np.float32)
        rows["target"] = np.stack(rows["target"]).astype(np.float32)
        return rows


def num_samples(config: ml_collections.ConfigDict) -> int:
    return int(round(config.data.clip_seconds * config.data.sample_rate))


def make_loader(config: ml_collections.ConfigDict, split: str, batch_size: int, seed: int,
                shard_index: int = 0, shard_count: int = 1) -> Iterator[dict]:
    """The host-local loader of `split` for `batch_size` rows per host (this host's shard)."""
    if config.data.source == "synthetic":
        return SyntheticTriplets(batch_size, num_samples(config), config.data.sample_rate, tuple(config.data.tasks),
                                 seed=seed + (0 if split == config.data.train_split else 7919),
                                 shard_index=shard_index, shard_count=shard_count)
    root = config.data.dir
    if not os.path.isdir(root):
        raise ImgenError(f"config.data.dir: {root}: data directory not found")
    from imgen_jax.data import TripletConfig, make_triplet_loader

    cfg = TripletConfig(tasks=tuple(config.data.tasks), stems=config.data.stems,
                        clip_seconds=float(config.data.clip_seconds), sample_rate=int(config.data.sample_rate))
    return make_triplet_loader(root, split=split, config=cfg, batch_size=batch_size, seed=seed,
                               shard_index=shard_index, shard_count=shard_count,
                               layout=str(config.data.get("layout", "auto")))


def encode_batch(batch: dict, tokenizer, max_length: int, expect_samples: int) -> dict[str, np.ndarray]:
    """A loader batch -> {"input", "target": float32 [b, N], "text_ids", "text_mask": int32 [b, max_length]}."""
    inp, tgt = np.asarray(batch["input"], np.float32), np.asarray(batch["target"], np.float32)
    if inp.ndim != 2 or inp.shape != tgt.shape or inp.shape[1] != expect_samples:
        raise ImgenError(
            f"data: expected input and target audio [batch, {expect_samples}], got {inp.shape} and {tgt.shape} "
            "(check data.clip_seconds / data.sample_rate)"
        )
    ids, mask = tokenizer(list(batch["instruction"]), max_length=max_length, padding="max_length")
    return {"input": inp, "target": tgt, "text_ids": ids.astype(np.int32), "text_mask": mask.astype(np.int32)}


__all__ = ["SyntheticTriplets", "make_loader", "encode_batch", "num_samples"]
