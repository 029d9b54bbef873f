"""Instruct-MusicGen: a frozen MusicGen LM plus the trainable `InstructAdapters` (imgen_jax.instruct.fusion).

Training forward (the official `Instructor.forward(mode="train")` + `LMModel.compute_predictions`):

    cond_ext = cond_codes with one frame of the special token appended        [B, K, T+1]
    fusion = instruct_fusion(lm, adapters, cond_ext)                           prefixes once per clip
    logits, mask = lm.frame_logits(target_codes, memory, None, fusion=fusion)  query i reads prefix i
    loss = mean cross-entropy of logits[mask] against target_codes[mask]

`memory` is `lm.text_memory(t5_hidden, text_mask)` (output_proj of the T5 states, padded rows
zeroed) and the cross-attention uses no key mask, as the official code.

Decoding: `decode_fusion` computes the prefixes once per clip with the clamp of the official crop:
the step at input position p reads q_j[min(p, N - 1)], N = frames decoded, the prefix covering the
first N + 1 frames of the condition with its special frame appended. Pass it as
`generate(..., fusion=...)`; `imgen_jax.instruct.edit` runs whole edits (codec + text + windows + decode).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from imgen_jax import xla
from imgen_jax.errors import ImgenError
from imgen_jax.instruct.fusion import InstructAdapters, InstructFusion, instruct_fusion
from imgen_jax.models.lm import MusicGenLM


def append_special(cond_codes: jax.Array, special_token: int) -> jax.Array:
    """cond_codes [B,K,T] -> [B,K,T+1] with one frame of `special_token` appended (the official forward
    writes the literal 2048, MusicGen's card = special token id)."""
    B, K, _ = cond_codes.shape
    return jnp.concatenate([cond_codes, jnp.full((B, K, 1), special_token, cond_codes.dtype)], axis=-1)


def _check_codes(lm: MusicGenLM, target_codes: jax.Array, cond_codes: jax.Array) -> None:
    K = lm.cfg.num_codebooks
    if target_codes.ndim != 3 or target_codes.shape[1] != K:
        raise ImgenError(f"target codes must be [batch, {K}, frames], got shape {tuple(target_codes.shape)}")
    if tuple(cond_codes.shape) != tuple(target_codes.shape):
        raise ImgenError(
            f"condition codes {tuple(cond_codes.shape)} and target codes {tuple(target_codes.shape)} must have the "
            "same shape (the official training pairs clips of equal length)"
        )


def _training_fusion(lm: MusicGenLM, adapters: InstructAdapters, target_codes: jax.Array, cond_codes: jax.Array) -> dict:
    """`MusicGenLM.hidden`'s fusion argument of the teacher-forced forward: the prefix of the condition with
    its special frame appended (step i reads prefix position i) and the LoRA."""
    _check_codes(lm, target_codes, cond_codes)
    return {"fusion": instruct_fusion(lm, adapters, append_special(cond_codes, lm.cfg.special_token))}


def instruct_frame_logits(
    lm: MusicGenLM,
    adapters: InstructAdapters,
    target_codes: jax.Array,
    cond_codes: jax.Array,
    memory: jax.Array,
    text_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Training-mode logits of the official Instruct-MusicGen forward.

    target_codes, cond_codes [B,K,T] int (cond without the special frame: it is appended here);
    memory [B,L,dim] from `lm.text_memory`; text_mask None for the official semantics (no key mask).
    Returns (logits [B,K,T,card] float32, NaN where invalid; mask [B,K,T] bool).
    """
    return lm.frame_logits(target_codes, memory, text_mask, **_training_fusion(lm, adapters, target_codes, cond_codes))


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean cross-entropy over positions where mask is true (torch CrossEntropyLoss of logits[mask]).

    logits [..., card] may hold NaN at masked positions: they are replaced before any arithmetic, so
    neither the loss nor its gradient sees them.
    """
    logits = jnp.where(mask[..., None], logits.astype(jnp.float32), 0.0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    count = jnp.maximum(mask.sum(), 1)
    return jnp.where(mask, nll, 0.0).sum() / count


def instruct_loss(
    lm: MusicGenLM,
    adapters: InstructAdapters,
    target_codes: jax.Array,
    cond_codes: jax.Array,
    memory: jax.Array,
    text_mask: jax.Array | None = None,
) -> jax.Array:
    """The official training loss: mean cross-entropy of the masked logits against the target codes
    (= masked_cross_entropy(*instruct_frame_logits(...)), computed by `MusicGenLM.frame_loss`)."""
    return lm.frame_loss(target_codes, memory, text_mask, **_training_fusion(lm, adapters, target_codes, cond_codes))


def decode_fusion(
    lm: MusicGenLM, adapters: InstructAdapters, cond_codes: jax.Array, num_frames: int | None = None
) -> InstructFusion:
    """The fusion for decoding `num_frames` frames conditioned on cond_codes [B,K,T] (no special frame).

    As the official `generate`: the special frame is appended to the whole condition (T+1 frames) and
    a window of N = num_frames frames (default T) is conditioned on its first N+1 frames, so with
    N < T the prefix ends on a real frame, not the special one; the clamp is N - 1.
    """
    K = lm.cfg.num_codebooks
    if cond_codes.ndim != 3 or cond_codes.shape[1] != K or cond_codes.shape[-1] < 1:
        raise ImgenError(f"condition codes must be [batch, {K}, frames >= 1], got shape {tuple(cond_codes.shape)}")
    T = cond_codes.shape[-1]
    N = T if num_frames is None else int(num_frames)
    if not 1 <= N <= T:
        raise ImgenError(f"num_frames {N} must be in 1..{T} (the condition's frames)")
    cond_ext = append_special(cond_codes, lm.cfg.special_token)[:, :, : N + 1]
    lm_def, lm_state = nnx.split(lm)
    ad_def, ad_state = nnx.split(adapters)
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((cond_ext, lm_state, ad_state))):
        return instruct_fusion(lm, adapters, cond_ext, clamp=N - 1)  # inside a caller's jit: part of its program
    return _fusion_program()(lm_def, lm_state, ad_def, ad_state, cond_ext, clamp=N - 1)


def _fusion_pass(lm_def, lm_state, ad_def, ad_state, cond_ext, clamp):
    return instruct_fusion(nnx.merge(lm_def, lm_state), nnx.merge(ad_def, ad_state), cond_ext, clamp=clamp)


def _fusion_program():
    """`instruct_fusion` as one compiled program per backend (imgen_jax.xla options), kept across calls: run
    eagerly, its layer scan would be compiled again on every call (a new closure each time)."""
    return xla.backend_jit(_fusion_pass, static_argnames=("lm_def", "ad_def", "clamp"))


__all__ = [
    "append_special", "instruct_frame_logits", "masked_cross_entropy", "instruct_loss", "decode_fusion",
]
