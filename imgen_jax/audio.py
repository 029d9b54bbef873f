"""Audio files in and out: reading any rate / channel count into the model's format, atomic wav
writing, and spectrogram pictures.

Every problem with an input file (unreadable, empty, NaN / inf samples) is one ImgenError naming
the file. Outputs are written to a temporary file in the same directory and renamed into place,
so a failed or interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from imgen_jax.errors import ImgenError
from imgen_jax.files import atomic_file


def read_audio(path: str | os.PathLike, sample_rate: int, channels: int = 1) -> np.ndarray:
    """Read an audio file as float32 [channels, N] at `sample_rate` (down-mixed / resampled as needed)."""
    import soundfile as sf

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImgenError(f"{path}: audio file not found")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)  # [N, C]
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError on bad files
        raise ImgenError(f"{path}: unreadable audio ({str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__})") from None
    if data.shape[0] == 0:
        raise ImgenError(f"{path}: the audio is empty (0 samples)")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise ImgenError(f"{path}: {bad} samples are NaN or infinite")
    try:
        return conform_audio(data.T, sr, sample_rate, channels)
    except ImgenError as e:
        raise ImgenError(f"{path}: {e}") from None


def conform_audio(wav: np.ndarray, sr: int, sample_rate: int, channels: int = 1) -> np.ndarray:
    """[C, N] float at `sr` -> float32 [channels, M] at `sample_rate` (mean down-mix or repeat; polyphase resampling)."""
    wav = np.asarray(wav, np.float32)
    if wav.shape[0] != channels:
        if channels == 1:
            wav = wav.mean(axis=0, keepdims=True)
        elif wav.shape[0] == 1:
            wav = np.repeat(wav, channels, axis=0)
        else:
            raise ImgenError(f"cannot convert {wav.shape[0]} audio channels to {channels}")
    if sr != sample_rate:
        from scipy.signal import resample_poly

        g = math.gcd(int(sr), int(sample_rate))
        wav = resample_poly(wav, sample_rate // g, sr // g, axis=-1).astype(np.float32)
    return wav


def write_wav(path: str | os.PathLike, wav: np.ndarray, sample_rate: int) -> str:
    """Write float audio [C, N] (or [N]) as 16-bit PCM wav, atomically; returns the path."""
    import soundfile as sf

    path = os.path.abspath(os.fspath(path))
    arr = np.asarray(wav, np.float32)
    arr = arr[None] if arr.ndim == 1 else arr
    check_writable(path)
    with atomic_file(path, ".wav") as tmp:
        sf.write(tmp, np.clip(arr.T, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return path


def check_writable(path: str | os.PathLike) -> str:
    """The absolute path if its directory exists and is writable, else one ImgenError."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    if os.path.isdir(path):
        raise ImgenError(f"{path}: is a directory, expected an output file path")
    if not os.path.isdir(parent):
        raise ImgenError(f"{parent}: output directory does not exist")
    if not os.access(parent, os.W_OK):
        raise ImgenError(f"{parent}: output directory is not writable")
    return path


def save_spectrograms(path: str | os.PathLike, wavs: Sequence[np.ndarray], titles: Sequence[str], sample_rate: int) -> str:
    """One PNG with a log-magnitude spectrogram panel per mono wav [N] (side by side), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = os.path.abspath(os.fspath(path))
    fig, axes = plt.subplots(1, len(wavs), figsize=(5 * len(wavs), 3.6), squeeze=False, sharey=True)
    for ax, wav, title in zip(axes[0], wavs, titles):
        wav = np.asarray(wav, np.float32).reshape(-1)
        nfft = 1024 if wav.size >= 1024 else max(16, 2 ** int(math.log2(max(wav.size, 16))))
        ax.specgram(wav + 1e-9, NFFT=nfft, Fs=sample_rate, noverlap=nfft // 2, cmap="magma", scale="dB")
        ax.set_title(title)
        ax.set_xlabel("time (s)")
    axes[0][0].set_ylabel("frequency (Hz)")
    fig.tight_layout()
    try:
        check_writable(path)
        with atomic_file(path, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path

