"""Instruct-MusicGen on Slakh2100, the official recipe (arXiv 2405.18386 and its training code).

What the official trainer does, and this config does too:
- MusicGen-large (3.3B) base, frozen; audio fusion on all 48 layers, LoRA r 32 / alpha 64 on every
  cross-attention q and v; nothing else trains.
- Batch 8 of 5 s clips at 32 kHz with 4 accumulated batches per update (train.batch_size 32 =
  8 x train.grad_accum 4), gradients clipped to global norm 2.0.
- AdamW lr 1e-4, weight decay 0.05, betas (0.9, 0.999), eps 1e-8; learning rate of transformers'
  get_cosine_schedule_with_warmup(100, 10000) stepped once per update, 5000 updates trained (so the
  cosine ends half-way, as the official run).
- The classifier-free-guidance text dropout of the LM in train mode: p = 0.3 per micro-batch, every
  description of it replaced by the null text.

Differences from the official trainer:
- Text padding: instructions are padded to data.text_max_length and the padded keys are masked
  (model.mask_text_padding), which equals the official per-batch padding for each row except that the
  official code lets queries attend to the zero keys of the batch's padding (see train/step.py).
- Precision: float32 frozen weights and compute by default (the official run used float16 autocast on
  CUDA); model.frozen_dtype="bfloat16" for accelerators.
- Dropout draws: fold_in(seed, update, micro-batch) instead of a torch generator seeded 1234.

Set the paths:

    python train.py --config=configs/slakh.py --config.model.base_dir=models/musicgen-large \\
        --config.data.dir=data/slakh2100 --config.workdir=runs/slakh

(`models/musicgen-large` is `imgen convert facebook/musicgen-large --out models/musicgen-large`.)
On a multi-host TPU / GPU slice add --config.mesh.distributed=True and e.g.
--config.mesh.fsdp=-1 --config.mesh.data=1 (shard the frozen 3.3B base over all devices).
"""

from imgen_jax.train.config import base_config
from imgen_jax.vocab import TASKS


def get_config():
    c = base_config()
    c.workdir = "runs/slakh"
    c.model.base_dir = "models/musicgen-large"  # placeholder: a converted MusicGen-large directory
    c.model.base_size = "large"  # what `imgen plan` compiles without weights (must match base_dir's LM)
    c.model.adapter_layers = -1
    c.model.lora_r = 32
    c.model.lora_alpha = 64.0
    c.model.pos_emb_frames = 501
    c.data.source = "triplets"
    c.data.dir = "data/slakh2100"  # placeholder: Slakh2100 root (train / validation / test)
    c.data.tasks = TASKS
    c.data.stems = "4_stems"
    c.data.clip_seconds = 5.0
    c.data.sample_rate = 32000
    c.model.text_dropout = 0.3
    c.train.steps = 5000
    c.train.batch_size = 32
    c.train.grad_accum = 4
    c.train.lr = 1e-4
    c.train.weight_decay = 0.05
    c.train.b1, c.train.b2, c.train.eps = 0.9, 0.999, 1e-8
    c.train.warmup_steps = 100
    c.train.schedule_steps = 10000
    c.train.grad_clip_norm = 2.0
    c.eval.every = 500
    c.eval.batches = 8
    c.eval.batch_size = 8
    c.samples.every = 1000
    c.samples.count = 2
    c.checkpoint.every = 500
    c.checkpoint.keep = 3
    return c
