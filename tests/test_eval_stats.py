"""imgen_jax.eval.stats: bootstrap intervals, the Wilcoxon signed-rank test (against scipy), the FAD bootstrap
on per-clip Gaussian statistics, paired bootstrap p-values, Holm, and the table's intervals and tests."""

import itertools
import math

import numpy as np
import pytest
import scipy.stats

from imgen_jax.errors import ImgenError
from imgen_jax.eval import stats
from imgen_jax.eval.fad import GaussianStats, fad


def test_mean_ci_by_hand():
    """The documented recipe, written out: index matrix from default_rng(seed).integers(0, n, (B, n)), means,
    then the 2.5% / 97.5% quantiles with linear interpolation between order statistics."""
    x = np.array([3.0, -1.0, 4.0, 1.5, 9.0, 2.0])
    B, seed = 11, 3
    idx = np.random.default_rng(seed).integers(0, x.size, size=(B, x.size))
    means = sorted(sum(x[j] for j in row) / x.size for row in idx)
    # quantile q of B sorted values: position q (B - 1), linear between neighbours
    def q(p):
        pos = p * (B - 1)
        k = math.floor(pos)
        return means[k] + (pos - k) * (means[min(k + 1, B - 1)] - means[k])

    lo, hi = stats.mean_ci(x, resamples=B, seed=seed)
    assert lo == pytest.approx(q(0.025), abs=1e-12) and hi == pytest.approx(q(0.975), abs=1e-12)
    assert stats.mean_ci(x, resamples=B, seed=seed) == (lo, hi)  # reproducible
    assert stats.mean_ci(np.full(5, 2.5)) == (2.5, 2.5)  # no spread, no interval
    assert stats.mean_ci([7.0]) == (7.0, 7.0)
    with pytest.raises(ImgenError, match="at least one example"):
        stats.mean_ci([])


def test_mean_ci_coverage():
    """Over 300 normal samples of 40, the 95% interval holds the true mean about 95% of the time (the
    percentile bootstrap undercovers a little at this size; the binomial sd of the rate is 1.3%)."""
    rng = np.random.default_rng(0)
    hits = 0
    for k in range(300):
        lo, hi = stats.mean_ci(rng.normal(1.0, 2.0, 40), resamples=400, seed=k)
        hits += lo <= 1.0 <= hi
    assert 0.89 <= hits / 300 <= 0.99, hits


def _samples():
    rng = np.random.default_rng(4)
    yield rng.normal(size=12), rng.normal(size=12)                        # small, no ties: exact
    yield rng.normal(size=45), rng.normal(0.3, 1, 45)                     # exact up to 50
    yield rng.normal(size=120), rng.normal(0.2, 1, 120)                   # normal approximation
    a = np.array([1, 2, 2, 3, 0, 5, -1, -2, 4, 2, 0, -3], float)          # ties and zeros, 12 pairs: exact
    yield a, np.zeros_like(a)
    r = np.round(rng.normal(size=90) * 2) / 2                             # many ties and zeros, 90 pairs
    yield r, np.zeros_like(r)
    yield np.arange(1.0, 9.0), np.zeros(8)                                # all positive: the smallest p
    yield np.array([1.0, 1.0, 1.0]), np.array([0.0, 2.0, 1.0])            # one zero, tied |d|


@pytest.mark.parametrize("k", range(7))
def test_wilcoxon_matches_scipy(k):
    x, y = next(itertools.islice(_samples(), k, None))
    ours = stats.wilcoxon_signed_rank(x, y)
    ref = scipy.stats.wilcoxon(x, y)  # two-sided, zero_method="wilcox", no correction, method="auto"
    assert ours.statistic == pytest.approx(float(ref.statistic), abs=1e-9)
    assert ours.pvalue == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-12)
    assert ours.n == int(np.count_nonzero(x - y))
    assert ours.method == ("exact" if ours.n <= stats.EXACT_MAX else "normal")


def test_wilcoxon_exact_with_ties_beyond_scipy():
    """With ties among 14..50 pairs scipy falls back to the normal approximation; ours stays exact: it equals
    a brute-force enumeration of all 2^n sign patterns of the tied ranks (n = 16 here)."""
    d = np.array([1, 1, 2, 2, 2, 3, 4, 4, 5, 6, 6, 7, -1, -2, -4, -6], float)
    ours = stats.wilcoxon_signed_rank(d, np.zeros_like(d))
    ranks = scipy.stats.rankdata(np.abs(d))
    t_obs = min(ranks[d > 0].sum(), ranks[d < 0].sum())
    signs = np.array(list(itertools.product([0, 1], repeat=d.size)), bool)
    t_plus = (signs * ranks).sum(1)
    total = ranks.sum()
    brute = np.mean(np.minimum(t_plus, total - t_plus) <= t_obs + 1e-9)
    assert ours.method == "exact" and ours.statistic == t_obs
    assert ours.pvalue == pytest.approx(brute, rel=1e-12)
    approx = float(scipy.stats.wilcoxon(d, np.zeros_like(d)).pvalue)
    assert abs(approx - brute) > 1e-4  # the cases where the two differ are real


def test_wilcoxon_edges():
    assert stats.wilcoxon_signed_rank([1.0, 2.0], [1.0, 2.0]) == stats.WilcoxonResult(0.0, 1.0, 0, "exact")
    with pytest.raises(ImgenError, match="NaN or infinite"):
        stats.wilcoxon_signed_rank([1.0, np.nan], [0.0, 0.0])


def _clip_stats(rng, n, d, shift=0.0, frames=(6, 14)):
    return [GaussianStats.of(rng.normal(shift, 1.0, (int(rng.integers(*frames)), d))) for _ in range(n)]


def test_pool_weighted_equals_repeated_pooling():
    rng = np.random.default_rng(1)
    clips = [GaussianStats.of(rng.normal(50.0, 1.0, (rng.integers(3, 9), 5))) for _ in range(6)]  # far from 0
    w = np.array([0, 2, 1, 0, 3, 1])
    ref = GaussianStats.pool([c for c, k in zip(clips, w) for _ in range(k)])
    got = stats.pool_weighted(clips, w)
    assert got.count == ref.count
    np.testing.assert_allclose(got.mean, ref.mean, rtol=1e-12)
    np.testing.assert_allclose(got.scatter, ref.scatter, rtol=1e-9, atol=1e-9)


def test_fad_bootstrap_on_gaussian_stats():
    """Replicates are the FAD of the resampled examples' pooled statistics (outputs and targets of the same
    examples); the interval holds the point value; identical outputs give [0, 0]; a shifted system's interval
    lies above an unshifted one's, and their paired bootstrap p is small, while two draws of one distribution
    are not told apart."""
    from imgen_jax.eval.metrics.fad import compute

    rng = np.random.default_rng(2)
    n, d = 24, 3
    tgt = _clip_stats(rng, n, d)
    same = _clip_stats(rng, n, d)
    same2 = _clip_stats(rng, n, d)
    shifted = _clip_stats(rng, n, d, shift=0.8)
    idx = stats.resample_indices(n, 200, 0)
    rs = stats.SetResampler(shifted, tgt, compute)
    reps = rs.replicates(idx)
    b = 5
    ref = fad(GaussianStats.pool([shifted[i] for i in idx[b]]), GaussianStats.pool([tgt[i] for i in idx[b]]))
    assert reps[b] == pytest.approx(ref, rel=1e-9)
    lo, hi = stats.percentile_interval(reps)
    assert lo <= compute(shifted, tgt) <= hi
    assert np.all(stats.SetResampler(tgt, tgt, compute).replicates(idx) < 1e-9)
    base = stats.SetResampler(same, tgt, compute).replicates(idx)
    assert stats.percentile_interval(base)[1] < lo
    assert stats.paired_bootstrap_p(reps - base) == pytest.approx(2 / 201)
    p_same = stats.paired_bootstrap_p(stats.SetResampler(same2, tgt, compute).replicates(idx) - base)
    assert p_same > 0.05


def test_paired_bootstrap_p_and_holm():
    assert stats.paired_bootstrap_p(np.array([1.0, 2.0, 3.0])) == pytest.approx(2 / 4)
    assert stats.paired_bootstrap_p(np.arange(1.0, 100.0)) == pytest.approx(2 / 100)
    d = np.r_[-np.ones(10), np.ones(90)]
    assert stats.paired_bootstrap_p(d) == pytest.approx(2 * 11 / 101)
    assert stats.paired_bootstrap_p(np.array([-1.0, 1.0] * 50)) == 1.0
    assert math.isnan(stats.paired_bootstrap_p(np.array([np.nan])))
    h = stats.holm([0.01, 0.04, 0.03, float("nan"), 0.5])
    # 4 finite p: sorted 0.01, 0.03, 0.04, 0.5 -> 4 x 0.01, 3 x 0.03, max(0.09, 2 x 0.04), max(0.09, 0.5)
    assert h[:3] == pytest.approx([0.04, 0.09, 0.09]) and math.isnan(h[3]) and h[4] == pytest.approx(0.5)


def test_table_stats():
    """TableStats on a hand-made run: intervals for every cell, one test per (model, baseline, metric) with the
    Wilcoxon p of scipy on the common examples only (a skipped example drops out of its pairs)."""
    from imgen_jax.eval.metrics.fad import compute

    rng = np.random.default_rng(3)
    ids = [f"e{i}" for i in range(10)]
    score = {"model": rng.normal(1.0, 1, 10), "identity": rng.normal(0.0, 1, 10), "oracle": rng.normal(5.0, 1, 10)}
    per_example = {s: {i: {"m": float(v)} for i, v in zip(ids, vals)} for s, vals in score.items()}
    del per_example["model"]["e3"]  # skipped
    clips = {s: dict(zip(ids, _clip_stats(rng, 10, 2, shift))) for s, shift in
             (("model", 0.5), ("identity", 1.5), ("oracle", 0.0), ("targets", 0.0))}
    ts = stats.TableStats(per_example, ["m"], [("fad_x", compute, clips)], ["model"], resamples=100)
    rows = [{"system": s} for s in ("model", "identity", "oracle")]
    ts.intervals(rows)
    for r in rows:
        vals = [v["m"] for v in per_example[r["system"]].values()]
        assert r["m_lo"] <= np.mean(vals) <= r["m_hi"]
        assert r["fad_x_lo"] <= r["fad_x_hi"]
    tests = ts.tests(["model", "identity", "oracle"])
    assert [(t["baseline"], t["metric"]) for t in tests] == [("identity", "m"), ("identity", "fad_x"),
                                                             ("oracle", "m"), ("oracle", "fad_x")]
    keep = [i for i in ids if i != "e3"]
    w = tests[0]
    ref = scipy.stats.wilcoxon([per_example["model"][i]["m"] for i in keep], [per_example["identity"][i]["m"] for i in keep])
    assert w["n"] == 9 and w["p"] == pytest.approx(float(ref.pvalue)) and w["test"] == "wilcoxon-exact"
    assert w["diff"] == pytest.approx(np.mean([per_example["model"][i]["m"] - per_example["identity"][i]["m"] for i in keep]))
    assert w["diff_lo"] <= w["diff"] <= w["diff_hi"]
    f = tests[1]
    assert f["test"] == "paired-bootstrap" and f["n"] == 10 and f["diff"] < 0 and 0 < f["p"] <= 1
    assert f["model_value"] == pytest.approx(compute(list(clips["model"].values()), list(clips["targets"].values())))
    assert all(t["p_holm"] >= t["p"] for t in tests)
    again = stats.TableStats(per_example, ["m"], [("fad_x", compute, clips)], ["model"], resamples=100)
    assert repr(again.tests(["model", "identity", "oracle"])) == repr(tests)  # (repr: NaN == NaN) fixed seed: the same table every time
