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

MUSDB18-HQ layout (the 100 train / 50 test tracks; `validation` is musdb's official 14 validation
tracks, taken out of train/; classes from vocab.MUSDB_CLASSES: Vocals, Drums, Bass, Other):

    ROOT/{train,test}/<Artist - Title>/{vocals,drums,bass,other,mixture}.wav

A folder of stems (any multitrack set): one folder per track, one audio file (wav / flac) per stem,
the class from the file name (`stem_class`: "guitar_2.wav" -> Guitar). With train/ validation/ test/
folders those are the splits, else the track folders sit in ROOT and are split 80/10/10 by a hash of
their name (as MoisesDB):

    ROOT[/{train,validation,test}]/<track>/<stem>.{wav,flac}

In both, a `mixture` / `mix` file is not a stem and is not read (triplet mixes are always sums of
stems, as the official code makes them), and a track is skipped whole when a stem is missing
(MUSDB) or unreadable, or its stems differ in sample rate or length.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Sequence

import soundfile as sf

from imgen_jax.vocab import FOUR_STEMS, MOISESDB_CLASSES, MUSDB_CLASSES, SLAKH_CLASSES, STEM_ALIASES, STEMS

log = logging.getLogger("imgen_jax.data")

SPLITS = ("train", "validation", "test")
LAYOUTS = ("slakh", "moisesdb", "musdb", "stems")
AUDIO_EXTENSIONS = (".wav", ".flac")
MIX_NAMES = ("mixture", "mix")
# musdb's official validation tracks (musdb.DB(subsets="train", split="valid")), a part of train/.
MUSDB_VALIDATION = (
    "Actions - One Minute Smile", "Alexander Ross - Goodbye Bolero", "ANiMAL - Rockshow",
    "Clara Berry And Wooldog - Waltz For My Victims", "Fergessen - Nos Palpitants", "James May - On The Line",
    "Johnny Lokke - Promises & Lies", "Leaf - Summerghost", "Meaxic - Take A Step",
    "Patrick Talbot - A Reason To Leave", "Skelpolu - Human Mistakes", "Traffic Experiment - Sirens",
    "Triviul - Angelsaint", "Young Griffo - Pennies",
)


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


def _subdirs(path: str) -> list[str]:
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))) if os.path.isdir(path) else []


def _audio_files(tdir: str) -> list[str]:
    """The audio files (wav / flac) of a track folder, sorted by name ignoring case."""
    return sorted((f for f in os.listdir(tdir) if f.lower().endswith(AUDIO_EXTENSIONS)
                   and os.path.isfile(os.path.join(tdir, f))), key=lambda f: (f.lower(), f))


def _name(filename: str) -> str:
    return os.path.splitext(filename)[0].lower()


def stem_class(name: str) -> str | None:
    """The instrument class of a stem file name of the folder-of-stems layout (None if unknown).

    Case, `_` / `-` as spaces and a trailing number are ignored ("Guitar_2" -> Guitar, "synth-pad" ->
    Synth Pad); accepted: every class of vocab.STEMS, MoisesDB's and MUSDB's stem names ("other_keys",
    "vocals"), and vocab.STEM_ALIASES ("keys" -> Piano)."""
    key = " ".join(name.lower().replace("_", " ").replace("-", " ").split())
    key = key.rstrip("0123456789").strip()
    by_text = {c.lower(): c for c in STEMS}
    for table in ({k.replace("_", " "): v for k, v in MOISESDB_CLASSES.items()}, MUSDB_CLASSES, STEM_ALIASES, by_text):
        if key in table:
            return table[key]
    return None


def _folder_track(tdir: str, name: str, split: str, files: list[tuple[str, str]], report: BuildReport,
                  tracks: list[Track]) -> None:
    """Add a track made of one file per stem (files: (stem id, class)) if every file is readable and all share
    one sample rate and length; else record why the track is skipped."""
    stems, infos = [], []
    for sid, cls in files:
        path = os.path.join(tdir, sid)
        info = _audio_info(path)
        if isinstance(info, str):
            report.skip("track", name, f"stem {sid}: {info}: {path}")
            return
        stems.append(Stem(_name(sid), cls, (path,)))
        infos.append(info)
    lengths = {f for _, f in infos}
    if len(lengths) > 1 and len({sr for sr, _ in infos}) == 1:
        report.skip("track", name, f"stems have different lengths {sorted(lengths)} (samples)")
        return
    _add_track(tracks, name, split, [(s, sr, f) for s, (sr, f) in zip(stems, infos)], report)


def read_musdb(root: str, split: str, report: BuildReport | None = None, drop: Sequence[str] = ()) -> list[Track]:
    """Tracks of one split of a MUSDB18-HQ folder (sorted by name); bad tracks go to `report`.

    drop: MUSDB stem names left out (e.g. ("vocals",) as MoisesDB drops them)."""
    report = report if report is not None else BuildReport()
    split_dir = os.path.join(root, "test" if split == "test" else "train")
    tracks: list[Track] = []
    for name in _subdirs(split_dir):
        if split != "test" and (name in MUSDB_VALIDATION) != (split == "validation"):
            continue
        tdir = os.path.join(split_dir, name)
        missing = [f"{s}.wav" for s in MUSDB_CLASSES if not os.path.isfile(os.path.join(tdir, f"{s}.wav"))]
        if missing:
            report.skip("track", name, f"missing stem file(s) {', '.join(missing)} in {tdir}")
            continue
        _folder_track(tdir, name, split, [(f"{s}.wav", c) for s, c in MUSDB_CLASSES.items() if s not in drop],
                      report, tracks)
    return _finish_split(tracks, split, split_dir, report)


def _stems_track_dirs(root: str, split: str) -> tuple[list[tuple[str, str]], str]:
    """[(track name, folder)] of `split` in a folder-of-stems layout, and where they were looked for."""
    if any(os.path.isdir(os.path.join(root, s)) for s in SPLITS):
        split_dir = os.path.join(root, split)
        return [(d, os.path.join(split_dir, d)) for d in _subdirs(split_dir)], split_dir
    return [(d, os.path.join(root, d)) for d in _subdirs(root) if moisesdb_split(d) == split], root


def read_stems_folder(root: str, split: str, report: BuildReport | None = None) -> list[Track]:
    """Tracks of one split of a folder-of-stems layout (sorted by name); bad stems / tracks go to `report`."""
    report = report if report is not None else BuildReport()
    tracks: list[Track] = []
    dirs, where = _stems_track_dirs(root, split)
    for name, tdir in dirs:
        files = []
        for f in _audio_files(tdir):
            if _name(f) in MIX_NAMES:
                continue
            cls = stem_class(_name(f))
            if cls is None:
                report.skip("stem", f"{name}/{f}", f"unknown stem name {_name(f)!r} (expected an instrument class "
                            "such as drums, bass, piano, guitar, vocals, other)")
                continue
            files.append((f, cls))
        if len(files) < 2:
            report.skip("track", name, f"{len(files)} usable stem file(s) in {tdir}; an instruction needs at least 2")
            continue
        _folder_track(tdir, name, split, files, report, tracks)
    return _finish_split(tracks, split, where, report)


def _folder_kind(tdir: str) -> str | None:
    """'slakh', 'musdb' or 'stems' for one track folder, None if it is none of them."""
    if os.path.isfile(os.path.join(tdir, "metadata.yaml")):
        return "slakh"
    names = {_name(f) for f in _audio_files(tdir)} - set(MIX_NAMES)
    if not names:
        return None
    return "musdb" if names == set(MUSDB_CLASSES) else "stems"


def detect_layout(root: str) -> str:
    """The layout of a dataset folder, one of LAYOUTS; ImgenError naming what was expected otherwise.

    Track folders under train/ validation/ test/: Slakh (metadata.yaml), MUSDB (exactly vocals, drums, bass,
    other [+ mixture] wavs) or a folder of stems (other audio files); empty split folders: Slakh. Else
    MoisesDB (<song>/data.json) or a folder of stems (track folders with audio files in ROOT)."""
    from imgen_jax.errors import ImgenError

    if not os.path.isdir(root):
        raise ImgenError(f"{root}: data directory not found")
    split_dirs = [os.path.join(root, s) for s in SPLITS if os.path.isdir(os.path.join(root, s))]
    if split_dirs:
        kinds = [_folder_kind(os.path.join(sd, d)) for sd in split_dirs for d in _subdirs(sd)]
        for kind in ("slakh", "musdb", "stems"):
            if kind in kinds:
                return kind
        return "slakh"
    children = _subdirs(root)
    if any(os.path.isfile(os.path.join(root, d, "data.json")) for d in children):
        return "moisesdb"
    if any(_folder_kind(os.path.join(root, d)) for d in children):
        return "stems"
    raise ImgenError(
        f"{root}: not a Slakh2100 layout (train/ validation/ test/ with TrackNNNNN/metadata.yaml), a MoisesDB layout "
        "(<song>/data.json), a MUSDB18-HQ layout (train/ test/ with <track>/vocals.wav, drums.wav, bass.wav, "
        "other.wav) nor a folder of stems (<track>/<stem>.wav); build mini-Slakh with `imgen data mini-slakh --out DIR`"
    )


READERS = {"slakh": read_slakh, "moisesdb": read_moisesdb, "musdb": read_musdb, "stems": read_stems_folder}


def read_tracks(root: str, split: str, report: BuildReport | None = None, layout: str = "auto") -> list[Track]:
    """Tracks of `split` from a dataset folder of `layout` (one of LAYOUTS, or "auto": detected)."""
    from imgen_jax.errors import ImgenError

    if layout == "auto":
        layout = detect_layout(root)
    if layout not in READERS:
        raise ImgenError(f"dataset layout {layout!r}: expected auto or one of {', '.join(LAYOUTS)}")
    if not os.path.isdir(root):
        raise ImgenError(f"{root}: data directory not found")
    return READERS[layout](root, split, report)
