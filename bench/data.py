"""Triplets per second of the data pipeline (grain, 5 s clips at 32 kHz, batches of 8) on this machine.

    python bench/data.py [--data DIR] [--tracks 12] [--batches 20] [--threads 2]

Without --data, renders a mini-Slakh set (`imgen data mini-slakh`) into a temporary folder first.
Measures the pipeline reading the dataset files directly (decode + resample per track, cached) and
reading a built dataset (`imgen data build`: int16 array_record chunks), after one warm-up batch.
The last line is `triplets_per_s: X` for the built dataset (the training path).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import _common  # noqa: F401  (repo on sys.path)


def rate(data_dir: str, batches: int, threads: int, batch: int = 8) -> float:
    from imgen_jax.data import TripletConfig, make_triplet_loader

    it = make_triplet_loader(data_dir, "train", TripletConfig(clip_seconds=5.0), batch_size=batch, seed=0,
                             num_threads=threads)
    next(it)  # warm-up: opens files, fills the prefetch buffer
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a Slakh2100-layout folder (default: render mini-Slakh)")
    ap.add_argument("--tracks", type=int, default=12)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-data-")
    data = args.data
    if data is None:
        from imgen_jax.data.mini_slakh import render_mini_slakh

        data = os.path.join(tmp, "mini-slakh")
        t0 = time.perf_counter()
        render_mini_slakh(data, tracks=args.tracks, progress=False)
        print(f"rendered mini-Slakh ({args.tracks} tracks) in {time.perf_counter() - t0:.1f} s")
    from imgen_jax.data.build import build_dataset

    built = os.path.join(tmp, "built")
    t0 = time.perf_counter()
    build_dataset(data, built, progress=False)
    print(f"built the stems dataset in {time.perf_counter() - t0:.1f} s")
    files = rate(data, args.batches, args.threads)
    print(f"from the files: {files:.1f} triplets/s")
    fast = rate(built, args.batches, args.threads)
    print(f"from the built dataset: {fast:.1f} triplets/s ({os.cpu_count()} cores, {args.threads} threads, 5 s clips)")
    print(f"triplets_per_s: {fast:.1f}")


if __name__ == "__main__":
    main()
