"""The jitted train and eval steps.

One step, all inside one XLA program on the mesh:

    cond_codes   = EnCodec.encode(input  [B, 1, N])                 [B, K, T]   (frozen)
    target_codes = EnCodec.encode(target [B, 1, N])                 [B, K, T]   (frozen)
    hidden       = T5(text_ids [B, L], text_mask [B, L])            [B, L, text_dim] (frozen)
    memory       = lm.text_memory(hidden, text_mask)                [B, L, dim]
    loss, grads  = value_and_grad(instruct_loss w.r.t. the adapters only)(adapters, lm, ...)
                   (averaged over `grad_accum` micro-batches, each run in turn inside the step)
    adapters, opt_state = AdamW(clip(grads)) with the official cosine-with-warmup learning rate

Only the adapters' parameters (`InstructAdapters`: fusion + LoRA) are differentiated and held by the
optimizer; the base LM, EnCodec and T5 are arguments of the step that no gradient flows to.

Text padding: the instructions are padded to a fixed `text_max_length` (static shapes). The official
training pads each batch to its longest instruction and attends to the padded (zero) memory rows; with
a fixed length that would add many zero keys that inference (one instruction, no padding) never sees,
so by default (`model.mask_text_padding`) the padded keys are masked, which is exactly the unpadded
computation of each row.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from imgen_jax.errors import ImgenError
from imgen_jax.instruct.fusion import FusionConfig, InstructAdapters, init_adapters
from imgen_jax.instruct import instruct_loss
from imgen_jax.models.lm import MusicGenLM

Pure = Any  # nested dict of arrays (nnx.to_pure_dict of a module state)


@dataclasses.dataclass
class BaseModels:
    """The frozen base model (graphdefs + weights as pure dicts) and its tokenizer."""

    lm_def: Any
    encodec_def: Any
    t5_def: Any
    frozen: dict  # {"lm": Pure, "encodec": Pure, "t5": Pure}
    tokenizer: Any
    lm_cfg: Any
    encodec_cfg: Any
    model_dir: str

    def lm(self, frozen: dict | None = None) -> MusicGenLM:
        return nnx.merge(self.lm_def, (frozen or self.frozen)["lm"])


def load_base(model_dir: str, frozen_dtype: str = "float32") -> BaseModels:
    """LM, EnCodec, T5 and tokenizer of a converted MusicGen directory; ImgenError naming what is missing."""
    from imgen_jax.models.encodec import load_encodec
    from imgen_jax.models.lm import load_lm
    from imgen_jax.modeldir import read_model_config
    from imgen_jax.models.t5 import load_t5

    meta = read_model_config(model_dir)
    missing = [c for c in ("lm", "encodec", "t5") if c not in meta]
    if missing:
        raise ImgenError(f"config.model.base_dir: {model_dir}: training needs the {', '.join(missing)} component(s) "
                         "(convert a full MusicGen: LM, EnCodec and T5)")
    dtype = jnp.bfloat16 if frozen_dtype == "bfloat16" else jnp.float32
    pdt = jnp.bfloat16 if frozen_dtype == "bfloat16" else None
    lm = load_lm(model_dir, dtype=dtype, param_dtype=pdt)
    encodec = load_encodec(model_dir)
    t5, tokenizer = load_t5(model_dir, dtype=dtype, param_dtype=pdt)
    if tokenizer is None:
        raise ImgenError(f"config.model.base_dir: {model_dir}: no spiece.model (the T5 tokenizer) in the directory")
    lm_def, lm_s = nnx.split(lm)
    ec_def, ec_s = nnx.split(encodec)
    t5_def, t5_s = nnx.split(t5)
    frozen = {"lm": nnx.to_pure_dict(lm_s), "encodec": nnx.to_pure_dict(ec_s), "t5": nnx.to_pure_dict(t5_s)}
    return BaseModels(lm_def, ec_def, t5_def, frozen, tokenizer, lm.cfg, encodec.cfg, model_dir)


def fusion_config(config: ml_collections.ConfigDict, lm_cfg) -> FusionConfig:
    """The adapters the config trains (`model.fusion`: both | audio | text; sizes from `model.*`)."""
    layers = None if config.model.adapter_layers == -1 else int(config.model.adapter_layers)
    if layers is not None and layers > lm_cfg.num_layers:
        raise ImgenError(f"config.model.adapter_layers: {layers} exceeds the LM's {lm_cfg.num_layers} layers")
    return FusionConfig.for_lm(lm_cfg, adapter_layers=layers, lora_r=int(config.model.lora_r),
                               lora_alpha=float(config.model.lora_alpha), pos_emb_frames=int(config.model.pos_emb_frames),
                               mode=str(config.model.get("fusion", "both")))


def init_params(fcfg: FusionConfig, seed: int) -> tuple[Any, Pure]:
    """(adapters graphdef, fresh adapter parameters as a pure dict)."""
    ad_def, ad_state = nnx.split(init_adapters(fcfg, seed=seed))
    return ad_def, nnx.to_pure_dict(ad_state)


def cosine_with_warmup(peak: float, warmup_steps: int, total_steps: int) -> Callable:
    """The official schedule, transformers' `get_cosine_schedule_with_warmup(warmup, total)` (half a cosine):
    lr(s) = peak * s / warmup for s < warmup, then peak * max(0, (1 + cos(pi * (s - warmup) / (total - warmup))) / 2).
    `s` counts optimizer updates from 0, so the first update has lr 0 when warmup > 0 (as the official trainer)."""
    warmup, total = int(warmup_steps), max(int(total_steps), int(warmup_steps) + 1)

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        ramp = s / max(warmup, 1)
        progress = (s - warmup) / (total - warmup)
        decay = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))
        return peak * jnp.where(s < warmup, ramp, decay)

    return schedule


def make_optimizer(train: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, Callable]:
    """The official optimiser: global-norm clipping (`grad_clip_norm`, Lightning's gradient_clip_val; 0 = off),
    then AdamW (lr, b1, b2, eps, decoupled weight decay on every adapter parameter: the same update as
    torch.optim.AdamW) with the learning rate of `cosine_with_warmup(lr, warmup_steps, schedule_steps)`
    (schedule_steps 0 = train.steps), stepped once per optimizer update."""
    total = int(train.schedule_steps) or int(train.steps)
    schedule = cosine_with_warmup(float(train.lr), int(train.warmup_steps), total)
    adamw = optax.adamw(schedule, b1=float(train.b1), b2=float(train.b2), eps=float(train.eps),
                        weight_decay=float(train.weight_decay))
    if train.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(float(train.grad_clip_norm)), adamw), schedule
    return adamw, schedule


def codes_loss_and_grads(lm: MusicGenLM, ad_def: Any, params: Pure, target_codes: jax.Array, cond_codes: jax.Array,
                         memory: jax.Array, key_mask: jax.Array | None) -> tuple[jax.Array, Pure]:
    """(loss [], grads of the adapter parameters) from codes [B, K, T] and the text memory [B, L, dim]."""

    def loss_fn(p: Pure) -> jax.Array:
        adapters: InstructAdapters = nnx.merge(ad_def, p)
        return instruct_loss(lm, adapters, target_codes, cond_codes, memory, key_mask)

    return jax.value_and_grad(loss_fn)(params)


def apply_update(optimizer: optax.GradientTransformation, params: Pure, opt_state: Any, grads: Pure) -> tuple[Pure, Any]:
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What the train step does besides the loss (from the config: `step_options(config)`).

    mask_text_padding: key-mask the padded text tokens (module docstring). grad_accum: micro-batches per
    optimizer update (the official accumulate_grad_batches; the global batch is split into this many, each
    encoded and differentiated in turn inside the step, and their gradients averaged: the same gradient as
    the whole batch at once, since every clip has the same number of valid positions). text_dropout: the
    probability that a micro-batch trains with the null text (every description None: all-zero memory), the
    official classifier-free-guidance dropout of the LM in train mode. seed: of the dropout draws
    (fold_in(seed, update, micro-batch)). remat: rematerialisation of the scanned layer bodies of the LM and
    of the audio-fusion pass ("none" | "dots" | "full", `imgen_jax.models.lm.remat_body`). unroll_layers: those
    passes with every layer emitted instead of a layer loop (`imgen_jax.models.lm.scan_layers`)."""

    mask_text_padding: bool = True
    grad_accum: int = 1
    text_dropout: float = 0.0
    seed: int = 0
    remat: str = "none"
    unroll_layers: bool = False


def step_options(config: ml_collections.ConfigDict) -> StepOptions:
    return StepOptions(bool(config.model.mask_text_padding), int(config.train.grad_accum),
                       float(config.model.text_dropout), int(config.seed), str(config.model.get("remat", "none")),
                       bool(config.model.get("unroll_layers", False)))


@dataclasses.dataclass
class Steps:
    """The compiled steps: `train(params, opt_state, frozen, batch, step) -> (params, opt_state, metrics)`
    (params and opt_state donated) and `eval(params, frozen, batch) -> loss`."""

    train: Callable
    eval: Callable
    encode: Callable  # (frozen, batch) -> (lm, cond_codes, target_codes, memory, key_mask) (un-jitted)


def micro_batches(batch: dict, n: int) -> dict:
    """Split every [B, ...] array of `batch` into [n, B / n, ...] micro-batches, micro-batch i holding rows
    i, i + n, i + 2n, ...: with the batch sharded in contiguous blocks over the devices, each micro-batch stays
    spread over all of them."""

    def split(x):
        B = x.shape[0]
        return x.reshape((B // n, n) + x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def batch_constraint(batch_sharding: NamedSharding | None, lead: int = 0) -> Callable[[jax.Array], jax.Array]:
    """x -> x constrained to have dimension `lead` (the batch: 0, or 1 under a leading micro-batch axis) split over
    the batch axes of `batch_sharding`'s mesh (`jax.lax.with_sharding_constraint`), the rest replicated; the
    identity when `batch_sharding` is None (no mesh)."""
    if batch_sharding is None:
        return lambda x: x
    from imgen_jax.train.mesh import BATCH_AXES

    target = NamedSharding(batch_sharding.mesh, P(*([None] * lead), BATCH_AXES))
    return lambda x: jax.lax.with_sharding_constraint(x, target)


def make_steps(base: BaseModels, ad_def: Any, optimizer: optax.GradientTransformation, schedule: Callable,
               options: StepOptions = StepOptions(), shardings: dict | None = None) -> Steps:
    """The train / eval steps, jitted with explicit in/out shardings when `shardings` is given:
    {"params", "opt_state", "frozen", "batch", "replicated"} (each a sharding or tree of shardings).

    With `shardings`, the activations between the frozen encoders and the LM (codes [B, K, T], T5 hidden
    [B, L, text_dim], memory [B, L, dim]) and every micro-batch are constrained to stay split over the batch
    axes, and the accumulated gradients to the adapters' shardings, so the compiler never gathers them."""
    from imgen_jax.xla import jit

    n_micro = int(options.grad_accum)
    if n_micro < 1:
        raise ImgenError(f"config.train.grad_accum: {n_micro} must be >= 1")
    on_batch = batch_constraint(None if shardings is None else shardings["batch"])
    on_micro = batch_constraint(None if shardings is None else shardings["batch"], lead=1)

    def like_params(grads):
        return grads if shardings is None else jax.lax.with_sharding_constraint(grads, shardings["params"])

    def encode(frozen: dict, batch: dict):
        lm = nnx.merge(base.lm_def, frozen["lm"])
        lm.remat = options.remat  # the training forward's layer scans (MusicGenLM.hidden, fusion.audio_fusion_pass)
        lm.unroll_layers = options.unroll_layers
        encodec = nnx.merge(base.encodec_def, frozen["encodec"])
        t5 = nnx.merge(base.t5_def, frozen["t5"])
        batch = jax.tree.map(on_batch, batch)
        cond = on_batch(encodec.encode(batch["input"][:, None, :]))
        target = on_batch(encodec.encode(batch["target"][:, None, :]))
        hidden = on_batch(t5(batch["text_ids"], batch["text_mask"]))
        memory = on_batch(lm.text_memory(hidden, batch["text_mask"]))
        key_mask = batch["text_mask"] if options.mask_text_padding else None
        return lm, cond, target, memory, key_mask

    def micro_loss_and_grads(params, frozen, batch, key):
        lm, cond, target, memory, key_mask = encode(frozen, batch)
        if options.text_dropout > 0:  # the null condition: zero memory (its cross-attention outputs exactly 0)
            drop = jax.random.bernoulli(key, options.text_dropout)
            memory = jnp.where(drop, jnp.zeros_like(memory), memory)
        return codes_loss_and_grads(lm, ad_def, params, target, cond, memory, key_mask)

    def train_step(params, opt_state, frozen, batch, step):
        key = jax.random.fold_in(jax.random.PRNGKey(options.seed), step)
        if n_micro == 1:
            loss, grads = micro_loss_and_grads(params, frozen, batch, jax.random.fold_in(key, 0))
        else:
            def body(acc, xs):
                i, micro = xs
                loss, grads = micro_loss_and_grads(params, frozen, micro, jax.random.fold_in(key, i))
                return jax.tree.map(jnp.add, acc, (loss, like_params(grads))), None

            zero = (jnp.zeros((), jnp.float32), like_params(jax.tree.map(jnp.zeros_like, params)))
            micros = jax.tree.map(on_micro, micro_batches(batch, n_micro))
            (loss, grads), _ = jax.lax.scan(body, zero, (jnp.arange(n_micro), micros))
            loss, grads = jax.tree.map(lambda x: x / n_micro, (loss, grads))
        params, opt_state = apply_update(optimizer, params, opt_state, grads)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(step)}
        return params, opt_state, metrics

    def eval_step(params, frozen, batch):
        lm, cond, target, memory, key_mask = encode(frozen, batch)
        return instruct_loss(lm, nnx.merge(ad_def, params), target, cond, memory, key_mask)

    if shardings is None:
        return Steps(jit(train_step, donate_argnums=(0, 1)), jit(eval_step), encode)
    s = shardings
    rep = s["replicated"]
    train = jit(train_step, donate_argnums=(0, 1),
                in_shardings=(s["params"], s["opt_state"], s["frozen"], s["batch"], rep),
                out_shardings=(s["params"], s["opt_state"], rep))
    ev = jit(eval_step, in_shardings=(s["params"], s["frozen"], s["batch"]), out_shardings=rep)
    return Steps(train, ev, encode)


def opt_state_shardings(optimizer: optax.GradientTransformation, params: Pure, param_shardings: Any, rep) -> Any:
    """Shardings of the optimizer state: moments like their parameters, counters replicated."""
    abstract = jax.eval_shape(optimizer.init, params)
    return optax.tree_map_params(optimizer, lambda _, s: s, abstract, param_shardings,
                                 transform_non_params=lambda _: rep)


def step_shardings(mesh, rules, ad_def: Any, params: Pure, base: BaseModels, optimizer: optax.GradientTransformation,
                   fsdp_frozen: bool = True) -> dict:
    """The `shardings` of `make_steps` on `mesh`: adapters (graphdef `ad_def`, parameters `params`) and the frozen
    weights (`base.frozen`, graphdefs `base.*_def`) by the logical axis names their parameters carry and the
    config's rules (imgen_jax.train.mesh), the optimizer state like its parameters, batches over the batch axes. With
    `fsdp_frozen` False (config.mesh.fsdp_frozen) the frozen weights are not split over `fsdp` (replicated but
    for the tensor rules): no weight all-gathers in every micro-batch, at the price of their memory on every
    chip; the adapters and the optimizer state stay split. `params` and `base.frozen` may hold arrays or
    ShapeDtypeStructs (`imgen plan`). ValueError naming a parameter without logical axis names."""
    from imgen_jax.train import mesh as meshlib

    rep = meshlib.replicated(mesh)
    param_sh = meshlib.tree_shardings(params, meshlib.logical_specs(ad_def, params, "adapters"), mesh, rules)
    defs = {"lm": base.lm_def, "encodec": base.encodec_def, "t5": base.t5_def}
    frozen = {k: meshlib.tree_shardings(v, meshlib.logical_specs(defs[k], v, k), mesh, rules, fsdp_frozen)
              for k, v in base.frozen.items()}
    return {"params": param_sh, "opt_state": opt_state_shardings(optimizer, params, param_sh, rep),
            "frozen": frozen, "batch": meshlib.batch_sharding(mesh), "replicated": rep}


def tokens_per_step(batch_size: int, num_codebooks: int, frames: int) -> int:
    return int(batch_size * num_codebooks * frames)


__all__ = [
    "BaseModels", "load_base", "fusion_config", "init_params", "cosine_with_warmup", "make_optimizer",
    "codes_loss_and_grads", "apply_update", "StepOptions", "step_options", "Steps", "micro_batches", "batch_constraint", "make_steps", "opt_state_shardings", "step_shardings", "tokens_per_step",
]
