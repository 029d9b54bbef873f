"""kl_softmax: KL divergence of the classifier's class distribution of the output from the target's,
softmax over the classes, as audioldm_eval 0.0.3's `kullback_leibler_divergence_softmax` (its "KL"; needs
a classifier: --cnn14 PATH, PANNs Cnn14 at 16 kHz as the paper's evaluation, or a --classifier plug-in:
classifier(wavs) -> logits [n, classes], `sample_rate`)."""

import numpy as np

from imgen_jax.errors import ImgenError
from imgen_jax.eval.metrics import Metric, register

EPS = 1e-6  # audioldm_eval adds it to the output's probabilities before the log


def _pair(logits_ref, logits_est) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(logits_ref, np.float64)
    b = np.asarray(logits_est, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ImgenError(f"KL: logits shapes {a.shape} and {b.shape} differ")
    return a, b


def kl_softmax(logits_ref: np.ndarray, logits_est: np.ndarray, eps: float = EPS) -> float:
    """sum_c p_c (log p_c - log(q_c + eps)) in nats, p = softmax(logits_ref) (the target), q =
    softmax(logits_est) (the output); logits [C] each. eps = 1e-6 is audioldm_eval's (torch
    `kl_div((q + eps).log(), p, reduction="sum")` for one example); eps = 0 gives the exact KL(p || q)."""
    a, b = _pair(logits_ref, logits_est)
    lp = a - np.logaddexp.reduce(a)
    lq = b - np.logaddexp.reduce(b)
    log_q = lq if eps == 0 else np.log(np.exp(lq) + eps)
    return float(np.sum(np.exp(lp) * (lp - log_q)))


def logits(classifier, clip) -> np.ndarray:
    """The classifier's logits [classes] of one clip (a `scoring.Clip`), computed once per clip."""

    def run():
        out = np.asarray(classifier([clip.at(classifier.sample_rate)]), np.float64)
        if out.ndim != 2 or out.shape[0] != 1:
            raise ImgenError(f"classifier {classifier.name!r}: expected logits [1, classes], got shape {out.shape}")
        return out[0]

    return clip.memo("cls_logits", run)


def prepare(outs, exs, ctx) -> None:
    """The logits of every output and target of a batch not yet classified, in one classifier call."""
    classifier = ctx.plugins["classifier"]
    todo, seen = [], set()
    for c in [*outs, *(e.target for e in exs)]:
        if not c.has("cls_logits") and id(c) not in seen:
            seen.add(id(c))
            todo.append(c)
    if not todo:
        return
    out = np.asarray(classifier([c.at(classifier.sample_rate) for c in todo]), np.float64)
    if out.ndim != 2 or out.shape[0] != len(todo):
        raise ImgenError(f"classifier {classifier.name!r}: expected logits [{len(todo)}, classes], got shape {out.shape}")
    for c, row in zip(todo, out):
        c.memo("cls_logits", lambda row=row: row)


def compute(out, ex, ctx) -> float:
    """kl_softmax(classes(target), classes(output))."""
    classifier = ctx.plugins["classifier"]
    return kl_softmax(logits(classifier, ex.target), logits(classifier, out))


METRIC = register(Metric("kl_softmax", higher_is_better=False, compute=compute, needs=("classifier",), order=60,
                         prepare=prepare))
