"""kl_sigmoid: audioldm_eval 0.0.3's `kullback_leibler_divergence_sigmoid` ("KL_Sigmoid") of the classifier's
per-class sigmoid probabilities of the target and the output (needs a classifier, as kl_softmax). The paper
reports "KL" without saying which of the two; audioldm_eval prints both."""

import numpy as np

from imgen_jax.eval.metrics import Metric, register
from imgen_jax.eval.metrics.kl_softmax import EPS, _pair, logits, prepare


def kl_sigmoid(logits_ref: np.ndarray, logits_est: np.ndarray, eps: float = EPS) -> float:
    """sum_c p_c (log p_c - log(q_c + eps)), p = sigmoid(logits_ref) (the target), q = sigmoid(logits_est)
    (the output), logits [C] each: audioldm_eval's torch `kl_div((q + eps).log(), p, reduction="sum")` over
    sigmoid probabilities. Not a divergence of distributions (the classes' probabilities do not sum to 1 and
    the 1 - p terms are absent), so it can be negative; 0 for identical logits when eps = 0."""
    a, b = _pair(logits_ref, logits_est)
    lp = -np.logaddexp(0.0, -a)
    lq = -np.logaddexp(0.0, -b)
    log_q = lq if eps == 0 else np.log(np.exp(lq) + eps)
    return float(np.sum(np.exp(lp) * (lp - log_q)))


def compute(out, ex, ctx) -> float:
    """kl_sigmoid(classes(target), classes(output))."""
    classifier = ctx.plugins["classifier"]
    return kl_sigmoid(logits(classifier, ex.target), logits(classifier, out))


METRIC = register(Metric("kl_sigmoid", higher_is_better=False, compute=compute, needs=("classifier",), order=61,
                         prepare=prepare))
