"""mini-Slakh (imgen_jax.data.mini_slakh): Slakh2100 layout and metadata, audio, determinism, atomic writes, CLI."""

import glob
import json
import os
import sys

import numpy as np
import pytest
import soundfile as sf
import yaml

from imgen_jax.data import mini_slakh as ms
from imgen_jax.errors import ImgenError

TOP_KEYS = {"UUID", "audio_dir", "lmd_midi_dir", "midi_dir", "normalization_factor", "normalized", "overall_gain",
            "stems", "target_peak"}
STEM_KEYS = {"audio_rendered", "inst_class", "integrated_loudness", "is_drum", "midi_program_name", "midi_saved",
             "plugin_name", "program_num"}
SLAKH_CLASS_OF = {(0, 7): "Piano", (16, 23): "Organ", (24, 31): "Guitar", (32, 39): "Bass",
                  (48, 55): "Strings (continued)", (56, 63): "Brass", (64, 71): "Reed", (72, 79): "Pipe"}


def _tracks(root):
    return sorted(glob.glob(os.path.join(root, "*", "Track*")), key=os.path.basename)


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


def test_layout_and_metadata(mini_slakh_root):
    root = mini_slakh_root
    assert sorted(os.listdir(root)) == ["mini_slakh.json", "test", "train", "validation"]
    splits = {s: sorted(os.listdir(os.path.join(root, s))) for s in ("train", "validation", "test")}
    assert splits == {"train": ["Track00001", "Track00002", "Track00003"], "validation": ["Track00004"],
                      "test": ["Track00005", "Track00006"]}
    report = json.load(open(os.path.join(root, "mini_slakh.json")))
    assert report["tracks"] == {"train": 3, "validation": 1, "test": 2}
    assert report["track_ids"] == splits and set(report["pieces"]) == {f"Track{i:05d}" for i in range(1, 7)}
    counts = {}
    uuids = set()
    for track in _tracks(root):
        assert sorted(os.listdir(track)) == ["MIDI", "all_src.mid", "metadata.yaml", "mix.flac", "stems"]
        meta = yaml.safe_load(open(os.path.join(track, "metadata.yaml")))
        assert set(meta) == TOP_KEYS
        assert meta["audio_dir"] == "stems" and meta["midi_dir"] == "MIDI" and meta["normalized"] is True
        assert meta["normalization_factor"] == -13.0 and meta["target_peak"] == -1.0
        assert 0 < meta["overall_gain"] < 1 and len(meta["UUID"]) == 32 and int(meta["UUID"], 16) >= 0
        assert meta["lmd_midi_dir"] == report["pieces"][os.path.basename(track)]
        assert meta["lmd_midi_dir"].startswith("bach/")
        uuids.add(meta["UUID"])
        names = sorted(meta["stems"])
        assert names == [f"S{i:02d}" for i in range(len(names))]
        assert sorted(os.listdir(os.path.join(track, "stems"))) == [f"{n}.flac" for n in names]
        assert sorted(os.listdir(os.path.join(track, "MIDI"))) == [f"{n}.mid" for n in names]
        classes = []
        for name, st in meta["stems"].items():
            assert set(st) == STEM_KEYS, name
            assert st["audio_rendered"] is True and st["midi_saved"] is True and st["plugin_name"] == "TimGM6mb.sf2"
            assert isinstance(st["integrated_loudness"], float) and -40 < st["integrated_loudness"] < -13
            if st["is_drum"]:
                assert st["inst_class"] == "Drums" and st["program_num"] == 128 and st["midi_program_name"] == "Drums"
            else:
                (cls,) = [c for (lo, hi), c in SLAKH_CLASS_OF.items() if lo <= st["program_num"] <= hi]
                assert st["inst_class"] == cls
                assert st["midi_program_name"] == ms.PROGRAM_NAMES[st["program_num"]]
            classes.append(st["inst_class"])
        assert {"Drums", "Bass", "Piano", "Guitar"} <= set(classes) and len(classes) == len(set(classes))
        for c in classes:
            counts[c] = counts.get(c, 0) + 1
    assert len(uuids) == 6
    assert report["stems_per_class"] == dict(sorted(counts.items()))


def test_audio_and_midi(mini_slakh_root):
    """Mono 16-bit FLAC at 44.1 kHz, stems as long as the mix, mix = sum of stems, MIDI matching the stems.
    Every stem is audible in every 4 s window: peak > 0.1 and < 70% of samples near-silent (|x| < 0.01),
    the clip checks of the data pipeline."""
    import pretty_midi

    for track in _tracks(mini_slakh_root):
        meta = yaml.safe_load(open(os.path.join(track, "metadata.yaml")))
        info = sf.info(os.path.join(track, "mix.flac"))
        assert (info.channels, info.samplerate, info.subtype, info.format) == (1, 44100, "PCM_16", "FLAC")
        assert info.frames == 12 * 44100
        mix, _ = sf.read(os.path.join(track, "mix.flac"))
        assert 0.8 < np.abs(mix).max() <= 10 ** (-1 / 20) + 1e-3  # Slakh: mix peak at target_peak -1 dBFS
        total = np.zeros_like(mix)
        win = 4 * 44100
        for name, st in meta["stems"].items():
            path = os.path.join(track, "stems", f"{name}.flac")
            si = sf.info(path)
            assert (si.channels, si.samplerate, si.subtype, si.frames) == (1, 44100, "PCM_16", info.frames)
            x, _ = sf.read(path)
            total += x
            for k in range(0, len(x) - win + 1, win):
                clip = x[k:k + win]
                assert np.abs(clip).max() > 0.1, (track, name, k)
                assert np.mean(np.abs(clip) < 0.01) < 0.7, (track, name, k)
            pm = pretty_midi.PrettyMIDI(os.path.join(track, "MIDI", f"{name}.mid"))
            (inst,) = pm.instruments
            assert inst.is_drum == st["is_drum"] and len(inst.notes) > 10
            if not st["is_drum"]:
                assert inst.program == st["program_num"]
            assert 0 <= min(n.start for n in inst.notes) < 1.0 and max(n.end for n in inst.notes) <= 12.01
        np.testing.assert_allclose(total, mix, atol=4e-4)  # 16-bit rounding of each file
        allsrc = pretty_midi.PrettyMIDI(os.path.join(track, "all_src.mid"))
        assert len(allsrc.instruments) == len(meta["stems"])


def test_deterministic_overwrite_and_uuid(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ra = ms.render_mini_slakh(str(a), tracks=3, seconds=3.0, sample_rate=16000, seed=5, progress=False)
    b.mkdir()
    (b / "junk.txt").write_text("old")
    rb = ms.render_mini_slakh(str(b), tracks=3, seconds=3.0, sample_rate=16000, seed=5, progress=False,
                              overwrite=True)
    fa, fb = _files(a), _files(b)
    assert "junk.txt" not in fb and sorted(fa) == sorted(fb)
    assert [k for k in fa if fa[k] != fb[k]] == []
    assert {k: v for k, v in ra.items() if k != "out"} == {k: v for k, v in rb.items() if k != "out"}
    assert ra["tracks"] == {"train": 1, "validation": 1, "test": 1}
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]  # no temporary directories left behind
    assert ms.track_uuid(5, 0) == ms.track_uuid(5, 0) != ms.track_uuid(6, 0)


def test_refuses_non_empty_and_is_atomic(tmp_path, monkeypatch, capsys):
    from imgen_jax.cli import main

    out = tmp_path / "ds"
    out.mkdir()
    (out / "x").write_text("keep")
    assert main(["data", "mini-slakh", "--out", str(out), "--tracks", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "not empty" in err and "--overwrite" in err
    assert (out / "x").read_text() == "keep"

    calls = []

    def failing(*args, **kwargs):
        if calls:
            raise RuntimeError("interrupted")
        calls.append(1)
        return real(*args, **kwargs)

    real = ms.render_track
    monkeypatch.setattr(ms, "render_track", failing)
    with pytest.raises(RuntimeError):
        ms.render_mini_slakh(str(tmp_path / "new"), tracks=3, seconds=2.0, sample_rate=16000, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["ds"]  # neither a half dataset nor a temp dir


def test_missing_tinysoundfont_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tinysoundfont", None)
    with pytest.raises(ImgenError, match=r"pip install --no-deps tinysoundfont==0\.3\.7") as e:
        ms.render_mini_slakh(str(tmp_path / "x"), tracks=1, seconds=2.0, progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "x").exists()


def test_split_counts_and_arguments(tmp_path):
    assert ms.split_counts(20) == (14, 3, 3)
    assert ms.split_counts(6) == (4, 1, 1)
    assert ms.split_counts(3) == (1, 1, 1)
    assert ms.split_counts(2) == (2, 0, 0)
    assert ms.split_counts(6, (3, 1, 2)) == (3, 1, 2)
    with pytest.raises(ImgenError, match="sum to tracks=6"):
        ms.split_counts(6, (3, 1, 1))
    with pytest.raises(ImgenError, match="tracks"):
        ms.render_mini_slakh(str(tmp_path / "x"), tracks=0)
    with pytest.raises(ImgenError, match="seconds"):
        ms.render_mini_slakh(str(tmp_path / "x"), seconds=0.5)


def test_integrated_loudness_reference():
    """BS.1770-4: a full-scale 997 Hz sine reads -3.01 LUFS (mono, channel weight 1); 20 dB down reads -23.01."""
    for sr in (48000, 44100):
        sine = np.sin(2 * np.pi * 997 * np.arange(5 * sr) / sr)
        assert abs(ms.integrated_loudness(sine, sr) + 3.01) < 0.05
        assert abs(ms.integrated_loudness(0.1 * sine, sr) + 23.01) < 0.05
    assert ms.integrated_loudness(np.zeros(sr), sr) == float("-inf")
