"""`imgen eval` end to end on a tiny converted Instruct-MusicGen and a small Slakh-layout dataset.

The model: a transformers MusicGen with random weights plus random adapters, converted with
`imgen convert --adapters` (as tests/test_cli.py). The data: the session's rendered mini-Slakh
(`mini_slakh_root`, tests/conftest.py), resampled to the tiny codec's 800 Hz. Checks: the table files and rows, the oracle's scores are the best
possible on every metric, identity's SI-SDRi is 0, a second run recomputes nothing, a corrupt
output is reported and left out of its row, plug-in CLAP / classifier metrics, one-line errors.
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
            "--stride-frames", "60", "--no-progress"]
    assert imgen(argv) == 0
    return out, argv


def _opts(**kw):
    base = dict(task="remove", n=N, batch=2, clip_seconds=CLIP, window_frames=120, stride_frames=60)
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
    assert csv_lines[0].split(",") == ["system", "n", "skipped", *doc["metrics"]] and len(csv_lines) == 4
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


def test_resume_recomputes_nothing_and_corrupt_output_is_skipped(first_run, model_dir, data_dir, monkeypatch):
    out, _ = first_run
    model_wavs = sorted((out / "model").iterdir())
    mtimes = {p.name: p.stat().st_mtime_ns for p in model_wavs}
    lines = len((out / "results.jsonl").read_text().splitlines())
    import imgen_jax.edit

    def refuse(*a, **k):
        raise AssertionError("the model was loaded on a finished evaluation")

    monkeypatch.setattr(imgen_jax.edit.Editor, "load", classmethod(refuse))
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
    assert res.metrics == ["si_sdr", "si_sdri", "ssim", "mel_l1", "clap", "kl", "fad_logmel"]
    rows = {r["system"]: r for r in res.rows}
    assert rows["oracle"]["kl"] == pytest.approx(0.0, abs=1e-12) and rows["model"]["kl"] > 0
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
    err(good + base + ["--task", "add", "--n", "2", "--embedder", "vggish"], "unknown embedder 'vggish'")
    err(good + base + ["--task", "add", "--n", "2", "--split", "nosuchsplit"])
    assert not os.path.exists(tmp_path / "o" / "model")
