"""Training of the adapters (imgen_jax.train, train.py) on a tiny random converted MusicGen.

- a short run lowers the loss, logs metrics / TensorBoard, writes edited samples and an output model
  directory that `imgen edit` loads, and leaves the base directory untouched;
- the jitted step on 8 emulated CPU devices under meshes data=8, fsdp=8 and data=2 x fsdp=2 x tensor=2
  gives the single-device losses and parameters within fp32 tolerance: |loss - loss_1| <= 1e-5 * loss_1
  and max |param - param_1| <= 1e-5 after 3 AdamW steps at lr 3e-3 (the differences come from the
  sharded reductions' summation order; measured ~3e-6 and ~6e-7);
- a run SIGKILLed after its step-10 checkpoint resumes and reproduces the uninterrupted 20-step run's
  losses and final parameters bit for bit;
- wrong data / model directories and configs are one-line errors (`error: ...`, exit 2 from train.py);
- the real triplet loader (mini-Slakh) feeds the step and its state is checkpointed.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from train_helpers import ROOT, make_tiny_model_dir, tiny_config

from imgen_jax.errors import ImgenError
from imgen_jax.train import train
from imgen_jax.weights import read_safetensors


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, spm_model):
    return make_tiny_model_dir(str(tmp_path_factory.mktemp("train") / "base"), spm_model)


def _records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_short_run_lowers_loss_and_writes_an_editable_model(tiny_model, tmp_path):
    from imgen_jax.cli import main as imgen

    before = {n: os.path.getmtime(os.path.join(tiny_model, n)) for n in os.listdir(tiny_model)}
    c = tiny_config(tiny_model, str(tmp_path / "run"), steps=16, **{
        "eval.every": 8, "eval.batches": 2, "samples.every": 16, "samples.count": 1, "samples.seconds": 0.3,
        "samples.top_k": 8, "checkpoint.every": 8})
    out = train(c, progress=False)
    losses = [out["losses"][s] for s in range(1, 17)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.3, losses
    assert sorted(out["eval"]) == [8, 16] and out["eval"][16] < out["eval"][8]
    recs = _records(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in recs if r["kind"] == "train"] == list(range(1, 17))
    assert any("steps_per_s" in r for r in recs)
    assert os.listdir(tmp_path / "run" / "tb")
    sdir = tmp_path / "run" / "samples" / "step_000016"
    for name in ("00_input.wav", "00_target.wav", "00_edited.wav"):
        wav, sr = sf.read(sdir / name)
        assert sr == 2000 and wav.shape == (600,) and np.isfinite(wav).all()
    assert (sdir / "00.png").stat().st_size > 1000

    model = out["model_dir"]
    trained = read_safetensors(os.path.join(model, "adapters.safetensors"))
    assert np.abs(trained["gates"]).max() > 0 and np.abs(trained["lora_q/b"]).max() > 0  # moved from the zero init
    assert {n: os.path.getmtime(os.path.join(tiny_model, n)) for n in os.listdir(tiny_model)} == before
    assert "adapters" not in json.load(open(os.path.join(tiny_model, "config.json")))
    wav = tmp_path / "mix.wav"
    sf.write(wav, (0.2 * np.sin(np.arange(1000) / 2000 * 2 * np.pi * 150)).astype(np.float32), 2000)
    assert imgen(["edit", "--model", model, "--input", str(wav), "--instruction", "add drums", "--out",
                  str(tmp_path / "edited.wav"), "--top-k", "8", "--window-frames", "50", "--stride-frames", "25"]) == 0
    edited, sr = sf.read(tmp_path / "edited.wav")
    assert sr == 2000 and edited.shape == (1000,)


def test_meshes_of_8_devices_match_one_device(tiny_model, tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "mesh.npz"
    meshes = ["1,1,1", "8,1,1", "1,8,1", "2,2,2"]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "train_mesh_check.py"), tiny_model,
                           str(tmp_path), str(out), "3", *meshes], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = dict(np.load(out))
    specs = json.load(open(str(out) + ".json"))
    ref_loss = r["1,1,1/losses"]
    names = [k[len("1,1,1/param/"):] for k in r if k.startswith("1,1,1/param/")]
    assert len(names) == 7
    for m in meshes[1:]:
        np.testing.assert_allclose(r[f"{m}/losses"], ref_loss, rtol=1e-5, atol=0)
        for n in names:
            np.testing.assert_allclose(r[f"{m}/param/{n}"], r[f"1,1,1/param/{n}"], rtol=0, atol=1e-5, err_msg=f"{m} {n}")
    # the meshes really split the work: FSDP over the adapters and the frozen LM, tensor parallel on the MLP
    assert specs["1,8,1"]["adapters"]["merge_linear"] == "(None, 'fsdp', None)"
    assert specs["2,2,2"]["lm"]["layers/linear1/kernel"] == "(None, 'fsdp', 'tensor')"
    assert specs["2,2,2"]["lm"]["heads"] == "(None, 'fsdp', 'tensor')"
    # and the parameters did move (equal but not trivially equal)
    assert not np.allclose(r["1,1,1/param/gates"], 0)


_CONFIG_FILE = '''
import sys
sys.path.insert(0, {tests!r})
from train_helpers import tiny_config

def get_config():
    return tiny_config({model!r}, {workdir!r}, steps=20, **{{"checkpoint.every": 1, "checkpoint.keep": 2}})
'''


def _train_cmd(cfg_file, *extra):
    return [sys.executable, os.path.join(ROOT, "train.py"), f"--config={cfg_file}", *extra]


def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tiny_model, tmp_path):
    runs = {}
    for name in ("straight", "killed"):
        cfg = tmp_path / f"{name}_config.py"
        cfg.write_text(_CONFIG_FILE.format(tests=os.path.join(ROOT, "tests"), model=tiny_model,
                                           workdir=str(tmp_path / name)))
        runs[name] = cfg
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    straight = subprocess.run(_train_cmd(runs["straight"]), env=env, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]

    ckdir = tmp_path / "killed" / "checkpoints"
    proc = subprocess.Popen(_train_cmd(runs["killed"]), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (ckdir / "10").is_dir():
        assert proc.poll() is None, "the run ended before its step-10 checkpoint"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "model").exists()  # it did not get to the end
    done = [int(d) for d in os.listdir(ckdir) if d.isdigit()]
    assert 10 <= max(done) < 20

    resumed = subprocess.run(_train_cmd(runs["killed"]), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr

    def losses(name):
        return {r["step"]: r["loss"] for r in _records(tmp_path / name / "metrics.jsonl") if r["kind"] == "train"}

    a, b = losses("straight"), losses("killed")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert a == b  # bit for bit (floats written exactly)
    pa = read_safetensors(tmp_path / "straight" / "model" / "adapters.safetensors")
    pb = read_safetensors(tmp_path / "killed" / "model" / "adapters.safetensors")
    assert sorted(pa) == sorted(pb)
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), k


def test_user_errors_are_one_line(tiny_model, tmp_path):
    work = str(tmp_path / "w")
    cases = [
        (tiny_config(str(tmp_path / "nope"), work), "model directory not found"),
        (tiny_config(str(tmp_path), work), "no config.json"),
        (tiny_config(tiny_model, work, **{"data.source": "triplets", "data.dir": str(tmp_path / "nodata")}),
         "data directory not found"),
        (tiny_config(tiny_model, work, **{"data.sample_rate": 32000}), "EnCodec runs at 2000 Hz"),
        (tiny_config(tiny_model, work, **{"mesh.data": 3}), "config.mesh"),
        (tiny_config(tiny_model, work, **{"data.clip_seconds": 3.0}), "positional table"),
        (tiny_config("", work), "config.model.base_dir: not set"),
        (tiny_config(tiny_model, work, **{"train.steps": 0}), "config.train.steps"),
    ]
    for c, needle in cases:
        with pytest.raises(ImgenError, match=needle) as e:
            train(c, progress=False)
        assert "\n" not in str(e.value)

    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cfg = tmp_path / "bad_config.py"
    cfg.write_text(_CONFIG_FILE.format(tests=os.path.join(ROOT, "tests"), model=str(tmp_path / "missing"),
                                       workdir=work))
    for cmd, needle in ((_train_cmd(cfg), "model directory not found"),
                        (_train_cmd(tmp_path / "no_such_config.py"), "error: config:"),
                        (_train_cmd(cfg, "--config.train.nope=3"), "error: config:")):
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and lines and lines[-1].startswith("error: ") and needle in lines[-1], p.stderr[-2000:]


def test_real_triplet_loader_feeds_the_step(tiny_model, mini_slakh_root, tmp_path):
    c = tiny_config(tiny_model, str(tmp_path / "run"), steps=3, **{
        "data.source": "triplets", "data.dir": mini_slakh_root, "checkpoint.every": 2})
    out = train(c, progress=False)
    assert all(np.isfinite(out["losses"][s]) for s in (1, 2, 3))
    meta = os.path.join(tmp_path, "run", "checkpoints", "3", "data", "metadata")
    state = json.load(open(meta)) if os.path.isfile(meta) else None
    assert state is not None and "grain" in state["train_0"], os.listdir(os.path.join(tmp_path, "run", "checkpoints", "3"))


@pytest.mark.fullsize
def test_musicgen_small_step(tmp_path, spm_model):
    """The jitted steps at musicgen-small shapes (LM 1024 x 24, EnCodec 32 kHz, t5-base; random weights):
    the eval step's loss equals the eager composition (EnCodec encode -> T5 -> text memory -> instruct_loss)
    within 1e-5 relative, the train step reports that loss and updates every adapter parameter."""
    import shutil

    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from convert.reference_models import musicgen_small_model
    from imgen_jax.cli import main as imgen
    from imgen_jax.instruct import instruct_loss
    from imgen_jax.train.config import base_config
    from imgen_jax.train.data import SyntheticTriplets, encode_batch
    from imgen_jax.train.step import fusion_config, init_params, load_base, make_optimizer, make_steps

    model = musicgen_small_model()
    model.save_pretrained(tmp_path / "hf")
    shutil.copyfile(spm_model, tmp_path / "hf" / "spiece.model")
    del model
    assert imgen(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "base")]) == 0
    shutil.rmtree(tmp_path / "hf")
    c = base_config()
    c.train.steps, c.train.warmup_steps, c.train.lr = 10, 0, 1e-3
    base = load_base(str(tmp_path / "base"))
    fcfg = fusion_config(c, base.lm_cfg)
    assert (base.lm_cfg.dim, base.lm_cfg.num_layers, fcfg.pos_emb_frames) == (1024, 24, 501)
    ad_def, params = init_params(fcfg, 0)
    params = jax.tree.map(lambda x: x + 0.01 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)  # gates open
    optimizer, schedule = make_optimizer(c.train)
    steps = make_steps(base, ad_def, optimizer, schedule)
    raw = next(SyntheticTriplets(batch_size=2, num_samples=32000, sample_rate=32000))
    batch = {k: jnp.asarray(v) for k, v in encode_batch(raw, base.tokenizer, 12, 32000).items()}

    loss_jit = float(steps.eval(params, base.frozen, batch))
    lm, cond, target, memory, key_mask = steps.encode(base.frozen, batch)
    assert cond.shape == target.shape == (2, 4, 50)
    loss_eager = float(instruct_loss(lm, nnx.merge(ad_def, params), target, cond, memory, key_mask))
    assert np.isfinite(loss_jit) and abs(loss_jit - loss_eager) <= 1e-5 * abs(loss_eager), (loss_jit, loss_eager)

    before = jax.tree.map(np.asarray, params)
    new, _, metrics = steps.train(params, optimizer.init(params), base.frozen, batch, jnp.asarray(1, jnp.int32))
    assert abs(float(metrics["loss"]) - loss_jit) <= 1e-5 * abs(loss_jit)
    assert float(metrics["grad_norm"]) > 0
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), new, before)
    assert all(jax.tree.leaves(changed)), changed
    assert optax.tree.norm(jax.tree.map(lambda a, b: np.asarray(a) - b, new, before)) > 0


def test_grad_accumulation_and_text_dropout(tiny_model):
    """train.grad_accum: 4 micro-batches of 2 give the loss and gradients of the whole batch of 8 within 1e-6
    (every clip has the same number of valid positions), hence the same update; model.text_dropout: a dropped
    micro-batch trains on the null text (all-zero memory)."""
    import jax
    import jax.numpy as jnp
    import optax

    from imgen_jax.train.data import SyntheticTriplets, encode_batch
    from imgen_jax.train.step import (
        StepOptions, codes_loss_and_grads, fusion_config, init_params, load_base, make_optimizer, make_steps,
        micro_batches,
    )

    c = tiny_config(tiny_model, "unused")
    base = load_base(tiny_model)
    ad_def, params = init_params(fusion_config(c, base.lm_cfg), 0)
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
    sr = c.data.sample_rate
    raw = next(SyntheticTriplets(batch_size=8, num_samples=sr, sample_rate=sr))
    batch = {k: jnp.asarray(v) for k, v in encode_batch(raw, base.tokenizer, 16, sr).items()}
    micro = micro_batches(batch, 4)
    assert micro["input"].shape[:2] == (4, 2)
    np.testing.assert_array_equal(np.asarray(micro["input"][1, 0]), np.asarray(batch["input"][1]))
    optimizer, schedule = make_optimizer(c.train)

    def run(options):
        steps = make_steps(base, ad_def, optimizer, schedule, options)
        p = jax.tree.map(jnp.array, params)
        return steps.train(p, optimizer.init(p), base.frozen, batch, jnp.asarray(3, jnp.int32))

    one_p, _, one = run(StepOptions(grad_accum=1))
    four_p, _, four = run(StepOptions(grad_accum=4))
    assert abs(float(one["loss"]) - float(four["loss"])) <= 1e-6 * float(one["loss"])
    assert abs(float(one["grad_norm"]) - float(four["grad_norm"])) <= 1e-6 * float(one["grad_norm"])
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(jax.tree.leaves(one_p),
                                                                                 jax.tree.leaves(four_p)))
    assert diff <= 1e-6, diff
    # the gradients themselves, micro-batch average against the whole batch
    lm, cond, target, memory, key_mask = make_steps(base, ad_def, optimizer, schedule).encode(base.frozen, batch)
    _, g_all = codes_loss_and_grads(lm, ad_def, params, target, cond, memory, key_mask)
    parts = [codes_loss_and_grads(lm, ad_def, params, target[i::4], cond[i::4], memory[i::4], key_mask[i::4])[1]
             for i in range(4)]
    g_avg = jax.tree.map(lambda *g: sum(g) / 4, *parts)
    scale = float(optax.tree.norm(g_all))
    assert float(optax.tree.norm(jax.tree.map(jnp.subtract, g_all, g_avg))) <= 1e-6 * scale
    # text dropout: p close to 1 drops every micro-batch -> the loss of the zero memory
    _, _, dropped = run(StepOptions(text_dropout=0.999999))
    _, _, kept = run(StepOptions(text_dropout=0.0))
    _, null_loss_grads = None, codes_loss_and_grads(lm, ad_def, params, target, cond, jnp.zeros_like(memory), key_mask)
    assert abs(float(dropped["loss"]) - float(null_loss_grads[0])) <= 1e-6 * float(null_loss_grads[0])
    assert abs(float(kept["loss"]) - float(one["loss"])) <= 1e-7 * float(one["loss"])
    assert abs(float(dropped["loss"]) - float(kept["loss"])) > 1e-4
