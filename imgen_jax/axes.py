"""Logical axis names carried by the parameters (the NNX variable metadata `out_sharding`).

Every `nnx.Param` of the LM, T5, EnCodec and the adapters names each of its dimensions when it is
created (`param`, or `metadata` for flax's own `nnx.Linear` / `nnx.Embed`); the layers built under
`nnx.vmap(..., transform_metadata=STACKED)` get the leading `layers` name added by NNX. The training
mesh (`imgen_jax.train.mesh`) reads these names back (`logical_specs`) and maps them to mesh axes with
the config's rules, so renaming an attribute never changes how its weight is split.

Names (only heads, mlp and vocab have default rules, config.mesh.rules):
  layers       the stacked-layer axis the layer scans walk (never split)
  embed        the model width of the LM, T5 and the adapters
  heads        attention-head columns of a q (or the rows of an output) projection
  fused_heads  the columns of the fused q/k/v and k/v projections ([3 or 2, heads, head_dim] blocks: a column
               split would cut across heads, so no default rule maps it)
  mlp          the MLP hidden width
  vocab        the LM's output vocabulary (heads' columns)
  codebooks    the LM's / EnCodec's codebook axis
  the rest name axes no rule is meant to split: codes (the LM's input embedding rows), text_embed (T5's
  width as the LM's text projection sees it), text_vocab, rel_buckets, rel_heads (T5), conv_width,
  conv_in, conv_out, lstm_in, lstm_gates, code_bins, code_dim (EnCodec), fusion_slots, frames,
  lora_rank (adapters).

The names are stored with eager sharding off: creating a module never places its weights; the mesh
does, from the names, when training starts.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

LAYERS = "layers"
STACKED = {nnx.PARTITION_NAME: LAYERS}  # `transform_metadata` of the nnx.vmap that builds stacked layers


def metadata(*axes: str | None) -> dict[str, Any]:
    """The Variable metadata naming the logical axes `axes` (one per dimension), e.g. for nnx.Linear's
    `kernel_metadata` or nnx.Embed's `embedding_metadata`."""
    return {"out_sharding": tuple(axes), "eager_sharding": False}


def param(value: Any, *axes: str | None) -> nnx.Param:
    """An nnx.Param holding `value` (array or traced array of rank len(axes)) whose dimensions have the
    logical names `axes`; ValueError when the count does not match the rank."""
    if len(axes) != len(value.shape):
        raise ValueError(f"logical axes {axes} do not fit a parameter of shape {tuple(value.shape)}")
    return nnx.Param(value, **metadata(*axes))


__all__ = ["LAYERS", "STACKED", "metadata", "param"]
