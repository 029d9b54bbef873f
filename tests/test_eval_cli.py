"""`imgen eval` end to end on a tiny converted Instruct-MusicGen and a small Slakh-layout dataset.

The model: a transformers MusicGen with random weights plus random adapters, converted with
`imgen convert --adapters` (as tests/test_cli.py). The data: the session's rendered mini-Slakh
(`mini_slakh_root`, tests/conftest.py), resampled to the tiny codec's 800 Hz. Checks: the table files and rows, the oracle's scores are the best
possible on every metric, identity's SI-SDRi is 0, a second run recomputes nothing, a corrupt
output is reported and left out of its row, plug-in CLAP / classifier metrics, one-line errors.
The paper's networks: --vggish / --cnn14 with Flax VGGish / Cnn14 of the real shapes and random
weights (files written in the converters' format), each column checked against a direct computation;
--clap / --demucs wired through test-only stand-ins of imgen_jax.eval.nets.clap / htdemucs (their
interfaces), with the htdemucs baseline row.
"""

import json
import os
import shutil

import numpy as np
import pytest

from imgen_jax.cli import main as imgen
from imgen_jax.eval.runner import EvalOptions, run_eval

N, CLIP = 4, 1.0


@pytest.fixture(scope="module")
def model_dir(tiny_model_dirs):
    return tiny_model_dirs[0]


@pytest.fixture(scope="module")
def data_dir(mini_slakh_root):
    return str(mini_slakh_root)


@pytest.fixture(scope="module")
def first_run(model_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("evalout") / "remove"
    argv = ["eval", "--model", str(model_dir / "instruct"), "--data", data_dir, "--task", "remove", "--n", str(N),
            "--batch", "2", "--out", str(out), "--clip-seconds", str(CLIP), "--window-frames", "120",
            "--stride-frames", "60", "--no-progress", "--resamples", "200"]
    assert imgen(argv) == 0
    return out, argv


def _opts(**kw):
    base = dict(task="remove", n=N, batch=2, clip_seconds=CLIP, window_frames=120, stride_frames=60, resamples=200)
    base.update(kw)
    return EvalOptions(**base)


def test_table_written_and_oracle_best(first_run):
    out, _ = first_run
    for name in ("table.csv", "table.json", "table.png", "manifest.json", "results.jsonl"):
        assert (out / name).stat().st_size > 0, name
    doc = json.loads((out / "table.json").read_text())
    rows = {r["system"]: r for r in doc["rows"]}
    assert list(rows) == ["model", "identity", "oracle"]
    assert doc["metrics"] == ["si_sdr", "si_sdri", "ssim", "mel_l1", "fad_encodec", "fad_logmel"]
    assert all(r["n"] == N and r["skipped"] == 0 for r in rows.values())
    csv_lines = (out / "table.csv").read_text().strip().splitlines()
    with_ci = [c for m in doc["metrics"] for c in (m, f"{m}_lo", f"{m}_hi")]
    assert csv_lines[0].split(",") == ["system", "n", "skipped", *with_ci] and len(csv_lines) == 4
    ids = [e["id"] for e in json.loads((out / "manifest.json").read_text())["examples"]]
    assert len(ids) == N
    for d in ("inputs", "targets", "model", "identity", "oracle"):
        assert sorted(os.listdir(out / d)) == sorted(f"{i}.wav" for i in ids)

    o, m, i = rows["oracle"], rows["model"], rows["identity"]
    assert o["si_sdr"] > 60 and o["ssim"] == pytest.approx(1.0, abs=1e-9) and o["mel_l1"] == 0.0
    assert o["fad_encodec"] < 1e-6 and o["fad_logmel"] < 1e-6
    assert i["si_sdri"] == pytest.approx(0.0, abs=1e-9)
    for metric in doc["metrics"]:
        better = max if doc["higher_is_better"][metric] else min
        assert better(r[metric] for r in rows.values()) == o[metric], metric
        assert o[metric] != m[metric] and o[metric] != i[metric], metric  # strictly best: the metric can tell
    # the per-example lines average to the table
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    model_ssim = [r["metrics"]["ssim"] for r in recs if r["system"] == "model"]
    assert len(model_ssim) == N and np.mean(model_ssim) == pytest.approx(m["ssim"], rel=1e-12)
    _check_statistics(out, doc, recs)


def _check_statistics(out, doc, recs):
    """The intervals hold their means (oracle's FAD: exactly [0, 0]); tests.csv / table.json "tests" carry one paired
    test per (baseline, metric) with scipy's Wilcoxon p on the per-example lines; the text table shows the intervals."""
    import csv

    import scipy.stats

    rows = {r["system"]: r for r in doc["rows"]}
    for r in rows.values():
        for metric in doc["metrics"]:
            assert r[f"{metric}_lo"] - 1e-9 <= r[metric] <= r[f"{metric}_hi"] + 1e-9, (r["system"], metric)
    assert rows["oracle"]["fad_logmel_lo"] < 1e-6 and rows["oracle"]["fad_logmel_hi"] < 1e-6
    assert doc["statistics"]["resamples"] == 200
    with open(out / "tests.csv") as f:
        table = list(csv.DictReader(f))
    assert [(t["baseline"], t["metric"]) for t in table] == [(b, m) for b in ("identity", "oracle") for m in doc["metrics"]]
    assert [t["metric"] for t in doc["tests"]] == [t["metric"] for t in table]
    per = {(r["system"], r["id"]): r["metrics"] for r in recs}
    ids = sorted({i for _, i in per})
    for t in doc["tests"]:
        if t["test"].startswith("wilcoxon"):
            ref = scipy.stats.wilcoxon([per["model", i][t["metric"]] for i in ids],
                                       [per[t["baseline"], i][t["metric"]] for i in ids])
            assert t["p"] == pytest.approx(float(ref.pvalue)) and t["n"] == len(ids)
        else:
            assert t["test"] == "paired-bootstrap" and 2 / 201 <= t["p"] <= 1
            if t["baseline"] == "oracle":  # FAD 0 on every resample: the model is worse on all of them
                assert t["p"] == pytest.approx(2 / 201) and t["diff_lo"] > 0


def test_resume_recomputes_nothing_and_corrupt_output_is_skipped(first_run, model_dir, data_dir, monkeypatch):
    out, _ = first_run
    model_wavs = sorted((out / "model").iterdir())
    mtimes = {p.name: p.stat().st_mtime_ns for p in model_wavs}
    lines = len((out / "results.jsonl").read_text().splitlines())
    import imgen_jax.instruct.edit

    def refuse(*a, **k):
        raise AssertionError("the model was loaded on a finished evaluation")

    monkeypatch.setattr(imgen_jax.instruct.edit.Editor, "load", classmethod(refuse))
    res = run_eval(str(model_dir / "instruct"), data_dir, str(out), _opts(), progress=False)
    assert res.edited == 0 and res.scored == 0 and not res.skipped
    assert {p.name: p.stat().st_mtime_ns for p in model_wavs} == mtimes
    assert len((out / "results.jsonl").read_text().splitlines()) == lines
    before = {r["system"]: r for r in json.loads((out / "table.json").read_text())["rows"]}

    bad = model_wavs[0]
    bad.write_bytes(b"this is not a wav file" * 20)
    logged = []
    res = run_eval(str(model_dir / "instruct"), data_dir, str(out), _opts(), progress=False, log=logged.append)
    assert res.edited == 0 and res.scored == 0
    assert [(s, i) for s, i, _ in res.skipped] == [("model", bad.stem)] and "unreadable audio" in res.skipped[0][2]
    assert len(logged) == 1 and bad.name in logged[0]
    assert "unreadable audio" in (out / "eval.log").read_text()
    rows = {r["system"]: r for r in res.rows}
    assert rows["model"]["n"] == N - 1 and rows["model"]["skipped"] == 1
    assert rows["oracle"]["n"] == N and rows["identity"] == {**before["identity"]}
    assert rows["model"]["ssim"] != pytest.approx(before["model"]["ssim"], rel=1e-12)  # the bad one is not averaged
    assert res.table_text.splitlines()[2].split()[:3] == ["model", str(N - 1), "1"]

    # a replaced output is rescored (its size / mtime changed), the rest still not
    shutil.copyfile(out / "identity" / bad.name, bad)
    res = run_eval(str(model_dir / "instruct"), data_dir, str(out), _opts(), progress=False)
    assert res.edited == 0 and res.scored == 1 and not res.skipped
    # other settings in the same directory are refused
    from imgen_jax.errors import ImgenError

    with pytest.raises(ImgenError, match="other settings"):
        run_eval(str(model_dir / "instruct"), data_dir, str(out), _opts(seed=1), progress=False)


class _Clap:
    """A CLAP-like plug-in: audio -> [rms, 1], text -> [len(text) / 10, 1]."""

    sample_rate = 8000

    def embed_audio(self, wavs):
        return np.stack([[float(np.sqrt(np.mean(np.square(w)))), 1.0] for w in wavs])

    def embed_text(self, texts):
        return np.stack([[len(t) / 10.0, 1.0] for t in texts])


class _Cls:
    """A classifier plug-in: logits = energies of 4 sample blocks."""

    sample_rate = 4000

    def __call__(self, wavs):
        return np.stack([[float(np.mean(np.square(b))) * 50 for b in np.array_split(w, 4)] for w in wavs])


def make_clap(model_dir=None, arg=None):
    return _Clap()


def make_cls(model_dir=None, arg=None):
    return _Cls()


def test_plugin_metrics(first_run, model_dir, data_dir):
    out, _ = first_run
    res = run_eval(str(model_dir / "instruct"), data_dir, str(out),
                   _opts(embedders=("logmel",), clap=f"{__name__}:make_clap", classifier=f"{__name__}:make_cls"),
                   progress=False)
    assert res.edited == 0 and res.scored == 3 * N  # the new metrics need every example scored again
    assert res.metrics == ["si_sdr", "si_sdri", "ssim", "mel_l1", "clap", "kl_softmax", "kl_sigmoid", "fad_logmel"]
    rows = {r["system"]: r for r in res.rows}
    for kl in ("kl_softmax", "kl_sigmoid"):  # audioldm_eval's 1e-6 leaves identical logits slightly below 0
        assert rows["oracle"][kl] == pytest.approx(0.0, abs=1e-5) and rows["model"][kl] > 1e-3
    assert all(-1 <= r["clap"] <= 1 for r in res.rows)


def test_eval_errors(model_dir, data_dir, tmp_path, capsys):
    base = ["--data", data_dir, "--out", str(tmp_path / "o"), "--no-progress"]
    good = ["eval", "--model", str(model_dir / "instruct")]

    def err(argv, *needles):
        assert imgen(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines and lines[-1].startswith("error: "), lines
        for n in needles:
            assert n in lines[-1], lines[-1]

    err(good + base + ["--task", "transpose", "--n", "2"], "--task must be one of add, remove, extract")
    err(good + base + ["--task", "add", "--n", "0"], "--n must be a positive")
    err(good + base + ["--task", "add", "--n", "2", "--batch", "0"], "--batch")
    err(["eval", "--model", str(tmp_path / "nope")] + base + ["--task", "add", "--n", "2"], "model directory not found")
    err(["eval", "--model", str(model_dir / "plain")] + base + ["--task", "add", "--n", "2"], "no Instruct-MusicGen adapters")
    err(good + ["--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "o"), "--task", "add", "--n", "2"],
        "data directory not found")
    err(good + base + ["--task", "add", "--n", "2", "--embedder", "nosuch"], "unknown embedder 'nosuch'")
    err(good + base + ["--task", "add", "--n", "2", "--vggish", "vggish-10086976.pth"],
        "vggish-10086976.pth: a PyTorch checkpoint; convert it first with `python -m convert.vggish_weights")
    err(good + base + ["--task", "add", "--n", "2", "--cnn14", "a.safetensors", "--classifier", "m:f"],
        "give --cnn14 or --classifier, not both")
    err(good + base + ["--task", "add", "--n", "2", "--demucs", str(tmp_path / "absent.safetensors")],
        "absent.safetensors: --demucs weights file not found")
    err(good + base + ["--task", "add", "--n", "2", "--split", "nosuchsplit"])
    assert not os.path.exists(tmp_path / "o" / "model")


def test_a_metric_file_is_a_new_column(first_run, model_dir, data_dir, tmp_path, monkeypatch):
    """A metric is one file: a module in the metrics package that registers a Metric (here written to a folder
    added to the package's path) becomes a column of every table file, with its direction, its values per
    system and its order, without any change to the runner or the report; finished scores are redone for it."""
    import sys
    import textwrap

    from imgen_jax.eval import metrics

    folder = tmp_path / "more_metrics"
    folder.mkdir()
    (folder / "abs_err.py").write_text(textwrap.dedent('''
        import numpy as np

        from imgen_jax.eval.metrics import Metric, register

        def compute(out, ex, ctx):
            return float(np.mean(np.abs(out.wav - ex.target.wav)))

        METRIC = register(Metric("abs_err", higher_is_better=False, compute=compute, order=45))
    '''))
    monkeypatch.setattr(metrics, "__path__", [*metrics.__path__, str(folder)])
    monkeypatch.delitem(sys.modules, "imgen_jax.eval.metrics.abs_err", raising=False)
    metrics._discover()
    try:
        out, _ = first_run
        res = run_eval(str(model_dir / "instruct"), data_dir, str(out), _opts(embedders=("logmel",)), progress=False)
    finally:
        metrics.unregister("abs_err")
    assert res.edited == 0 and res.scored == 3 * N
    assert res.metrics == ["si_sdr", "si_sdri", "ssim", "mel_l1", "abs_err", "fad_logmel"]
    doc = json.loads((out / "table.json").read_text())
    assert doc["metrics"] == res.metrics and doc["higher_is_better"]["abs_err"] is False
    rows = {r["system"]: r for r in doc["rows"]}
    assert rows["oracle"]["abs_err"] == 0.0 and rows["identity"]["abs_err"] > 0 and rows["model"]["abs_err"] > 0
    assert (out / "table.csv").read_text().splitlines()[0].split(",")[3::3] == res.metrics
    assert "abs_err ↓" in res.table_text.splitlines()[0]
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sum("abs_err" in r["metrics"] for r in recs) == 3 * N
    assert "abs_err" not in [m.name for m in metrics.registered()]


def test_eval_on_musdb_and_stems_folders(model_dir, tmp_path, capsys):
    """`imgen eval --data` on a tiny synthetic MUSDB18-HQ layout (detected, then named with --layout) and on a
    folder of stems: the examples come from the test tracks' Drums / Bass (4_stems), the table has its
    intervals (--resamples) or none (--no-stats: no tests.csv either)."""
    from data_fixtures import write_musdb_track, write_stem_files

    musdb = tmp_path / "musdb"
    for k, name in enumerate(["A - One", "B - Two"]):
        write_musdb_track(str(musdb), "test", name, seconds=2.0, sr=8000, index=k)
    write_musdb_track(str(musdb), "train", "C - Three", seconds=2.0, sr=8000, index=2)
    common = ["--task", "extract", "--n", "2", "--batch", "2", "--clip-seconds", str(CLIP), "--window-frames", "120",
              "--stride-frames", "60", "--no-progress"]
    out = tmp_path / "eval-musdb"
    assert imgen(["eval", "--model", str(model_dir / "instruct"), "--data", str(musdb), "--out", str(out),
                  "--resamples", "50", *common]) == 0
    printed = capsys.readouterr().out
    assert "paired tests" in printed and str(out / "tests.csv") in printed
    examples = json.loads((out / "manifest.json").read_text())["examples"]
    assert [e["track"] for e in examples] == ["A - One", "B - Two"] and {e["stem"] for e in examples} <= {"Drums", "Bass"}
    doc = json.loads((out / "table.json").read_text())
    assert doc["statistics"]["resamples"] == 50 and all(r["n"] == 2 and "ssim_lo" in r for r in doc["rows"])
    assert len(doc["tests"]) == 2 * len(doc["metrics"])
    # the same run named explicitly resumes (same examples); a wrong layout is one clear error
    assert imgen(["eval", "--model", str(model_dir / "instruct"), "--data", str(musdb), "--out", str(out),
                  "--layout", "musdb", "--resamples", "50", *common]) == 0
    capsys.readouterr()
    assert imgen(["eval", "--model", str(model_dir / "instruct"), "--data", str(musdb), "--out", str(tmp_path / "x"),
                  "--layout", "moises", *common]) == 2
    assert "--layout must be auto or one of slakh, moisesdb, musdb, stems" in capsys.readouterr().err

    stems = tmp_path / "stems"
    for k in range(2):
        write_stem_files(str(stems / "test" / f"song{k}"), {"drums.wav": 0, "bass.flac": 1, "guitar_1.wav": 2,
                                                            "mix.wav": 0}, seconds=2.0, sr=8000, index=k)
    out = tmp_path / "eval-stems"
    assert imgen(["eval", "--model", str(model_dir / "instruct"), "--data", str(stems), "--out", str(out),
                  "--no-stats", *common]) == 0
    capsys.readouterr()
    doc = json.loads((out / "table.json").read_text())
    assert "tests" not in doc and "statistics" not in doc and not (out / "tests.csv").exists()
    assert all(r["n"] == 2 and "ssim_lo" not in r for r in doc["rows"])
    assert (out / "table.csv").read_text().splitlines()[0].split(",")[3:] == doc["metrics"]


def test_one_decoding_settings_type():
    """Evaluation edits, editor windows and training samples all carry the shared SamplingConfig: the eval
    seed is the edits' seed, windows are capped by the adapters, a changed sampling field reaches the
    manifest's settings (so a resumed run with other sampling is refused), and training samples read config.samples."""
    from imgen_jax import vocab
    from imgen_jax.instruct.edit import EditConfig
    from imgen_jax.errors import ImgenError
    from imgen_jax.generate import SamplingConfig
    from imgen_jax.train.config import base_config, samples_sampling

    opts = EvalOptions(task="add", n=1, seed=7, sampling=SamplingConfig.for_edit(top_k=9))
    cfg = opts.edit_config(max_window=100)
    assert isinstance(cfg, EditConfig) and cfg.sampling.top_k == 9 and cfg.sampling.seed == 7
    assert (cfg.window_frames, cfg.stride_frames) == (100, 100) and cfg.sampling.guidance_scale == vocab.GUIDANCE_SCALE
    assert EvalOptions(task="add", n=1).edit_settings() == {
        "guidance": vocab.GUIDANCE_SCALE, "top_k": vocab.EDIT_TOP_K, "window_frames": vocab.EVAL_WINDOW_FRAMES,
        "stride_frames": vocab.EVAL_STRIDE_FRAMES, "seed": 0}
    hot = EvalOptions(task="add", n=1, sampling=SamplingConfig.for_edit(temperature=1.5)).edit_settings()
    assert hot["temperature"] == 1.5
    assert EditConfig().sampling == SamplingConfig.for_edit() and EditConfig().sampling.top_k == vocab.EDIT_TOP_K
    with pytest.raises(ImgenError, match="SamplingConfig"):
        EditConfig(sampling={"top_k": 5})
    c = base_config()
    c.samples.top_k, c.samples.guidance = 17, 2.5
    s = samples_sampling(c)
    assert isinstance(s, SamplingConfig) and (s.top_k, s.guidance_scale) == (17, 2.5)


# ---- the paper's networks ---------------------------------------------------------------------


def _random_net(path, kind, cfg, abstract, seed):
    """A weights file of `kind` in the converters' format (imgen_jax.eval.nets.common.save_net) with random
    weights of the network's real shapes (He-scaled kernels, small biases)."""
    from imgen_jax.eval.nets.common import save_net
    from imgen_jax.weights import module_shapes

    rng = np.random.default_rng(seed)
    flat = {}
    for name, (shape, _) in module_shapes(abstract(cfg)).items():
        if len(shape) > 1:
            flat[name] = rng.standard_normal(shape, dtype=np.float32) * np.float32((2.0 / np.prod(shape[:-1])) ** 0.5)
        else:
            flat[name] = rng.uniform(0.5 if name.endswith("scale") else -0.1, 1.0 if name.endswith("scale") else 0.1,
                                     shape).astype(np.float32)
    save_net(path, kind, cfg, flat)
    return str(path)


@pytest.fixture(scope="module")
def paper_nets(tmp_path_factory):
    from imgen_jax.eval.nets.cnn14 import Cnn14Config, abstract_cnn14
    from imgen_jax.eval.nets.vggish import VGGishConfig, abstract_vggish

    d = tmp_path_factory.mktemp("paper_nets")
    return (_random_net(d / "vggish.safetensors", "vggish", VGGishConfig(), abstract_vggish, 1),
            _random_net(d / "cnn14.safetensors", "cnn14", Cnn14Config(), abstract_cnn14, 2))


def _clips(out, system, ids, sr):
    """(outputs cut / padded to their targets, targets) of a system, mono at sr."""
    from imgen_jax.audio import read_audio
    from imgen_jax.eval.scoring import fit

    tgts = [read_audio(str(out / "targets" / f"{i}.wav"), sr)[0] for i in ids]
    return [fit(read_audio(str(out / system / f"{i}.wav"), sr)[0], t.size) for i, t in zip(ids, tgts)], tgts


def test_vggish_fad_and_cnn14_kl(first_run, paper_nets):
    """--vggish / --cnn14: the columns fad_vggish, kl_softmax and kl_sigmoid (lower is better), each equal to the
    Flax network run directly on the 16 kHz outputs and targets (FAD: all patch embeddings of a set pooled)."""
    from imgen_jax.eval.fad import GaussianStats, fad
    from imgen_jax.eval.mel import resample
    from imgen_jax.eval.metrics.kl_sigmoid import kl_sigmoid
    from imgen_jax.eval.metrics.kl_softmax import kl_softmax
    from imgen_jax.eval.networks import Cnn14Classifier, VGGishEmbedder

    out, argv = first_run
    vggish, cnn14 = paper_nets
    assert imgen(argv + ["--embedder", "logmel", "--vggish", vggish, "--cnn14", cnn14]) == 0
    doc = json.loads((out / "table.json").read_text())
    assert doc["metrics"] == ["si_sdr", "si_sdri", "ssim", "mel_l1", "kl_softmax", "kl_sigmoid", "fad_logmel", "fad_vggish"]
    assert not any(doc["higher_is_better"][m] for m in ("kl_softmax", "kl_sigmoid", "fad_vggish"))
    rows = {r["system"]: r for r in doc["rows"]}
    assert list(rows) == ["model", "identity", "oracle"]
    ids = [e["id"] for e in json.loads((out / "manifest.json").read_text())["examples"]]
    sr = json.loads((out / "manifest.json").read_text())["settings"]["sample_rate"]
    emb, cls = VGGishEmbedder(vggish), Cnn14Classifier(cnn14)
    outs, tgts = _clips(out, "model", ids, sr)
    o16, t16 = [resample(w, sr, 16000) for w in outs], [resample(w, sr, 16000) for w in tgts]
    pooled = lambda clips: GaussianStats.pool(GaussianStats.of(e) for e in emb(clips))
    assert rows["model"]["fad_vggish"] == pytest.approx(fad(pooled(o16), pooled(t16)), rel=1e-9)
    lo, lt = cls(o16), cls(t16)
    assert lo.shape == (N, 527)
    assert rows["model"]["kl_softmax"] == pytest.approx(np.mean([kl_softmax(b, a) for a, b in zip(lo, lt)]), rel=1e-6)
    assert rows["model"]["kl_sigmoid"] == pytest.approx(np.mean([kl_sigmoid(b, a) for a, b in zip(lo, lt)]), rel=1e-6)
    o = rows["oracle"]
    assert o["fad_vggish"] < 1e-6 and abs(o["kl_softmax"]) < 1e-3 and rows["model"]["fad_vggish"] > 1e-3


def _fake_net_modules(monkeypatch, tmp_path):
    """Test-only stand-ins of imgen_jax.eval.nets.clap / htdemucs implementing their interfaces, and two dummy files."""
    import sys
    import types

    from test_eval_metrics import _Separator

    class Clap:
        name, sample_rate = "clap", 48000

        def embed_audio(self, wavs):
            assert all(np.ndim(w) == 1 for w in wavs)
            return np.stack([[float(np.sqrt(np.mean(np.square(w)))), float(np.mean(np.abs(np.diff(w)))), 0.1] for w in wavs])

        def embed_text(self, texts):
            return np.stack([[len(t) / 50.0, 0.01 * t.count("a"), 1.0] for t in texts])

    clap, demucs = types.ModuleType("imgen_jax.eval.nets.clap"), types.ModuleType("imgen_jax.eval.nets.htdemucs")
    clap.load_clap = lambda path: ("clap", str(path))
    clap.clap_scorer = lambda model: Clap()
    demucs.load_htdemucs = lambda path: ("htdemucs", str(path))
    demucs.htdemucs_separator = lambda model: _Separator()
    monkeypatch.setitem(sys.modules, "imgen_jax.eval.nets.clap", clap)
    monkeypatch.setitem(sys.modules, "imgen_jax.eval.nets.htdemucs", demucs)
    files = tmp_path / "clap.safetensors", tmp_path / "htdemucs.safetensors"
    for f in files:
        f.write_bytes(b"stand-in")
    return Clap(), _Separator(), [str(f) for f in files]


def test_clap_and_demucs_columns_and_baseline_row(first_run, tmp_path, monkeypatch):
    """--clap FILE / --demucs FILE: the clap and p_demucs columns equal their definitions on each output, and the
    htdemucs row's outputs are the separator's baseline of each input (remove: the mix minus the stem's source)."""
    from imgen_jax.audio import read_audio
    from imgen_jax.eval.mel import resample
    from imgen_jax.eval.metrics.clap import caption
    from imgen_jax.eval.scoring import Context, Clip
    from imgen_jax.eval.separation import baseline
    from imgen_jax.eval.metrics import p_demucs

    out, argv = first_run
    clap, sep, (clap_file, demucs_file) = _fake_net_modules(monkeypatch, tmp_path)
    assert imgen(argv + ["--embedder", "logmel", "--clap", clap_file, "--demucs", demucs_file]) == 0
    doc = json.loads((out / "table.json").read_text())
    assert doc["metrics"] == ["si_sdr", "si_sdri", "ssim", "mel_l1", "clap", "p_demucs", "fad_logmel"]
    assert doc["higher_is_better"]["clap"] and doc["higher_is_better"]["p_demucs"]
    rows = {r["system"]: r for r in doc["rows"]}
    assert list(rows) == ["model", "identity", "oracle", "htdemucs"] and rows["htdemucs"]["n"] == N
    man = json.loads((out / "manifest.json").read_text())
    sr, ids, stems = man["settings"]["sample_rate"], [e["id"] for e in man["examples"]], [e["stem"] for e in man["examples"]]
    assert json.loads((out / "htdemucs" / "separator.json").read_text())["spec"] == f"htdemucs={demucs_file}"
    for i, stem in zip(ids, stems):
        inp = read_audio(str(out / "inputs" / f"{i}.wav"), sr)[0]
        got = read_audio(str(out / "htdemucs" / f"{i}.wav"), sr)[0]
        np.testing.assert_allclose(got, baseline(sep, "remove", stem, inp, sr), atol=2e-4)  # 16-bit wav
    ctx = Context("remove", sr, {"separator": sep})
    for system in ("model", "htdemucs"):
        outs, _ = _clips(out, system, ids, sr)
        want_clap = []
        for w, stem in zip(outs, stems):
            a = clap.embed_audio([resample(w, sr, 48000)])[0]
            t = clap.embed_text([caption("remove", stem)])[0]
            want_clap.append(a @ t / (np.linalg.norm(a) * np.linalg.norm(t)))
        assert rows[system]["clap"] == pytest.approx(np.mean(want_clap), rel=1e-9)
        want_p = np.mean([not p_demucs.present(sep, Clip(w, ctx), stem) for w, stem in zip(outs, stems)])
        assert rows[system]["p_demucs"] == pytest.approx(want_p, abs=1e-12)
    # the baseline row goes away without --demucs (its files stay for a later run)
    assert imgen(argv + ["--embedder", "logmel"]) == 0
    assert [r["system"] for r in json.loads((out / "table.json").read_text())["rows"]] == ["model", "identity", "oracle"]
