"""clap: cosine similarity of the output's CLAP audio embedding and the example's caption's text embedding
(the paper's "CLAP"; needs --clap: a converted LAION-CLAP file or a plug-in with embed_audio(wavs),
embed_text(texts), `sample_rate`)."""

import numpy as np

from imgen_jax.errors import ImgenError
from imgen_jax.eval.metrics import Metric, register


def caption(task: str, stem: str) -> str:
    """CLAP text for an example: "<stem> music", as the official `evaluation/utils.py` derives it from
    the instruction for every task (its `add` captions also list the mix's other stems, which the
    evaluation set does not carry; for `remove` it names the removed stem, so read that CLAP
    score as 'how much of the removed stem is still heard')."""
    return f"{stem} music"


def _text(clap, ctx, text: str) -> np.ndarray:
    return ctx.memo(("clap_text", text), lambda: np.asarray(clap.embed_text([text]), np.float64).reshape(-1))


def _audio(clap, clip) -> np.ndarray:
    return clip.memo("clap_audio", lambda: np.asarray(clap.embed_audio([clip.at(clap.sample_rate)]), np.float64).reshape(-1))


def prepare(outs, exs, ctx) -> None:
    """The audio embeddings of a batch's outputs and the text embeddings of its new captions, one call each."""
    clap = ctx.plugins["clap"]
    texts = sorted({caption(ctx.task, e.stem) for e in exs} - {k[1] for k in ctx.memo_keys() if k[0] == "clap_text"})
    if texts:
        emb = np.asarray(clap.embed_text(texts), np.float64)
        for t, row in zip(texts, emb.reshape(len(texts), -1)):
            ctx.memo(("clap_text", t), lambda row=row: row)
    todo = [c for c in outs if not c.has("clap_audio")]
    if todo:
        emb = np.asarray(clap.embed_audio([c.at(clap.sample_rate) for c in todo]), np.float64)
        if emb.ndim != 2 or emb.shape[0] != len(todo):
            raise ImgenError(f"clap {clap.name!r}: expected audio embeddings [{len(todo)}, D], got shape {emb.shape}")
        for c, row in zip(todo, emb):
            c.memo("clap_audio", lambda row=row: row)


def compute(out, ex, ctx) -> float:
    """cos(CLAP audio embedding of the output, CLAP text embedding of the caption)."""
    clap = ctx.plugins["clap"]
    t = _text(clap, ctx, caption(ctx.task, ex.stem))
    a = _audio(clap, out)
    if a.shape != t.shape:
        raise ImgenError(f"clap {clap.name!r}: audio embedding {a.shape} and text embedding {t.shape} differ")
    return float(a @ t / max(np.linalg.norm(a) * np.linalg.norm(t), 1e-12))


METRIC = register(Metric("clap", higher_is_better=True, compute=compute, needs=("clap",), order=50, prepare=prepare))
