"""p_demucs: success rate of the edit judged by a source separator (the paper's P-Demucs; needs --demucs,
a converted HTDemucs file, or a separator plug-in). The output is separated (imgen_jax.eval.separation);
the target stem's source counts as present when its RMS level over the clip exceeds THRESHOLD_DB. An
example succeeds when the stem is present (add, extract) or absent (remove); the row's mean is the
success rate in [0, 1].

The official evaluation code (ldzhangyx/instruct-MusicGen, every commit) has no P-Demucs; the threshold
is ours: -40 dBFS, an RMS of 0.01, the amplitude the official Slakh loader treats as silence (a target
with more than 70 % of its samples below 0.01 in magnitude is redrawn).
"""

from imgen_jax.eval.metrics import Metric, register
from imgen_jax.eval.separation import rms_db, separate, source_for

THRESHOLD_DB = -40.0


def present(separator, clip, stem: str) -> bool:
    """Whether the separator finds `stem` in the clip (a `scoring.Clip`) above THRESHOLD_DB RMS."""
    levels = clip.memo("demucs_rms_db", lambda: {k: rms_db(v) for k, v in separate(separator, clip.wav, clip.ctx.sr).items()})
    return levels[source_for(stem, separator.sources)] > THRESHOLD_DB


def compute(out, ex, ctx) -> float:
    """1.0 when the edit did what it was asked (stem present after add / extract, absent after remove), else 0.0."""
    found = present(ctx.plugins["separator"], out, ex.stem)
    return float(found != (ctx.task == "remove"))


METRIC = register(Metric("p_demucs", higher_is_better=True, compute=compute, needs=("separator",), order=70))
