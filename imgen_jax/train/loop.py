"""`train(config)`: one resumable training run of the Instruct-MusicGen adapters.

    load the frozen base (LM, EnCodec, T5) -> mesh + shardings -> fresh adapters and AdamW state
    -> restore the latest checkpoint of WORKDIR/checkpoints if any (params, optimizer, step, data
    iterators) -> for step in start..steps: next batch -> global arrays -> jitted train step
    -> metrics / validation / samples / checkpoints -> WORKDIR/model (base directory + trained adapters)

Determinism: the adapters' init comes from `seed`; the data order from (seed, step) inside the loaders,
whose states are checkpointed; the edited samples use fold_in(seed, step). A run killed at any point
and restarted with the same config resumes from its last checkpoint and reproduces the uninterrupted
run's losses and parameters bit for bit (same process count, device count and backend;
tests/test_train.py, tests/test_multihost.py).

Multi-process runs (`mesh.distributed`, see mesh.maybe_initialize_distributed): the mesh spans every
process's devices; process p reads shard p of the data (B / processes rows per step) and the global
batch is assembled from the shards; every process saves and restores the checkpoints (each its own
data-iterator state); the steps are compiled ahead of time and first run once every process has
compiled them; process 0 writes metrics, samples and the output model directory.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imgen_jax.errors import ImgenError
from imgen_jax.train import config as cfglib
from imgen_jax.train import mesh as meshlib
from imgen_jax.train.data import encode_batch, make_loader, num_samples
from imgen_jax.train.step import (
    fusion_config, init_params, load_base, make_optimizer, make_steps, step_options, step_shardings,
    tokens_per_step,
)


def _check_base(config: ml_collections.ConfigDict, base, fcfg) -> int:
    """Frames per clip; ImgenError when the data and the base model do not fit each other."""
    size = str(config.model.get("base_size", "") or "")
    if size:  # the size `imgen plan` compiled must be the one trained
        from imgen_jax.models.lm import LMConfig

        want, got = LMConfig.preset(size), base.lm_cfg
        if (want.dim, want.num_layers, want.num_heads) != (got.dim, got.num_layers, got.num_heads):
            raise ImgenError(f"config.model.base_size: {size!r}, but {base.model_dir} holds an LM of width {got.dim} "
                             f"with {got.num_layers} layers (set base_size to its size, or '')")
    sr = base.encodec_cfg.sampling_rate
    if int(config.data.sample_rate) != sr:
        raise ImgenError(f"config.data.sample_rate: {config.data.sample_rate} Hz, but the base model's EnCodec runs "
                         f"at {sr} Hz ({base.model_dir})")
    frames = base.encodec_cfg.num_frames(num_samples(config))
    if frames + 1 > fcfg.pos_emb_frames:
        raise ImgenError(f"config.data.clip_seconds: {config.data.clip_seconds} s is {frames} frames; the adapters' "
                         f"positional table (model.pos_emb_frames = {fcfg.pos_emb_frames}) covers {fcfg.pos_emb_frames - 1}")
    return frames


def to_host(tree):
    """Numpy copies of a tree of (possibly sharded, possibly multi-host) arrays; every process must call it."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def save_model_dir(out_dir: str, base_dir: str, fcfg, params) -> str:
    """Copy the base model directory to `out_dir` (atomically: temp sibling, then rename) and add the
    trained adapters; the base directory is never modified."""
    from imgen_jax.instruct.fusion import save_adapters

    from flax.traverse_util import flatten_dict

    from imgen_jax.files import atomic_dir

    flat = {k: np.asarray(v, np.float32) for k, v in flatten_dict(params, sep="/").items()}
    out_dir = os.path.abspath(out_dir)
    with atomic_dir(out_dir) as tmp:
        for name in os.listdir(base_dir):
            if name.startswith(".tmp-") or name == "adapters.safetensors":
                continue
            src = os.path.join(base_dir, name)
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(tmp, name))
        save_adapters(tmp, fcfg, flat)
    return out_dir


class _CompiledTogether:
    """A jitted step of a multi-process run, compiled on its first call (ahead of time, `lower().compile()`)
    and first run only once every process has compiled it (`meshlib.wait_for_all_processes`, up to
    `timeout_s`): processes whose compilations take very different times (one finds the program in
    the persistent compilation cache, another compiles it) then enter the step's collectives together.
    The same program as calling the jitted function."""

    def __init__(self, fn, name: str, timeout_s: int):
        self.fn, self.name, self.timeout_s, self.compiled = fn, name, timeout_s, None

    def __call__(self, *args):
        if self.compiled is None:
            self.compiled = self.fn.lower(*args).compile()
            meshlib.wait_for_all_processes(f"imgen_compiled_{self.name}", self.timeout_s)
        return self.compiled(*args)


def _specs(shardings) -> dict[str, str]:
    """{param name: PartitionSpec as text} of a tree of NamedShardings."""
    flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
    return {meshlib.param_name(p): str(tuple(s.spec)) for p, s in flat}


def train(config: ml_collections.ConfigDict, devices=None, progress: bool = True) -> dict:
    """Run (or resume) the training described by `config`; returns a summary
    {"step", "losses" {step: loss}, "eval" {step: loss}, "model_dir", "steps_per_s"}."""
    from imgen_jax.train.checkpoint import Checkpointer
    from imgen_jax.train.metrics import MetricsLogger

    cfglib.validate(config)
    meshlib.maybe_initialize_distributed(config.mesh)  # first: before anything touches a device
    mesh = meshlib.make_mesh({a: config.mesh[a] for a in meshlib.AXES}, devices)
    pid, nproc = jax.process_index(), jax.process_count()
    B = int(config.train.batch_size)
    div = meshlib.batch_divisor(mesh)
    for what, size in (("train.batch_size", B), ("eval.batch_size", int(config.eval.batch_size))):
        if size % div or size % nproc:
            raise ImgenError(f"config.{what}: {size} is not divisible by the batch axes (data x fsdp = {div}) "
                             f"and the {nproc} processes")
    micro = B // int(config.train.grad_accum)
    if micro % div:
        raise ImgenError(f"config.train.batch_size: micro-batches of {micro} (batch_size / grad_accum) are not "
                         f"divisible by the batch axes (data x fsdp = {div})")

    base_dir = os.path.abspath(config.model.base_dir)
    base = load_base(base_dir, config.model.frozen_dtype)
    fcfg = fusion_config(config, base.lm_cfg)
    frames = _check_base(config, base, fcfg)
    n_samples = num_samples(config)
    workdir = os.path.abspath(config.workdir)
    os.makedirs(workdir, exist_ok=True)

    rules = [tuple(r) for r in config.mesh.rules]
    ad_def, params = init_params(fcfg, int(config.seed))
    optimizer, schedule = make_optimizer(config.train)
    shardings = step_shardings(mesh, rules, ad_def, params, base, optimizer, bool(config.mesh.fsdp_frozen))
    param_sh, opt_sh, frozen_sh = shardings["params"], shardings["opt_state"], shardings["frozen"]
    params = meshlib.put_global(params, param_sh)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_sh)(params)
    base.frozen = meshlib.put_global(base.frozen, frozen_sh)
    steps = make_steps(base, ad_def, optimizer, schedule, step_options(config), shardings)
    train_step, eval_step = steps.train, steps.eval
    if nproc > 1:
        wait_s = meshlib.distributed_settings(config.mesh)["init_timeout"]
        train_step = _CompiledTogether(train_step, "train", wait_s)
        eval_step = _CompiledTogether(eval_step, "eval", wait_s)

    train_it = make_loader(config, config.data.train_split, B // nproc, int(config.seed), pid, nproc)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), int(config.checkpoint.keep))
    logger = MetricsLogger(workdir)
    cfg_json = cfglib.to_json(config)
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:
        params, opt_state, start, data_state, _ = ckpt.restore(latest, params, opt_state)
        if f"train_{pid}" not in data_state:
            raise ImgenError(f"{ckpt.directory}/{latest}: the checkpoint holds the data states {sorted(data_state)}, "
                             f"this run is process {pid} of {nproc} (resume with the process count that saved it)")
        train_it.set_state(data_state[f"train_{pid}"])
        logger.truncate_after(start)
        print(f"resumed from {ckpt.directory}/{latest} (step {start})", file=sys.stderr)

    total = int(config.train.steps)
    tokens = tokens_per_step(B, base.lm_cfg.num_codebooks, frames)
    losses: dict[int, float] = {}
    evals: dict[int, float] = {}

    def run_eval(step: int) -> None:
        it = make_loader(config, config.data.eval_split, int(config.eval.batch_size) // nproc, int(config.seed), pid, nproc)
        vals = []
        for _ in range(int(config.eval.batches)):
            local = encode_batch(next(it), base.tokenizer, int(config.data.text_max_length), n_samples)
            vals.append(eval_step(params, base.frozen, meshlib.global_batch(local, mesh, int(config.eval.batch_size))))
        evals[step] = float(np.mean([float(v) for v in vals]))
        logger.log(step, "eval", {"loss": evals[step]}, printer=_write)

    sample_cache: dict = {}

    def run_samples(step: int) -> None:
        from imgen_jax.train.samples import write_samples

        host_params = to_host(params)
        if pid != 0:
            return
        if "mg" not in sample_cache:
            from imgen_jax.api import load_musicgen

            sample_cache["mg"] = load_musicgen(base_dir)
        it = make_loader(config, config.data.eval_split, int(config.samples.count), int(config.seed), 0, 1)
        seed = int(jax.random.randint(jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), step), (), 0, 2**31 - 1))
        write_samples(os.path.join(workdir, "samples", f"step_{step:06d}"), sample_cache["mg"], ad_def, host_params, next(it), seed,
                      int(config.samples.count), float(config.samples.seconds), cfglib.samples_sampling(config))

    def save(step: int) -> None:
        ckpt.save(step, params, opt_state, {f"train_{pid}": train_it.get_state()}, cfg_json)

    bar = None
    if progress and pid == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, desc="train", file=sys.stderr)

    def _write(msg: str) -> None:
        (bar.write if bar is not None else print)(msg)

    t_run = time.perf_counter()
    t_win, n_win, n_all, t_steps = None, 0, 0, 0.0  # timing of the train steps only (no eval / samples / saves)
    pending = []
    step = start
    try:
        while step < total:
            local = encode_batch(next(train_it), base.tokenizer, int(config.data.text_max_length), n_samples)
            batch = meshlib.global_batch(local, mesh, B)
            params, opt_state, metrics = train_step(params, opt_state, base.frozen, batch, jnp.asarray(step, jnp.int32))
            step += 1
            pending.append((step, metrics))
            if t_win is None:  # the first step of this process includes compilation: not timed
                jax.block_until_ready(metrics["loss"])
                t_win = time.perf_counter()
            else:
                n_win += 1
            if bar is not None:
                bar.update(1)
            if step % int(config.train.log_every) == 0 or step == total:
                fetched = [(s, {k: float(v) for k, v in jax.device_get(m).items()}) for s, m in pending]
                dt = time.perf_counter() - t_win
                for s, vals in fetched:
                    losses[s] = vals["loss"]
                    if s == step and n_win and dt > 0:
                        vals["steps_per_s"] = n_win / dt
                        vals["tokens_per_s"] = n_win * tokens / dt
                    logger.log(s, "train", vals, echo=(s == step), printer=_write)
                n_all, t_steps = n_all + n_win, t_steps + dt
                pending, n_win = [], 0
                if bar is not None:
                    bar.set_postfix(loss=f"{losses[step]:.4f}")
            paused = False
            if config.eval.every and (step % int(config.eval.every) == 0 or step == total):
                run_eval(step)
                paused = True
            if config.samples.every and (step % int(config.samples.every) == 0 or step == total):
                run_samples(step)
                paused = True
            if step % int(config.checkpoint.every or total) == 0 or step == total:
                save(step)
                paused = True
            if paused or not pending:
                jax.block_until_ready(params)
                t_win = time.perf_counter() if n_win == 0 else t_win
    finally:
        if bar is not None:
            bar.close()
        logger.close()
        ckpt.close()

    model_dir = None
    host_params = to_host(params)
    if pid == 0:
        model_dir = save_model_dir(cfglib.output_model_dir(config), base_dir, fcfg, host_params)
        print(f"trained model directory: {model_dir}", file=sys.stderr)
    if nproc > 1:  # the others wait for process 0's model directory: then all shut down together
        meshlib.wait_for_all_processes("imgen_train_end", meshlib.distributed_settings(config.mesh)["init_timeout"])
    return {"step": step, "losses": losses, "eval": evals, "model_dir": model_dir, "params": host_params,
            "steps_per_s": (n_all / t_steps) if t_steps > 0 and n_all else None,
            "seconds": time.perf_counter() - t_run,
            "shardings": {"adapters": _specs(param_sh), **{k: _specs(v) for k, v in frozen_sh.items()}}}


__all__ = ["train", "save_model_dir", "to_host"]
