"""Instruct-MusicGen: a frozen MusicGen LM plus the trainable `InstructAdapters` (imgen_jax.fusion).

Training forward (the official `Instructor.forward(mode="train")` + `LMModel.compute_predictions`):

    cond_ext = cond_codes with one frame of the special token appended        [B, K, T+1]
    prefixes = audio_prefixes(lm, adapters, cond_ext)                          once per clip
    logits, mask = lm.frame_logits(target_codes, memory, None, prefixes=prefixes,
                                   prefix_pos=None (step i reads i), lora=adapters.lora())
    loss = mean cross-entropy of logits[mask] against target_codes[mask]

`memory` is `lm.text_memory(t5_hidden, text_mask)` (output_proj of the T5 states, padded rows
zeroed) and the cross-attention uses no key mask, as the official code.

Decoding: `decode_fusion` computes the prefixes once per clip and gives the prefix-query clamp of
the official crop: the step at input position p reads q_j[min(p, N - 1)], N = frames decoded, the
prefix covering the first N + 1 frames of the condition with its special frame appended. The LoRA
goes to `MusicGenLM.init_cache(..., lora=...)` and every `extend` applies it (or use
`fusion.merge_lora` for decode code that does not thread it, as `imgen_jax.generate` today).
`edit()` (codec + text + decode) comes later.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from imgen_jax.errors import ImgenError
from imgen_jax.fusion import InstructAdapters, audio_prefixes
from imgen_jax.lm import AudioPrefix, CrossLoRA, MusicGenLM


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
    """The fusion arguments of the teacher-forced forward (`MusicGenLM.hidden`'s prefixes / prefix_pos / lora):
    the prefix of the condition with its special frame appended, step i reading prefix position i."""
    _check_codes(lm, target_codes, cond_codes)
    prefixes = audio_prefixes(lm, adapters, append_special(cond_codes, lm.cfg.special_token))
    return {"prefixes": prefixes, "prefix_pos": None, "lora": adapters.lora()}


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


class DecodeFusion(NamedTuple):
    """What a decode loop needs from the adapters, computed once per clip.

    prefixes: AudioPrefix stacked over layers (q/k/v [layers, B, N+1, H, D] for N decoded frames);
    lora: CrossLoRA for `MusicGenLM.init_cache(..., lora=lora)`; prefix_clamp: N - 1, the largest prefix
    position a step reads (the step at input position p uses min(p, prefix_clamp)).
    """

    prefixes: AudioPrefix
    lora: CrossLoRA
    prefix_clamp: int


def decode_fusion(
    lm: MusicGenLM, adapters: InstructAdapters, cond_codes: jax.Array, num_frames: int | None = None
) -> DecodeFusion:
    """Prefixes and LoRA for decoding `num_frames` frames conditioned on cond_codes [B,K,T] (no special frame).

    As the official `generate`: the special frame is appended to the whole condition (T+1 frames) and
    a window of N = num_frames frames (default T) is conditioned on its first N+1 frames, so with
    N < T the prefix ends on a real frame, not the special one; prefix_clamp = N - 1.
    """
    K = lm.cfg.num_codebooks
    if cond_codes.ndim != 3 or cond_codes.shape[1] != K or cond_codes.shape[-1] < 1:
        raise ImgenError(f"condition codes must be [batch, {K}, frames >= 1], got shape {tuple(cond_codes.shape)}")
    T = cond_codes.shape[-1]
    N = T if num_frames is None else int(num_frames)
    if not 1 <= N <= T:
        raise ImgenError(f"num_frames {N} must be in 1..{T} (the condition's frames)")
    cond_ext = append_special(cond_codes, lm.cfg.special_token)[:, :, : N + 1]
    prefixes = audio_prefixes(lm, adapters, cond_ext)
    return DecodeFusion(prefixes=prefixes, lora=adapters.lora(), prefix_clamp=N - 1)


def prefix_positions(positions: jax.Array, prefix_clamp: int | jax.Array) -> jax.Array:
    """The prefix-query position of each decoding input position (the official crop)."""
    return jnp.minimum(positions, prefix_clamp)


class InstructMusicGen(nnx.Module):
    """The frozen LM and the trainable adapters together (training mode for now; `edit()` comes later).

    For gradients of exactly the adapters: `nnx.grad(lambda m: m.loss(...), argnums=nnx.DiffState(0,
    nnx.All(nnx.Param, nnx.PathContains('adapters'))))(model)`, or functionally
    `nnx.grad(lambda ad: instruct_loss(lm, ad, ...))(adapters)`.
    """

    def __init__(self, lm: MusicGenLM, adapters: InstructAdapters):
        adapters.cfg.check_lm(lm.cfg)
        self.lm = lm
        self.adapters = adapters

    def text_memory(self, text_hidden: jax.Array, text_mask: jax.Array | None) -> jax.Array:
        return self.lm.text_memory(text_hidden, text_mask)

    def frame_logits(self, target_codes, cond_codes, memory, text_mask=None) -> tuple[jax.Array, jax.Array]:
        return instruct_frame_logits(self.lm, self.adapters, target_codes, cond_codes, memory, text_mask)

    def loss(self, target_codes, cond_codes, memory, text_mask=None) -> jax.Array:
        return instruct_loss(self.lm, self.adapters, target_codes, cond_codes, memory, text_mask)

    def decode_fusion(self, cond_codes, num_frames: int | None = None) -> DecodeFusion:
        return decode_fusion(self.lm, self.adapters, cond_codes, num_frames)


__all__ = [
    "append_special", "instruct_frame_logits", "masked_cross_entropy", "instruct_loss", "DecodeFusion",
    "decode_fusion", "prefix_positions", "InstructMusicGen",
]
