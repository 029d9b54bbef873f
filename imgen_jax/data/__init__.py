"""Instruction data: Slakh2100 / MoisesDB / MUSDB18-HQ / folder-of-stems readers, triplets, the built stems dataset and the grain pipeline.

    imgen data mini-slakh --out data/mini-slakh          # a small Slakh-layout set rendered offline
    imgen data build --source data/mini-slakh --out data/mini-slakh-built   # optional: array_record stems

    from imgen_jax.data import TripletConfig, make_triplet_loader, make_eval_set
"""

from imgen_jax.data.pipeline import TripletIterator, TripletSource, make_eval_set, make_triplet_loader
from imgen_jax.data.tracks import (
    LAYOUTS, BuildReport, Stem, Track, detect_layout, read_moisesdb, read_musdb, read_slakh, read_stems_folder, read_tracks,
)
from imgen_jax.data.triplets import Triplet, TripletConfig, TrackInfo, sample_triplet
from imgen_jax.vocab import FOUR_STEMS, INSTRUCTION

__all__ = [
    "TripletConfig", "Triplet", "TrackInfo", "INSTRUCTION", "sample_triplet", "make_triplet_loader", "make_eval_set",
    "TripletIterator", "TripletSource", "BuildReport", "Stem", "Track", "FOUR_STEMS", "read_slakh", "read_moisesdb",
    "read_tracks", "read_musdb", "read_stems_folder", "detect_layout", "LAYOUTS",
]
