"""mel_l1: mean absolute difference of the output's and the target's log-mel spectrograms (imgen_jax.eval.mel)."""

from imgen_jax.eval.mel import mel_l1
from imgen_jax.eval.metrics import Metric, register


def compute(out, ex, ctx) -> float:
    """Mean |log mel(output) - log mel(target)|; 0 for identical audio."""
    return mel_l1(out.mel, ex.target.mel, ctx.mel_cfg)


METRIC = register(Metric("mel_l1", higher_is_better=False, compute=compute, order=40))
