"""The jitted train and eval steps.

One step, all inside one XLA program on the mesh:

    cond_codes   = EnCodec.encode(input  [B, 1, N])                 [B, K, T]   (frozen)
    target_codes = EnCodec.encode(target [B, 1, N])                 [B, K, T]   (frozen)
    hidden       = T5(text_ids [B, L], text_mask [B, L])            [B, L, text_dim] (frozen)
    memory       = lm.text_memory(hidden, text_mask)                [B, L, dim]
    loss, grads  = value_and_grad(instruct_loss w.r.t. the adapters only)(adapters, lm, ...)
    adapters, opt_state = AdamW(grads)

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

from imgen_jax.errors import ImgenError
from imgen_jax.fusion import FusionConfig, InstructAdapters, init_adapters
from imgen_jax.instruct import instruct_loss
from imgen_jax.lm import MusicGenLM

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
    from imgen_jax.encodec import load_encodec
    from imgen_jax.lm import load_lm
    from imgen_jax.modeldir import read_model_config
    from imgen_jax.t5 import load_t5

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
    layers = None if config.model.adapter_layers == -1 else int(config.model.adapter_layers)
    if layers is not None and layers > lm_cfg.num_layers:
        raise ImgenError(f"config.model.adapter_layers: {layers} exceeds the LM's {lm_cfg.num_layers} layers")
    return FusionConfig.for_lm(lm_cfg, adapter_layers=layers, lora_r=int(config.model.lora_r),
                               lora_alpha=float(config.model.lora_alpha), pos_emb_frames=int(config.model.pos_emb_frames))


def init_params(fcfg: FusionConfig, seed: int) -> tuple[Any, Pure]:
    """(adapters graphdef, fresh adapter parameters as a pure dict)."""
    ad_def, ad_state = nnx.split(init_adapters(fcfg, seed=seed))
    return ad_def, nnx.to_pure_dict(ad_state)


def make_optimizer(train: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, Callable]:
    """AdamW (lr, b1, b2, eps, weight decay on every adapter parameter, as torch.optim.AdamW) with linear
    warmup from 0 over warmup_steps then cosine decay to 0 at train.steps; optional global-norm clipping."""
    warmup = min(int(train.warmup_steps), int(train.steps))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=float(train.lr), warmup_steps=warmup, decay_steps=max(int(train.steps), warmup + 1),
        end_value=0.0,
    )
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


@dataclasses.dataclass
class Steps:
    """The compiled steps: `train(params, opt_state, frozen, batch, step) -> (params, opt_state, metrics)`
    (params and opt_state donated) and `eval(params, frozen, batch) -> loss`."""

    train: Callable
    eval: Callable
    encode: Callable  # (frozen, batch) -> (cond_codes, target_codes, memory, key_mask) (un-jitted)


def make_steps(base: BaseModels, ad_def: Any, optimizer: optax.GradientTransformation, schedule: Callable,
               mask_text_padding: bool = True, shardings: dict | None = None) -> Steps:
    """The train / eval steps, jitted with explicit in/out shardings when `shardings` is given:
    {"params", "opt_state", "frozen", "batch", "replicated"} (each a sharding or tree of shardings)."""
    from imgen_jax.xla import jit

    def encode(frozen: dict, batch: dict):
        lm = nnx.merge(base.lm_def, frozen["lm"])
        encodec = nnx.merge(base.encodec_def, frozen["encodec"])
        t5 = nnx.merge(base.t5_def, frozen["t5"])
        cond = encodec.encode(batch["input"][:, None, :])
        target = encodec.encode(batch["target"][:, None, :])
        hidden = t5(batch["text_ids"], batch["text_mask"])
        memory = lm.text_memory(hidden, batch["text_mask"])
        key_mask = batch["text_mask"] if mask_text_padding else None
        return lm, cond, target, memory, key_mask

    def train_step(params, opt_state, frozen, batch, step):
        lm, cond, target, memory, key_mask = encode(frozen, batch)
        loss, grads = codes_loss_and_grads(lm, ad_def, params, target, cond, memory, key_mask)
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


def tokens_per_step(batch_size: int, num_codebooks: int, frames: int) -> int:
    return int(batch_size * num_codebooks * frames)


__all__ = [
    "BaseModels", "load_base", "fusion_config", "init_params", "make_optimizer", "codes_loss_and_grads",
    "apply_update", "Steps", "make_steps", "opt_state_shardings", "tokens_per_step",
]
