"""kl: KL divergence of the classifier's class distribution of the output from the target's
(needs a --classifier plug-in: classifier(wavs) -> logits [n, classes], `sample_rate`)."""

import numpy as np

from imgen_jax.errors import ImgenError
from imgen_jax.eval.metrics import Metric, register


def kl_softmax(logits_ref: np.ndarray, logits_est: np.ndarray) -> float:
    """KL(softmax(logits_ref) || softmax(logits_est)) in nats: logits [C] each (the target's class
    distribution against the output's, as audioldm_eval's `kl_softmax`, which the official evaluation
    uses with PANNs Cnn14 logits; audioldm_eval adds 1e-6 to the output probabilities before the
    log, we compute the exact KL)."""
    a = np.asarray(logits_ref, np.float64)
    b = np.asarray(logits_est, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ImgenError(f"KL: logits shapes {a.shape} and {b.shape} differ")
    la = a - np.logaddexp.reduce(a)
    lb = b - np.logaddexp.reduce(b)
    return float(np.sum(np.exp(la) * (la - lb)))


def logits(classifier, clip) -> np.ndarray:
    """The classifier's logits [classes] of one clip (a `scoring.Clip`)."""
    out = np.asarray(classifier([clip.at(classifier.sample_rate)]), np.float64)
    if out.ndim != 2 or out.shape[0] != 1:
        raise ImgenError(f"classifier {classifier.name!r}: expected logits [1, classes], got shape {out.shape}")
    return out[0]


def compute(out, ex, ctx) -> float:
    """KL(classes(target) || classes(output)); the target's logits are computed once per example."""
    classifier = ctx.plugins["classifier"]
    ref = ex.target.memo("kl_logits", lambda: logits(classifier, ex.target))
    return kl_softmax(ref, logits(classifier, out))


METRIC = register(Metric("kl", higher_is_better=False, compute=compute, needs=("classifier",), order=60))
