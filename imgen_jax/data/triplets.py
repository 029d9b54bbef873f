"""Instruction triplets (input mix, instruction, target mix) from a track's stems, as the official code makes them.

The official `SlakhInstructDataset.__getitem__` (ldzhangyx/instruct-MusicGen, src/data/slakh_datamodule.py),
for a track with N usable stems grouped by instrument class:

- pick the task uniformly from `tasks`, a target class T uniformly from the candidate classes
  (`4_stems`: the track's classes among Drums, Bass, Piano, Guitar, and only those take part;
  `all`: every class), and k uniform in [1, C-1] other classes (C = candidate classes):
    add:      input = k others,           output = input + T     "Music piece. Instruct: Add T."
    remove:   output = k others,          input = output + T     "Music piece. Instruct: No T."
    extract:  input = T + k others,       output = T             "Music piece. Instruct: Only T."
  (beyond the paper, with `extra_tasks`)
    generate: input = k others,           output = T             "Music piece. Instruct: Generate T."
    replace:  input = k others + A,       output = k others + T  "Music piece. Instruct: Replace A with T."
  a mix is the plain sum of its stems (every stem of a chosen class);
- cut the same random clip (offset uniform over the track) from both mixes;
- reject and re-draw (same task, new classes and offset), at most `max_retries` times, when the
  input's or output's peak is below 0.1 or more than 70% of output - input is below 0.01 in
  magnitude; after the last retry the clip is kept (as the official code does) and `retries` says so;
- volume normalisation: both mixes times N / n, n = the number of stems in the output mix for add
  and in the input mix otherwise (max of both for replace), then both divided by their joint peak
  if it exceeds 1.

Divergences: clips are mono before the checks (the official code checks the stereo mixes, then
averages channels; Slakh stems are mono anyway); randomness is a numpy Generator (the data pipeline
derives it from (seed, index)), not Python's `random`. MoisesDB uses the same text as Slakh (the
official MoisesDB code writes "Instruction:" and drops the final period of "No"; the released model
was trained on the Slakh form), with class "Other" never the target, as the official code.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from imgen_jax.errors import ImgenError
from imgen_jax.vocab import EXTRA_TASKS, FOUR_STEMS, STEM_SETS, TASKS, instruction

PAPER_TASKS = TASKS
PEAK_MIN = 0.1          # official: reject a clip whose input or output peak is below this
SILENCE_LEVEL = 0.01    # official: samples of output - input below this count as silent
SILENT_FRACTION = 0.7   # official: reject when more than this fraction is silent


@dataclasses.dataclass(frozen=True)
class TripletConfig:
    """How triplets are drawn. `stems`: "4_stems" (Drums, Bass, Piano, Guitar) or "all"."""

    tasks: tuple[str, ...] = PAPER_TASKS
    stems: str = "4_stems"
    clip_seconds: float = 5.0
    sample_rate: int = 32000
    volume_normalization: bool = True
    max_retries: int = 10
    extra_tasks: bool = False

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        allowed = PAPER_TASKS + (EXTRA_TASKS if self.extra_tasks else ())
        bad = [t for t in self.tasks if t not in allowed]
        if bad or not self.tasks:
            hint = "" if self.extra_tasks or not set(bad) <= set(EXTRA_TASKS) else " (set extra_tasks=True for those)"
            raise ImgenError(f"data tasks {list(self.tasks)}: expected a non-empty subset of {list(allowed)}{hint}")
        if self.stems not in STEM_SETS:
            raise ImgenError(f"data stems {self.stems!r}: expected '4_stems' or 'all'")
        if not self.clip_seconds > 0 or self.sample_rate <= 0 or self.max_retries < 0:
            raise ImgenError("data clip_seconds and sample_rate must be positive and max_retries >= 0")

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "tasks": list(self.tasks)}


@dataclasses.dataclass
class Triplet:
    """One training / evaluation example. input, target: float32 [N] mono at the config's sample rate."""

    input: np.ndarray
    target: np.ndarray
    instruction: str
    task: str
    stem: str
    track: str
    id: str = ""
    input_stems: tuple[str, ...] = ()   # classes mixed into the input
    output_stems: tuple[str, ...] = ()  # classes mixed into the target
    offset: int = 0                     # clip start in samples
    scale: float = 1.0                  # the volume normalisation applied to both mixes
    retries: int = 0                    # re-draws before this clip; max_retries + 1 means none passed


@dataclasses.dataclass(frozen=True)
class TrackInfo:
    """What the sampler needs to know of a track: its stems' classes and its length at the config's rate."""

    name: str
    classes: tuple[str, ...]   # one per stem, in stem order
    num_samples: int


def candidate_classes(info: TrackInfo, config: TripletConfig) -> list[str]:
    """The classes that take part in triplets of this track, in order of first appearance."""
    classes = list(dict.fromkeys(info.classes))
    return [c for c in classes if c in FOUR_STEMS] if config.stems == "4_stems" else classes


def track_tasks(info: TrackInfo, config: TripletConfig) -> tuple[str, ...]:
    """The configured tasks this track supports (replace needs 3 classes, the others 2)."""
    n = len(candidate_classes(info, config))
    return tuple(t for t in config.tasks if n >= (3 if t == "replace" else 2))


def unusable_reason(info: TrackInfo, config: TripletConfig) -> str | None:
    """Why no triplet can be drawn from this track under `config`, or None."""
    cand = candidate_classes(info, config)
    if not track_tasks(info, config):
        need = 3 if config.tasks == ("replace",) else 2
        return f"{len(cand)} {'of Drums/Bass/Piano/Guitar ' if config.stems == '4_stems' else ''}class(es) {cand}; needs {need}"
    if not [c for c in cand if c != "Other"]:
        return "only the class 'Other' (never a target)"
    if info.num_samples < config.clip_samples:
        return f"{info.num_samples / config.sample_rate:.2f} s long, shorter than a {config.clip_seconds} s clip"
    return None


StemReader = Callable[[int, int, Sequence[int]], np.ndarray]
"""read(start, length, stem_indices) -> float32 [len(stem_indices), length] at the config's rate."""


def _draw_classes(task: str, cand: list[str], rng: np.random.Generator) -> tuple[list[str], list[str], str, str | None]:
    """(input classes, output classes, target class, replaced class or None) for one draw."""
    targets = [c for c in cand if c != "Other"]
    target = targets[rng.integers(len(targets))]
    others = [c for c in cand if c != target]
    old = None
    if task == "replace":
        old = others[rng.integers(len(others))]
        others = [c for c in others if c != old]
    k = int(rng.integers(1, len(others) + 1))
    chosen = [others[i] for i in rng.permutation(len(others))[:k]]
    if task == "add":
        return chosen, chosen + [target], target, None
    if task == "remove":
        return chosen + [target], chosen, target, None
    if task == "extract":
        return [target] + chosen, [target], target, None
    if task == "generate":
        return chosen, [target], target, None
    return chosen + [old], chosen + [target], target, old


def sample_triplet(info: TrackInfo, read: StemReader, task: str, rng: np.random.Generator, config: TripletConfig) -> Triplet:
    """Draw one triplet of `task` from a track (see the module docstring for the rules)."""
    cand = candidate_classes(info, config)
    reason = unusable_reason(info, config)
    if reason is None and task not in track_tasks(info, config):
        reason = f"task {task!r} needs more classes than {cand}"
    if reason is not None:
        raise ImgenError(f"track {info.name}: {reason}")
    n_total = len(info.classes)
    L = config.clip_samples
    for attempt in range(config.max_retries + 1):
        in_cls, out_cls, target, old = _draw_classes(task, cand, rng)
        offset = int(rng.integers(0, info.num_samples - L + 1))
        in_idx = [i for i, c in enumerate(info.classes) if c in in_cls]
        out_idx = [i for i, c in enumerate(info.classes) if c in out_cls]
        needed = sorted(set(in_idx) | set(out_idx))
        audio = read(offset, L, needed)
        row = {s: r for r, s in enumerate(needed)}
        inp = audio[[row[i] for i in in_idx]].sum(axis=0, dtype=np.float32)
        out = audio[[row[i] for i in out_idx]].sum(axis=0, dtype=np.float32)
        silent = np.count_nonzero(np.abs(out - inp) < SILENCE_LEVEL) > SILENT_FRACTION * L
        if np.abs(inp).max() >= PEAK_MIN and np.abs(out).max() >= PEAK_MIN and not silent:
            break
    else:
        attempt = config.max_retries + 1
    scale = 1.0
    if config.volume_normalization:
        n = len(out_idx) if task == "add" else (max(len(in_idx), len(out_idx)) if task == "replace" else len(in_idx))
        scale = n_total / n
        peak = max(np.abs(inp).max(), np.abs(out).max()) * scale
        if peak > 1.0:
            scale /= peak
        inp, out = inp * np.float32(scale), out * np.float32(scale)
    text = instruction(task, target, old)
    return Triplet(inp.astype(np.float32), out.astype(np.float32), text, task, target, info.name,
                   input_stems=tuple(in_cls), output_stems=tuple(out_cls), offset=offset, scale=float(scale),
                   retries=attempt)
