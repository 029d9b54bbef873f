"""Random access to the stems of a split at the model's sample rate, from the dataset files or a built dataset.

A source holds `infos` (one `TrackInfo` per usable track) and `read(track, start, length, stems)`
-> float32 [len(stems), length]. Two kinds, chosen by `open_source`:

- `FileSource`: decodes the dataset's files (Slakh2100, MoisesDB, MUSDB18-HQ, a folder of stems) directly (whole stems, resampled with
  polyphase filtering, a few tracks cached). Nothing to build; slow on long tracks.
- `BuiltSource`: a dataset written by `imgen data build` (imgen_jax.data.build): stems at the model's
  rate as int16 chunks in array_record files, read through tfds without TensorFlow; only the chunks
  a clip covers are read.
"""

from __future__ import annotations

import collections
import json
import math
import os
import threading
from typing import Sequence

import numpy as np

from imgen_jax.data.tracks import BuildReport, Track, read_tracks
from imgen_jax.data.triplets import TrackInfo
from imgen_jax.errors import ImgenError

INDEX_FILE = "imgen_stems.json"


def resampled_length(frames: int, sr: int, sample_rate: int) -> int:
    """Length of `frames` samples at `sr` after polyphase resampling to `sample_rate`."""
    g = math.gcd(sr, sample_rate)
    return -(-frames * (sample_rate // g) // (sr // g))


def decode_stem(paths: Sequence[str], sample_rate: int, length: int) -> np.ndarray:
    """A stem (the sum of its files) as float32 [length] mono at `sample_rate`, zero-padded to `length`."""
    from imgen_jax.audio import read_audio

    out = np.zeros(length, np.float32)
    for p in paths:
        x = read_audio(p, sample_rate, channels=1)[0][:length]
        out[: x.shape[0]] += x
    return out


class FileSource:
    """Stems decoded from the dataset's own files; keeps the last `cache` tracks decoded."""

    def __init__(self, tracks: Sequence[Track], sample_rate: int, cache: int = 4):
        self.tracks = list(tracks)
        self.sample_rate = sample_rate
        self.infos = [
            TrackInfo(t.name, tuple(s.inst_class for s in t.stems), resampled_length(t.frames, t.sample_rate, sample_rate))
            for t in self.tracks
        ]
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._size = cache
        self._lock = threading.Lock()

    def _track_audio(self, t: int) -> np.ndarray:
        with self._lock:
            if t in self._cache:
                self._cache.move_to_end(t)
                return self._cache[t]
        n = self.infos[t].num_samples
        audio = np.stack([decode_stem(s.paths, self.sample_rate, n) for s in self.tracks[t].stems])
        with self._lock:
            self._cache[t] = audio
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return audio

    def read(self, t: int, start: int, length: int, stems: Sequence[int]) -> np.ndarray:
        """float32 [len(stems), length]: samples start..start+length of the given stems of track t."""
        return self._track_audio(t)[list(stems), start : start + length]


class BuiltSource:
    """Stems from a dataset built by `imgen data build` (array_record chunks, read with tfds, no TensorFlow)."""

    def __init__(self, root: str, split: str):
        import tensorflow_datasets as tfds

        index = read_index(root)
        if split not in index["splits"] or not index["splits"][split]:
            raise ImgenError(f"{root}: the built dataset has no {split!r} tracks (splits: {sorted(k for k, v in index['splits'].items() if v)})")
        self.sample_rate = int(index["sample_rate"])
        self.chunk = int(index["chunk_samples"])
        self.entries = index["splits"][split]
        self.infos = [TrackInfo(e["name"], tuple(e["classes"]), int(e["num_samples"])) for e in self.entries]
        builder = tfds.builder_from_directory(os.path.join(root, index["tfds_dir"]))
        self._records = builder.as_data_source(split=split)

    def read(self, t: int, start: int, length: int, stems: Sequence[int]) -> np.ndarray:
        """float32 [len(stems), length]: samples start..start+length of the given stems of track t."""
        e = self.entries[t]
        k0, k1 = start // self.chunk, (start + length - 1) // self.chunk
        parts = []
        for k in range(k0, k1 + 1):
            rec = self._records[e["first_record"] + k]
            if rec["track"].decode() != e["name"] or int(rec["chunk"]) != k:
                raise ImgenError(f"built dataset record {e['first_record'] + k} is not {e['name']} chunk {k}: rebuild it")
            parts.append(rec["audio"][list(stems)])
        audio = np.concatenate(parts, axis=1)[:, start - k0 * self.chunk :][:, :length]
        return audio.astype(np.float32) * np.float32(1 / 32768)


def read_index(root: str) -> dict:
    """The index of a built dataset (`imgen_stems.json`)."""
    path = os.path.join(root, INDEX_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ImgenError(f"{path}: not a built dataset index ({type(e).__name__})") from None


def open_source(data_dir: str, split: str, sample_rate: int, report: BuildReport | None = None,
                layout: str = "auto") -> FileSource | BuiltSource:
    """A built dataset if `data_dir` holds one (its sample rate must match), else the dataset files of `layout`
    (imgen_jax.data.tracks.LAYOUTS, or "auto": detected)."""
    if os.path.isfile(os.path.join(data_dir, INDEX_FILE)):
        src = BuiltSource(data_dir, split)
        if src.sample_rate != sample_rate:
            raise ImgenError(f"{data_dir}: built at {src.sample_rate} Hz, the model needs {sample_rate} Hz; rebuild with --sample-rate {sample_rate}")
        return src
    tracks = read_tracks(data_dir, split, report, layout)
    if not tracks:
        raise ImgenError(f"{data_dir}: no usable {split!r} tracks")
    return FileSource(tracks, sample_rate)
