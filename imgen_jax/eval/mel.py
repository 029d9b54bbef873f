"""Mel spectrograms with the settings of the official Instruct-MusicGen evaluation, and mel L1.

The official `evaluation/main.py` resamples every file to 16 kHz and takes
`torchaudio.transforms.MelSpectrogram(sample_rate=16000)` with its defaults, which `MelConfig()`
reproduces in numpy:

    n_fft 400, win_length 400 (periodic Hann), hop 200 (12.5 ms), center=True with reflect padding
    (frames = 1 + N // hop), power 2 (|STFT|^2), 128 mel bands on the HTK scale
    (mel = 2595 log10(1 + f / 700)) from 0 Hz to 8 kHz, triangular filters without area
    normalisation (torchaudio's `melscale_fbanks(norm=None, mel_scale="htk")`).

With n_fft 400 at 16 kHz the FFT bins are 40 Hz apart, narrower than the lowest mel bands, so some
low bands hold no bin and are identically 0 (torchaudio warns about this; we keep the bands so the
shapes and values match the official ones).

Differences from the official pipeline: resampling is scipy's polyphase filter
(`imgen_jax.audio.conform_audio`) instead of torchaudio's windowed-sinc `Resample`; the two agree
to within the filters' transition band (only frequencies near 8 kHz differ).

mel L1 (not in the official code; a common reconstruction metric) is the mean absolute difference
of natural-log mel spectrograms, log(mel + 1e-5), over all bands and frames: 0 for identical audio.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from imgen_jax.errors import ImgenError


@dataclasses.dataclass(frozen=True)
class MelConfig:
    """Mel-spectrogram settings (defaults: the official evaluation, i.e. torchaudio's defaults at 16 kHz)."""

    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 200
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None  # None: sample_rate / 2
    power: float = 2.0
    log_floor: float = 1e-5  # mel L1 / log-mel: log(mel + log_floor)


def hz_to_mel(f):
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m):
    """Inverse of `hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(cfg: MelConfig = MelConfig()) -> np.ndarray:
    """Triangular HTK mel filters [n_fft // 2 + 1, n_mels] float64 (torchaudio `melscale_fbanks`, norm None)."""
    n_freqs = cfg.n_fft // 2 + 1
    f_max = cfg.sample_rate / 2 if cfg.f_max is None else cfg.f_max
    all_freqs = np.linspace(0, cfg.sample_rate // 2, n_freqs)
    f_pts = mel_to_hz(np.linspace(hz_to_mel(cfg.f_min), hz_to_mel(f_max), cfg.n_mels + 2))
    f_diff = f_pts[1:] - f_pts[:-1]  # [n_mels + 1]
    slopes = f_pts[None, :] - all_freqs[:, None]  # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(0.0, np.minimum(down, up))


def mel_spectrogram(wav: np.ndarray, cfg: MelConfig = MelConfig()) -> np.ndarray:
    """Mono wav [N] float at cfg.sample_rate -> mel power spectrogram [n_mels, 1 + N // hop] float64."""
    x = np.asarray(wav, np.float64).reshape(-1)
    pad = cfg.n_fft // 2
    if x.size <= pad:
        raise ImgenError(f"mel spectrogram: {x.size} samples is too short (need more than {pad} at {cfg.sample_rate} Hz)")
    x = np.pad(x, pad, mode="reflect")
    frames = 1 + (x.size - cfg.n_fft) // cfg.hop_length
    idx = np.arange(cfg.n_fft)[None, :] + cfg.hop_length * np.arange(frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.n_fft) / cfg.n_fft)  # periodic Hann
    spec = np.abs(np.fft.rfft(x[idx] * window, n=cfg.n_fft, axis=-1)) ** cfg.power  # [frames, n_freqs]
    return (spec @ mel_filterbank(cfg)).T


def resample(wav: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """Mono wav [N] at sr -> float32 [M] at target_sr (polyphase; identity when the rates match)."""
    from imgen_jax.audio import conform_audio

    return conform_audio(np.asarray(wav, np.float32).reshape(1, -1), int(sr), int(target_sr), 1)[0]


def log_mel(mel: np.ndarray, cfg: MelConfig = MelConfig()) -> np.ndarray:
    """Natural-log mel: log(mel + cfg.log_floor), any shape."""
    return np.log(np.asarray(mel, np.float64) + cfg.log_floor)


def mel_l1(mel_est: np.ndarray, mel_ref: np.ndarray, cfg: MelConfig = MelConfig()) -> float:
    """Mean |log(mel_est + floor) - log(mel_ref + floor)| of two mel spectrograms [n_mels, T] (same shape)."""
    if np.shape(mel_est) != np.shape(mel_ref):
        raise ImgenError(f"mel L1: shapes differ, {np.shape(mel_est)} vs {np.shape(mel_ref)}")
    return float(np.mean(np.abs(log_mel(mel_est, cfg) - log_mel(mel_ref, cfg))))


__all__ = ["MelConfig", "mel_filterbank", "mel_spectrogram", "resample", "log_mel", "mel_l1", "hz_to_mel", "mel_to_hz"]
