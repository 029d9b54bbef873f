"""si_sdr: SI-SDR of the output against the target in dB (imgen_jax.eval.sisdr; remove / extract only,
as the official evaluation)."""

from imgen_jax.eval.metrics import Metric, register
from imgen_jax.eval.sisdr import si_sdr

SISDR_TASKS = ("remove", "extract")


def compute(out, ex, ctx) -> float:
    """SI-SDR(output, target) on 16 kHz audio."""
    return float(si_sdr(out.at16, ex.target.at16))


METRIC = register(Metric("si_sdr", higher_is_better=True, compute=compute, tasks=SISDR_TASKS, unit="dB", order=10))
