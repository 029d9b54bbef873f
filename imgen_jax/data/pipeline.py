"""The triplet pipeline: a grain dataset of instruction triplets, deterministic given (seed, position).

    from imgen_jax.data import TripletConfig, make_triplet_loader, make_eval_set

    it = make_triplet_loader("data/mini-slakh", "train", TripletConfig(), batch_size=8, seed=0)
    batch = next(it)     # {"input": f32 [B, N], "target": f32 [B, N], "instruction": [str] * B, "task": [...], "stem": [...]}
    state = it.get_state()   # JSON-able; it.set_state(state) makes the next batch the same again

Element i of the (infinite) stream is: the track at position i of an epoch-wise shuffle of the
split's usable tracks (grain `MapDataset.shuffle().repeat()`), and a triplet drawn from it with a
numpy Generator that grain derives from (seed, i) (`random_map`): the task uniform over the
configured tasks the track supports, then `triplets.sample_triplet`. With `shard_count` hosts, host
h takes elements h, h + shard_count, ... and batches `batch_size` of them (its share of the global
batch). Triplets are cut from a built dataset (`imgen data build`) or straight from the dataset
files (`sources.open_source`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Iterator

import numpy as np

from imgen_jax.data.sources import open_source
from imgen_jax.data.tracks import BuildReport
from imgen_jax.data.triplets import PAPER_TASKS, Triplet, TripletConfig, sample_triplet, track_tasks, unusable_reason
from imgen_jax.errors import ImgenError

log = logging.getLogger("imgen_jax.data")


class TripletSource:
    """The usable tracks of a split under a config, and the triplet drawn for a (track, rng)."""

    def __init__(self, data_dir: str, split: str, config: TripletConfig, layout: str = "auto"):
        self.config = config
        self.report = BuildReport()
        self.source = open_source(data_dir, split, config.sample_rate, self.report, layout)
        self.usable = []
        for t, info in enumerate(self.source.infos):
            reason = unusable_reason(info, config)
            if reason is None:
                self.usable.append(t)
            else:
                self.report.skip("track", info.name, reason)
        if not self.usable:
            raise ImgenError(
                f"{data_dir}: none of the {len(self.source.infos)} {split!r} tracks can make {list(config.tasks)} triplets "
                f"with stems={config.stems!r} and {config.clip_seconds} s clips"
            )
        log.info("%s %s: %d usable tracks, %d skipped", data_dir, split, len(self.usable), self.report.skipped_count())

    def __len__(self) -> int:
        return len(self.usable)

    def triplet(self, i: int, rng: np.random.Generator, task: str | None = None) -> Triplet:
        """A triplet from usable track i (task drawn from those the track supports unless given)."""
        t = self.usable[i]
        info = self.source.infos[t]
        if task is None:
            tasks = track_tasks(info, self.config)
            task = tasks[int(rng.integers(len(tasks)))]
        return sample_triplet(info, lambda s, n, stems: self.source.read(t, s, n, stems), task, rng, self.config)


def _collate(items: list[dict]) -> dict:
    return {
        "input": np.stack([x["input"] for x in items]),
        "target": np.stack([x["target"] for x in items]),
        "instruction": [x["instruction"] for x in items],
        "task": [x["task"] for x in items],
        "stem": [x["stem"] for x in items],
    }


def triplet_dataset(src: TripletSource, seed: int, shard_index: int = 0, shard_count: int = 1):
    """The infinite grain MapDataset of triplet dicts (one element per example) of this host's shard."""
    import grain

    class _Draw(grain.transforms.RandomMap):
        def random_map(self, i, rng):
            tr = src.triplet(int(i), rng)
            return {"input": tr.input, "target": tr.target, "instruction": tr.instruction, "task": tr.task, "stem": tr.stem}

    if not 0 <= shard_index < shard_count:
        raise ImgenError(f"shard_index {shard_index} must be in 0..{shard_count - 1}")
    ds = grain.MapDataset.range(len(src)).seed(seed).shuffle().repeat(None).random_map(_Draw())
    return ds[shard_index::shard_count] if shard_count > 1 else ds


class TripletIterator:
    """Batches of triplets with a JSON-able, checkpointable position (see the module docstring)."""

    def __init__(self, src: TripletSource, batch_size: int, seed: int, split: str, shard_index: int, shard_count: int,
                 num_threads: int, prefetch: int):
        import grain

        if batch_size < 1:
            raise ImgenError(f"batch_size {batch_size} must be >= 1")
        self.source = src
        self.batch_size = batch_size
        self._identity = {"seed": seed, "split": split, "shard": [shard_index, shard_count], "batch_size": batch_size,
                          "config": hashlib.sha256(json.dumps(src.config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]}
        ds = triplet_dataset(src, seed, shard_index, shard_count).batch(batch_size, batch_fn=_collate)
        opts = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
        self._it = ds.to_iter_dataset(opts).__iter__()

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        return next(self._it)

    def get_state(self) -> dict:
        """The position: restoring it with `set_state` makes the next batch the one that would have come next."""
        return {**self._identity, "grain": self._it.get_state()}

    def set_state(self, state: dict) -> None:
        mine = {k: v for k, v in state.items() if k != "grain"}
        if json.loads(json.dumps(self._identity)) != mine:
            raise ImgenError(f"data iterator state is for {mine}, this iterator is {self._identity}")
        self._it.set_state(state["grain"])


def make_triplet_loader(
    data_dir: str,
    split: str = "train",
    config: TripletConfig = TripletConfig(),
    batch_size: int = 8,
    seed: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
    num_threads: int = 2,
    prefetch: int = 4,
    layout: str = "auto",
) -> TripletIterator:
    """An endless, deterministic iterator of triplet batches of this host's shard (`batch_size` per host).
    layout: the dataset layout of data_dir (imgen_jax.data.tracks.LAYOUTS, or "auto": detected)."""
    return TripletIterator(TripletSource(data_dir, split, config, layout), batch_size, seed, split, shard_index, shard_count,
                           num_threads, prefetch)


def make_eval_set(
    data_dir: str, split: str = "test", task: str = "add", n: int = 16, seed: int = 0, config: TripletConfig | None = None,
    layout: str = "auto",
) -> list[Triplet]:
    """n triplets of one task, deterministic given (data, split, task, n, seed, config).

    Example i comes from the split's usable track i mod T (tracks sorted by name) with a Generator
    seeded by (seed, i); ids are "<track>-<task>-<i>"."""
    config = config or TripletConfig()
    if task not in config.tasks:
        config = TripletConfig(**{**config.to_dict(), "tasks": (task,),
                                  "extra_tasks": config.extra_tasks or task not in PAPER_TASKS})
    if n < 1:
        raise ImgenError(f"n {n} must be >= 1")
    src = TripletSource(data_dir, split, config, layout)
    out = []
    for i in range(n):
        tr = src.triplet(i % len(src), np.random.default_rng([seed, i]), task)
        tr.id = f"{tr.track}-{task}-{i}"
        out.append(tr)
    return out
