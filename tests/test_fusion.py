"""Instruct-MusicGen adapters against golden tensors of the official PyTorch code.

Everything (sizes, file names) is read from the fixture directory: $IMGEN_OFFICIAL_FIXTURE, default
`../shared/fixtures/official_tiny` next to the repository (see its SEMANTICS.md). Path under test:
official Lightning checkpoint -> convert.instruct_ckpt -> converted directory -> load_lm /
load_adapters -> imgen_jax.instruct. Tolerance (fp32, other summation order): max |ours - ref| over
valid positions <= 1e-4 * max(1, max |ref|); the loss within 1e-4 relative; masks, NaN positions and
greedy codes exactly.
"""

import dataclasses
import functools
import json
import math
import os
import re

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp
from flax import nnx

from convert.instruct_ckpt import (
    add_adapters, adapters_to_official, convert_instruct, export_official_adapters, instruct_from_state_dict,
    load_checkpoint_tensors, read_instruct_checkpoint,
)
from imgen_jax import generate as generate_mod
from imgen_jax.xla import jit_method
from imgen_jax.errors import ImgenError
from imgen_jax.instruct.fusion import (
    FusionConfig, InstructFusion, abstract_adapters, audio_fusion_pass, init_adapters, instruct_fusion, load_adapters,
    read_adapters,
)
from imgen_jax.instruct import (
    append_special, decode_fusion, instruct_frame_logits, instruct_loss, masked_cross_entropy,
)
from imgen_jax.models.lm import LMConfig, abstract_lm, load_lm
from imgen_jax.modeldir import read_component, write_model_dir
from imgen_jax.models.patterns import build_pattern
from imgen_jax.weights import load_into, module_shapes, module_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT = os.path.normpath(os.path.join(ROOT, "..", "shared", "fixtures", "official_tiny"))
FIXTURE = os.environ.get("IMGEN_OFFICIAL_FIXTURE") or _DEFAULT

# A missing fixture fails the run (collection error), never a skip: these tests are the parity proof.
if not os.path.isdir(FIXTURE):
    raise RuntimeError(f"official fixture not found: {FIXTURE} (set IMGEN_OFFICIAL_FIXTURE to its folder)")
_CKPTS = sorted(f for f in os.listdir(FIXTURE) if f.endswith(".ckpt"))
if len(_CKPTS) != 1:
    raise RuntimeError(f"{FIXTURE}: expected exactly one .ckpt file, found {_CKPTS}")
CKPT = _CKPTS[0]

# The official key templates (SEMANTICS.md), Instructor-relative.
LORA_KEY = "peft_model.lm.transformer.base_model.model.layers.{i}.cross_attention.{p}_proj.lora_{m}.default.weight"


def _close(ours, ref, what):
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(np.asarray(ours, np.float64) - ref).max())
    assert err <= tol, f"{what}: max abs error {err} > {tol}"
    return err


@pytest.fixture(scope="module")
def fx():
    with open(os.path.join(FIXTURE, "config.json")) as f:
        cfg = json.load(f)
    io = dict(np.load(os.path.join(FIXTURE, "io.npz")))
    return cfg, io


@pytest.fixture(scope="module")
def converted(fx, tmp_path_factory):
    cfg, io = fx
    out = convert_instruct(os.path.join(FIXTURE, CKPT), tmp_path_factory.mktemp("conv") / "model", num_heads=cfg["heads"],
                           lora_alpha=cfg["lora_alpha"])
    lm, adapters = load_lm(out), load_adapters(out)
    memory = lm.text_memory(jnp.asarray(io["text_hidden"]), jnp.asarray(io["text_mask"]))
    return out, lm, adapters, memory


def _codes(io, name):
    return jnp.asarray(io[name], jnp.int32)


def _gen_memory(lm, io):
    """The conditional rows of the generation text batch as cross-attention memory [B, L, dim]."""
    B = io["gen_codes"].shape[0]
    return lm.text_memory(jnp.asarray(io["gen_text_hidden"][:B]), jnp.asarray(io["gen_text_mask"][:B]))


@functools.lru_cache(maxsize=None)
def _training_forward(lm_def, ad_def):
    """(lm state, adapter state, target, cond, memory) -> (logits, mask, loss), one compiled program."""

    @jax.jit
    def run(lm_state, ad_state, tgt, cond, memory):
        lm, ad = nnx.merge(lm_def, lm_state), nnx.merge(ad_def, ad_state)
        logits, mask = instruct_frame_logits(lm, ad, tgt, cond, memory)
        return logits, mask, instruct_loss(lm, ad, tgt, cond, memory)

    return run


def _train(lm, adapters, *args):
    (lm_def, lm_state), (ad_def, ad_state) = nnx.split(lm), nnx.split(adapters)
    return _training_forward(lm_def, ad_def)(lm_state, ad_state, *args)


def test_converted_configs_match_fixture(fx, converted):
    cfg, _ = fx
    out, lm, adapters, _ = converted
    c, f = lm.cfg, adapters.cfg
    assert (c.dim, c.num_heads, c.num_layers, c.card, c.num_codebooks, c.text_dim) == (
        cfg["dim"], cfg["heads"], cfg["layers"], cfg["card"], cfg["num_codebooks"], cfg["text_dim"])
    assert c.special_token == cfg["special_token"]
    assert (f.adapter_layers, f.start_layer, f.lora_r, f.lora_alpha, f.pos_emb_frames) == (
        cfg["adapter_layers"], cfg["start_layer"], cfg["lora_r"], cfg["lora_alpha"], cfg["pos_emb_frames"])
    assert f.lora_scaling == cfg["lora_scaling"]
    assert FusionConfig.from_dict(f.to_dict()) == f
    assert json.load(open(os.path.join(out, "config.json")))["adapters"] == f.to_dict()


def test_cross_attention_memory(fx, converted):
    _, io = fx
    _close(converted[3], io["cross_attention_src"], "cross_attention_src")


def test_training_logits_mask_and_loss(fx, converted):
    _, io = fx
    _, lm, adapters, memory = converted
    tgt, cond = _codes(io, "target_codes"), _codes(io, "cond_codes")
    np.testing.assert_array_equal(np.asarray(append_special(cond, lm.cfg.special_token)), io["cond_codes_ext"])
    logits, mask, loss = _train(lm, adapters, tgt, cond, memory)
    logits, mask, loss = np.asarray(logits), np.asarray(mask), float(loss)
    assert logits.shape == io["logits"].shape
    np.testing.assert_array_equal(mask, io["mask"])
    np.testing.assert_array_equal(np.isnan(logits), np.isnan(io["logits"]))
    _close(logits[mask], io["logits"][io["mask"]], "logits")
    assert abs(loss - float(io["loss"])) <= 1e-4 * abs(float(io["loss"])), (loss, float(io["loss"]))
    # instruct_loss (MusicGenLM.frame_loss: per-codebook slices) = the masked mean over our own logits
    own = float(masked_cross_entropy(jnp.asarray(logits), tgt, jnp.asarray(mask)))
    assert abs(loss - own) <= 1e-6 * abs(own), (loss, own)
    ref_ce = float(masked_cross_entropy(jnp.asarray(io["logits"]), tgt, jnp.asarray(io["mask"])))  # NaN-safe
    assert abs(ref_ce - float(io["loss"])) < 1e-5


def test_gates_zero_is_fusion_off(fx, converted):
    _, io = fx
    out, lm, _, memory = converted
    adapters = load_adapters(out)
    adapters.gates.set_value(jnp.zeros_like(adapters.gates[...]))
    logits, mask, _ = _train(lm, adapters, _codes(io, "target_codes"), _codes(io, "cond_codes"), memory)
    m = np.asarray(mask)
    _close(np.asarray(logits)[m], io["logits_gate0"][io["mask"]], "logits_gate0")


def test_kv_cached_fusion_equals_teacher_forcing(fx, converted):
    """extend() step by step with the decode clamp (prefix position min(p, T-1)), on both cache layouts
    (stacked scan and per-layer unrolled, heads-major prefixes) == teacher forcing (prefix position p) at every
    position < T."""
    _, io = fx
    _, lm, adapters, memory = converted
    tgt, cond = _codes(io, "target_codes"), _codes(io, "cond_codes")
    B, _, T = tgt.shape
    train_fusion = instruct_fusion(lm, adapters, append_special(cond, lm.cfg.special_token))
    seq = build_pattern(tgt, lm.cfg.special_token, lm.cfg.delays, num_steps=T + 1)
    ref = np.asarray(jit_method(lm, lambda m, seq, fu: m(seq, memory, None, fusion=fu))(seq, train_fusion))
    decode = decode_fusion(lm, adapters, cond, num_frames=T)
    assert decode.clamp == T - 1 and decode.q.shape[2] == T + 1
    extend = jit_method(lm, lambda m, seq, cache, fu: m.extend(seq, cache, fu))
    for per_layer in (False, True):
        fu = decode.for_decoding(per_layer)
        cache = lm.init_cache(B, T + 4, memory, None, decode, per_layer=per_layer)
        P = 3
        out, cache = extend(seq[..., :P], cache, fu)  # prefill
        steps = [out]
        for s in range(P, T):
            out, cache = extend(seq[..., s:s + 1], cache, fu)
            steps.append(out)
        _close(np.concatenate([np.asarray(x) for x in steps], axis=2), ref[:, :, :T],
               f"extend (per_layer={per_layer}) vs teacher forcing")


def test_greedy_decode_matches_official(fx, converted):
    """imgen_jax.generate with the decode fusion of gen_cond_codes_ext on the generation text batch: the tokens
    of every step exactly, the guided (CFG) logits of every step within 1e-5, the final pattern sequence."""
    cfg, io = fx
    _, lm, adapters, _ = converted
    G, B = cfg["gen_frames"], io["gen_codes"].shape[0]
    memory = _gen_memory(lm, io)
    cond_ext = io["gen_cond_codes_ext"]
    assert (cond_ext[:, :, -1] == cfg["special_token"]).all() and cond_ext.shape[-1] == G + 1
    fusion = decode_fusion(lm, adapters, jnp.asarray(cond_ext[:, :, :-1], jnp.int32), num_frames=G)
    assert fusion.q.shape[2] == G + 1 and fusion.clamp == G - 1
    sampling = generate_mod.SamplingConfig(num_frames=G, guidance_scale=cfg["cfg_coef"], use_sampling=False,
                                           window_frames=None)
    codes, logits = generate_mod.generate(lm, memory, None, sampling, fusion=fusion, return_logits=True)
    np.testing.assert_array_equal(np.asarray(codes), io["gen_codes"])
    seq = build_pattern(np.asarray(codes), cfg["special_token"], lm.cfg.delays)
    np.testing.assert_array_equal(seq, io["gen_sequence"])
    steps = io["gen_step_positions"]
    np.testing.assert_array_equal(steps, np.arange(len(steps)))
    # the logits that chose pattern step n + 1 are those of the step that fed position n
    ours = np.moveaxis(np.asarray(logits)[:, :, steps + 1], 2, 0)  # [steps, B, K, card]
    err = float(np.abs(ours - io["gen_step_logits_cfg"]).max())
    assert err <= 1e-5, f"guided step logits: max abs error {err}"
    assert ours.shape[1] == B


def test_decode_steps_cond_and_uncond_logits(fx, converted):
    """The KV-cached decode path (init_cache + extend, CFG batch of 2B rows: the conditional memory, then zeros)
    fed the official tokens step by step: conditional and unconditional logits of every step within 1e-5, and
    uncond + (cond - uncond) * cfg_coef = gen_step_logits_cfg."""
    cfg, io = fx
    _, lm, adapters, _ = converted
    G, B = cfg["gen_frames"], io["gen_codes"].shape[0]
    cond_mem = _gen_memory(lm, io)
    memory = jnp.concatenate([cond_mem, jnp.zeros_like(cond_mem)], axis=0)
    np.testing.assert_array_equal(np.asarray(memory)[B:], io["gen_cross_attention_src"][B:])
    fusion = decode_fusion(lm, adapters, jnp.asarray(io["gen_cond_codes_ext"][:, :, :-1], jnp.int32), num_frames=G)
    guided_fusion = fusion.for_guidance()
    tokens = io["gen_step_input_tokens"]  # [steps, B, K]
    np.testing.assert_array_equal(tokens, np.moveaxis(io["gen_sequence"][:, :, : len(tokens)], 2, 0))
    step = jit_method(lm, lambda m, tok, cache, fu: m.extend(tok, cache, fu))
    cache = lm.init_cache(2 * B, G + 4, memory, None, guided_fusion)
    for n, pos in enumerate(io["gen_step_positions"]):
        assert int(cache.pos) == int(pos)
        tok = jnp.asarray(np.concatenate([tokens[n], tokens[n]], axis=0)[:, :, None], jnp.int32)
        out, cache = step(tok, cache, guided_fusion)
        out = np.asarray(out)[:, :, 0]
        for name, rows in (("cond", out[:B]), ("uncond", out[B:])):
            err = float(np.abs(rows - io[f"gen_step_logits_{name}"][n]).max())
            assert err <= 1e-5, f"step {n} {name} logits: max abs error {err}"
        guided = generate_mod.guide(jnp.asarray(out), B, True, cfg["cfg_coef"])
        assert float(np.abs(np.asarray(guided) - io["gen_step_logits_cfg"][n]).max()) <= 1e-5


def test_official_window_loop_matches_official(fx, converted):
    """`--windows official` (EditConfig(windows="official")): the official CondMusicgen.generate loop over the
    whole condition, gaps included: the same windows (offsets, lengths) and the same greedy codes."""
    from imgen_jax.instruct.edit import EditConfig, edit_tokens, official_window_plan

    cfg, io = fx
    _, lm, adapters, _ = converted
    cond = _codes(io, "cond_codes")
    T, W, R = cond.shape[-1], cfg["window_frames"], cfg["stride_frames"]
    plan = official_window_plan(T, W, R)
    np.testing.assert_array_equal([o for o, _, _ in plan], io["gen_windowed_offsets"])
    np.testing.assert_array_equal([n for _, n, _ in plan], io["gen_windowed_lengths"])
    assert [(w["offset"], w["max_gen_len"], w["condition_frames"]) for w in cfg["windows"]] == [
        (o, n, n + 1) for o, n, _ in plan]
    sampling = generate_mod.SamplingConfig.for_edit(guidance_scale=cfg["cfg_coef"], use_sampling=False)
    config = EditConfig(sampling, window_frames=W, stride_frames=R, windows="official")
    codes = np.asarray(edit_tokens(lm, adapters, cond, _gen_memory(lm, io), config))
    np.testing.assert_array_equal(codes, io["gen_windowed_codes"])


def test_state_dict_npz_is_what_the_converter_read(converted):
    sd = dict(np.load(os.path.join(FIXTURE, "state_dict.npz")))
    tensors, _ = load_checkpoint_tensors(os.path.join(FIXTURE, CKPT))
    got = {k[len("state_dict."):]: v for k, v in tensors.items() if k.startswith("state_dict.")}
    assert sorted(got) == sorted(sd)
    for k in sd:
        np.testing.assert_array_equal(got[k], sd[k], err_msg=k)
    # and the converted adapters are those tensors, in our layout
    out, lm, adapters, _ = converted
    f, flat = read_adapters(out)
    cp, lm_p = "model.cp_transformer.", "model."
    np.testing.assert_array_equal(flat["pos_emb"], sd[cp + "pos_emb"])
    np.testing.assert_array_equal(flat["gates"], sd[cp + "gates"])
    for j in range(f.adapter_layers):
        np.testing.assert_array_equal(flat["merge_linear"][j], sd[cp + f"merge_linear.{j}.weight"].T)
    for i in range(f.num_layers):
        for p in "qv":
            np.testing.assert_array_equal(flat[f"lora_{p}/a"][i], sd[lm_p + LORA_KEY.format(i=i, p=p, m="A")].T)
            np.testing.assert_array_equal(flat[f"lora_{p}/b"][i], sd[lm_p + LORA_KEY.format(i=i, p=p, m="B")].T)
    _, lm_flat = read_component(out, "lm")
    layer = "model.peft_model.lm.transformer.base_model.model.layers.{i}."
    for i in range(lm.cfg.num_layers):
        w = sd[layer.format(i=i) + "self_attn.in_proj_weight"]
        np.testing.assert_array_equal(lm_flat["layers/self_attn/in_proj/kernel"][i], w.T)
        kv = lm_flat["layers/cross_attn/kv_proj/kernel"][i]
        w = sd[layer.format(i=i) + "cross_attention.v_proj.base_layer.weight"]
        np.testing.assert_array_equal(kv[:, lm.cfg.dim:], w.T)


@pytest.mark.parametrize("layout", ["save_weights", "lightning"])
def test_export_import_round_trip(converted, tmp_path, layout):
    out, lm, _, _ = converted
    f, flat = read_adapters(out)
    path = export_official_adapters(tmp_path / "adapters.pt", f, flat, layout=layout)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if layout == "save_weights":
        sd = dict(obj)
        assert float(sd.pop("lora_alpha")) == f.lora_alpha
    else:
        sd = obj["state_dict"]
        assert obj["hyper_parameters"] == {"lora_alpha": f.lora_alpha}
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    cp, pre = ("", "") if layout == "save_weights" else ("model.cp_transformer.", "model.")
    A, L, D, r = f.adapter_layers, f.num_layers, f.dim, f.lora_r
    want = {cp + "pos_emb": (A + 1, f.pos_emb_frames, D), cp + "gates": (A,)}
    want.update({cp + f"merge_linear.{j}.weight": (D, D) for j in range(A)})
    for i in range(L):
        for p in "qv":
            want[pre + LORA_KEY.format(i=i, p=p, m="A")] = (r, D)
            want[pre + LORA_KEY.format(i=i, p=p, m="B")] = (D, r)
    assert {k: tuple(v.shape) for k, v in sd.items()} == want
    # the official names: the Lightning keys of the fixture checkpoint
    official = dict(np.load(os.path.join(FIXTURE, "state_dict.npz")))
    for k, v in sd.items():
        ref = ("model.cp_transformer." + k if layout == "save_weights" and not k.startswith("peft_model.") else
               ("model." + k if layout == "save_weights" else k))
        np.testing.assert_array_equal(v.numpy(), official[ref], err_msg=k)
    ck = read_instruct_checkpoint(path, lm_cfg=lm.cfg)
    assert ck.fusion == f and ck.lm is None and not ck.notes
    assert sorted(ck.adapters) == sorted(flat)
    for k in flat:
        np.testing.assert_array_equal(ck.adapters[k], flat[k], err_msg=k)
        assert ck.adapters[k].dtype == flat[k].dtype


def test_add_adapters_to_a_converted_musicgen(fx, converted, tmp_path):
    cfg, _ = fx
    out, lm, adapters, _ = converted
    cfg_dict, lm_flat = read_component(out, "lm")
    base = write_model_dir(tmp_path / "base", "musicgen", {"lm": cfg_dict}, {"lm": lm_flat}, source="test")
    ck = add_adapters(base, os.path.join(FIXTURE, CKPT), lora_alpha=cfg["lora_alpha"])  # compares the LMs too
    assert all(n.startswith("unused weights differ") for n in ck.notes) and len(ck.notes) <= 1, ck.notes
    want = module_weights(adapters)
    got = module_weights(load_adapters(base))
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # the official save_weights file alone: no LoRA -> text fusion off, with a note
    f, flat = read_adapters(out)
    sd = {k: torch.from_numpy(v) for k, v in adapters_to_official(f, flat).items() if not k.startswith("peft_model.")}
    torch.save(sd, tmp_path / "cp.pt")
    ck = add_adapters(base, tmp_path / "cp.pt", lora_alpha=cfg["lora_alpha"])
    assert any("no LoRA" in n for n in ck.notes)
    loaded = load_adapters(base)
    np.testing.assert_array_equal(np.asarray(loaded.lora_q["b"][...]), 0)
    np.testing.assert_array_equal(np.asarray(loaded.merge_linear[...]), flat["merge_linear"])


def _fixture_state_dict():
    return dict(np.load(os.path.join(FIXTURE, "state_dict.npz")))


def _one_line_error(fn, *match):
    with pytest.raises(ImgenError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for m in match:
        assert m in msg, msg
    return msg


def test_checkpoint_problems_are_one_line_errors(fx, tmp_path):
    cfg, _ = fx
    sd = _fixture_state_dict()
    no_adapters = {k: v for k, v in sd.items() if not k.startswith("model.cp_transformer.")}
    _one_line_error(lambda: instruct_from_state_dict(no_adapters, "x.ckpt"), "x.ckpt", "no Instruct-MusicGen adapters")
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in no_adapters.items()}}, tmp_path / "lm_only.ckpt")
    _one_line_error(lambda: convert_instruct(tmp_path / "lm_only.ckpt", tmp_path / "o"), "no Instruct-MusicGen adapters")
    no_gate = {k: v for k, v in sd.items() if k != "model.cp_transformer.gates"}
    _one_line_error(lambda: instruct_from_state_dict(no_gate, "x.ckpt", num_heads=cfg["heads"]), "missing keys", "gates")
    short_gate = dict(sd, **{"model.cp_transformer.gates": sd["model.cp_transformer.gates"][:-1]})
    _one_line_error(lambda: instruct_from_state_dict(short_gate, "x.ckpt", num_heads=cfg["heads"]), "mis-shaped", "gates")
    no_lora_b = {k: v for k, v in sd.items() if not k.endswith("layers.1.cross_attention.v_proj.lora_B.default.weight")}
    _one_line_error(lambda: instruct_from_state_dict(no_lora_b, "x.ckpt", num_heads=cfg["heads"]), "missing keys", "lora_B")
    k = "model.cp_transformer.layers.0.linear1.weight"
    unshared = dict(sd, **{k: sd[k] + 1.0})
    _one_line_error(lambda: instruct_from_state_dict(unshared, "x.ckpt", num_heads=cfg["heads"]),
                    "cp_transformer.layers differ", "linear1")
    extra = dict(sd, **{"model.something_else.weight": np.zeros(3, np.float32)})
    _one_line_error(lambda: instruct_from_state_dict(extra, "x.ckpt"), "unexpected keys", "something_else")


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_lightning_hyperparameters_are_never_executed(fx, tmp_path):
    """Lightning pickles hydra partials in hyper_parameters: the tensors load, nothing from the file runs."""
    sd = {k: torch.from_numpy(v) for k, v in _fixture_state_dict().items()}
    marker = tmp_path / "ran"
    # Lightning stores dict(hparams): hydra partials (optimizer, scheduler, the model class) and plain values
    hp = {"optimizer": functools.partial(torch.optim.AdamW, lr=1e-4, weight_decay=0.05), "compile": False,
          "evil": _RunsCodeWhenUnpickled(str(marker)), "sizes": [1, 2]}
    torch.save({"state_dict": sd, "hyper_parameters": hp, "epoch": 3}, tmp_path / "real.ckpt")
    with pytest.raises(Exception):
        torch.load(tmp_path / "real.ckpt", weights_only=True)
    ck = read_instruct_checkpoint(tmp_path / "real.ckpt", num_heads=fx[0]["heads"])
    assert not marker.exists()
    assert ck.layout == "lightning" and ck.lm is not None
    np.testing.assert_array_equal(ck.adapters["gates"], sd["model.cp_transformer.gates"].numpy())


def test_gradients_reach_exactly_the_adapters(fx, converted):
    _, io = fx
    _, lm, adapters, memory = converted
    tgt, cond = _codes(io, "target_codes"), _codes(io, "cond_codes")
    lm_def, lm_state = nnx.split(lm)

    @jax.jit
    def grad_fn(lm_state, ad_state):
        frozen = nnx.merge(lm_def, lm_state)
        return nnx.grad(lambda ad: instruct_loss(frozen, ad, tgt, cond, memory))(nnx.merge(ad_def, ad_state))

    ad_def, ad_state = nnx.split(adapters)
    grads = grad_fn(lm_state, ad_state)
    flat = {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}
    assert sorted(flat) == sorted(module_weights(adapters))
    for k, g in flat.items():
        assert np.isfinite(g).all() and np.abs(g).max() > 0, k


def test_fresh_adapters_and_lower_layers_leave_the_lm_unchanged():
    """start_layer > 0: the prefix of the layers below is zero with a zero gate; fresh adapters (gates 0,
    LoRA B 0) give the plain LM's logits."""
    c = LMConfig(dim=32, num_heads=4, num_layers=3, ffn_dim=64, card=16, text_dim=8)
    lm = abstract_lm(c)  # random weights from numpy: no per-shape compilation of jax.random
    rng = np.random.default_rng(1)
    load_into(lm, {k: (rng.normal(size=shp) * (0.3 if len(shp) > 1 else 1.0)).astype(np.float32)
                   for k, (shp, _) in module_shapes(lm).items()}, "random")
    f = FusionConfig.for_lm(c, adapter_layers=2, lora_r=4, lora_alpha=8.0, pos_emb_frames=16)
    assert f.start_layer == 1
    ad = init_adapters(f, seed=2)
    r = np.random.default_rng(0)
    tgt = jnp.asarray(r.integers(0, c.card, (2, 4, 9)), jnp.int32)
    cond = jnp.asarray(r.integers(0, c.card, (2, 4, 9)), jnp.int32)
    memory = jnp.asarray(r.normal(size=(2, 5, c.dim)).astype(np.float32))
    prefixes_fn = jax.jit(lambda s, a, x: audio_fusion_pass(nnx.merge(*s), nnx.merge(*a), x)[0])
    pre = prefixes_fn(nnx.split(lm), nnx.split(ad), append_special(cond, c.special_token))  # (q, k, v, gate)
    assert pre[0].shape == (3, 2, 10, 4, 8)
    assert not np.asarray(pre[0][0]).any() and not np.asarray(pre[1][0]).any() and float(pre[3][0]) == 0.0
    assert np.asarray(pre[0][1]).any()
    fused_fn = jax.jit(lambda s, a: instruct_frame_logits(nnx.merge(*s), nnx.merge(*a), tgt, cond, memory))
    fused, mask = fused_fn(nnx.split(lm), nnx.split(ad))
    plain, _ = jit_method(lm, lambda m: m.frame_logits(tgt, memory))()
    m = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(fused)[m], np.asarray(plain)[m], atol=1e-5)
    ad.gates.set_value(jnp.asarray([0.5, -0.7]))
    opened, _ = fused_fn(nnx.split(lm), nnx.split(ad))
    assert float(np.abs(np.asarray(opened)[m] - np.asarray(plain)[m]).max()) > 1e-3
    # the adapter layers run the LM's own layers start_layer..: the same as a 2-layer LM made of them
    lm2 = abstract_lm(dataclasses.replace(c, num_layers=2))
    load_into(lm2, {k: (v[1:] if k.startswith("layers/") else v) for k, v in module_weights(lm).items()}, "lm2")
    ad2 = abstract_adapters(FusionConfig.for_lm(lm2.cfg, lora_r=4, lora_alpha=8.0, pos_emb_frames=16))
    load_into(ad2, {k: (v[1:] if k.startswith("lora_") else v) for k, v in module_weights(ad).items()}, "ad2")
    pre2 = prefixes_fn(nnx.split(lm2), nnx.split(ad2), append_special(cond, c.special_token))
    for a, b in zip(pre2[:3], pre[:3]):  # q, k, v
        np.testing.assert_allclose(np.asarray(a), np.asarray(b)[1:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ImgenError, match="positional table"):
        audio_fusion_pass(lm, ad, jnp.zeros((1, 4, 17), jnp.int32))
    with pytest.raises(ImgenError, match="same shape"):
        instruct_frame_logits(lm, ad, tgt, cond[..., :5], memory)


# ---- every array of the fixture ----------------------------------------------------------------------------
IO_COMPARED = {  # array -> the test that compares it
    "descriptions": "test_text_path", "text_input_ids": "test_text_path", "text_hidden": "test_text_path",
    "text_mask": "test_text_path", "cross_attention_src": "test_text_path",
    "gen_text_input_ids": "test_text_path", "gen_text_hidden": "test_text_path", "gen_text_mask": "test_text_path",
    "gen_cross_attention_src": "test_text_path",
    "target_codes": "test_training_forward_every_array", "cond_codes": "test_training_forward_every_array",
    "cond_codes_ext": "test_training_forward_every_array", "sequence_codes": "test_training_forward_every_array",
    "logits_seq": "test_training_forward_every_array", "logits": "test_training_forward_every_array",
    "mask": "test_training_forward_every_array", "loss": "test_training_forward_every_array",
    "logits_gate0": "test_training_forward_every_array", "loss_gate0": "test_training_forward_every_array",
    "logits_text_null": "test_training_forward_every_array",
    "gen_cond_codes_ext": "test_greedy_decode_matches_official", "gen_codes": "test_greedy_decode_matches_official",
    "gen_sequence": "test_greedy_decode_matches_official",
    "gen_step_positions": "test_greedy_decode_matches_official",
    "gen_step_logits_cfg": "test_greedy_decode_matches_official",
    "gen_step_input_tokens": "test_decode_steps_cond_and_uncond_logits",
    "gen_step_logits_cond": "test_decode_steps_cond_and_uncond_logits",
    "gen_step_logits_uncond": "test_decode_steps_cond_and_uncond_logits",
    "gen_windowed_codes": "test_official_window_loop_matches_official",
    "gen_windowed_offsets": "test_official_window_loop_matches_official",
    "gen_windowed_lengths": "test_official_window_loop_matches_official",
}
INTERMEDIATES_COMPARED = ("cp_sum_code", "lm_input", "cp_cond", "cp_q", "cp_k", "cp_v", "cp_o_out", "lm_self_attn_out",
                          "lm_cross_attn_out", "lm_layer_out")


def test_every_fixture_array_is_compared(fx):
    """io.npz and intermediates.npz hold nothing that no test compares."""
    _, io = fx
    assert set(io) <= set(IO_COMPARED), sorted(set(io) - set(IO_COMPARED))
    inter = np.load(os.path.join(FIXTURE, "intermediates.npz"))
    assert set(inter.files) <= set(INTERMEDIATES_COMPARED), sorted(set(inter.files) - set(INTERMEDIATES_COMPARED))


def _close_rel(ours, ref, what, rel=1e-5):
    """max |ours - ref| <= rel * max(1, max |ref|) (residual streams reach ~10: relative to their scale)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    tol = rel * max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(ours - ref).max())
    assert err <= tol, f"{what}: max abs error {err} > {tol}"


def test_text_path(fx, converted):
    """descriptions -> token ids -> T5 states -> memory. The ids come from the fixture's stand-in tokenizer (only
    their structure is ours to check: eos then padding; the mask marks the tokens); the memory is our
    `text_memory` (output_proj, padded rows zeroed) within 1e-5; the CFG batch's null rows are exactly zero."""
    from imgen_jax.instruct.edit import normalise_instruction

    cfg, io = fx
    _, lm, _, memory = converted
    B = io["gen_codes"].shape[0]  # conditional rows of the generation batch
    assert list(io["descriptions"]) == cfg["descriptions"]
    for d in io["descriptions"]:  # official Slakh formats: ours writes the same strings
        m = re.match(r"^Music piece\. Instruct: (Add|No|Only) (.+)\.$", str(d))
        assert m or str(d) == "Music piece.", d
        if m:  # the edit path reads it as the same instruction
            assert normalise_instruction(str(d)) == str(d)
            assert normalise_instruction(f"{m.group(1)} {m.group(2)}".replace("No ", "remove ")) == str(d)
    for ids, mask in ((io["text_input_ids"], io["text_mask"]), (io["gen_text_input_ids"][:B], io["gen_text_mask"][:B])):
        np.testing.assert_array_equal(mask, (ids != cfg["fake_t5"]["pad_id"]).astype(mask.dtype))
        last = mask.sum(1) - 1
        np.testing.assert_array_equal(ids[np.arange(len(ids)), last], cfg["fake_t5"]["eos_id"])
    null_ids = io["gen_text_input_ids"][B:]
    assert (null_ids[:, 0] == cfg["fake_t5"]["eos_id"]).all() and not io["gen_text_mask"][B:].any()
    _close_rel(memory, io["cross_attention_src"], "cross_attention_src")
    gen = lm.text_memory(jnp.asarray(io["gen_text_hidden"]), jnp.asarray(io["gen_text_mask"]))
    _close_rel(gen, io["gen_cross_attention_src"], "gen_cross_attention_src")
    assert not np.asarray(gen)[B:].any() and not io["gen_cross_attention_src"][B:].any()


def test_training_forward_every_array(fx, converted):
    """The training forward of the official Lightning module: the pattern input, the pattern-space logits, the
    frame logits / mask / loss, with the gates at 0, and with the null text (zero memory, the CFG dropout)."""
    cfg, io = fx
    out, lm, adapters, memory = converted
    tgt, cond = _codes(io, "target_codes"), _codes(io, "cond_codes")
    T = tgt.shape[-1]
    assert tgt.shape == (cfg["batch"], cfg["num_codebooks"], cfg["frames"])
    assert int(io["target_codes"].max()) < cfg["card"] and int(io["cond_codes"].max()) < cfg["card"]
    ext = append_special(cond, lm.cfg.special_token)
    np.testing.assert_array_equal(np.asarray(ext), io["cond_codes_ext"])
    seq = build_pattern(tgt, lm.cfg.special_token, lm.cfg.delays, num_steps=T + 1)
    np.testing.assert_array_equal(np.asarray(seq), io["sequence_codes"])
    forced = jit_method(lm, lambda m, seq, mem, fu: m(seq, mem, None, fusion=fu))
    _close_rel(forced(seq, memory, instruct_fusion(lm, adapters, ext)), io["logits_seq"], "logits_seq")
    logits, mask, loss = (np.asarray(x) for x in _train(lm, adapters, tgt, cond, memory))
    np.testing.assert_array_equal(mask, io["mask"])
    np.testing.assert_array_equal(np.isnan(logits), np.isnan(io["logits"]))
    _close_rel(logits[mask], io["logits"][io["mask"]], "logits")
    assert abs(float(loss) - float(io["loss"])) <= 1e-5 * abs(float(io["loss"]))
    null, nmask, _ = (np.asarray(x) for x in _train(lm, adapters, tgt, cond, jnp.zeros_like(memory)))
    _close_rel(null[nmask], io["logits_text_null"][io["mask"]], "logits_text_null")
    assert np.isnan(io["logits_text_null"][~io["mask"]]).all()
    shut = load_adapters(out)
    shut.gates.set_value(jnp.zeros_like(shut.gates[...]))
    g0, gmask, gloss = (np.asarray(x) for x in _train(lm, shut, tgt, cond, memory))
    _close_rel(g0[gmask], io["logits_gate0"][io["mask"]], "logits_gate0")
    assert abs(float(gloss) - float(io["loss_gate0"])) <= 1e-5 * abs(float(io["loss_gate0"]))


def test_intermediates(fx, converted):
    """Every tensor of intermediates.npz: the fusion pass (audio_fusion_pass(trace=True)) and the LM layers
    (MusicGenLM.hidden(trace=True)), within 1e-5 relative to each tensor's scale (SEMANTICS.md section 14)."""
    cfg, io = fx
    _, lm, adapters, memory = converted
    inter = dict(np.load(os.path.join(FIXTURE, "intermediates.npz")))
    tgt, ext = _codes(io, "target_codes"), _codes(io, "cond_codes_ext")
    start, A = adapters.cfg.start_layer, adapters.cfg.adapter_layers
    assert (start, A) == (cfg["start_layer"], cfg["adapter_layers"])

    @jax.jit
    def run(lm_state, ad_state, tgt, ext, memory):
        m, ad = nnx.merge(lm_def, lm_state), nnx.merge(ad_def, ad_state)
        pre, trace = audio_fusion_pass(m, ad, ext, trace=True)
        seq = build_pattern(tgt, m.cfg.special_token, m.cfg.delays, num_steps=tgt.shape[-1] + 1)
        _, layers = m.hidden(seq, memory, None, fusion=instruct_fusion(m, ad, ext), trace=True)
        return pre, trace, layers

    (lm_def, lm_state), (ad_def, ad_state) = nnx.split(lm), nnx.split(adapters)
    pre, trace, layers = run(lm_state, ad_state, tgt, ext, memory)
    _close_rel(trace["sum_code"], inter["cp_sum_code"], "cp_sum_code")
    _close_rel(trace["cond"], inter["cp_cond"], "cp_cond")
    _close_rel(trace["o_out"], inter["cp_o_out"], "cp_o_out")
    for name, x in (("cp_q", pre[0]), ("cp_k", pre[1]), ("cp_v", pre[2])):  # ours [L, B, Tc, H, D] -> [A, B, H, Tc, D]
        _close_rel(np.asarray(x)[start:].swapaxes(2, 3), inter[name], name)
    _close_rel(layers["input"], inter["lm_input"], "lm_input")
    for name in ("self_attn_out", "cross_attn_out", "layer_out"):
        _close_rel(layers[name], inter["lm_" + name], "lm_" + name)


# ---- the checkpoint files --------------------------------------------------------------------------------------
def test_every_checkpoint_key_is_accounted_for():
    """key_roles classes every key of the Lightning checkpoint as state_dict_keys.json does (role and used)."""
    from convert.instruct_ckpt import key_roles

    with open(os.path.join(FIXTURE, "state_dict_keys.json")) as f:
        want = {k: (v["kind"], v["used"]) for k, v in json.load(f).items()}
    tensors, _ = load_checkpoint_tensors(os.path.join(FIXTURE, CKPT))
    sd = {k: v for k, v in tensors.items() if k.startswith("state_dict.")}
    got = {k[len("state_dict."):]: v for k, v in key_roles(sd).items()}
    assert got == want


def test_dead_weights_are_one_note_and_never_read(fx):
    """The dead weights hold independent values: one note line; the LM is built from the weights in use."""
    cfg, _ = fx
    ck = read_instruct_checkpoint(os.path.join(FIXTURE, CKPT), num_heads=cfg["heads"], lora_alpha=cfg["lora_alpha"])
    dead = [n for n in ck.notes if "unused weights" in n]
    assert len(dead) == 1 and "\n" not in dead[0], ck.notes
    sd = _fixture_state_dict()
    layer = "model.peft_model.lm.transformer.base_model.model.layers.{i}."
    D = ck.lm_cfg.dim
    for i in range(ck.lm_cfg.num_layers):
        p = layer.format(i=i)
        np.testing.assert_array_equal(ck.lm["layers/cross_attn/q_proj/kernel"][i], sd[p + "cross_attention.q_proj.base_layer.weight"].T)
        np.testing.assert_array_equal(ck.lm["layers/cross_attn/kv_proj/kernel"][i][:, :D], sd[p + "cross_attention.k_proj.weight"].T)
        np.testing.assert_array_equal(ck.lm["layers/self_attn/in_proj/kernel"][i], sd[p + "self_attn.in_proj_weight"].T)


def test_official_save_weights_file(fx, converted, tmp_path):
    """adapter_weights.pt (CPTransformer.save_weights: pos_emb, gates, merge_linear; no LoRA) loads with
    weights_only; imported into the converted MusicGen, the audio fusion is the checkpoint's and LoRA B is 0."""
    cfg, _ = fx
    out, lm, _, _ = converted
    path = os.path.join(FIXTURE, "adapter_weights.pt")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    A = cfg["adapter_layers"]
    assert sorted(raw) == sorted(["pos_emb", "gates"] + [f"merge_linear.{j}.weight" for j in range(A)])
    cfg_dict, lm_flat = read_component(out, "lm")
    base = write_model_dir(tmp_path / "base", "musicgen", {"lm": cfg_dict}, {"lm": lm_flat}, source="test")
    ck = add_adapters(base, path, lora_alpha=cfg["lora_alpha"])
    assert ck.layout == "save_weights" and any("no LoRA" in n for n in ck.notes)
    f, flat = read_adapters(base)
    assert (f.adapter_layers, f.pos_emb_frames, f.lora_alpha) == (A, cfg["pos_emb_frames"], cfg["lora_alpha"])
    np.testing.assert_array_equal(flat["pos_emb"], raw["pos_emb"].numpy())
    np.testing.assert_array_equal(flat["gates"], raw["gates"].numpy())
    for j in range(A):
        np.testing.assert_array_equal(flat["merge_linear"][j], raw[f"merge_linear.{j}.weight"].numpy().T)
    assert not flat["lora_q/b"].any() and not flat["lora_v/b"].any()


def test_lora_alpha_recorded_in_the_checkpoint_wins(fx, tmp_path):
    """A checkpoint that records lora_alpha in its hyper-parameters (a pickled partial's keyword) is read with
    that alpha; one that records none takes the given --lora-alpha."""
    cfg, _ = fx
    sd = {k: torch.from_numpy(v) for k, v in _fixture_state_dict().items()}
    hp = {"instructor": functools.partial(torch.optim.AdamW, lora_alpha=7.5)}  # any class: loaded as a placeholder
    torch.save({"state_dict": sd, "hyper_parameters": hp}, tmp_path / "alpha.ckpt")
    ck = read_instruct_checkpoint(tmp_path / "alpha.ckpt", num_heads=cfg["heads"], lora_alpha=3.0)
    assert ck.fusion.lora_alpha == 7.5 and any("records lora_alpha" in n for n in ck.notes)
    torch.save({"state_dict": sd}, tmp_path / "plain.ckpt")
    assert read_instruct_checkpoint(tmp_path / "plain.ckpt", num_heads=cfg["heads"], lora_alpha=3.0).fusion.lora_alpha == 3.0
    assert ck.fusion.lora_r == cfg["lora_r"]


# ---- the official training step ---------------------------------------------------------------------------------
def _official_names(fusion, flat):
    """Our flat adapter arrays -> {Lightning state-dict key: array in the PyTorch layout}."""
    return adapters_to_official(fusion, flat, layout="lightning")


def test_train_step_matches_official(fx, converted):
    """One step of the official trainer (train_step.npz, text dropout off): the same trainable set name for name,
    gradients within 1e-5 of each tensor's max, the global norm, and one optimizer step (clip to 2.0, AdamW
    lr 1e-4 flat, weight decay 0.05) from the fixture's parameters within 1e-6: exactly so on the official
    gradients, and on ours wherever Adam's first step is well conditioned (below)."""
    import optax
    from flax.traverse_util import flatten_dict, unflatten_dict

    from imgen_jax.train.config import base_config
    from imgen_jax.train.step import apply_update, codes_loss_and_grads, make_optimizer

    cfg, io = fx
    out, lm, adapters, memory = converted
    step = dict(np.load(os.path.join(FIXTURE, "train_step.npz")))
    grads_ref = {k[len("grad."):]: v for k, v in step.items() if k.startswith("grad.")}
    after_ref = {k[len("after."):]: v for k, v in step.items() if k.startswith("after.")}
    fusion, flat = read_adapters(out)
    assert sorted(_official_names(fusion, flat)) == sorted(grads_ref) == sorted(cfg["train_step"]["trainable"])
    ad_def, ad_state = nnx.split(adapters)
    params = nnx.to_pure_dict(ad_state)
    loss, grads = jax.jit(lambda p: codes_loss_and_grads(lm, ad_def, p, _codes(io, "target_codes"),
                                                         _codes(io, "cond_codes"), memory, None))(params)
    assert abs(float(loss) - float(step["loss"])) <= 1e-5 * abs(float(step["loss"]))
    ours = _official_names(fusion, {k: np.asarray(v) for k, v in flatten_dict(grads, sep="/").items()})
    for k, ref in grads_ref.items():
        err = float(np.abs(ours[k] - ref).max())
        assert err <= 1e-5 * float(np.abs(ref).max()), f"grad {k}: {err}"
    norm = float(optax.tree.norm(grads))
    assert abs(norm - float(step["grad_norm"])) <= 1e-5 * float(step["grad_norm"])
    t = base_config().train
    t.lr, t.weight_decay, t.warmup_steps = cfg["train_step"]["lr"], cfg["train_step"]["weight_decay"], 0
    t.b1, t.b2 = cfg["train_step"]["adam_betas"]
    t.eps, t.grad_clip_norm = cfg["train_step"]["adam_eps"], cfg["train_step"]["grad_clip_norm"]
    optimizer, schedule = make_optimizer(t)
    assert abs(float(schedule(0)) - t.lr) <= 1e-6 * t.lr  # no warmup: the first update runs at lr (float32)
    # the optimizer step itself, on the official gradients: after.* within 1e-6
    # the official gradients in our names and layouts, through the converter's importer (a round trip checks it)
    ours_ref = instruct_from_state_dict(grads_ref, "train_step.npz grad.*", num_heads=cfg["heads"]).adapters
    back = _official_names(fusion, ours_ref)
    assert sorted(back) == sorted(grads_ref) and all(np.array_equal(back[k], grads_ref[k]) for k in grads_ref)
    ref_grads = unflatten_dict({k: jnp.asarray(v) for k, v in ours_ref.items()}, sep="/")
    new, _ = apply_update(optimizer, params, optimizer.init(params), ref_grads)
    after = _official_names(fusion, {k: np.asarray(v) for k, v in flatten_dict(new, sep="/").items()})
    for k, ref in after_ref.items():
        err = float(np.abs(after[k] - ref).max())
        assert err <= 1e-6, f"after {k}: {err}"
    # the whole step on our gradients: within 1e-6 wherever Adam's first update is well conditioned (|g| >= 1e3
    # eps: there u = lr g / (|g| + eps) moves by at most lr * |dg| / |g|); elsewhere, where a gradient rounding
    # error of 1e-10 moves u by up to lr * 1e-10 / eps, within the bound |u| <= lr (1 + wd) of an Adam step
    new, _ = apply_update(optimizer, params, optimizer.init(params), grads)
    after = _official_names(fusion, {k: np.asarray(v) for k, v in flatten_dict(new, sep="/").items()})
    for k, ref in after_ref.items():
        well = np.abs(grads_ref[k]) >= 1e3 * t.eps
        err = np.abs(after[k] - ref)
        assert float(err[well].max(initial=0.0)) <= 1e-6, f"after {k} (well conditioned): {err[well].max()}"
        assert float(err.max()) <= 2 * t.lr * (1 + t.weight_decay), f"after {k}: {err.max()}"


def test_official_schedule_and_recipe():
    """configs/slakh.py is the official trainer's recipe; its schedule is get_cosine_schedule_with_warmup(100, 10000)
    stepped per update (first update lr 0, peak at 100, half-way at 5050, and 5000 updates trained)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("slakh_cfg", os.path.join(ROOT, "configs", "slakh.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    t = c.train
    assert (t.batch_size, t.grad_accum, t.grad_clip_norm, t.lr, t.weight_decay) == (32, 4, 2.0, 1e-4, 0.05)
    assert (t.warmup_steps, t.schedule_steps, t.steps, c.model.text_dropout) == (100, 10000, 5000, 0.3)
    from imgen_jax.train.step import make_optimizer

    _, schedule = make_optimizer(t)
    lr = lambda s: float(schedule(s))  # noqa: E731
    assert lr(0) == 0.0 and abs(lr(50) - 5e-5) < 1e-10 and abs(lr(100) - 1e-4) < 1e-10  # float32 schedule
    assert abs(lr(5050) - 5e-5) < 1e-10 and lr(10000) < 1e-12
    # transformers' own formula at a few steps
    for s in (1, 99, 101, 2500, 4999, 9999):
        ref = s / 100 if s < 100 else max(0.0, 0.5 * (1.0 + math.cos(math.pi * (s - 100) / 9900)))
        assert abs(lr(s) - 1e-4 * ref) < 1e-10, s


# ---- edit windows ---------------------------------------------------------------------------------------------
def test_every_gapless_window_is_generate_with_the_previous_tail(fx, converted):
    """The default (gapless) edit: window w equals `generate` of its n frames with the previous window's frames
    from `stride` on as audio prompt and the decode fusion of the condition from the window's offset; the output
    is every window's new frames, one per condition frame."""
    from imgen_jax.instruct.edit import EditConfig, edit_tokens, gapless_window_plan

    cfg, io = fx
    _, lm, adapters, _ = converted
    memory = _gen_memory(lm, io)
    cond = _codes(io, "cond_codes")
    T = cond.shape[-1]
    W = max(3, T // 2 - 1)
    R = max(1, W - 3)
    plan = gapless_window_plan(T, W, R)
    assert len(plan) >= 3 and sum(n - tp for _, n, tp in plan) == T
    sampling = generate_mod.SamplingConfig.for_edit(guidance_scale=cfg["cfg_coef"], use_sampling=False)
    config = EditConfig(sampling, window_frames=W, stride_frames=R)
    codes = np.asarray(edit_tokens(lm, adapters, cond, memory, config))
    assert codes.shape == cond.shape
    prompt, pieces = None, []
    for offset, n, tp in plan:
        assert offset + n <= T and (tp == 0) == (prompt is None)
        fusion = decode_fusion(lm, adapters, cond[:, :, offset:], num_frames=n)
        sampling = generate_mod.SamplingConfig(num_frames=n, guidance_scale=cfg["cfg_coef"], use_sampling=False,
                                               window_frames=None)
        gen = np.asarray(generate_mod.generate(lm, memory, None, sampling, prompt=prompt, fusion=fusion))
        if prompt is not None:
            np.testing.assert_array_equal(gen[:, :, :tp], np.asarray(prompt))
        pieces.append(gen[:, :, tp:])
        np.testing.assert_array_equal(codes[:, :, offset + tp: offset + n], gen[:, :, tp:])
        prompt = jnp.asarray(gen[:, :, R:]) if n > R else None
    np.testing.assert_array_equal(codes, np.concatenate(pieces, axis=-1))


def test_window_plans():
    """gapless: every frame exactly once, windows within the condition; official: CondMusicgen's float arithmetic."""
    from imgen_jax.instruct.edit import EditConfig, gapless_window_plan, official_window_plan, window_plan

    for total, W, R in ((1, 5, 2), (10, 10, 5), (23, 8, 8), (23, 8, 3), (500, 500, 250), (1234, 500, 250), (7, 3, 1)):
        plan = gapless_window_plan(total, W, R)
        covered = np.zeros(total, int)
        for offset, n, tp in plan:
            assert 1 <= n <= W and offset + n <= total and tp < n
            covered[offset + tp: offset + n] += 1
        assert (covered == 1).all(), (total, W, R, plan)
        assert plan == window_plan(total, W, R)
    # official numbers: 5 s windows every 16 s at 50 frames/s
    assert official_window_plan(1000, 250, 800) == [(0, 250, 0), (800, 200, 0)]
    assert official_window_plan(250, 250, 800) == [(0, 250, 0)]
    assert official_window_plan(29, 250, 800) == [(0, 28, 0)]  # int(0.58 * 50) = 28: the official float loses a frame
    assert official_window_plan(20, 8, 12) == [(0, 8, 0), (12, 8, 0)]
    long = official_window_plan(50 * 120, 250, 800)  # stops once the offset passes 80 s
    assert [o for o, _, _ in long] == list(range(0, 4001, 800)) and all(n == 250 for _, n, _ in long)
    assert window_plan(1000, 250, 800, "official") == official_window_plan(1000, 250, 800)
    # defaults follow the adapters' positional table
    assert EditConfig().resolve_windows(200) == (200, 100)
    assert EditConfig().resolve_windows(500) == (500, 250)
    assert EditConfig(windows="official").resolve_windows(500) == (250, 800)
    with pytest.raises(ImgenError, match="exceeds the adapters' 200 positions"):
        EditConfig(window_frames=500).resolve_windows(200)
    with pytest.raises(ImgenError, match="windows must be one of"):
        EditConfig(windows="overlap")
