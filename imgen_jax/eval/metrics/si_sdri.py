"""si_sdri: SI-SDR improvement in dB, SI-SDR(output, target) - SI-SDR(input, target) (remove / extract only)."""

from imgen_jax.eval.metrics import Metric, register
from imgen_jax.eval.metrics.si_sdr import SISDR_TASKS
from imgen_jax.eval.sisdr import si_sdr


def compute(out, ex, ctx) -> float:
    """How much closer to the target the output is than the input, on 16 kHz audio."""
    return float(si_sdr(out.at16, ex.target.at16)) - float(si_sdr(ex.input.at16, ex.target.at16))


METRIC = register(Metric("si_sdri", higher_is_better=True, compute=compute, tasks=SISDR_TASKS, unit="dB", order=20))
