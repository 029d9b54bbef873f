"""`imgen plan` (imgen_jax/train/plan.py) and the memory levers of training (remat, bf16 frozen weights,
longer positional tables, frozen weights outside FSDP).

The plan tests compile for abstract TPU devices with libtpu (the `tpu` extra, part of `test`), from this
CPU-only machine: the TPU compiler's memory figures and the HLO the roofline is read from.
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from imgen_jax.errors import ImgenError
from imgen_jax.train import plan as planlib
from train_helpers import TINY_CODEC, make_tiny_model_dir, tiny_config


def _v5e_devices(topology: str) -> list:
    return planlib.tpu_devices(topology)[1]


# ---- the HLO walk ----------------------------------------------------------------------------------
def test_hlo_walk_scales_loops_and_counts_collectives():
    """A scanned stack of L FSDP-sharded matmuls, forward and backward, on v5e:2x2 (4 chips): the walk's FLOPs
    equal the exact count 3 x 2 x (B/4) S D E x L (forward, input gradient, weight gradient), XLA's
    cost_analysis counts the loop bodies once (within 10% of the walk's once-count: elementwise work), and the
    weight all-gathers move (n - 1) / n of each layer's weights per pass."""
    devs = _v5e_devices("v5e:2x2")
    mesh = Mesh(np.asarray(devs, dtype=object).reshape(4), ("fsdp",))
    L, B, S, D = 6, 8, 128, 512
    w = jax.ShapeDtypeStruct((L, D, D), jnp.bfloat16, sharding=NamedSharding(mesh, P(None, "fsdp")))
    x = jax.ShapeDtypeStruct((B, S, D), jnp.bfloat16, sharding=NamedSharding(mesh, P("fsdp")))

    def loss(w, x):
        h, _ = jax.lax.scan(lambda h, wl: (jnp.tanh(h @ wl), None), x, w)
        return jnp.mean(jnp.square(h.astype(jnp.float32)))

    compiled = jax.jit(jax.grad(loss)).lower(w, x).compile()
    cost = planlib.analyse_hlo(compiled.as_text(), num_partitions=4)
    per_pass = 2 * (B // 4) * S * D * D * L
    assert cost.flops == pytest.approx(3 * per_pass, rel=1e-6)
    assert cost.flops_once == pytest.approx(3 * per_pass / L, rel=1e-6)
    xla = compiled.cost_analysis()
    xla = xla[0] if isinstance(xla, (list, tuple)) else xla
    assert cost.flops_once <= xla["flops"] <= 1.1 * cost.flops_once
    assert [t for t in cost.loops if t is not None and t > 2] == [L, L]
    gathered = sum(tot for op, (n, tot) in cost.collectives.items() if op in ("all-gather", "collective-permute"))
    one_pass = L * D * D * 2 * 3 / 4  # bf16 weights, (n - 1) / n of them received by each of 4 chips
    assert one_pass <= gathered <= 2 * one_pass + 1e-6  # forward, and the backward pass's (re-)gather if any


def test_unfit_program_reports_the_compilers_figure():
    msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (17.25G) "
           "exceeds available HBM (15.75G).")
    p = planlib._unfit("train step", msg, {"data": 8}, 1.0)
    assert not p.fits and p.memory["total"] == pytest.approx(17.25 * 2**30)


# ---- parameter counts --------------------------------------------------------------------------------
def test_counts_of_musicgen_large_match_the_paper():
    """The paper's "8% new parameters": 264M trainable (audio fusion + LoRA r 32 on 48 layers) on the 3.3B LM."""
    from imgen_jax.train.config import base_config

    c = base_config()
    c.model.base_size = "large"
    ab = planlib.abstract_base(c)
    from imgen_jax.train.step import fusion_config

    _, params = planlib.abstract_adapters(fusion_config(c, ab.base.lm_cfg))
    counts = planlib.count_params({k: planlib._flat_shapes(v) for k, v in ab.base.frozen.items()}
                                  | {"adapters": planlib._flat_shapes(params)})
    assert round(counts["trainable"] / 1e6) == 264
    assert 3.2e9 < counts["lm"] < 3.3e9
    assert counts["lora"] == 48 * 2 * 2 * 2048 * 32
    assert counts["fusion"] == 48 * 2048 * 2048 + 49 * 501 * 2048 + 48
    assert round(100 * counts["trainable"] / counts["lm"]) == 8


def test_info_prints_the_counts_of_a_model_dir(tmp_path, spm_model, capsys):
    from imgen_jax.cli import main
    from imgen_jax.models.lm import abstract_lm
    from imgen_jax.weights import module_shapes
    from train_helpers import TINY_LM

    d = make_tiny_model_dir(str(tmp_path / "base"), spm_model)
    assert main(["info", d]) == 0
    out = capsys.readouterr().out
    n_lm = sum(int(np.prod(s)) for s, _ in module_shapes(abstract_lm(TINY_LM)).values())
    assert f"LM {n_lm / 1e6:,.1f}M" in out
    assert planlib.model_dir_counts(d)["lm"] == n_lm


# ---- the planner end to end ----------------------------------------------------------------------------
TINY_PLAN_CONFIG = '''
from imgen_jax.train.config import base_config


def get_config():
    c = base_config()
    c.model.base_dir = "{base}"
    c.model.lora_r = 4
    c.model.lora_alpha = 8.0
    c.model.pos_emb_frames = 51
    c.model.frozen_dtype = "bfloat16"
    c.data.clip_seconds = 0.5
    c.data.sample_rate = {sr}
    c.data.text_max_length = 8
    c.train.batch_size = 8
    c.train.grad_accum = 2
    c.mesh.data = 2
    c.mesh.fsdp = 2
    return c
'''


@pytest.fixture(scope="module")
def tiny_plan_config(tmp_path_factory, spm_model) -> str:
    root = tmp_path_factory.mktemp("plan")
    base = make_tiny_model_dir(str(root / "base"), spm_model)
    path = root / "tiny_plan.py"
    path.write_text(TINY_PLAN_CONFIG.format(base=base, sr=TINY_CODEC.sampling_rate))
    return str(path)


def _figure(out: str, pattern: str) -> float:
    m = re.search(pattern, out)
    assert m, f"{pattern!r} not in:\n{out}"
    return float(m.group(1).replace(",", ""))


def test_plan_cli_on_a_small_topology(tiny_plan_config, capsys):
    """`imgen plan` on v5e:2x2 with the tiny base (its configs read from the model dir, no weights): the train
    step and one edit decode compile; the report carries the compiler's memory split, the three roofline terms
    and ends with `peak_gib_per_chip: X` equal to the train step's total."""
    from imgen_jax.cli import main

    rc = main(["plan", f"--config={tiny_plan_config}", "--topology=v5e:2x2", "--decode-batch=2",
               "--config.model.remat=dots"])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0, captured.err[-2000:]
    lines = out.strip().splitlines()
    assert re.fullmatch(r"peak_gib_per_chip: \d+\.\d\d", lines[-1])
    assert "DOES NOT FIT" not in out
    assert "not a measured speed" in out and "roofline estimate" in out
    total = _figure(out, r"train step .*\n  compiler memory per chip: .* = ([\d.]+) GiB of 16\.00 GiB")
    assert float(lines[-1].split()[-1]) == pytest.approx(total, abs=0.006)
    for term in ("compute", "memory", "collectives"):
        assert _figure(out, rf"roofline terms: .*?{term} ([\d,.]+) [mu]s") >= 0
    assert _figure(out, r"matmul FLOPs ([\d.,]+) [GT]FLOP") > 0
    assert "edit decode, batch 2" in out and "mesh data=1 x fsdp=1 x tensor=4" in out
    assert "remat dots" in out and "mesh data=2 x fsdp=2 x tensor=1" in out


def test_plan_names_the_positional_table_for_long_clips(tiny_plan_config):
    """Clips longer than the adapters' positional table need newly trained adapters with a larger
    model.pos_emb_frames: the planner says so before compiling."""
    from imgen_jax.cli import load_config_file

    c = load_config_file(tiny_plan_config, ["--config.data.clip_seconds=1.0"])
    with pytest.raises(ImgenError, match=r"model\.pos_emb_frames=101"):
        planlib.plan(c, "v5e:2x2", ())


def test_fsdp_frozen_off_keeps_the_base_whole_and_splits_the_adapters():
    from imgen_jax.train import mesh as meshlib
    from imgen_jax.train.config import base_config
    from imgen_jax.train.step import fusion_config, make_optimizer, step_shardings

    c = base_config()
    c.model.base_size = "small"
    ab = planlib.abstract_base(c)
    ad_def, params = planlib.abstract_adapters(fusion_config(c, ab.base.lm_cfg))
    mesh = meshlib.make_mesh({"data": 1, "fsdp": 4, "tensor": 1}, _v5e_devices("v5e:2x2"))
    opt, _ = make_optimizer(c.train)
    for fsdp_frozen in (True, False):
        sh = step_shardings(mesh, [tuple(r) for r in c.mesh.rules], ad_def, params, ab.base, opt, fsdp_frozen)
        frozen_split = any("fsdp" in s.spec for s in jax.tree.leaves(sh["frozen"]))
        assert frozen_split == fsdp_frozen
        assert "fsdp" in sh["params"]["merge_linear"].spec


# ---- the levers, on CPU ------------------------------------------------------------------------------
def _tiny_lm_and_adapters():
    from imgen_jax.instruct.fusion import FusionConfig, init_adapters
    from imgen_jax.models.lm import LMConfig, init_lm

    cfg = LMConfig(dim=32, num_heads=4, num_layers=3, ffn_dim=64, card=32, text_dim=24)
    lm = init_lm(cfg, 0)
    ad_def, st = nnx.split(init_adapters(FusionConfig.for_lm(cfg, lora_r=4, lora_alpha=8.0, pos_emb_frames=21), 1))
    rng = np.random.default_rng(0)  # non-zero gates and LoRA B: every adapter parameter gets a gradient
    params = jax.tree.map(lambda x: jnp.asarray(0.1 * rng.standard_normal(x.shape), jnp.float32), nnx.to_pure_dict(st))
    return cfg, lm, ad_def, params


@pytest.mark.parametrize("remat,unroll", [("dots", False), ("full", False), ("none", True), ("full", True)])
def test_remat_and_unrolling_give_the_same_loss_and_gradients(remat, unroll):
    """Rematerialising the LM's and the fusion pass's layer scans, or unrolling them, changes no value
    (tolerance 1e-6); unrolled, the program has no layer loop left."""
    from imgen_jax.instruct import instruct_loss

    cfg, lm, ad_def, params = _tiny_lm_and_adapters()
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    tgt = jax.random.randint(k[0], (2, 4, 12), 0, cfg.card)
    cond = jax.random.randint(k[1], (2, 4, 12), 0, cfg.card)
    mem = jax.random.normal(k[2], (2, 5, cfg.dim))
    lm_def, lm_state = nnx.split(lm)

    def value_and_grads(mode, unrolled=False):
        def f(p, s):
            m = nnx.merge(lm_def, s)
            m.remat, m.unroll_layers = mode, unrolled
            return instruct_loss(m, nnx.merge(ad_def, p), tgt, cond, mem, None)

        fn = jax.jit(jax.value_and_grad(f))
        loops = fn.lower(params, lm_state).as_text().count("stablehlo.while")
        return fn(params, lm_state), loops

    ((l0, g0), loops0), ((l1, g1), loops1) = value_and_grads("none"), value_and_grads(remat, unroll)
    assert loops0 >= 4  # the LM's and the fusion pass's layer loops, forward and backward
    assert loops1 == (0 if unroll else loops0)
    assert abs(float(l1) - float(l0)) <= 1e-6
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=0)


def test_remat_rejects_unknown_policies():
    from imgen_jax.models.lm import remat_body

    with pytest.raises(ImgenError, match="model.remat"):
        remat_body(lambda c, x: (c, x), "some")


def test_bf16_frozen_weights_keep_the_loss(tmp_path, spm_model):
    """The eval loss of the real step with the frozen LM / T5 in bf16 (adapters float32) is within 1e-2
    relative of the float32 one, on the tiny base and a synthetic batch."""
    from imgen_jax.train.data import encode_batch, make_loader, num_samples
    from imgen_jax.train.step import fusion_config, init_params, load_base, make_optimizer, make_steps

    d = make_tiny_model_dir(str(tmp_path / "base"), spm_model)
    c = tiny_config(d, str(tmp_path / "run"))
    losses = {}
    for dtype in ("float32", "bfloat16"):
        base = load_base(d, dtype)
        ad_def, params = init_params(fusion_config(c, base.lm_cfg), 0)
        params = jax.tree.map(lambda x: x + 0.05, params)  # non-zero gates: the fusion contributes
        opt, sched = make_optimizer(c.train)
        steps = make_steps(base, ad_def, opt, sched)
        batch = encode_batch(next(make_loader(c, "validation", 4, 0)), base.tokenizer, int(c.data.text_max_length),
                             num_samples(c))
        losses[dtype] = float(steps.eval(params, base.frozen, batch))
    assert np.isfinite(losses["float32"])
    assert abs(losses["bfloat16"] - losses["float32"]) <= 1e-2 * abs(losses["float32"])


def test_config_validates_the_new_fields():
    from imgen_jax.train.config import base_config, validate

    c = base_config()
    c.model.base_dir, c.data.source = "x", "synthetic"
    validate(c)
    c.model.remat = "all"
    with pytest.raises(ImgenError, match="model.remat"):
        validate(c)
    c.model.remat, c.model.base_size = "full", "huge"
    with pytest.raises(ImgenError, match="model.base_size"):
        validate(c)
    from imgen_jax.train.step import step_options

    c.model.base_size, c.model.unroll_layers = "", True
    validate(c)
    assert step_options(c).unroll_layers is True


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([os.path.abspath(__file__), "-q"]))
