"""clap: cosine similarity of the output's CLAP audio embedding and the example's caption's text embedding
(needs a --clap plug-in: embed_audio(wavs) and embed_text(texts), `sample_rate`)."""

import numpy as np

from imgen_jax.errors import ImgenError
from imgen_jax.eval.metrics import Metric, register


def caption(task: str, stem: str) -> str:
    """CLAP text for an example: "<stem> music", as the official `evaluation/utils.py` derives it from
    the instruction for every task (its `add` captions also list the mix's other stems, which the
    evaluation set does not carry; for `remove` it names the removed stem, so read that CLAP
    score as 'how much of the removed stem is still heard')."""
    return f"{stem} music"


def compute(out, ex, ctx) -> float:
    """cos(CLAP audio embedding of the output, CLAP text embedding of the caption)."""
    clap = ctx.plugins["clap"]
    text = caption(ctx.task, ex.stem)
    t = ctx.memo(("clap_text", text), lambda: np.asarray(clap.embed_text([text]), np.float64).reshape(-1))
    a = np.asarray(clap.embed_audio([out.at(clap.sample_rate)]), np.float64).reshape(-1)
    if a.shape != t.shape:
        raise ImgenError(f"clap {clap.name!r}: audio embedding {a.shape} and text embedding {t.shape} differ")
    return float(a @ t / max(np.linalg.norm(a) * np.linalg.norm(t), 1e-12))


METRIC = register(Metric("clap", higher_is_better=True, compute=compute, needs=("clap",), order=50))
