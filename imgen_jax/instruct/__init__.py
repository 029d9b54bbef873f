"""Instruct-MusicGen on a frozen MusicGen: the adapters as a fusion plug-in (`fusion`), the training-mode
logits / loss and the decode fusion (`forward`), and text-instructed editing (`edit`).

The names of `forward` are re-exported here (`from imgen_jax.instruct import instruct_loss, decode_fusion`)."""

from imgen_jax.instruct.forward import (  # noqa: F401
    append_special, decode_fusion, instruct_frame_logits, instruct_loss, masked_cross_entropy,
)

__all__ = ["append_special", "decode_fusion", "instruct_frame_logits", "instruct_loss", "masked_cross_entropy"]
