"""fad: Fréchet audio distance per embedder, between the pooled Gaussian of a system's output embeddings
and that of the targets (imgen_jax.eval.fad); columns fad_<embedder>."""

from imgen_jax.eval.fad import GaussianStats, fad
from imgen_jax.eval.metrics import Metric, register


def compute(system_stats, target_stats) -> float:
    """FD of the pooled statistics (lists of GaussianStats, one per clip)."""
    return fad(GaussianStats.pool(system_stats), GaussianStats.pool(target_stats))


METRIC = register(Metric("fad", higher_is_better=False, compute=compute, kind="set", order=100))
