"""Instruction data: readers, triplet arithmetic, the built dataset, the grain pipeline, bad inputs.

Synthetic datasets (tests/data_fixtures.py: tones with known stems, Slakh and MoisesDB layouts)
check the arithmetic exactly; the rendered mini-Slakh (`mini_slakh_root`) checks the real path.
Tolerances: float32 sums of stems agree to 1e-6; a built dataset stores int16, so it agrees with
the files to 2e-4 (a few quantisation steps of 1/32768, times the volume normalisation).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from data_fixtures import write_moisesdb_song, write_musdb_track, write_slakh_track, write_stem_files
from imgen_jax.data import (
    BuildReport, TripletConfig, TripletSource, make_eval_set, make_triplet_loader, read_moisesdb, read_slakh,
)
from imgen_jax.data.build import build_dataset
from imgen_jax.data.sources import FileSource
from imgen_jax.errors import ImgenError

CLASSES = ["Drums", "Bass", "Piano", "Guitar", "Strings"]
CFG = TripletConfig(clip_seconds=1.0)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synth"))
    for i in range(4):
        write_slakh_track(root, "train", f"Track{i + 1:05d}", CLASSES, index=i)
    write_slakh_track(root, "validation", "Track00005", ["Drums", "Bass", "Piano"], index=5)
    write_slakh_track(root, "test", "Track00006", ["Drums", "Bass", "Piano", "Guitar"], index=6)
    write_slakh_track(root, "test", "Track00007", ["Drums", "Drums", "Bass"], index=7)  # two stems of one class
    return root


@pytest.fixture(scope="module")
def built(synth, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("built") / "ds")
    build_dataset(synth, out, chunk_seconds=0.7, progress=False)  # 1 s clips span 2-3 chunks
    return out


def _class_sum(src, t, tr, classes):
    info = src.source.infos[src.usable[t]]
    idx = [i for i, c in enumerate(info.classes) if c in classes]
    return src.source.read(src.usable[t], tr.offset, CFG.clip_samples, idx).sum(axis=0)


@pytest.mark.parametrize("task", ["add", "remove", "extract", "generate", "replace"])
def test_stem_arithmetic_and_text(synth, task):
    """output - input (add), input - output (remove), output (extract / generate) is the target stem, times the scale."""
    cfg = TripletConfig(tasks=(task,), clip_seconds=1.0, extra_tasks=task not in ("add", "remove", "extract"), stems="all")
    src = TripletSource(synth, "train", cfg)
    for i in range(6):
        t = i % len(src)
        tr = src.triplet(t, np.random.default_rng(i))
        info = src.source.infos[src.usable[t]]
        n_total = len(info.classes)
        target = _class_sum(src, t, tr, [tr.stem])
        inp = _class_sum(src, t, tr, tr.input_stems)
        out = _class_sum(src, t, tr, tr.output_stems)
        np.testing.assert_allclose(tr.input, inp * tr.scale, atol=1e-6)
        np.testing.assert_allclose(tr.target, out * tr.scale, atol=1e-6)
        if task == "add":
            np.testing.assert_allclose(tr.target - tr.input, target * tr.scale, atol=1e-6)
            assert tr.stem not in tr.input_stems and set(tr.output_stems) == set(tr.input_stems) | {tr.stem}
            assert tr.instruction == f"Music piece. Instruct: Add {tr.stem}."
            n = len(tr.output_stems)
        elif task == "remove":
            np.testing.assert_allclose(tr.input - tr.target, target * tr.scale, atol=1e-6)
            assert tr.stem not in tr.output_stems and tr.stem in tr.input_stems
            assert tr.instruction == f"Music piece. Instruct: No {tr.stem}."
            n = len(tr.input_stems)
        elif task == "extract":
            np.testing.assert_allclose(tr.target, target * tr.scale, atol=1e-6)
            assert tr.output_stems == (tr.stem,) and tr.stem in tr.input_stems and len(tr.input_stems) >= 2
            assert tr.instruction == f"Music piece. Instruct: Only {tr.stem}."
            n = len(tr.input_stems)
        elif task == "generate":
            np.testing.assert_allclose(tr.target, target * tr.scale, atol=1e-6)
            assert tr.stem not in tr.input_stems
            assert tr.instruction == f"Music piece. Instruct: Generate {tr.stem}."
            n = len(tr.input_stems)
        else:
            (old,) = set(tr.input_stems) - set(tr.output_stems)
            assert set(tr.output_stems) - set(tr.input_stems) == {tr.stem}
            assert tr.instruction == f"Music piece. Instruct: Replace {old} with {tr.stem}."
            n = max(len(tr.input_stems), len(tr.output_stems))
        # the official volume normalisation: N / n, then down to a joint peak of 1 if louder
        peak = max(np.abs(inp).max(), np.abs(out).max()) * n_total / n
        expected = n_total / n / max(1.0, peak)
        assert tr.scale == pytest.approx(expected, rel=1e-6)
        assert max(np.abs(tr.input).max(), np.abs(tr.target).max()) <= 1.0 + 1e-6
        assert tr.input.shape == tr.target.shape == (cfg.clip_samples,) and tr.input.dtype == np.float32


def test_four_stems_option_and_grouped_classes(synth):
    src = TripletSource(synth, "train", TripletConfig(clip_seconds=1.0))
    for i in range(20):
        tr = src.triplet(i % len(src), np.random.default_rng(i))
        assert set(tr.input_stems) | set(tr.output_stems) <= {"Drums", "Bass", "Piano", "Guitar"}
    # Track00007 has two Drums stems: a Drums mix holds both
    src = TripletSource(synth, "test", TripletConfig(tasks=("extract",), clip_seconds=1.0))
    t = [src.source.infos[u].name for u in src.usable].index("Track00007")
    for i in range(10):
        tr = src.triplet(t, np.random.default_rng(i))
        if tr.stem == "Drums":
            both = src.source.read(src.usable[t], tr.offset, CFG.clip_samples, [0, 1]).sum(axis=0)
            np.testing.assert_allclose(tr.target, both * tr.scale, atol=1e-6)
            return
    pytest.fail("no Drums extraction drawn in 10 tries")


def test_rejection_redraws_silent_targets(tmp_path):
    """A silent stem makes output - input mostly silent for add/remove: such clips are re-drawn."""
    write_slakh_track(tmp_path, "train", "Track00001", ["Drums", "Bass", "Piano"], silent=("Drums",))
    src = TripletSource(str(tmp_path), "train", TripletConfig(tasks=("add",), clip_seconds=1.0))
    trs = [src.triplet(0, np.random.default_rng(i)) for i in range(12)]
    assert all(tr.stem != "Drums" for tr in trs)
    assert any(tr.retries > 0 for tr in trs)
    # all silent: retries run out, the last draw is kept and says so
    write_slakh_track(tmp_path, "train", "Track00002", ["Drums", "Bass"], silent=("Drums", "Bass"))
    src = TripletSource(str(tmp_path), "train", TripletConfig(tasks=("add",), clip_seconds=1.0, max_retries=3))
    tr = src.triplet([src.source.infos[u].name for u in src.usable].index("Track00002"), np.random.default_rng(0))
    assert tr.retries == 4


def test_loader_deterministic_resumable_and_sharded(synth):
    def batches(it, n):
        return [next(it) for _ in range(n)]

    a = batches(make_triplet_loader(synth, "train", CFG, batch_size=3, seed=5), 4)
    b = batches(make_triplet_loader(synth, "train", CFG, batch_size=3, seed=5), 4)
    for x, y in zip(a, b):
        assert np.array_equal(x["input"], y["input"]) and x["instruction"] == y["instruction"]
    c = next(make_triplet_loader(synth, "train", CFG, batch_size=3, seed=6))
    assert not np.array_equal(c["input"], a[0]["input"])
    assert a[0]["input"].shape == (3, CFG.clip_samples) and len(a[0]["instruction"]) == 3
    # resume mid-stream from a saved state, in a fresh iterator
    it = make_triplet_loader(synth, "train", CFG, batch_size=3, seed=5)
    next(it)
    state = it.get_state()
    fresh = make_triplet_loader(synth, "train", CFG, batch_size=3, seed=5)
    fresh.set_state(state)
    for want in a[1:]:
        got = next(fresh)
        assert np.array_equal(got["target"], want["target"]) and got["task"] == want["task"]
    with pytest.raises(ImgenError, match="iterator state"):
        make_triplet_loader(synth, "train", CFG, batch_size=3, seed=7).set_state(state)
    # two hosts: host h gets elements h, h+2, ... of the unsharded stream
    flat = make_triplet_loader(synth, "train", CFG, batch_size=4, seed=5)
    whole = next(flat)
    for h in range(2):
        part = next(make_triplet_loader(synth, "train", CFG, batch_size=2, seed=5, shard_index=h, shard_count=2))
        assert np.array_equal(part["input"], whole["input"][h::2]) and part["stem"] == whole["stem"][h::2]


def test_built_dataset_matches_files(synth, built):
    import json

    index = json.load(open(os.path.join(built, "imgen_stems.json")))
    assert {k: len(v) for k, v in index["splits"].items()} == {"train": 4, "validation": 1, "test": 2}
    a = next(make_triplet_loader(synth, "train", CFG, batch_size=4, seed=1))
    b = next(make_triplet_loader(built, "train", CFG, batch_size=4, seed=1))
    assert a["instruction"] == b["instruction"]
    np.testing.assert_allclose(a["input"], b["input"], atol=2e-4)
    np.testing.assert_allclose(a["target"], b["target"], atol=2e-4)
    # reads across chunk boundaries and up to the (partial) last chunk
    from imgen_jax.data.sources import BuiltSource

    src = BuiltSource(built, "train")
    assert src.chunk == 22400 and index["splits"]["train"][0]["num_chunks"] == 5
    n = src.infos[0].num_samples
    files = FileSource(read_slakh(synth, "train"), 32000)
    np.testing.assert_allclose(src.read(0, n - 5000, 5000, [0, 2]), files.read(0, n - 5000, 5000, [0, 2]), atol=1e-4)
    with pytest.raises(ImgenError, match="exists and is not empty"):
        build_dataset(synth, built, progress=False)


def test_eval_set_is_deterministic(synth, built):
    a = make_eval_set(synth, "test", "remove", n=5, seed=3, config=CFG)
    b = make_eval_set(built, "test", "remove", n=5, seed=3, config=CFG)
    assert [t.id for t in a] == [t.id for t in b] == [f"{a[i].track}-remove-{i}" for i in range(5)]
    assert {t.track for t in a} == {"Track00006", "Track00007"}
    for x, y in zip(a, b):
        assert x.instruction == y.instruction and x.offset == y.offset
        np.testing.assert_allclose(x.input, y.input, atol=2e-4)
    assert all(t.task == "remove" for t in a)


def test_bad_inputs_are_skipped_and_reported(tmp_path):
    root = str(tmp_path / "bad")
    write_slakh_track(root, "train", "Track00001", ["Drums", "Bass", "Piano"])
    d = write_slakh_track(root, "train", "Track00002", ["Drums", "Bass", "Piano"], index=2)
    os.remove(os.path.join(d, "stems", "S01.flac"))                                    # missing stem file
    d = write_slakh_track(root, "train", "Track00003", ["Drums", "Bass", "Guitar"], index=3)
    with open(os.path.join(d, "stems", "S02.flac"), "wb") as f:                       # unreadable flac
        f.write(b"fLaC" + os.urandom(64))
    d = write_slakh_track(root, "train", "Track00004", ["Drums", "Kazoo"], index=4)    # unknown class -> 1 stem
    write_slakh_track(root, "train", "Track00005", ["Bass"], index=5)                  # a single stem
    d = write_slakh_track(root, "train", "Track00006", ["Drums", "Bass"], index=6)
    with open(os.path.join(d, "metadata.yaml"), "w") as f:                             # broken metadata
        f.write("stems: [unclosed")
    write_slakh_track(root, "train", "Track00007", ["Strings", "Organ"], index=7)      # no 4-stem classes
    os.makedirs(os.path.join(root, "test"))                                            # a split with no tracks

    rep = BuildReport()
    tracks = read_slakh(root, "train", rep)
    assert [t.name for t in tracks] == ["Track00001", "Track00002", "Track00003", "Track00007"]
    reasons = {(s["what"], s["name"]): s["reason"] for s in rep.skipped}
    assert "file missing" in reasons[("stem", "Track00002/S01")]
    assert "unreadable audio" in reasons[("stem", "Track00003/S02")]
    assert "unknown instrument class 'Kazoo'" in reasons[("stem", "Track00004/S01")]
    assert "1 usable stem" in reasons[("track", "Track00004")] and "1 usable stem" in reasons[("track", "Track00005")]
    assert "metadata.yaml unreadable" in reasons[("track", "Track00006")]
    assert rep.tracks["train"] == 4

    src = TripletSource(root, "train", CFG)  # Track00007 has no Drums/Bass/Piano/Guitar: skipped, counted
    assert [src.source.infos[u].name for u in src.usable] == ["Track00001", "Track00002", "Track00003"]
    assert any(s["name"] == "Track00007" and "needs 2" in s["reason"] for s in src.report.skipped)
    for i in range(6):  # only usable stems ever appear; Track00002 has no Bass
        tr = src.triplet(1, np.random.default_rng(i))
        assert "Bass" not in tr.input_stems + tr.output_stems

    with pytest.raises(ImgenError, match="no usable 'test' tracks"):
        make_triplet_loader(root, "test", CFG)
    with pytest.raises(ImgenError, match="not a Slakh2100 layout"):
        make_triplet_loader(str(tmp_path), "train", CFG)
    with pytest.raises(ImgenError, match="data tasks"):
        TripletConfig(tasks=("replace",))
    rep = build_dataset(root, str(tmp_path / "built"), progress=False)
    assert rep["tracks"] == {"train": 4, "validation": 0, "test": 0}
    assert {s["what"] for s in rep["skipped"]} == {"stem", "track", "split"}


def test_moisesdb_reader(tmp_path):
    from imgen_jax.data.tracks import moisesdb_split

    root = str(tmp_path / "moises")
    songs = {}
    i = 0
    while len(songs) < 3:  # one song per split, found by the split hash
        song = f"song-{i:03d}"
        split = moisesdb_split(song)
        if split not in songs:
            write_moisesdb_song(root, song, {"vocals": 1, "bass": 1, "drums": 2, "guitar": 1, "other": 1}, index=i)
            songs[split] = song
        i += 1
    rep = BuildReport()
    (track,) = read_moisesdb(root, "train", rep)
    assert track.name == songs["train"] and track.classes == ("Bass", "Drums", "Guitar", "Other")
    drums = [s for s in track.stems if s.inst_class == "Drums"][0]
    assert len(drums.paths) == 2  # a stem is the sum of its recorded tracks
    src = TripletSource(root, "train", TripletConfig(clip_seconds=1.0, stems="all"))
    for i in range(10):
        tr = src.triplet(0, np.random.default_rng(i))
        assert tr.stem != "Other" and "Vocals" not in tr.input_stems + tr.output_stems


def test_musdb_reader(tmp_path):
    """MUSDB18-HQ: train / musdb's validation tracks (inside train/) / test; the four stems as Vocals, Drums,
    Bass, Other; mixture.wav is not a stem; tracks with a missing, unreadable, other-rate or other-length stem
    are skipped with the reason; triplets are exact sums of the stems; 4_stems keeps only Drums and Bass."""
    import soundfile as sf

    from imgen_jax.data import detect_layout, read_musdb, read_tracks

    root = str(tmp_path / "musdb")
    write_musdb_track(root, "train", "A - One", sr=8000, index=0)
    write_musdb_track(root, "train", "Leaf - Summerghost", sr=8000, index=1)  # musdb's validation split
    d = write_musdb_track(root, "train", "B - Missing", sr=8000, index=2)
    os.remove(os.path.join(d, "bass.wav"))
    d = write_musdb_track(root, "train", "C - Rate", sr=8000, index=3)
    sf.write(os.path.join(d, "other.wav"), np.zeros((3 * 16000, 2), np.float32) + 0.1, 16000)
    d = write_musdb_track(root, "train", "D - Length", sr=8000, index=4)
    sf.write(os.path.join(d, "drums.wav"), np.zeros((2 * 8000, 2), np.float32) + 0.1, 8000)
    d = write_musdb_track(root, "train", "E - Broken", sr=8000, index=5)
    with open(os.path.join(d, "vocals.wav"), "wb") as f:
        f.write(b"RIFF" + os.urandom(64))
    write_musdb_track(root, "test", "F - Test", sr=8000, index=6)
    assert detect_layout(root) == "musdb"

    rep = BuildReport()
    (track,) = read_tracks(root, "train", rep)
    assert track.name == "A - One" and track.classes == ("Vocals", "Drums", "Bass", "Other")
    assert [s.id for s in track.stems] == ["vocals", "drums", "bass", "other"] and track.sample_rate == 8000
    reasons = {s["name"]: s["reason"] for s in rep.skipped}
    assert set(reasons) == {"B - Missing", "C - Rate", "D - Length", "E - Broken"}
    assert "missing stem file(s) bass.wav" in reasons["B - Missing"]
    assert "different sample rates [8000, 16000]" in reasons["C - Rate"]
    assert "different lengths [16000, 24000]" in reasons["D - Length"]
    assert "unreadable audio" in reasons["E - Broken"] and "vocals.wav" in reasons["E - Broken"]
    assert [t.name for t in read_musdb(root, "validation")] == ["Leaf - Summerghost"]
    assert [t.name for t in read_tracks(root, "test", layout="musdb")] == ["F - Test"]
    assert [s.id for s in read_musdb(root, "test", drop=("vocals",))[0].stems] == ["drums", "bass", "other"]

    src = TripletSource(root, "train", CFG)  # 4_stems: Drums and Bass only
    for i in range(4):
        tr = src.triplet(0, np.random.default_rng(i), "extract")
        assert tr.stem in ("Drums", "Bass") and set(tr.input_stems) == {"Drums", "Bass"}
        np.testing.assert_allclose(tr.target / tr.scale, _class_sum(src, 0, tr, [tr.stem]), atol=1e-6)
    src = TripletSource(root, "train", TripletConfig(clip_seconds=1.0, stems="all"))
    seen = set()
    for i in range(12):
        tr = src.triplet(0, np.random.default_rng(i), "remove")
        assert tr.stem != "Other"
        np.testing.assert_allclose(tr.input / tr.scale, _class_sum(src, 0, tr, tr.input_stems), atol=1e-6)
        seen.add(tr.stem)
    assert "Vocals" in seen
    a = make_eval_set(root, "test", "add", n=2, config=CFG)
    b = make_eval_set(root, "test", "add", n=2, config=CFG, layout="musdb")
    assert [t.id for t in a] == ["F - Test-add-0", "F - Test-add-1"] and all(np.array_equal(x.input, y.input) for x, y in zip(a, b))
    with pytest.raises(ImgenError, match="dataset layout 'musdb18'"):
        read_tracks(root, "train", layout="musdb18")


def test_musdb_training_config(tmp_path):
    """configs/musdb.py names the layout; the training loader reads a MUSDB folder through it (4_stems: Drums
    and Bass targets); a bad layout is a config error."""
    import importlib.util

    from imgen_jax.train.config import validate
    from imgen_jax.train.data import make_loader

    spec = importlib.util.spec_from_file_location("musdb_config", os.path.join(os.path.dirname(__file__), "..",
                                                                             "configs", "musdb.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    assert c.data.layout == "musdb"
    root = str(tmp_path / "musdb")
    write_musdb_track(root, "train", "A - One", sr=8000)
    c.data.dir, c.data.clip_seconds, c.model.base_dir = root, 1.0, str(tmp_path)
    validate(c)
    batch = next(make_loader(c, "train", 2, seed=0))
    assert batch["input"].shape == (2, 32000) and set(batch["stem"]) <= {"Drums", "Bass"}
    c.data.layout = "musdb18"
    with pytest.raises(ImgenError, match="config.data.layout"):
        validate(c)


def test_stems_folder_reader(tmp_path):
    """A folder of stems: classes from file names, mix files ignored, unknown names skipped; track folders
    either in split folders or split by a hash of their name; bad tracks skipped with the reason."""
    from imgen_jax.data import detect_layout, read_stems_folder, read_tracks
    from imgen_jax.data.tracks import moisesdb_split, stem_class

    assert [stem_class(n) for n in ("Guitar_2", "synth-pad", "other_keys", "keys", "VOCALS", "drums 3", "kazoo")] == [
        "Guitar", "Synth Pad", "Other Keys", "Piano", "Vocals", "Drums", None]

    root = str(tmp_path / "split")
    write_stem_files(os.path.join(root, "train", "t1"), {"Drums.wav": 0, "bass_1.flac": 1, "bass_2.flac": 2,
                                                        "keys.wav": 3, "kazoo.wav": 4, "mix.wav": 0}, sr=8000)
    write_stem_files(os.path.join(root, "train", "t2"), {"guitar.wav": 0, "mixture.flac": 0}, sr=8000, index=1)
    d = write_stem_files(os.path.join(root, "train", "t3"), {"guitar.wav": 0, "piano.wav": 1}, sr=8000, index=2)
    write_stem_files(d, {"piano.wav": 1}, seconds=2.0, sr=8000, index=2)  # shorter piano
    write_stem_files(os.path.join(root, "test", "t4"), {"drums.flac": 0, "piano.flac": 1}, sr=8000, index=3,
                     stereo=False)
    assert detect_layout(root) == "stems"
    rep = BuildReport()
    (t1,) = read_tracks(root, "train", rep)
    assert t1.name == "t1" and t1.classes == ("Bass", "Drums", "Piano")
    assert [s.id for s in t1.stems] == ["bass_1", "bass_2", "drums", "keys"]
    reasons = {(s["what"], s["name"]): s["reason"] for s in rep.skipped}
    assert "unknown stem name 'kazoo'" in reasons[("stem", "t1/kazoo.wav")]
    assert "1 usable stem file(s)" in reasons[("track", "t2")]
    assert "different lengths" in reasons[("track", "t3")]
    assert [t.name for t in read_stems_folder(root, "test")] == ["t4"]
    src = TripletSource(root, "train", CFG)
    tr = src.triplet(0, np.random.default_rng(0), "extract")
    np.testing.assert_allclose(tr.target / tr.scale, _class_sum(src, 0, tr, [tr.stem]), atol=1e-6)

    flat = str(tmp_path / "flat")
    names = {}
    i = 0
    while len(names) < 2:  # one track for train and one for test, found by the split hash
        name = f"song{i}"
        split = moisesdb_split(name)
        if split in ("train", "test") and split not in names:
            write_stem_files(os.path.join(flat, name), {"drums.wav": 0, "bass.wav": 1}, sr=8000, index=i)
            names[split] = name
        i += 1
    assert detect_layout(flat) == "stems"
    assert [t.name for t in read_tracks(flat, "test")] == [names["test"]]
    assert [t.name for t in read_tracks(flat, "train", layout="stems")] == [names["train"]]
    with pytest.raises(ImgenError, match="folder of stems"):
        detect_layout(str(tmp_path / "flat" / names["test"]))  # a track folder is not a dataset


def test_mini_slakh_triplets(mini_slakh_root):
    """The rendered set goes through the same reader: every triplet passes the official checks."""
    cfg = TripletConfig(clip_seconds=2.0)
    it = make_triplet_loader(mini_slakh_root, "train", cfg, batch_size=4, seed=0)
    for _ in range(2):
        b = next(it)
        assert b["input"].shape == (4, cfg.clip_samples) and np.isfinite(b["input"]).all()
        for text, stem in zip(b["instruction"], b["stem"]):
            assert text.endswith(f"{stem}.") and stem in ("Drums", "Bass", "Piano", "Guitar")
    src = TripletSource(mini_slakh_root, "train", cfg)
    trs = [src.triplet(i % len(src), np.random.default_rng(i)) for i in range(8)]
    assert sum(tr.retries <= cfg.max_retries for tr in trs) >= 7


def test_cli_data_build(synth, tmp_path, capsys):
    from imgen_jax.cli import main as imgen

    assert imgen(["data", "build", "--source", synth, "--out", str(tmp_path / "b")]) == 0
    assert "train 4, validation 1, test 2 tracks" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "b" / "imgen_stems.json")
    assert imgen(["data", "build", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'missing'}: data directory not found"]
    assert not os.path.exists(tmp_path / "c")
