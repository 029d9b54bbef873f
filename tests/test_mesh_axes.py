"""Logical axis names live on the parameters (imgen_jax.axes), and the training mesh reads them from there:

- every parameter of the LM, T5, EnCodec and the adapters names each of its dimensions (stacked layers:
  a leading `layers`), and the LM's projections map to the mesh as the Megatron-style rules say;
- a renamed attribute keeps its sharding (the names, not the path, decide);
- a parameter without names, or with names that do not fit its rank (stacked layers built without the
  `layers` name), is an error: nothing falls back to plain FSDP silently.

The meshes are abstract (jax.sharding.AbstractMesh: the sharding rules need only the axis sizes).
"""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec as P

from imgen_jax.axes import STACKED
from imgen_jax.models.encodec import abstract_encodec
from imgen_jax.instruct.fusion import FusionConfig, init_adapters
from imgen_jax.models.lm import Dense, LMConfig, LayerNorm, init_lm
from imgen_jax.models.t5 import T5Config, t5_abstract
from imgen_jax.train import mesh as meshlib

RULES = [("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor")]
MESH = AbstractMesh((1, 2, 2), meshlib.AXES)
CFG = LMConfig(dim=32, num_heads=4, num_layers=3, ffn_dim=64, card=32, text_dim=24)


def _shardings(module, where):
    """({name: logical names}, {name: mesh spec}) of every parameter of `module` on MESH."""
    graphdef, state = nnx.split(module)
    pure = nnx.to_pure_dict(state)
    logical = meshlib.logical_specs(graphdef, pure, where)
    specs = meshlib.tree_shardings(pure, logical, MESH, RULES)
    names = {meshlib.param_name(p): tuple(v) for p, v in jax.tree_util.tree_flatten_with_path(logical)[0]}
    mesh = {meshlib.param_name(p): tuple(s.spec) for p, s in jax.tree_util.tree_flatten_with_path(specs)[0]}
    return names, mesh


@pytest.mark.parametrize("which", ["lm", "adapters", "encodec", "t5"])
def test_every_parameter_names_every_dimension(which):
    module = {
        "lm": lambda: init_lm(CFG, 0),
        "adapters": lambda: init_adapters(FusionConfig.for_lm(CFG, lora_r=4, lora_alpha=8.0, pos_emb_frames=21), 1),
        "encodec": abstract_encodec,
        "t5": lambda: t5_abstract(T5Config()),
    }[which]()
    names, _ = _shardings(module, which)
    shapes = {"/".join(str(k) for k in p): v.get_value().shape
              for p, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}
    assert set(names) == set(shapes) and names
    for name, axes in names.items():
        assert len(axes) == len(shapes[name]) and all(isinstance(a, str) for a in axes), (name, axes)
        assert (axes[0] == "layers") == (name.startswith("layers/") or name in ("merge_linear", "gates")
                                         or name.startswith("lora_")), (name, axes)


def test_lm_projections_map_by_their_names():
    names, mesh = _shardings(init_lm(CFG, 0), "lm")
    assert names["layers/linear1/kernel"] == ("layers", "embed", "mlp")
    assert mesh["layers/linear1/kernel"] == (None, "fsdp", "tensor")
    assert mesh["layers/linear2/kernel"] == (None, "tensor", "fsdp")
    assert mesh["layers/cross_attn/q_proj/kernel"] == (None, "fsdp", "tensor")
    assert mesh["layers/self_attn/out_proj/kernel"] == (None, "tensor", "fsdp")
    # fused q/k/v columns have no default rule: FSDP only
    assert names["layers/self_attn/in_proj/kernel"] == ("layers", "embed", "fused_heads")
    assert mesh["layers/self_attn/in_proj/kernel"] == (None, None, "fsdp")
    assert mesh["heads"] == (None, "fsdp", "tensor")
    assert mesh["layers/norm1/scale"] == (None, "fsdp")  # never the stacked-layer axis


class _Renamed(nnx.Module):
    """An MLP whose attributes are not called linear1 / linear2, stacked over 3 layers."""

    def __init__(self, rngs: nnx.Rngs):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=STACKED)
        def make(r):
            return nnx.Dict(widen=Dense(32, 64, axes=("embed", "mlp"), rngs=r),
                            narrow=Dense(64, 32, axes=("mlp", "embed"), rngs=r), norm=LayerNorm(32, 1e-5))

        self.blocks = make(rngs)


def test_a_renamed_parameter_keeps_its_sharding():
    names, mesh = _shardings(_Renamed(nnx.Rngs(0)), "toy")
    lm_mesh = _shardings(init_lm(CFG, 0), "lm")[1]
    assert mesh["blocks/widen/kernel"] == lm_mesh["layers/linear1/kernel"] == (None, "fsdp", "tensor")
    assert mesh["blocks/narrow/kernel"] == lm_mesh["layers/linear2/kernel"]
    assert names["blocks/norm/scale"] == ("layers", "embed")


class _Unnamed(nnx.Module):
    def __init__(self):
        self.named = Dense(8, 16, axes=("embed", "mlp"), rngs=nnx.Rngs(0))
        self.plain = nnx.Param(jnp.zeros((8, 16)))  # no logical axis names


class _StackedWithoutLayers(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)  # no transform_metadata: the leading axis gets no name
        def make(r):
            return Dense(8, 16, axes=("embed", "mlp"), rngs=r)

        self.layers = make(rngs)


def test_a_parameter_without_names_is_an_error():
    with pytest.raises(ValueError, match=r"toy/plain \[8, 16\]: no logical axis names"):
        _shardings(_Unnamed(), "toy")
    with pytest.raises(ValueError, match=r"toy/layers/kernel \[3, 8, 16\]: 2 logical axis names"):
        _shardings(_StackedWithoutLayers(nnx.Rngs(0)), "toy")
    with pytest.raises(TypeError):
        Dense(8, 16, rngs=nnx.Rngs(0))  # the names are a required argument
    with pytest.raises(ValueError, match="do not fit"):
        meshlib.param_spec(("embed",), (8, 16), MESH, RULES)


def test_fsdp_frozen_and_rules_from_names():
    names, _ = _shardings(init_lm(CFG, 0), "lm")
    spec = meshlib.param_spec(names["layers/linear1/kernel"], (3, 32, 64), MESH, RULES, fsdp=False)
    assert spec == P(None, None, "tensor")
    spec = meshlib.param_spec(names["layers/linear1/kernel"], (3, 32, 64), MESH, [("embed", "tensor")])
    assert spec == P(None, "tensor", "fsdp")
