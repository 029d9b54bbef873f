"""MusicGen's delay interleaving pattern: build and revert.

Codebook k is delayed by `delays[k]` steps (0, 1, 2, 3 for mono K=4; 0, 0, 1, 1, 2, 2, 3, 3
for stereo K=8, where the left/right codebooks of one level share a delay). A pattern
sequence of T frames has S = T + max_delay + 1 steps: step 0 is all special tokens, and at
step s codebook k holds frame s - 1 - delays[k] (the special token where that frame is
outside 0..T-1). This is the layout of audiocraft's DelayedPatternProvider and of
transformers' `build_delay_pattern_mask` (whose column 0 is the decoder start token).

The model output at step s predicts the tokens placed at step s + 1.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def codebook_delays(num_codebooks: int, audio_channels: int = 1) -> tuple[int, ...]:
    """Delay of each codebook: k for mono, k // 2 for stereo (interleaved left/right codebooks)."""
    if audio_channels == 1:
        return tuple(range(num_codebooks))
    if audio_channels == 2 and num_codebooks % 2 == 0:
        return tuple(k // 2 for k in range(num_codebooks))
    raise ValueError(f"unsupported pattern: {num_codebooks} codebooks with {audio_channels} audio channels")


def pattern_length(num_frames: int, delays: tuple[int, ...]) -> int:
    """Number of pattern steps S holding `num_frames` frames: T + max_delay + 1."""
    return num_frames + max(delays) + 1


def frame_index(num_steps: int, delays: tuple[int, ...]) -> np.ndarray:
    """[K, S] int: the frame held by codebook k at step s (s - 1 - delays[k]; may be out of range)."""
    steps = np.arange(num_steps)[None, :]
    return steps - 1 - np.asarray(delays)[:, None]


def valid_steps(num_frames: int, num_steps: int, delays: tuple[int, ...]) -> np.ndarray:
    """[K, S] bool: True where step s of codebook k holds a real frame in 0..num_frames-1."""
    f = frame_index(num_steps, delays)
    return (f >= 0) & (f < num_frames)


def build_pattern(codes, special_token: int, delays: tuple[int, ...], num_steps: int | None = None):
    """Interleave codes [B, K, T] into the delay pattern [B, K, S] (S = T + max_delay + 1 by default).

    Positions without a frame hold `special_token`. Works on numpy and jax arrays.
    """
    xp = jnp if not isinstance(codes, np.ndarray) else np
    B, K, T = codes.shape
    if K != len(delays):
        raise ValueError(f"codes have {K} codebooks, the pattern has {len(delays)}")
    S = pattern_length(T, delays) if num_steps is None else num_steps
    f = frame_index(S, delays)  # [K, S]
    valid = (f >= 0) & (f < T)
    idx = np.clip(f, 0, max(T - 1, 0))
    gathered = xp.take_along_axis(codes, xp.broadcast_to(xp.asarray(idx)[None], (B, K, S)), axis=2)
    return xp.where(xp.asarray(valid)[None], gathered, xp.asarray(special_token, dtype=codes.dtype))


def revert_pattern(seq, delays: tuple[int, ...], num_frames: int | None = None):
    """Undo `build_pattern`: seq [B, K, S] -> codes [B, K, T] with T = S - max_delay - 1 by default.

    Frame t of codebook k is read from step t + 1 + delays[k].
    """
    xp = jnp if not isinstance(seq, np.ndarray) else np
    B, K, S = seq.shape
    T = S - max(delays) - 1 if num_frames is None else num_frames
    if T < 0 or T + max(delays) + 1 > S:
        raise ValueError(f"a pattern of {S} steps cannot hold {T} frames with delays {delays}")
    steps = np.arange(T)[None, :] + 1 + np.asarray(delays)[:, None]  # [K, T]
    return xp.take_along_axis(seq, xp.broadcast_to(xp.asarray(steps)[None], (B, K, T)), axis=2)
