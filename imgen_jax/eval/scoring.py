"""What the registered metrics (imgen_jax.eval.metrics) see, and the scorer of one run.

Everything is computed on demand and kept: a clip's 16 kHz resampling and mel spectrogram are made
once however many metrics read them, and a metric can keep its own per-clip (`Clip.memo`) or per-run
(`Context.memo`) values, e.g. the target's classifier logits or a caption's text embedding.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from imgen_jax.eval import metrics as registry

EVAL_SR = 16000  # the official evaluation resamples everything to 16 kHz


def fit(wav: np.ndarray, n: int) -> np.ndarray:
    """Mono wav -> float32 [n]: cut, or zero-padded at the end."""
    wav = np.asarray(wav, np.float32).reshape(-1)
    return wav[:n] if wav.size >= n else np.pad(wav, (0, n - wav.size))


class Context:
    """One run: task, model sample rate `sr`, mel settings, plug-ins {"clap", "classifier", "separator"} (None
    when not given)."""

    def __init__(self, task: str, sr: int, plugins: Mapping[str, Any]):
        from imgen_jax.eval.mel import MelConfig

        self.task, self.sr, self.plugins = task, sr, dict(plugins)
        self.mel_cfg = MelConfig(sample_rate=EVAL_SR)
        self._memo: dict = {}

    def memo(self, key, fn: Callable[[], Any]):
        """fn() the first time `key` is asked for in this run, the kept value afterwards."""
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def memo_keys(self) -> list:
        """The keys kept so far."""
        return list(self._memo)


class Clip:
    """Mono audio [N] at the run's rate with its derived forms (each computed once)."""

    def __init__(self, wav: np.ndarray, ctx: Context):
        self.wav, self.ctx = np.asarray(wav, np.float32).reshape(-1), ctx
        self._memo: dict = {}

    def memo(self, key, fn: Callable[[], Any]):
        """fn() the first time `key` is asked for on this clip, the kept value afterwards."""
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def has(self, key) -> bool:
        """Whether `key` is kept already."""
        return key in self._memo

    def at(self, rate: int) -> np.ndarray:
        """The clip resampled to `rate`: float32 [M]."""
        from imgen_jax.eval.mel import resample

        return self.memo(("at", int(rate)), lambda: resample(self.wav, self.ctx.sr, int(rate)))

    @functools.cached_property
    def at16(self) -> np.ndarray:
        """The clip at 16 kHz (the official evaluation's rate): float32 [M]."""
        return self.at(EVAL_SR)

    @functools.cached_property
    def mel(self) -> np.ndarray:
        """Mel power spectrogram of `at16` [n_mels, frames] (imgen_jax.eval.mel, the official settings)."""
        from imgen_jax.eval.mel import mel_spectrogram

        return mel_spectrogram(self.at16, self.ctx.mel_cfg)


class Example:
    """One example's reference: its target, its input (cut / padded to the target's length) and stem."""

    def __init__(self, target: np.ndarray, inp: np.ndarray, stem: str, ctx: Context):
        self.target = Clip(target, ctx)
        self.input = Clip(fit(inp, self.target.wav.size), ctx)
        self.stem = stem

    @property
    def n(self) -> int:
        return self.target.wav.size


class Scorer:
    """The per-example metrics of a run (those of the registry that apply to its task and plug-ins) and the
    per-clip embedding statistics of its set metrics."""

    def __init__(self, task: str, sr: int, embedders: dict[str, Any], clap=None, classifier=None, separator=None):
        self.ctx = Context(task, sr, {"clap": clap, "classifier": classifier, "separator": separator})
        self.embedders = embedders
        self.metrics = registry.for_run(task, self.ctx.plugins, "example")
        self.set_metrics = registry.for_run(task, self.ctx.plugins, "set")

    def metric_names(self) -> list[str]:
        """The per-example metric columns, in order."""
        return [m.name for m in self.metrics]

    def set_columns(self) -> list[tuple[str, Any, str]]:
        """[(column, set metric, embedder name)] of the set metrics: `<metric>_<embedder>`."""
        return [(f"{m.name}_{e}", m, e) for m in self.set_metrics for e in self.embedders]

    def example(self, target: np.ndarray, inp: np.ndarray, stem: str) -> Example:
        return Example(target, inp, stem, self.ctx)

    def score(self, est: np.ndarray, ex: Example) -> dict[str, float]:
        """Every per-example metric of the output `est` (mono, the run's rate; cut / padded to the target)."""
        return self.score_batch([est], [ex])[0]

    def score_batch(self, ests: Sequence[np.ndarray], exs: Sequence[Example]) -> list[dict[str, float]]:
        """`score` of each (output, example) pair; the metrics' `prepare` hooks run each network once on
        the whole batch."""
        outs = [Clip(fit(e, ex.n), self.ctx) for e, ex in zip(ests, exs)]
        for m in self.metrics:
            if m.prepare is not None and outs:
                m.prepare(outs, list(exs), self.ctx)
        return [{m.name: float(m.compute(o, ex, self.ctx)) for m in self.metrics} for o, ex in zip(outs, exs)]

    def embed_stats(self, wav: np.ndarray) -> dict[str, Any]:
        """{embedder: GaussianStats of its frame embeddings of `wav`} (mono, the run's rate)."""
        return self.embed_stats_batch([wav])[0]

    def embed_stats_batch(self, wavs: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        """`embed_stats` of each clip, one embedder call for all of them."""
        from imgen_jax.eval.fad import GaussianStats
        from imgen_jax.eval.mel import resample

        out: list[dict[str, Any]] = [{} for _ in wavs]
        for name, emb in self.embedders.items():
            if not wavs:
                break
            frames = emb([resample(w, self.ctx.sr, emb.sample_rate) for w in wavs])
            for d, f in zip(out, frames):
                d[name] = GaussianStats.of(f)
        return out


__all__ = ["Context", "Clip", "Example", "Scorer", "fit", "EVAL_SR"]
