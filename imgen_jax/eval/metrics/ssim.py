"""ssim: SSIM of the output's and the target's mel power spectrograms with data_range 1 (the official
evaluation's; imgen_jax.eval.ssim)."""

from imgen_jax.eval.metrics import Metric, register
from imgen_jax.eval.ssim import ssim


def compute(out, ex, ctx) -> float:
    """Mean SSIM of the two mel spectrograms [n_mels, frames]."""
    return ssim(out.mel, ex.target.mel, data_range=1.0)


METRIC = register(Metric("ssim", higher_is_better=True, compute=compute, order=30))
