"""Structural similarity (SSIM) of two images, here mel spectrograms [n_mels, frames].

As the official evaluation (torchmetrics `StructuralSimilarityIndexMeasure(data_range=1.0)`) and
scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=1.0)`: an 11 x 11 Gaussian window (sigma 1.5, truncated at 3.5 sigma), K1 = 0.01,
K2 = 0.03, C1 = (K1 L)^2, C2 = (K2 L)^2 with L = data_range, population (biased) local
variances clamped at 0, and the mean of the SSIM map over the positions where the window lies
inside the image ("valid"; skimage filters with reflect padding, then crops the border away).

torchmetrics cropped the border the same way until its PR #2721 (v1.5, September 2024); since then
it averages the whole map of the reflect-padded image. The paper's numbers (mid 2024) predate that,
so "valid" is the default; `border="reflect"` gives current torchmetrics' value.

Note data_range = 1 is what the official code uses on mel *power* spectrograms whose values are
not in [0, 1]; we keep it so numbers are comparable with the paper's.
"""

from __future__ import annotations

import numpy as np

from imgen_jax.errors import ImgenError


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> np.ndarray:
    """Normalised 1-D Gaussian [2 r + 1] with r = int(truncate * sigma + 0.5)."""
    r = int(truncate * sigma + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of [H, W] by g along both axes -> [H - k + 1, W - k + 1]."""
    from numpy.lib.stride_tricks import sliding_window_view

    k = g.size
    rows = sliding_window_view(img, k, axis=0) @ g  # [H - k + 1, W]
    return sliding_window_view(rows, k, axis=1) @ g


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03, border: str = "valid") -> float:
    """Mean SSIM of two images [H, W] (same shape, each side >= the window size, 11 by default).

    border: "valid" (mean over window positions inside the image: skimage, torchmetrics < 1.5) or
    "reflect" (reflect-pad by the window radius, mean over all H x W positions: torchmetrics >= 1.5)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ImgenError(f"SSIM: expected two images of the same [H, W] shape, got {a.shape} and {b.shape}")
    g = gaussian_window(sigma)
    if min(a.shape) < g.size:
        raise ImgenError(f"SSIM: image {a.shape} is smaller than the {g.size} x {g.size} window (clip too short)")
    if border == "reflect":
        r = g.size // 2
        a, b = np.pad(a, r, mode="reflect"), np.pad(b, r, mode="reflect")
    elif border != "valid":
        raise ImgenError(f"SSIM: border must be 'valid' or 'reflect', got {border!r}")
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = np.maximum(_filter_valid(a * a, g) - mu_a**2, 0.0)
    var_b = np.maximum(_filter_valid(b * b, g) - mu_b**2, 0.0)
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(smap.mean())


__all__ = ["ssim", "gaussian_window"]
