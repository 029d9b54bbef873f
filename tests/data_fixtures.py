"""Synthetic multitrack datasets on disk (Slakh2100 and MoisesDB layouts) with known stems, for data tests."""

from __future__ import annotations

import json
import os

import numpy as np
import soundfile as sf
import yaml


def stem_signal(track: int, stem: int, seconds: float, sr: int) -> np.ndarray:
    """A deterministic, loud-enough stem: a tone with a slow tremolo, distinct per (track, stem)."""
    t = np.arange(int(seconds * sr)) / sr
    f = 110.0 * (1 + stem) * (1 + 0.1 * track)
    return (0.3 * np.sin(2 * np.pi * f * t) * (0.75 + 0.25 * np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)


def write_slakh_track(root, split: str, name: str, classes: list[str], seconds: float = 3.0, sr: int = 44100,
                      index: int = 0, silent: tuple[str, ...] = (), extra_meta: dict | None = None) -> str:
    """One Slakh-layout track with a stem per class (S00, S01, ...); classes in `silent` are written as zeros."""
    tdir = os.path.join(root, split, name)
    os.makedirs(os.path.join(tdir, "stems"), exist_ok=True)
    stems = {}
    for i, cls in enumerate(classes):
        sid = f"S{i:02d}"
        x = np.zeros(int(seconds * sr), np.float32) if cls in silent else stem_signal(index, i, seconds, sr)
        sf.write(os.path.join(tdir, "stems", f"{sid}.flac"), x, sr, subtype="PCM_16")
        stems[sid] = {"audio_rendered": True, "inst_class": cls, "is_drum": cls == "Drums", "program_num": 0,
                      "midi_program_name": cls, "plugin_name": "test", "integrated_loudness": -20.0, "midi_saved": True}
    stems.update((extra_meta or {}).get("stems", {}))
    with open(os.path.join(tdir, "metadata.yaml"), "w") as f:
        yaml.safe_dump({"UUID": name, "audio_dir": "stems", "midi_dir": "MIDI", "stems": stems}, f)
    return tdir


def write_moisesdb_song(root, song: str, stems: dict[str, int], seconds: float = 3.0, sr: int = 44100, index: int = 0) -> str:
    """One MoisesDB-layout song: stems {stemName: number of recorded tracks}, stereo wav files."""
    sdir = os.path.join(root, song)
    meta = {"song": song, "artist": "test", "genre": "test", "stems": []}
    for i, (name, n) in enumerate(sorted(stems.items())):
        os.makedirs(os.path.join(sdir, name), exist_ok=True)
        tracks = []
        for j in range(n):
            tid = f"{name}-{j}"
            x = stem_signal(index, i + 3 * j, seconds, sr) / n
            sf.write(os.path.join(sdir, name, f"{tid}.wav"), np.stack([x, x], axis=1), sr, subtype="FLOAT")
            tracks.append({"id": tid, "trackType": name, "extension": "wav"})
        meta["stems"].append({"stemName": name, "id": name, "tracks": tracks})
    with open(os.path.join(sdir, "data.json"), "w") as f:
        json.dump(meta, f)
    return sdir


def write_stem_files(tdir: str, stems: dict[str, int], seconds: float = 3.0, sr: int = 44100, index: int = 0,
                     stereo: bool = True) -> str:
    """One track folder with one audio file per stem: stems {file name with extension: signal number}; a
    file named mixture.* / mix.* is written as the sum of the others."""
    os.makedirs(tdir, exist_ok=True)
    mix = np.zeros(int(seconds * sr), np.float32)
    for fname, k in stems.items():
        if os.path.splitext(fname)[0] in ("mixture", "mix"):
            continue
        x = stem_signal(index, k, seconds, sr)
        mix += x
        sf.write(os.path.join(tdir, fname), np.stack([x, x], axis=1) if stereo else x, sr, subtype="FLOAT"
                 if fname.endswith(".wav") else "PCM_16")
    for fname in stems:
        if os.path.splitext(fname)[0] in ("mixture", "mix"):
            sf.write(os.path.join(tdir, fname), np.stack([mix, mix], axis=1) if stereo else mix, sr)
    return tdir


def write_musdb_track(root, split: str, name: str, seconds: float = 3.0, sr: int = 44100, index: int = 0) -> str:
    """One MUSDB18-HQ track: ROOT/split/name/{vocals,drums,bass,other,mixture}.wav, stereo."""
    return write_stem_files(os.path.join(root, split, name),
                            {"vocals.wav": 0, "drums.wav": 1, "bass.wav": 2, "other.wav": 3, "mixture.wav": 0},
                            seconds, sr, index)
