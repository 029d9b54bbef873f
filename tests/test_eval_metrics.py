"""The evaluation metrics against independent references on the same inputs.

- SI-SDR / SI-SDRi: torchmetrics' `scale_invariant_signal_distortion_ratio` (float32 tensors, as the
  official evaluation); tolerance 1e-3 dB (torchmetrics sums in float32, we in float64).
- SSIM: scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1.0)` and torchmetrics' `structural_similarity_index_measure`
  (the official code's; since v1.5 without the border crop: our border="reflect") on mel spectrograms;
  tolerance 1e-6 (float64 vs float64).
- Mel spectrogram / mel L1: a loop-per-frame numpy reference with an explicit DFT matrix and
  filters built band by band from the HTK formula; tolerance 1e-9 relative.
- Fréchet distance: closed forms for 1-D Gaussians, diagonal and commuting covariances, and the
  usual scipy.linalg.sqrtm formula for full random covariances; tolerance 1e-8 relative.
- KL (softmax, sigmoid): audioldm_eval 0.0.3's torch formulas (`kl_div((q + 1e-6).log(), p, "sum")`,
  float64); tolerance 1e-9.
- P-Demucs and the separation baseline: a test-only separator implementing the plug-in interface
  (the HTDemucs port lives in imgen_jax.eval.nets.htdemucs).
"""

import math
import os

import numpy as np
import pytest
import torch

from imgen_jax.eval.fad import GaussianStats, fad, frechet_distance
from imgen_jax.eval.mel import mel_filterbank, mel_l1, mel_spectrogram, resample
from imgen_jax.eval.plugins import load_plugin, register
from imgen_jax.eval.runner import kl_softmax
from imgen_jax.eval.sisdr import si_sdr, si_sdri
from imgen_jax.eval.ssim import ssim
from imgen_jax.errors import ImgenError


def _signals(seed=0, n=16000):
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal(n).astype(np.float32) * 0.3
    est = (0.7 * ref + 0.2 * rng.standard_normal(n)).astype(np.float32)
    inp = (ref + 0.5 * rng.standard_normal(n)).astype(np.float32)
    return est, inp, ref


def test_si_sdr_matches_torchmetrics():
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio as tm_sisdr

    for seed in range(3):
        est, inp, ref = _signals(seed)
        want = float(tm_sisdr(torch.from_numpy(est), torch.from_numpy(ref)))
        assert abs(float(si_sdr(est, ref)) - want) < 1e-3
        want_i = want - float(tm_sisdr(torch.from_numpy(inp), torch.from_numpy(ref)))
        assert abs(float(si_sdri(est, inp, ref)) - want_i) < 1e-3
    batch = np.stack([_signals(s)[0] for s in range(3)]), np.stack([_signals(s)[2] for s in range(3)])
    want = tm_sisdr(torch.from_numpy(batch[0]), torch.from_numpy(batch[1])).numpy()
    np.testing.assert_allclose(si_sdr(*batch), want, atol=1e-3)
    # scale invariance, and an exact copy scores very high but finite (eps as torchmetrics)
    est, _, ref = _signals(4)
    assert abs(float(si_sdr(3.0 * est, ref)) - float(si_sdr(est, ref))) < 1e-6
    perfect = float(si_sdr(ref, ref))
    assert math.isfinite(perfect) and perfect > 80
    assert abs(perfect - float(tm_sisdr(torch.from_numpy(ref), torch.from_numpy(ref)))) < 0.1
    with pytest.raises(ImgenError):
        si_sdr(est, ref[:-1])


def _mel_reference(wav, sr=16000, n_fft=400, hop=200, n_mels=128):
    """Frame by frame: reflect pad, periodic Hann, explicit DFT, |X|^2, HTK triangles built one by one."""
    x = np.pad(np.asarray(wav, np.float64), n_fft // 2, mode="reflect")
    frames = 1 + (len(x) - n_fft) // hop
    n = np.arange(n_fft)
    win = np.array([0.5 - 0.5 * math.cos(2 * math.pi * i / n_fft) for i in range(n_fft)])
    dft = np.exp(-2j * np.pi * np.outer(np.arange(n_fft // 2 + 1), n) / n_fft)
    power = np.empty((n_fft // 2 + 1, frames))
    for t in range(frames):
        seg = x[t * hop: t * hop + n_fft] * win
        power[:, t] = np.abs(dft @ seg) ** 2
    mel = lambda f: 2595 * math.log10(1 + f / 700)
    inv = lambda m: 700 * (10 ** (m / 2595) - 1)
    edges = [inv(mel(0) + (mel(sr / 2) - mel(0)) * k / (n_mels + 1)) for k in range(n_mels + 2)]
    freqs = np.linspace(0, sr // 2, n_fft // 2 + 1)
    fb = np.zeros((n_mels, n_fft // 2 + 1))
    for b in range(n_mels):
        lo, mid, hi = edges[b], edges[b + 1], edges[b + 2]
        for j, f in enumerate(freqs):
            if lo < f <= mid:
                fb[b, j] = (f - lo) / (mid - lo)
            elif mid < f < hi:
                fb[b, j] = (hi - f) / (hi - mid)
    return fb @ power


def test_mel_and_mel_l1_match_numpy_reference():
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    other = (0.3 * np.sin(2 * np.pi * 660 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    ref_a, ref_b = _mel_reference(wav), _mel_reference(other)
    got_a, got_b = mel_spectrogram(wav), mel_spectrogram(other)
    assert got_a.shape == (128, 1 + 8000 // 200)
    np.testing.assert_allclose(got_a, ref_a, rtol=1e-9, atol=1e-9 * ref_a.max())
    want_l1 = np.mean(np.abs(np.log(ref_a + 1e-5) - np.log(ref_b + 1e-5)))
    assert abs(mel_l1(got_a, got_b) - want_l1) < 1e-9 * want_l1
    assert mel_l1(got_a, got_a) == 0.0
    fb = mel_filterbank()
    assert fb.shape == (201, 128) and (fb.sum(0) == 0).any()  # empty low bands, as torchaudio's


def test_ssim_matches_skimage_and_torchmetrics():
    from skimage.metrics import structural_similarity
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    rng = np.random.default_rng(1)
    t = np.arange(16000) / 16000
    a = mel_spectrogram((0.3 * np.sin(2 * np.pi * 330 * t) + 0.1 * rng.standard_normal(t.size)))
    b = mel_spectrogram((0.25 * np.sin(2 * np.pi * 330 * t) + 0.15 * rng.standard_normal(t.size)))
    got = ssim(a, b, data_range=1.0)
    want = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    assert abs(got - want) < 1e-6
    # torchmetrics >= 1.5 averages the whole reflect-padded map (before: the valid part, as skimage)
    tm = float(tm_ssim(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None], data_range=1.0))
    assert abs(ssim(a, b, data_range=1.0, border="reflect") - tm) < 1e-6 and abs(got - tm) > 1e-5
    # images in [0, 1] (SSIM's usual range) and an identical pair
    x, y = rng.random((40, 60)), rng.random((40, 60))
    want = structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    assert abs(ssim(x, y) - want) < 1e-6
    assert abs(ssim(x, x) - 1.0) < 1e-12
    with pytest.raises(ImgenError, match="smaller than"):
        ssim(x[:5], y[:5])


def test_frechet_distance_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert abs(frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) - (4.0 + 1.0)) < 1e-12
    # diagonal: |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    m1, m2 = rng.standard_normal(6), rng.standard_normal(6)
    want = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert abs(frechet_distance(m1, np.diag(a), m2, np.diag(b)) - want) < 1e-10 * want
    # commuting (same eigenvectors Q): the same closed form in the rotated basis
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    got = frechet_distance(m1, q @ np.diag(a) @ q.T, m2, q @ np.diag(b) @ q.T)
    assert abs(got - want) < 1e-8 * want
    # full random covariances: the scipy.linalg.sqrtm formula (pytorch-fid / frechet_audio_distance)
    from scipy import linalg

    x, y = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    s1, s2 = x @ x.T + 0.1 * np.eye(6), y @ y.T + 0.1 * np.eye(6)
    covmean = linalg.sqrtm(s1 @ s2).real
    want = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert abs(frechet_distance(m1, s1, m2, s2) - want) < 1e-8 * want
    assert frechet_distance(m1, s1, m1, s1) < 1e-9
    # singular S1 (rank 3 of 6: fewer embeddings than dimensions): no Cholesky, the eigh path; same formula
    z = rng.standard_normal((6, 3))
    s1 = z @ z.T
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(s1)
    want = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert abs(frechet_distance(m1, s1, m2, s2) - want) < 1e-7 * want


def test_pooled_stats_equal_direct_fit():
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal((n, 5)) * [1, 2, 3, 4, 5] + 7 for n in (3, 10, 1, 6)]
    pooled = GaussianStats.pool(GaussianStats.of(p) for p in parts)
    allx = np.concatenate(parts)
    np.testing.assert_allclose(pooled.mean, allx.mean(0), rtol=1e-12)
    np.testing.assert_allclose(pooled.cov, np.cov(allx, rowvar=False), rtol=1e-10)
    other = GaussianStats.of(rng.standard_normal((40, 5)))
    want = frechet_distance(allx.mean(0), np.cov(allx, rowvar=False), other.mean, other.cov)
    assert abs(fad(pooled, other) - want) < 1e-9 * want
    assert fad(pooled, pooled) < 1e-9


def test_kl_softmax_and_sigmoid_match_audioldm_eval():
    from imgen_jax.eval.metrics.kl_sigmoid import kl_sigmoid

    a, b = np.array([1.0, 2.0, 0.5]), np.array([0.2, 2.5, 1.0])
    p, q = np.exp(a) / np.exp(a).sum(), np.exp(b) / np.exp(b).sum()
    assert abs(kl_softmax(a, b, eps=0) - float(np.sum(p * np.log(p / q)))) < 1e-12
    assert abs(kl_softmax(a, a, eps=0)) < 1e-15 and kl_softmax(a, a) < 0  # the 1e-6 makes identical logits negative
    # audioldm_eval's calculate_kl for one (output, target) pair: features_1 = output logits, features_2 = target's
    rng = np.random.default_rng(0)
    for _ in range(3):
        tgt, out = rng.standard_normal(527) * 3, rng.standard_normal(527) * 3
        t, o = torch.tensor(tgt[None]), torch.tensor(out[None])
        want_soft = float(torch.nn.functional.kl_div((o.softmax(dim=1) + 1e-6).log(), t.softmax(dim=1), reduction="sum"))
        want_sig = float(torch.nn.functional.kl_div((o.sigmoid() + 1e-6).log(), t.sigmoid(), reduction="sum"))
        assert abs(kl_softmax(tgt, out) - want_soft) < 1e-9 and abs(kl_sigmoid(tgt, out) - want_sig) < 1e-9
    assert abs(kl_sigmoid(a, a, eps=0)) < 1e-15
    with pytest.raises(ImgenError, match="differ"):
        kl_sigmoid(a, b[:2])


def test_resample_keeps_a_tone():
    t = np.arange(3200) / 32000
    x = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    y = resample(x, 32000, 16000)
    ref = np.sin(2 * np.pi * 1000 * np.arange(1600) / 16000)
    assert y.shape == (1600,) and np.max(np.abs(y[100:-100] - ref[100:-100])) < 1e-2


class _Peak:
    """A plug-in embedder: per-frame [peak, rms] of 100-sample frames at 8 kHz."""

    sample_rate = 8000

    def __init__(self, arg):
        self.name = f"peak{arg or ''}"

    def __call__(self, wavs):
        return [np.stack([np.abs(w[: w.size // 100 * 100].reshape(-1, 100)).max(1),
                          np.sqrt((w[: w.size // 100 * 100].reshape(-1, 100) ** 2).mean(1))], 1) for w in wavs]


def make_peak(model_dir=None, arg=None):
    return _Peak(arg)


def test_plugins(tmp_path):
    emb = load_plugin("embedder", "logmel")
    assert emb.sample_rate == 16000 and emb([np.zeros(1600, np.float32)])[0].shape == (9, 128)
    e = load_plugin("embedder", f"{__name__}:make_peak=2")
    assert e.name == "peak2" and e([np.ones(800, np.float32)])[0].shape == (8, 2)
    f = tmp_path / "plug.py"
    f.write_text("class C:\n    sample_rate = 100\n    def __call__(self, wavs):\n        return [w[:, None] for w in wavs]\n"
                 "def make(model_dir=None, arg=None):\n    return C()\n")
    assert load_plugin("embedder", f"{f}:make").name == "make"
    register("classifier", "const", lambda model_dir=None, arg=None: type("K", (), {"sample_rate": 1, "__call__": lambda s, w: np.zeros((len(w), 3))})())
    assert load_plugin("classifier", "const").sample_rate == 1
    with pytest.raises(ImgenError, match="unknown embedder"):
        load_plugin("embedder", "nosuch")
    with pytest.raises(ImgenError, match="--vggish needs the path of a converted weights file"):
        load_plugin("embedder", "vggish")
    with pytest.raises(ImgenError, match="cannot import"):
        load_plugin("embedder", "no_such_module_xyz:make")
    with pytest.raises(ImgenError, match="lacks embed_audio"):
        load_plugin("clap", f"{__name__}:make_peak")


def test_eval_runtime_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, imgen_jax.cli, imgen_jax.eval.runner, imgen_jax.eval.embedders, imgen_jax.eval.report, "
            "imgen_jax.eval.networks, imgen_jax.eval.separation; "
            "imgen_jax.cli.build_parser(); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_metric_registry():
    """Every file of imgen_jax/eval/metrics registers its metric; directions, units, task / plug-in filters
    and column order are the registry's; a second metric of the same name is refused."""
    import pkgutil

    from imgen_jax.eval import metrics, report

    files = sorted(i.name for i in pkgutil.iter_modules(metrics.__path__) if not i.name.startswith("_"))
    assert files == sorted(m.name for m in metrics.registered())
    assert [m.name for m in metrics.for_run("remove", {}, "example")] == ["si_sdr", "si_sdri", "ssim", "mel_l1"]
    assert [m.name for m in metrics.for_run("add", {"clap": object(), "classifier": None}, "example")] == [
        "ssim", "mel_l1", "clap"]
    assert [m.name for m in metrics.for_run("add", {}, "set")] == ["fad"]
    assert [m.name for m in metrics.for_run("extract", {"classifier": object(), "separator": object()}, "example")] == [
        "si_sdr", "si_sdri", "ssim", "mel_l1", "kl_softmax", "kl_sigmoid", "p_demucs"]
    want = {"si_sdr": True, "si_sdri": True, "ssim": True, "clap": True, "mel_l1": False, "kl_softmax": False,
            "kl_sigmoid": False, "p_demucs": True, "fad_encodec": False, "fad_vggish": False}
    assert {c: report.higher_is_better(c) for c in want} == want
    assert metrics.unit("si_sdri") == "dB" and metrics.unit("ssim") == "" and metrics.lookup("nope") is None
    with pytest.raises(ImgenError, match="already registered"):
        metrics.register(metrics.Metric("ssim", higher_is_better=False, compute=lambda o, e, c: 0.0))
    with pytest.raises(ImgenError, match="kind"):
        metrics.Metric("x", higher_is_better=True, compute=lambda o, e, c: 0.0, kind="pooled")


def test_batched_runs_fixed_batches_in_order():
    """Batched groups clips by length, pads each group's last batch with silent rows and keeps the order."""
    from imgen_jax.eval.networks import Batched

    shapes = []

    def fn(x):
        shapes.append(x.shape)
        return np.stack([x.sum(1), x[:, 0]], 1)

    rng = np.random.default_rng(0)
    wavs = [rng.standard_normal(n).astype(np.float32) for n in (5, 7, 5, 5, 7, 5, 5)]
    got = Batched(fn, batch=3)(wavs)
    assert sorted(shapes) == [(3, 5), (3, 5), (3, 7)]
    for w, g in zip(wavs, got):
        np.testing.assert_allclose(g, [w.sum(), w[0]], rtol=1e-6, atol=1e-6)  # float32 sums
    assert Batched(fn, batch=3)([]) == []


class _Separator:
    """A test-only separator of the plug-in interface: drums = 0.5 mix, bass = 0.3 mix, other = 0.2 mix, vocals silent."""

    name, sample_rate, channels, sources = "fake", 44100, 2, ("drums", "bass", "other", "vocals")
    gains = (0.5, 0.3, 0.2, 0.0)

    def __init__(self):
        self.calls = 0

    def separate(self, mix):
        self.calls += 1
        assert mix.shape[0] == self.channels and np.array_equal(mix[0], mix[1])
        return np.stack([g * mix for g in self.gains])


def test_p_demucs_and_separation_baseline():
    """P-Demucs: success = the target stem's source present (add / extract) or absent (remove) above -40 dBFS RMS;
    stems map to sources (Piano -> other, Vocals -> vocals); the baseline extracts the source or removes it."""
    from imgen_jax.eval.metrics.p_demucs import THRESHOLD_DB
    from imgen_jax.eval.scoring import Scorer
    from imgen_jax.eval.separation import baseline, rms_db, source_for

    sep = _Separator()
    assert source_for("Piano", sep.sources) == "other" and source_for("Drums", sep.sources) == "drums"
    assert source_for("Vocals", sep.sources) == "vocals"
    assert rms_db(np.full(10, 0.01)) == pytest.approx(-40.0) and THRESHOLD_DB == -40.0
    sr = 8000
    t = np.arange(sr) / sr
    loud = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    quiet = (loud * 10 ** (-45 / 20) / 0.2).astype(np.float32)  # its "other" source: -45 - 3 dB RMS, below the threshold
    for task, stem, est, want in (("remove", "Piano", quiet, 1.0), ("remove", "Piano", loud, 0.0),
                                  ("extract", "Piano", loud, 1.0), ("extract", "Vocals", loud, 0.0),
                                  ("add", "Drums", loud, 1.0), ("remove", "Vocals", loud, 1.0)):
        sc = Scorer(task, sr, {}, separator=sep)
        assert "p_demucs" in sc.metric_names()
        got = sc.score(est, sc.example(loud, loud, stem))["p_demucs"]
        assert got == want, (task, stem, want)
    mix = loud
    ext = baseline(sep, "extract", "Bass", mix, sr)
    rem = baseline(sep, "remove", "Bass", mix, sr)
    assert ext.shape == rem.shape == mix.shape
    np.testing.assert_allclose(ext[200:-200], 0.3 * mix[200:-200], atol=2e-3)  # resampled there and back
    np.testing.assert_allclose(rem + ext, mix, atol=1e-6)  # remove = the mix minus the stem, the rest untouched
    with pytest.raises(ImgenError, match="extract and remove"):
        baseline(sep, "add", "Bass", mix, sr)


def test_network_plugin_specs(tmp_path, monkeypatch):
    """NAME=FILE specs of the paper's networks: a PyTorch checkpoint or a missing file is one clear error, and
    CLAP / HTDemucs say so when this build lacks their modules."""
    import sys

    with pytest.raises(ImgenError, match="convert it first with `python -m convert.vggish_weights"):
        load_plugin("embedder", "vggish=vggish-10086976.pth")
    with pytest.raises(ImgenError, match="nope.safetensors: --cnn14 weights file not found"):
        load_plugin("classifier", f"cnn14={tmp_path / 'nope.safetensors'}")
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"x")
    for mod, kind, spec in (("clap", "clap", "clap"), ("htdemucs", "separator", "htdemucs")):
        monkeypatch.setitem(sys.modules, f"imgen_jax.eval.nets.{mod}", None)
        with pytest.raises(ImgenError, match=f"needs imgen_jax.eval.nets.{mod}, which this build"):
            load_plugin(kind, f"{spec}={f}")
    with pytest.raises(ImgenError, match="lacks separate"):
        load_plugin("separator", f"{__name__}:make_peak")
