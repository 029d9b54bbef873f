"""A source separator (HTDemucs, `imgen eval --demucs`) applied to mono clips: the P-Demucs metric and the
`htdemucs` baseline row.

A separator (imgen_jax.eval.plugins kind "separator") has .sample_rate, .sources (HTDemucs: drums, bass,
other, vocals), .channels and .separate(mix [channels, n]) -> [len(sources), channels, n]. A mono clip
is resampled to the separator's rate and repeated on every channel (as demucs does with mono files);
each separated source is averaged over the channels and resampled back.
"""

from __future__ import annotations

import numpy as np

from imgen_jax.errors import ImgenError

# stems of the datasets (lower case) -> HTDemucs source; every other stem (piano, guitar, strings...) is "other"
SOURCE_OF_STEM = {"drums": "drums", "drum": "drums", "bass": "bass", "vocals": "vocals", "vocal": "vocals",
                  "voice": "vocals"}


def source_for(stem: str, sources) -> str:
    """The separator source that holds `stem` ("Drums" -> drums, "Piano" -> other)."""
    name = SOURCE_OF_STEM.get(str(stem).lower(), "other")
    if name not in sources:
        raise ImgenError(f"separator sources {', '.join(sources)} have no {name!r} for stem {stem!r}")
    return name


def separate(separator, wav: np.ndarray, sr: int) -> dict[str, np.ndarray]:
    """{source: mono float32 [N] at sr} of the mono clip wav [N] at sr."""
    from imgen_jax.eval.mel import resample

    wav = np.asarray(wav, np.float32).reshape(-1)
    x = resample(wav, sr, separator.sample_rate)
    mix = np.repeat(x[None], int(separator.channels), axis=0)
    out = np.asarray(separator.separate(mix), np.float32)
    sources = tuple(separator.sources)
    if out.shape != (len(sources), mix.shape[0], mix.shape[1]):
        raise ImgenError(f"separator {getattr(separator, 'name', '?')!r}: expected sources {[len(sources), *mix.shape]}, "
                         f"got shape {list(out.shape)}")
    res = {}
    for name, s in zip(sources, out.mean(axis=1)):
        y = resample(s, separator.sample_rate, sr)
        res[name] = y[: wav.size] if y.size >= wav.size else np.pad(y, (0, wav.size - y.size))
    return res


def rms_db(x: np.ndarray) -> float:
    """RMS level of x in dB full scale (20 log10 RMS; -inf for silence)."""
    r = float(np.sqrt(np.mean(np.square(np.asarray(x, np.float64))))) if np.size(x) else 0.0
    return 20.0 * np.log10(r) if r > 0 else float("-inf")


def baseline(separator, task: str, stem: str, mix: np.ndarray, sr: int) -> np.ndarray:
    """The separation baseline's output for an edit of the mono mix [N] at sr: extract -> the separated
    stem's source; remove -> the mix minus that source (the rest of the mix untouched)."""
    if task not in ("extract", "remove"):
        raise ImgenError(f"the separation baseline covers extract and remove, not {task!r}")
    est = separate(separator, mix, sr)[source_for(stem, separator.sources)]
    return est if task == "extract" else np.asarray(mix, np.float32).reshape(-1) - est


__all__ = ["source_for", "separate", "rms_db", "baseline", "SOURCE_OF_STEM"]
