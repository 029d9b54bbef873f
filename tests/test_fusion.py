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
import os

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
from imgen_jax.xla import jit_method
from imgen_jax.errors import ImgenError
from imgen_jax.fusion import (
    FusionConfig, abstract_adapters, audio_prefixes, init_adapters, load_adapters, merge_lora, read_adapters,
)
from imgen_jax.instruct import (
    append_special, decode_fusion, instruct_frame_logits, instruct_loss, masked_cross_entropy,
)
from imgen_jax.lm import LMConfig, abstract_lm, load_lm
from imgen_jax.modeldir import read_component, write_model_dir
from imgen_jax.patterns import build_pattern
from imgen_jax.weights import load_into, module_shapes, module_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT = os.path.normpath(os.path.join(ROOT, "..", "shared", "fixtures", "official_tiny"))
FIXTURE = os.environ.get("IMGEN_OFFICIAL_FIXTURE") or _DEFAULT

if not os.path.isdir(FIXTURE):
    if os.environ.get("IMGEN_OFFICIAL_FIXTURE"):
        raise RuntimeError(f"IMGEN_OFFICIAL_FIXTURE={FIXTURE} is not a directory")
    pytest.skip(f"official fixture not found at {FIXTURE}", allow_module_level=True)
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
    out = convert_instruct(os.path.join(FIXTURE, CKPT), tmp_path_factory.mktemp("conv") / "model", num_heads=cfg["heads"])
    lm, adapters = load_lm(out), load_adapters(out)
    memory = lm.text_memory(jnp.asarray(io["text_hidden"]), jnp.asarray(io["text_mask"]))
    return out, lm, adapters, memory


def _codes(io, name):
    return jnp.asarray(io[name], jnp.int32)


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
    """extend() step by step with the decode clamp (prefix position min(p, T-1)) == teacher forcing
    (prefix position p) at every position < T; merged LoRA == unmerged LoRA."""
    _, io = fx
    _, lm, adapters, memory = converted
    tgt, cond = _codes(io, "target_codes"), _codes(io, "cond_codes")
    B, _, T = tgt.shape
    pre = audio_prefixes(lm, adapters, append_special(cond, lm.cfg.special_token))
    lora = adapters.lora()
    seq = build_pattern(tgt, lm.cfg.special_token, lm.cfg.delays, num_steps=T + 1)
    forced = jit_method(lm, lambda m, seq, pre, lora: m(
        seq, memory, None, prefixes=pre, prefix_pos=jnp.arange(T + 1), lora=lora))
    ref = np.asarray(forced(seq, pre, lora))
    extend = jit_method(lm, lambda m, seq, cache, pre: m.extend(
        seq, cache, pre, jnp.minimum(cache.pos + jnp.arange(seq.shape[-1]), T - 1)))
    cache = lm.init_cache(B, T + 4, memory, None, lora=lora)
    P = 3
    out, cache = extend(seq[..., :P], cache, pre)  # prefill
    steps = [out]
    for s in range(P, T):
        out, cache = extend(seq[..., s:s + 1], cache, pre)
        steps.append(out)
    _close(np.concatenate([np.asarray(x) for x in steps], axis=2), ref[:, :, :T], "extend vs teacher forcing")
    merged = merge_lora(lm, adapters)
    _close(np.asarray(jit_method(merged, lambda m, seq, pre, lora: m(
        seq, memory, None, prefixes=pre, prefix_pos=jnp.arange(T + 1)))(seq, pre, lora)), ref, "merged LoRA")
    # the original LM is untouched by merge_lora
    k = "layers/cross_attn/q_proj/kernel"
    assert float(np.abs(module_weights(lm)[k] - module_weights(merged)[k]).max()) > 1e-3
    np.testing.assert_array_equal(module_weights(lm)[k], read_component(converted[0], "lm")[1][k])


def test_greedy_decode_matches_official(fx, converted):
    generate_mod = pytest.importorskip("imgen_jax.generate")
    cfg, io = fx
    _, lm, adapters, memory = converted
    G = cfg["gen_frames"]
    fusion = decode_fusion(lm, adapters, _codes(io, "cond_codes"), num_frames=G)
    np.testing.assert_array_equal(fusion.prefixes.q.shape[2], G + 1)
    sampling = generate_mod.SamplingConfig(num_frames=G, guidance_scale=cfg["cfg_coef"], use_sampling=False)
    codes = generate_mod.generate(merge_lora(lm, adapters), memory, None, sampling, prefixes=fusion.prefixes,
                                  prefix_clamp=fusion.prefix_clamp)
    np.testing.assert_array_equal(np.asarray(codes), io["gen_codes"])


def test_windowed_edit_first_window_matches_official(fx, converted):
    """imgen_jax.edit.edit_tokens over the whole condition with windows of gen_frames: the first window
    is the official greedy decode; the output covers every condition frame."""
    from imgen_jax.edit import EditConfig, edit_tokens

    cfg, io = fx
    _, lm, adapters, memory = converted
    G = cfg["gen_frames"]
    cond = _codes(io, "cond_codes")
    config = EditConfig(guidance_scale=cfg["cfg_coef"], use_sampling=False, window_frames=G, stride_frames=G // 2)
    codes = np.asarray(edit_tokens(merge_lora(lm, adapters), adapters, cond, memory, config))
    assert codes.shape == cond.shape
    np.testing.assert_array_equal(codes[:, :, :G], io["gen_codes"])
    assert codes.min() >= 0 and codes.max() < cfg["card"]


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
    sd = obj if layout == "save_weights" else obj["state_dict"]
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


def test_add_adapters_to_a_converted_musicgen(converted, tmp_path):
    out, lm, adapters, _ = converted
    cfg_dict, lm_flat = read_component(out, "lm")
    base = write_model_dir(tmp_path / "base", "musicgen", {"lm": cfg_dict}, {"lm": lm_flat}, source="test")
    ck = add_adapters(base, os.path.join(FIXTURE, CKPT))  # compares the checkpoint's LM with the directory's
    assert not ck.notes
    want = module_weights(adapters)
    got = module_weights(load_adapters(base))
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # the official save_weights file alone: no LoRA -> text fusion off, with a note
    f, flat = read_adapters(out)
    sd = {k: torch.from_numpy(v) for k, v in adapters_to_official(f, flat).items() if not k.startswith("peft_model.")}
    torch.save(sd, tmp_path / "cp.pt")
    ck = add_adapters(base, tmp_path / "cp.pt")
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


def test_lightning_hyperparameters_are_never_executed(tmp_path):
    """Lightning pickles hydra partials in hyper_parameters: the tensors load, nothing from the file runs."""
    sd = {k: torch.from_numpy(v) for k, v in _fixture_state_dict().items()}
    marker = tmp_path / "ran"
    # Lightning stores dict(hparams): hydra partials (optimizer, scheduler, the model class) and plain values
    hp = {"optimizer": functools.partial(torch.optim.AdamW, lr=1e-4, weight_decay=0.05), "compile": False,
          "evil": _RunsCodeWhenUnpickled(str(marker)), "sizes": [1, 2]}
    torch.save({"state_dict": sd, "hyper_parameters": hp, "epoch": 3}, tmp_path / "real.ckpt")
    with pytest.raises(Exception):
        torch.load(tmp_path / "real.ckpt", weights_only=True)
    ck = read_instruct_checkpoint(tmp_path / "real.ckpt", num_heads=4)
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
    prefixes_fn = jax.jit(lambda s, a, x: audio_prefixes(nnx.merge(*s), nnx.merge(*a), x))
    pre = prefixes_fn(nnx.split(lm), nnx.split(ad), append_special(cond, c.special_token))
    assert pre.q.shape == (3, 2, 10, 4, 8)
    assert not np.asarray(pre.q[0]).any() and not np.asarray(pre.k[0]).any() and float(pre.gate[0]) == 0.0
    assert np.asarray(pre.q[1]).any()
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
        audio_prefixes(lm, ad, jnp.zeros((1, 4, 17), jnp.int32))
    with pytest.raises(ImgenError, match="same shape"):
        instruct_frame_logits(lm, ad, tgt, cond[..., :5], memory)
