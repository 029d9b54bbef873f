"""The fusion plug-in interface (`imgen_jax.models.lm.LayerFusion`) and the paper's missing ablations.

1. A toy conditioning design, defined in this file only, trains and decodes through the unchanged
   `MusicGenLM` and `imgen_jax.generate`: per layer, a learned scalar times the self-attention query is
   added to the self-attention output (`self_attention_extra`), and a learned per-layer vector plus a
   per-row "stem" vector is added to the cross-attention query (`cross_query_delta`; the per-row part
   makes `for_guidance` necessary). Checked: zero parameters leave the LM exactly as it is (teacher-forced
   logits and CFG decode tokens); a few Adam steps through `frame_loss` lower the loss; the KV-cached decode
   (both cache layouts) gives the teacher-forced logits within 1e-5; generate decodes with it, under CFG.
2. Instruct-MusicGen's ablation modes (`FusionConfig.mode`, `--config.model.fusion`): "text" (LoRA
   only) equals "both" with closed gates, "audio" (fusion only) equals "both" with LoRA B = 0, within 1e-6;
   each mode trains (train.py's loop), writes a model directory holding only its parameters, edits with
   `imgen edit` and exports with `imgen export-adapters`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import soundfile as sf
from flax import nnx

from train_helpers import make_tiny_model_dir, tiny_config

from imgen_jax.instruct.fusion import FusionConfig, init_adapters, instruct_fusion
from imgen_jax.generate import SamplingConfig, generate
from imgen_jax.instruct import append_special
from imgen_jax.models.lm import LayerFusion, LMConfig, abstract_lm
from imgen_jax.models.patterns import build_pattern
from imgen_jax.weights import load_into, module_shapes, read_safetensors
from imgen_jax.xla import jit_method

CFG = LMConfig(dim=32, num_heads=4, num_layers=3, ffn_dim=64, card=16, text_dim=8)
B, T, L_TEXT = 2, 10, 5


# ---- 1. a toy fusion design, in this file alone ---------------------------------------------------------------
@functools.partial(jax.tree_util.register_dataclass, data_fields=["alpha", "layer_bias", "row_bias"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class ToyFusion(LayerFusion):
    """alpha [layers]: self-attention extra alpha * q; layer_bias [layers, dim] and row_bias [layers, B, dim]:
    added to the cross-attention query of every step."""

    alpha: jax.Array
    layer_bias: jax.Array
    row_bias: jax.Array

    def self_attention_extra(self, q, positions):
        return self.alpha.astype(q.dtype) * q

    def cross_query_delta(self, h):
        return jnp.broadcast_to((self.layer_bias[None] + self.row_bias)[:, None, :], h.shape).astype(h.dtype)

    def for_guidance(self):
        return dataclasses.replace(self, row_bias=jnp.concatenate([self.row_bias, self.row_bias], axis=1))


def _toy(params: dict) -> ToyFusion:
    return ToyFusion(params["alpha"], params["layer_bias"], params["row_bias"])


@pytest.fixture(scope="module")
def tiny():
    lm = abstract_lm(CFG)
    rng = np.random.default_rng(0)
    load_into(lm, {k: (rng.normal(size=s) * (0.3 if len(s) > 1 else 1.0)).astype(np.float32)
                   for k, (s, _) in module_shapes(lm).items()}, "random")
    codes = jnp.asarray(rng.integers(0, CFG.card, (B, CFG.num_codebooks, T)), jnp.int32)
    memory = jnp.asarray(rng.normal(size=(B, L_TEXT, CFG.dim)).astype(np.float32))
    return lm, codes, memory


def _zeros() -> dict:
    L, D = CFG.num_layers, CFG.dim
    return {"alpha": jnp.zeros((L,)), "layer_bias": jnp.zeros((L, D)), "row_bias": jnp.zeros((L, B, D))}


def test_toy_fusion_trains_and_decodes_through_the_unchanged_lm(tiny):
    lm, codes, memory = tiny
    sampling = SamplingConfig(num_frames=8, guidance_scale=3.0, use_sampling=False, window_frames=None)
    plain_tokens = np.asarray(generate(lm, memory, None, sampling))
    # zero parameters: exactly the plain LM
    loss_fn = jit_method(lm, lambda m, p: m.frame_loss(codes, memory, None, fusion=_toy(p)))
    plain_loss = float(jit_method(lm, lambda m: m.frame_loss(codes, memory, None))())
    assert float(loss_fn(_zeros())) == pytest.approx(plain_loss, rel=1e-6)
    np.testing.assert_array_equal(np.asarray(generate(lm, memory, None, sampling, fusion=_toy(_zeros()))), plain_tokens)

    # training: gradients reach the toy parameters through the LM's hooks and the loss falls
    params, opt = _zeros(), optax.adam(3e-2)
    state = opt.init(params)
    grad_fn = jax.jit(jax.value_and_grad(lambda p, lm_state: nnx.merge(lm_def, lm_state).frame_loss(
        codes, memory, None, fusion=_toy(p))))
    lm_def, lm_state = nnx.split(lm)
    losses = []
    for _ in range(25):
        loss, grads = grad_fn(params, lm_state)
        losses.append(float(loss))
        updates, state = opt.update(grads, state)
        params = optax.apply_updates(params, updates)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(grads))
    assert losses[-1] < losses[0] - 0.1, losses

    # decoding: the KV-cached path (stacked and per-layer caches) equals teacher forcing
    fusion = _toy(params)
    seq = build_pattern(codes, CFG.special_token, CFG.delays, num_steps=T + 1)
    ref = np.asarray(jit_method(lm, lambda m, s, f: m(s, memory, None, fusion=f))(seq, fusion))
    extend = jit_method(lm, lambda m, s, c, f: m.extend(s, c, f))
    for per_layer in (False, True):
        cache = lm.init_cache(B, T + 3, memory, None, fusion, per_layer=per_layer)
        dec = fusion.for_decoding(per_layer)
        out, cache = extend(seq[..., :4], cache, dec)
        outs = [out]
        for s in range(4, T):
            out, cache = extend(seq[..., s:s + 1], cache, dec)
            outs.append(out)
        got = np.concatenate([np.asarray(o) for o in outs], axis=2)
        assert float(np.abs(got - ref[:, :, :T]).max()) <= 1e-5, per_layer
    # and generate decodes with it under CFG (2B rows: for_guidance), with another result than plain MusicGen
    toy_tokens = np.asarray(generate(lm, memory, None, sampling, fusion=fusion))
    assert toy_tokens.shape == plain_tokens.shape and (toy_tokens != plain_tokens).any()


# ---- 2. the ablation modes --------------------------------------------------------------------------------------
def _adapters(mode: str, flat: dict) -> object:
    ad = init_adapters(FusionConfig.for_lm(CFG, lora_r=4, lora_alpha=8.0, pos_emb_frames=16, mode=mode), seed=0)
    load_into(ad, {k: v for k, v in flat.items() if k in module_shapes(ad)}, mode)
    return ad


def test_modes_are_the_official_model_with_a_part_closed(tiny):
    lm, codes, memory = tiny
    rng = np.random.default_rng(3)
    both = init_adapters(FusionConfig.for_lm(CFG, lora_r=4, lora_alpha=8.0, pos_emb_frames=16), seed=0)
    flat = {k: (0.3 * rng.normal(size=s)).astype(np.float32) for k, (s, _) in module_shapes(both).items()}
    cond_ext = append_special(codes, CFG.special_token)

    def logits(ad) -> np.ndarray:
        seq = build_pattern(codes, CFG.special_token, CFG.delays, num_steps=T + 1)
        return np.asarray(lm(seq, memory, None, fusion=instruct_fusion(lm, ad, cond_ext)))

    text, audio = _adapters("text", flat), _adapters("audio", flat)
    assert sorted(module_shapes(text)) == ["lora_q/a", "lora_q/b", "lora_v/a", "lora_v/b"]
    assert sorted(module_shapes(audio)) == ["gates", "merge_linear", "pos_emb"]
    closed_gates = _adapters("both", dict(flat, gates=np.zeros_like(flat["gates"])))
    np.testing.assert_allclose(logits(text), logits(closed_gates), atol=1e-6, rtol=0)
    no_lora = _adapters("both", dict(flat, **{k: np.zeros_like(flat[k]) for k in ("lora_q/b", "lora_v/b")}))
    np.testing.assert_allclose(logits(audio), logits(no_lora), atol=1e-6, rtol=0)
    full = logits(_adapters("both", flat))
    assert float(np.abs(full - logits(text)).max()) > 1e-3 and float(np.abs(full - logits(audio)).max()) > 1e-3



def test_decode_fusion_compiles_once_and_equals_the_eager_pass(tiny):
    """decode_fusion runs the audio-fusion pass as one cached jitted program: a second call with new codes
    (another edit window) reuses it, and its prefix equals instruct_fusion run eagerly (float32 rounding: 1e-6
    absolute + 2e-6 relative)."""
    from imgen_jax.instruct import decode_fusion
    from imgen_jax.instruct.forward import _fusion_program

    lm, codes, _ = tiny
    ad = init_adapters(FusionConfig.for_lm(CFG, lora_r=4, lora_alpha=8.0, pos_emb_frames=16), seed=0)
    rng = np.random.default_rng(5)
    load_into(ad, {k: (0.3 * rng.normal(size=s)).astype(np.float32) for k, (s, _) in module_shapes(ad).items()}, "r")
    program = _fusion_program()
    first = decode_fusion(lm, ad, codes, num_frames=T - 2)
    compiled = program._cache_size()  # earlier tests may have compiled other shapes
    assert compiled >= 1  # decode_fusion ran through this cached program
    second = decode_fusion(lm, ad, (codes + 1) % CFG.card, num_frames=T - 2)
    assert program._cache_size() == compiled
    eager = instruct_fusion(lm, ad, append_special(codes, CFG.special_token)[:, :, : T - 1], clamp=T - 3)
    assert first.clamp == eager.clamp == T - 3
    for name in ("q", "k", "v", "gate", "q_a", "v_b"):
        np.testing.assert_allclose(np.asarray(getattr(first, name)), np.asarray(getattr(eager, name)), atol=1e-6, rtol=2e-6)
    assert float(np.abs(np.asarray(second.k) - np.asarray(first.k)).max()) > 1e-3


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, spm_model):
    return make_tiny_model_dir(str(tmp_path_factory.mktemp("ablation") / "base"), spm_model)


@pytest.mark.parametrize("mode,keys", [("audio", ["gates", "merge_linear", "pos_emb"]),
                                       ("text", ["lora_q/a", "lora_q/b", "lora_v/a", "lora_v/b"])])
def test_each_ablation_trains_edits_and_exports(tiny_model, tmp_path, mode, keys):
    import torch

    from imgen_jax.cli import main as imgen
    from imgen_jax.train import train

    out = train(tiny_config(tiny_model, str(tmp_path / "run"), steps=4, **{"model.fusion": mode}), progress=False)
    assert all(np.isfinite(out["losses"][s]) for s in range(1, 5))
    model = out["model_dir"]
    trained = read_safetensors(os.path.join(model, "adapters.safetensors"))
    assert sorted(trained) == keys
    moved = trained["gates"] if mode == "audio" else trained["lora_q/b"]
    assert np.abs(moved).max() > 0  # moved from the zero init
    assert json.load(open(os.path.join(model, "config.json")))["adapters"]["mode"] == mode
    wav = tmp_path / "mix.wav"
    sf.write(wav, (0.2 * np.sin(np.arange(600) / 2000 * 2 * np.pi * 150)).astype(np.float32), 2000)
    assert imgen(["edit", "--model", model, "--input", str(wav), "--instruction", "remove bass", "--out",
                  str(tmp_path / "edited.wav"), "--top-k", "8"]) == 0
    edited, sr = sf.read(tmp_path / "edited.wav")
    assert sr == 2000 and edited.shape == (600,) and np.isfinite(edited).all()
    assert imgen(["export-adapters", model, "--out", str(tmp_path / "adapters.pt")]) == 0
    exported = torch.load(tmp_path / "adapters.pt", weights_only=True)
    has_lora = any("lora_A" in k for k in exported)
    has_audio = any(k.startswith("merge_linear") or k == "gates" for k in exported)
    assert (has_audio, has_lora) == (mode == "audio", mode == "text"), sorted(exported)[:4]
