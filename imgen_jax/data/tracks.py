"""Multitrack datasets on disk: Slakh2100 and MoisesDB readers, and the build report.

A reader turns a dataset folder into `Track`s: the usable stems of each track (file, instrument
class) and its length. Nothing is decoded here beyond file headers; bad entries are skipped with a
reason recorded in a `BuildReport`, never raised:

- a stem whose file is missing or unreadable, or whose instrument class is unknown;
- a track with fewer than two usable stems (no instruction triplet can be made from it);
- a split with no tracks.

Slakh2100 layout (mirdata's, also what `imgen data mini-slakh` writes):

    ROOT/{train,validation,test}/TrackNNNNN/metadata.yaml   stems: {S00: {inst_class, audio_rendered, ...}}
    ROOT/{split}/TrackNNNNN/stems/S00.flac ...               mono, 44.1 kHz in the release

MoisesDB layout (no official split; tracks are split 80/10/10 by a hash of their id, stable
across machines; vocals are dropped as the official code does):

    ROOT/<song-id>/data.json       {"stems": [{"stemName": "bass", "tracks": [{"id": ..., "extension": "wav"}]}]}
    ROOT/<song-id>/<stemName>/<track-id>.wav
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Sequence

import soundfile as sf

from imgen_jax.vocab import FOUR_STEMS, MOISESDB_CLASSES, SLAKH_CLASSES

log = logging.getLogger("imgen_jax.data")

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class Stem:
    """One usable stem: its id within the track, instrument class and audio files (summed when several)."""

    id: str
    inst_class: str
    paths: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Track:
    """A track's usable stems. `frames` and `sample_rate` are those of the files (the longest stem)."""

    name: str
    split: str
    stems: tuple[Stem, ...]
    sample_rate: int
    frames: int

    @property
    def classes(self) -> tuple[str, ...]:
        """Instrument classes in order of first appearance."""
        return tuple(dict.fromkeys(s.inst_class for s in self.stems))


@dataclasses.dataclass
class BuildReport:
    """What a reader or builder kept and skipped, with one reason per skipped item."""

    tracks: dict[str, int] = dataclasses.field(default_factory=dict)
    stems: int = 0
    skipped: list[dict] = dataclasses.field(default_factory=list)

    def skip(self, what: str, name: str, reason: str) -> None:
        log.warning("skipped %s %s: %s", what, name, reason)
        self.skipped.append({"what": what, "name": name, "reason": reason})

    def skipped_count(self, what: str | None = None) -> int:
        return sum(1 for s in self.skipped if what is None or s["what"] == what)

    def to_dict(self) -> dict:
        return {"tracks": dict(self.tracks), "stems": self.stems, "skipped": list(self.skipped)}


def _audio_info(path: str) -> tuple[int, int] | str:
    """(sample_rate, frames) of an audio file, or the reason it cannot be used."""
    if not os.path.isfile(path):
        return "file missing"
    try:
        info = sf.info(path)
    except Exception as e:  # libsndfile reports corrupt files with assorted exception types
        return f"unreadable audio ({str(e).splitlines()[0][:120]})"
    if info.frames <= 0:
        return "empty audio"
    return int(info.samplerate), int(info.frames)


def _add_track(tracks: list[Track], name: str, split: str, stems: list[tuple[Stem, int, int]], report: BuildReport) -> None:
    """Append the track if it has two usable stems of one sample rate; else record why not.
    stems: (stem, sample rate, frames) of each usable stem."""
    rates = {sr for _, sr, _ in stems}
    if len(rates) > 1:
        report.skip("track", name, f"stems have different sample rates {sorted(rates)}")
    elif len(stems) < 2:
        report.skip("track", name, f"{len(stems)} usable stem(s); an instruction needs at least 2")
    else:
        report.stems += len(stems)
        tracks.append(Track(name, split, tuple(s for s, _, _ in stems), rates.pop(), max(f for _, _, f in stems)))


def _finish_split(tracks: list[Track], split: str, where: str, report: BuildReport) -> list[Track]:
    """Count the split's tracks in the report (an empty split is recorded as skipped) and return them."""
    report.tracks[split] = len(tracks)
    if not tracks:
        report.skip("split", split, f"no usable {split} tracks in {where}")
    return tracks


def read_slakh(root: str, split: str, report: BuildReport | None = None) -> list[Track]:
    """Tracks of one split of a Slakh2100-layout folder (sorted by name); bad entries go to `report`."""
    import yaml

    report = report if report is not None else BuildReport()
    split_dir = os.path.join(root, split)
    names = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d))) if os.path.isdir(split_dir) else []
    tracks = []
    for name in names:
        tdir = os.path.join(split_dir, name)
        try:
            with open(os.path.join(tdir, "metadata.yaml")) as f:
                meta = yaml.safe_load(f)
            stems_meta = meta["stems"]
            audio_dir = meta.get("audio_dir", "stems")
            if not isinstance(stems_meta, dict):
                raise TypeError("'stems' is not a mapping")
        except Exception as e:
            report.skip("track", name, f"metadata.yaml unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")
            continue
        stems = []
        for sid in sorted(stems_meta):
            m = stems_meta[sid] or {}
            if not m.get("audio_rendered", True):
                continue  # Slakh marks stems it did not render; they have no file, as mirdata skips them
            cls = m.get("inst_class")
            if cls not in SLAKH_CLASSES:
                report.skip("stem", f"{name}/{sid}", f"unknown instrument class {cls!r}")
                continue
            path = os.path.join(tdir, audio_dir, f"{sid}.flac")
            info = _audio_info(path)
            if isinstance(info, str):
                report.skip("stem", f"{name}/{sid}", f"{info}: {path}")
                continue
            stems.append((Stem(sid, cls, (path,)), *info))
        _add_track(tracks, name, split, stems, report)
    return _finish_split(tracks, split, split_dir, report)


def moisesdb_split(song_id: str) -> str:
    """The split of a MoisesDB song: 80/10/10 by a hash of its id (MoisesDB has no official split)."""
    h = int.from_bytes(hashlib.sha256(song_id.encode()).digest()[:4], "big") % 10
    return "train" if h < 8 else ("validation" if h == 8 else "test")


def read_moisesdb(root: str, split: str, report: BuildReport | None = None, drop: Sequence[str] = ("vocals",)) -> list[Track]:
    """Tracks of one split of a MoisesDB folder (sorted by song id); bad entries go to `report`.

    A stem is the sum of its recorded tracks (all files must share one sample rate)."""
    report = report if report is not None else BuildReport()
    songs = sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "data.json"))) if os.path.isdir(root) else []
    tracks = []
    for song in songs:
        if moisesdb_split(song) != split:
            continue
        sdir = os.path.join(root, song)
        try:
            with open(os.path.join(sdir, "data.json")) as f:
                stems_meta = json.load(f)["stems"]
        except Exception as e:
            report.skip("track", song, f"data.json unreadable ({type(e).__name__})")
            continue
        stems = []
        for sm in sorted(stems_meta, key=lambda s: str(s.get("stemName"))):
            sname = str(sm.get("stemName"))
            if sname in drop:
                continue
            cls = MOISESDB_CLASSES.get(sname)
            if cls is None:
                report.skip("stem", f"{song}/{sname}", f"unknown stem name {sname!r}")
                continue
            paths, infos, bad = [], [], None
            for tr in sm.get("tracks", []):
                p = os.path.join(sdir, sname, f"{tr.get('id')}.{tr.get('extension', 'wav')}")
                info = _audio_info(p)
                if isinstance(info, str):
                    bad = f"{info}: {p}"
                    break
                paths.append(p)
                infos.append(info)
            if bad or not paths or len({sr for sr, _ in infos}) > 1:
                report.skip("stem", f"{song}/{sname}", bad or ("no audio files" if not paths else "files with different sample rates"))
                continue
            stems.append((Stem(sname, cls, tuple(paths)), infos[0][0], max(f for _, f in infos)))
        _add_track(tracks, song, split, stems, report)
    return _finish_split(tracks, split, root, report)


def detect_layout(root: str) -> str:
    """'slakh' or 'moisesdb' for a dataset folder; ImgenError naming what was expected otherwise."""
    from imgen_jax.errors import ImgenError

    if not os.path.isdir(root):
        raise ImgenError(f"{root}: data directory not found")
    if any(os.path.isdir(os.path.join(root, s)) for s in SPLITS):
        return "slakh"
    if any(os.path.isfile(os.path.join(root, d, "data.json")) for d in os.listdir(root)):
        return "moisesdb"
    raise ImgenError(
        f"{root}: not a Slakh2100 layout (train/ validation/ test/ with TrackNNNNN/metadata.yaml) nor a MoisesDB "
        "layout (<song>/data.json); build mini-Slakh with `imgen data mini-slakh --out DIR`"
    )


def read_tracks(root: str, split: str, report: BuildReport | None = None) -> list[Track]:
    """Tracks of `split` from a Slakh2100- or MoisesDB-layout folder (detected)."""
    reader = read_slakh if detect_layout(root) == "slakh" else read_moisesdb
    return reader(root, split, report)
