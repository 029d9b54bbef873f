"""Confidence intervals and paired significance tests for the `imgen eval` table (the paper reports bare means).

Every table cell gets a 95% percentile-bootstrap confidence interval, and every model row a paired test
against every baseline row (identity, oracle, any other non-model system) on the examples both scored.
Everything is deterministic: the resamples come from `numpy.random.default_rng(seed)` (seed 0 unless set).

Bootstrap (Efron's percentile interval). With n examples and B resamples, the index matrix is

    idx = default_rng(seed).integers(0, n, size=(B, n))      # row b: the examples of resample b

(one matrix per example set, shared by every column of it, so the intervals of one row are a joint
resampling). A per-example metric's interval is the (2.5%, 97.5%) quantile (numpy's default, linear
interpolation) of the B means `values[idx].mean(1)`. A set metric (FAD) is a function of the pooled
per-clip embedding statistics of the outputs and of the targets: resample b pools the statistics of the
examples idx[b] (each as many times as drawn; outputs and targets of the same examples, so the pairing
of an output with its target is kept) and recomputes the metric.

Paired tests, model row vs baseline row, on the examples both rows scored:

- per-example metrics: the Wilcoxon signed-rank test of d = model - baseline (`wilcoxon_signed_rank`):
  two-sided; zero differences dropped (Wilcoxon's "wilcox" convention, scipy's default); ranks of |d|
  with ties averaged; statistic min(T+, T-). p-value: exact when at most 50 non-zero differences (the
  null distribution of T+ over all 2^n sign patterns of the observed ranks, by dynamic programming over
  doubled ranks, so it stays exact with ties), else the normal approximation with the tie-corrected
  variance n(n+1)(2n+1)/24 - sum(t^3 - t)/48 and no continuity correction. This equals
  scipy.stats.wilcoxon(x, y) (scipy 1.17, method "auto") except with ties or zero differences among more
  than 13 pairs, where scipy falls back to the normal approximation and this stays exact (while at most
  50 differences are non-zero). All differences zero: statistic 0, p = 1. The mean difference also
  gets a paired-bootstrap interval.
- set metrics (FAD): a paired bootstrap. Both rows are recomputed on the same resamples of their common
  examples; delta_b = model_b - baseline_b. p = min(1, 2 (min(#{delta_b <= 0}, #{delta_b >= 0}) + 1) / (B + 1)):
  the smallest two-sided level at which the percentile interval of the difference excludes 0 (never
  exactly 0; its floor is 2 / (B + 1)).

p-values are also given Holm-adjusted over the tests of one model row (all metrics, all baselines): a
cell is significant at 5% family-wise when `p_holm` < 0.05.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from imgen_jax.errors import ImgenError

LEVEL = 0.95
RESAMPLES = 1000
SEED = 0
EXACT_MAX = 50  # exact Wilcoxon p-values up to this many non-zero differences


# ---- bootstrap --------------------------------------------------------------------------------


def resample_indices(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """The bootstrap index matrix [resamples, n] of an n-example set (see the module docstring)."""
    if n < 1 or resamples < 1:
        raise ImgenError(f"bootstrap: need at least one example and one resample, got n={n}, resamples={resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """(lo, hi): the (1 - level) / 2 and (1 + level) / 2 quantiles of bootstrap replicates [B] (NaN if none finite)."""
    s = np.asarray(samples, np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(s, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_means(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Means of values [n] over the resamples idx [B, n] -> [B]."""
    return np.asarray(values, np.float64)[idx].mean(axis=1)


def mean_ci(values: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED,
            level: float = LEVEL) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of values [n] (examples resampled with replacement)."""
    v = np.asarray(values, np.float64)
    return percentile_interval(bootstrap_means(v, resample_indices(v.size, resamples, seed)), level)


def _moments(stats: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-clip statistics about their common mean (numerically safe to add up): counts [n], count-weighted
    centred sums [n, D], second moments [n, D, D], and that mean [D]."""
    counts = np.array([s.count for s in stats], np.float64)
    means = np.stack([s.mean for s in stats])
    centre = (counts[:, None] * means).sum(0) / counts.sum()
    dev = means - centre
    sums = counts[:, None] * dev
    second = np.stack([s.scatter for s in stats]) + sums[:, :, None] * dev[:, None, :]
    return counts, sums, second, centre


def pool_weighted(stats: Sequence, weights: np.ndarray):
    """The GaussianStats of the union of the per-clip statistics `stats`, clip i taken weights[i] times
    (integer multiplicities, as a bootstrap resample draws them); equals GaussianStats.pool of the repeated list."""
    return _pooled(np.asarray(weights, np.float64), *_moments(stats))


def _pooled(w: np.ndarray, c: np.ndarray, sums: np.ndarray, second: np.ndarray, centre: np.ndarray):
    from imgen_jax.eval.fad import GaussianStats

    n = float(w @ c)
    s = w @ sums
    scatter = np.tensordot(w, second, axes=1) - np.outer(s, s) / n
    return GaussianStats(int(round(n)), centre + s / n, (scatter + scatter.T) / 2)


class SetResampler:
    """Replicates of a set metric over bootstrap resamples of paired (output, target) per-clip statistics.

    outputs, targets: GaussianStats per example (same order, same examples); compute(system_stats,
    target_stats) -> float, a registry set metric (it is given one pooled statistic per side)."""

    def __init__(self, outputs: Sequence, targets: Sequence, compute: Callable[[list, list], float]):
        if len(outputs) != len(targets) or not outputs:
            raise ImgenError(f"bootstrap: {len(outputs)} output and {len(targets)} target statistics; expected equal, > 0")
        self.compute = compute
        self._sides = [_moments(outputs), _moments(targets)]

    def replicates(self, idx: np.ndarray) -> np.ndarray:
        """The metric on each resample idx [B, n] -> [B] (NaN where the metric refuses a resample; intervals and
        p-values use the finite replicates)."""
        n = self._sides[0][0].size
        out = np.empty(idx.shape[0])
        with _one_blas_thread():
            for b, row in enumerate(idx):
                w = np.bincount(row, minlength=n).astype(np.float64)
                pooled = [_pooled(w, *side) for side in self._sides]
                try:
                    out[b] = float(self.compute([pooled[0]], [pooled[1]]))
                except ImgenError:  # a resample the metric cannot score (e.g. too few frames): left out
                    out[b] = float("nan")
        return out


def _one_blas_thread():
    """BLAS limited to one thread: many small (D x D, D ~ 128) factorisations run up to 20x slower with
    OpenBLAS's threads on a busy machine than on one thread."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


# ---- Wilcoxon signed-rank -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WilcoxonResult:
    """statistic: min(T+, T-); pvalue: two-sided; n: non-zero differences; method: "exact" or "normal"."""

    statistic: float
    pvalue: float
    n: int
    method: str


def _average_ranks(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks 1..n of a [n] with ties given their average rank, and the sizes of the tie groups."""
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    sizes = np.diff(np.r_[starts, a.size])
    avg = starts + (sizes + 1) / 2.0  # 1-based average rank of each tie group
    ranks = np.empty(a.size)
    ranks[order] = np.repeat(avg, sizes)
    return ranks, sizes


def _exact_cdf_le(doubled: np.ndarray, t2: int) -> float:
    """P(T+ <= t2 / 2) under random signs, T+ the sum of the ranks (given doubled, integers) with a + sign."""
    total = int(doubled.sum())
    counts = np.zeros(total + 1, np.int64)
    counts[0] = 1
    for r in doubled:
        counts[r:] = counts[r:] + counts[:-r]  # the right side is evaluated before the assignment
    return float(counts[: t2 + 1].sum()) / float(2 ** doubled.size)


def wilcoxon_signed_rank(x: Sequence[float], y: Sequence[float]) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of the paired samples x [n], y [n] (d = x - y; see the module
    docstring for the variant). Non-finite differences are an error."""
    d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
    if d.ndim != 1:
        raise ImgenError(f"Wilcoxon: expected paired 1-D samples, got shapes {np.shape(x)} and {np.shape(y)}")
    if not np.isfinite(d).all():
        raise ImgenError("Wilcoxon: the differences contain NaN or infinite values")
    d = d[d != 0]
    n = int(d.size)
    if n == 0:
        return WilcoxonResult(0.0, 1.0, 0, "exact")
    ranks, ties = _average_ranks(np.abs(d))
    t_plus = float(ranks[d > 0].sum())
    stat = min(t_plus, n * (n + 1) / 2 - t_plus)
    if n <= EXACT_MAX:
        doubled = np.rint(ranks * 2).astype(np.int64)
        p = 2.0 * _exact_cdf_le(doubled, int(round(stat * 2)))
        return WilcoxonResult(stat, min(1.0, p), n, "exact")
    mean = n * (n + 1) / 4.0
    var = n * (n + 1) * (2 * n + 1) / 24.0 - float(np.sum(ties.astype(np.float64) ** 3 - ties)) / 48.0
    z = (stat - mean) / math.sqrt(var) if var > 0 else 0.0
    return WilcoxonResult(stat, min(1.0, math.erfc(abs(z) / math.sqrt(2.0))), n, "normal")


def paired_bootstrap_p(deltas: np.ndarray) -> float:
    """Two-sided bootstrap p-value of H0 "difference = 0" from the replicates deltas [B] of a difference."""
    d = np.asarray(deltas, np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    k = min(int(np.count_nonzero(d <= 0)), int(np.count_nonzero(d >= 0)))
    return min(1.0, 2.0 * (k + 1) / (d.size + 1))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN and does not count)."""
    p = np.asarray(pvalues, np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    running = 0.0
    for k, j in enumerate(ok[np.argsort(p[ok], kind="mergesort")]):
        running = max(running, min(1.0, (m - k) * p[j]))
        out[j] = running
    return out.tolist()


# ---- the table ----------------------------------------------------------------------------------


@dataclasses.dataclass
class TableStats:
    """table(): add the intervals to the rows and return the paired tests.

    per_example: {system: {example id: {metric: value}}}; metrics: the per-example metric columns;
    set_columns: [(column, compute, {system or "targets": {example id: GaussianStats}})]; models: the
    systems tested against every other system (the baselines)."""

    per_example: Mapping[str, Mapping[str, Mapping[str, float]]]
    metrics: Sequence[str]
    set_columns: Sequence[tuple[str, Callable, Mapping[str, Mapping[str, Any]]]]
    models: Sequence[str]
    resamples: int = RESAMPLES
    seed: int = SEED
    level: float = LEVEL

    def __post_init__(self):
        self._idx: dict[int, np.ndarray] = {}
        self._reps: dict[tuple, np.ndarray] = {}

    def _indices(self, n: int) -> np.ndarray:
        if n not in self._idx:
            self._idx[n] = resample_indices(n, self.resamples, self.seed)
        return self._idx[n]

    def _values(self, system: str, metric: str, ids: Sequence[str]) -> np.ndarray:
        return np.array([self.per_example[system][i][metric] for i in ids], np.float64)

    def _set_replicates(self, col: int, system: str, ids: tuple[str, ...]) -> np.ndarray:
        key = (col, system, ids)
        if key not in self._reps:
            _, compute, stats = self.set_columns[col]
            rs = SetResampler([stats[system][i] for i in ids], [stats["targets"][i] for i in ids], compute)
            self._reps[key] = rs.replicates(self._indices(len(ids)))
        return self._reps[key]

    def intervals(self, rows: list[dict]) -> None:
        """Add `<column>_lo` / `<column>_hi` to every row (NaN where the row has no examples)."""
        for row in rows:
            s = row["system"]
            ids = tuple(sorted(self.per_example.get(s, {})))
            for m in self.metrics:
                lo = hi = float("nan")
                if ids:
                    lo, hi = percentile_interval(bootstrap_means(self._values(s, m, ids), self._indices(len(ids))), self.level)
                row[f"{m}_lo"], row[f"{m}_hi"] = lo, hi
            for c, (col, _, stats) in enumerate(self.set_columns):
                sids = tuple(sorted(stats.get(s, {})))
                lo, hi = percentile_interval(self._set_replicates(c, s, sids), self.level) if sids else (float("nan"),) * 2
                row[f"{col}_lo"], row[f"{col}_hi"] = lo, hi

    def tests(self, systems: Sequence[str]) -> list[dict]:
        """The paired tests of every model against every other system in `systems` (one dict per
        (model, baseline, metric): n, means, mean difference with its interval, statistic, p, p_holm)."""
        out = []
        for model in (s for s in systems if s in self.models):
            family = []
            for base in (s for s in systems if s != model):
                family += self._example_tests(model, base) + self._set_tests(model, base)
            for rec, ph in zip(family, holm([r["p"] for r in family])):
                rec["p_holm"] = ph
            out += family
        return out

    def _example_tests(self, model: str, base: str) -> list[dict]:
        ids = tuple(sorted(set(self.per_example.get(model, {})) & set(self.per_example.get(base, {}))))
        out = []
        for m in self.metrics:
            rec = {"model": model, "baseline": base, "metric": m, "test": "wilcoxon", "n": len(ids)}
            if not ids:
                out.append({**rec, **dict.fromkeys(("model_value", "baseline_value", "diff", "diff_lo", "diff_hi",
                                                     "statistic", "p"), float("nan"))})
                continue
            a, b = self._values(model, m, ids), self._values(base, m, ids)
            lo, hi = percentile_interval(bootstrap_means(a - b, self._indices(len(ids))), self.level)
            try:
                w = wilcoxon_signed_rank(a, b)
                stat, p, how = w.statistic, w.pvalue, f"wilcoxon-{w.method}"
            except ImgenError:  # a non-finite value: no rank test
                stat, p, how = float("nan"), float("nan"), "wilcoxon"
            out.append({**rec, "test": how, "model_value": float(a.mean()), "baseline_value": float(b.mean()),
                        "diff": float(np.mean(a - b)), "diff_lo": lo, "diff_hi": hi, "statistic": stat, "p": p})
        return out

    def _set_tests(self, model: str, base: str) -> list[dict]:
        out = []
        for c, (col, compute, stats) in enumerate(self.set_columns):
            ids = tuple(sorted(set(stats.get(model, {})) & set(stats.get(base, {}))))
            rec = {"model": model, "baseline": base, "metric": col, "test": "paired-bootstrap", "n": len(ids),
                   "statistic": float("nan")}
            if not ids:
                out.append({**rec, **dict.fromkeys(("model_value", "baseline_value", "diff", "diff_lo", "diff_hi", "p"),
                                                   float("nan"))})
                continue
            tgt = [stats["targets"][i] for i in ids]
            mv = float(compute([stats[model][i] for i in ids], tgt))
            bv = float(compute([stats[base][i] for i in ids], tgt))
            deltas = self._set_replicates(c, model, ids) - self._set_replicates(c, base, ids)
            lo, hi = percentile_interval(deltas, self.level)
            out.append({**rec, "model_value": mv, "baseline_value": bv, "diff": mv - bv, "diff_lo": lo, "diff_hi": hi,
                        "p": paired_bootstrap_p(deltas)})
        return out


__all__ = ["LEVEL", "RESAMPLES", "SEED", "resample_indices", "percentile_interval", "bootstrap_means", "mean_ci",
           "pool_weighted", "SetResampler", "WilcoxonResult", "wilcoxon_signed_rank", "paired_bootstrap_p", "holm",
           "TableStats"]
