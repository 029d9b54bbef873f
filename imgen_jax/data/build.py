"""`imgen data build`: a tfds dataset (array_record files, no TensorFlow) of every usable stem at the model's rate.

One record per chunk of a track (default 5 s): all its stems as int16 [stems, chunk]; records are
written in track order (shuffling off), so a track is a contiguous run of records. The index
`OUT/imgen_stems.json` lists, per split, each track's classes, length and first record, and the
build report (every skipped stem / track / split with its reason). Triplets are cut from these
stems on the fly by the data pipeline (imgen_jax.data.pipeline), so one build serves every task,
stem option and clip length.

    OUT/imgen_stems.json
    OUT/tfds/imgen_stems/<layout>/1.0.0/imgen_stems-<split>.array_record-NNNNN-of-NNNNN, dataset_info.json, ...

The whole build happens in a temporary folder next to OUT, renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
from typing import Callable, Sequence

import numpy as np

from imgen_jax.data.sources import INDEX_FILE, decode_stem, resampled_length
from imgen_jax.data.tracks import SPLITS, BuildReport, Track, detect_layout, read_tracks
from imgen_jax.errors import ImgenError
from imgen_jax.files import atomic_dir

VERSION = "1.0.0"


@functools.lru_cache(maxsize=None)
def _builder_class():
    """The tfds builder class (defined on first use: importing tfds costs a second)."""
    import tensorflow_datasets as tfds

    @dataclasses.dataclass
    class StemsConfig(tfds.core.BuilderConfig):
        tracks: dict = dataclasses.field(default_factory=dict, repr=False)   # split -> [Track]
        sample_rate: int = 32000
        chunk_samples: int = 160000
        report: BuildReport | None = dataclasses.field(default=None, repr=False)
        decoded: dict = dataclasses.field(default_factory=dict, repr=False)  # track -> (classes, ids, samples) or None
        on_track: Callable[[], None] | None = dataclasses.field(default=None, repr=False)

    class ImgenStems(tfds.core.GeneratorBasedBuilder):
        """Stems of Slakh2100 / MoisesDB tracks as int16 chunks at one sample rate."""

        VERSION = tfds.core.Version(VERSION)
        BUILDER_CONFIGS = []

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="Stems of multitrack music, int16 chunks [stems, samples], for instruction triplets.",
                features=tfds.features.FeaturesDict({
                    "track": tfds.features.Text(),
                    "chunk": np.int32,
                    "classes": tfds.features.Sequence(tfds.features.Text()),
                    "stem_ids": tfds.features.Sequence(tfds.features.Text()),
                    "audio": tfds.features.Tensor(shape=(None, None), dtype=np.int16, encoding="bytes"),
                }),
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(s) for s, ts in self.builder_config.tracks.items() if ts}

        def _generate_examples(self, split):
            cfg = self.builder_config
            for track in cfg.tracks[split]:
                for key, ex in _track_examples(track, cfg.sample_rate, cfg.chunk_samples, cfg.report, cfg.decoded):
                    yield key, ex
                if cfg.on_track is not None:
                    cfg.on_track()

    return StemsConfig, ImgenStems


def _track_examples(track: Track, sample_rate: int, chunk: int, report: BuildReport, decoded: dict):
    """(key, example) per chunk of a track; stems that fail to decode are dropped (reported).
    decoded[track name] becomes (classes, stem ids, samples) of what was written, or None."""
    n = resampled_length(track.frames, track.sample_rate, sample_rate)
    stems, audio = [], []
    for s in track.stems:
        try:
            x = decode_stem(s.paths, sample_rate, n)
        except ImgenError as e:
            report.skip("stem", f"{track.name}/{s.id}", str(e))
            continue
        stems.append(s)
        audio.append(np.round(np.clip(x, -1.0, 32767 / 32768) * 32768).astype(np.int16))
    if len(stems) < 2:
        report.skip("track", track.name, f"{len(stems)} stem(s) decode; an instruction needs at least 2")
        decoded[track.name] = None
        return
    decoded[track.name] = (tuple(s.inst_class for s in stems), tuple(s.id for s in stems), n)
    full = np.stack(audio)
    for k in range(-(-n // chunk)):
        yield f"{track.name}/{k:06d}", {
            "track": track.name, "chunk": k, "classes": [s.inst_class for s in stems],
            "stem_ids": [s.id for s in stems], "audio": full[:, k * chunk : (k + 1) * chunk],
        }


def build_dataset(
    source_dir: str,
    out_dir: str,
    sample_rate: int = 32000,
    chunk_seconds: float = 5.0,
    splits: Sequence[str] = SPLITS,
    overwrite: bool = False,
    progress: bool = True,
    layout: str = "auto",
) -> dict:
    """Build the stems dataset of a dataset folder (layout: imgen_jax.data.tracks.LAYOUTS or "auto") into
    `out_dir`; returns the build report."""
    from tqdm import tqdm

    layout = detect_layout(source_dir) if layout == "auto" else layout
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
        raise ImgenError(f"{out_dir} exists and is not empty (pass --overwrite to replace it)")
    report = BuildReport()
    tracks = {s: read_tracks(source_dir, s, report, layout) for s in splits}
    total = sum(len(v) for v in tracks.values())
    if total == 0:
        raise ImgenError(f"{source_dir}: no usable tracks in splits {list(splits)}")
    with atomic_dir(out_dir) as tmp:
        import absl.logging
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()  # our bar counts tracks
        absl.logging.set_verbosity(absl.logging.ERROR)
        StemsConfig, ImgenStems = _builder_class()
        bar = tqdm(total=total, desc="build", unit="track", disable=not progress)
        cfg = StemsConfig(name=layout, tracks=tracks, sample_rate=sample_rate,
                          chunk_samples=int(round(chunk_seconds * sample_rate)), report=report, on_track=bar.update)
        builder = ImgenStems(config=cfg, data_dir=os.path.join(tmp, "tfds"), file_format="array_record")
        with contextlib.redirect_stdout(io.StringIO()):  # tfds prints "Downloading and preparing ..."
            builder.download_and_prepare()
        bar.close()
        index = {"layout": layout, "source": os.path.abspath(source_dir), "sample_rate": sample_rate,
                 "chunk_samples": cfg.chunk_samples, "tfds_dir": os.path.relpath(builder.data_dir, tmp), "splits": {}}
        for split, ts in tracks.items():
            entries, first = [], 0
            for t in ts:
                dec = cfg.decoded.get(t.name)
                if dec is None:
                    continue
                classes, ids, n = dec
                chunks = -(-n // cfg.chunk_samples)
                entries.append({"name": t.name, "classes": list(classes), "stem_ids": list(ids), "num_samples": n,
                                "first_record": first, "num_chunks": chunks})
                first += chunks
            index["splits"][split] = entries
            report.tracks[split] = len(entries)
        index["report"] = report.to_dict()
        with open(os.path.join(tmp, INDEX_FILE), "w") as f:
            json.dump(index, f, indent=1)
        _check_order(tmp, index)
    return report.to_dict()


def _check_order(root: str, index: dict) -> None:
    """Records must lie in track order: check each track's first and last record."""
    from imgen_jax.data.sources import BuiltSource

    for split, entries in index["splits"].items():
        if not entries:
            continue
        src = BuiltSource(root, split)
        for e in entries:
            for k in (0, e["num_chunks"] - 1):
                rec = src._records[e["first_record"] + k]
                if rec["track"].decode() != e["name"] or int(rec["chunk"]) != k:
                    raise ImgenError(f"tfds wrote {split} records out of track order (at {e['name']} chunk {k})")
