"""Scale-invariant signal-to-distortion ratio (SI-SDR) and its improvement over the input (SI-SDRi).

Definition (Le Roux et al. 2019, as torchmetrics' `scale_invariant_signal_distortion_ratio` with
`zero_mean=False`, the setting of the official Instruct-MusicGen evaluation):

    alpha  = (<est, ref> + eps) / (<ref, ref> + eps)
    SI-SDR = 10 log10((|alpha ref|^2 + eps) / (|alpha ref - est|^2 + eps))      [dB]

eps = float32 machine epsilon (torchmetrics uses the input dtype's eps; our inputs are float32
audio), so an exact copy of the reference scores a finite, very high value (~10 log10(|ref|^2 / eps))
instead of infinity. Sums run in float64.

SI-SDRi(est, inp, ref) = SI-SDR(est, ref) - SI-SDR(inp, ref): how much closer to the target the
edit got than the unedited input was (defined for `remove` and `extract`, where the target is a
sub-mix of the input).
"""

from __future__ import annotations

import numpy as np

from imgen_jax.errors import ImgenError

EPS = float(np.finfo(np.float32).eps)


def _pair(est: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    est = np.asarray(est, np.float64)
    ref = np.asarray(ref, np.float64)
    if est.shape != ref.shape:
        raise ImgenError(f"SI-SDR: estimate shape {est.shape} differs from reference shape {ref.shape}")
    if est.shape[-1] == 0:
        raise ImgenError("SI-SDR: empty signals")
    return est, ref


def si_sdr(est: np.ndarray, ref: np.ndarray, eps: float = EPS) -> np.ndarray:
    """SI-SDR in dB of est against ref, both [..., N] -> [...] float64 (per leading index)."""
    est, ref = _pair(est, ref)
    alpha = (np.sum(est * ref, -1, keepdims=True) + eps) / (np.sum(ref * ref, -1, keepdims=True) + eps)
    scaled = alpha * ref
    noise = scaled - est
    return 10.0 * np.log10((np.sum(scaled * scaled, -1) + eps) / (np.sum(noise * noise, -1) + eps))


def si_sdri(est: np.ndarray, inp: np.ndarray, ref: np.ndarray, eps: float = EPS) -> np.ndarray:
    """SI-SDR improvement in dB: si_sdr(est, ref) - si_sdr(inp, ref); all [..., N] -> [...]."""
    return si_sdr(est, ref, eps) - si_sdr(inp, ref, eps)


__all__ = ["si_sdr", "si_sdri", "EPS"]
