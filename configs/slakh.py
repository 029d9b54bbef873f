"""Instruct-MusicGen on Slakh2100, the official hyper-parameters (arXiv 2405.18386 and its code).

MusicGen-large (3.3B) base, fusion on all 48 layers, LoRA r=32 / alpha=64 on the cross-attention q/v;
AdamW lr 1e-4, weight decay 0.05, 100 warmup steps (DEFAULT_WARMUP_STEPS) then cosine decay;
batch 8 of 5 s clips at 32 kHz; 5000 steps. Set the paths:

    python train.py --config=configs/slakh.py --config.model.base_dir=models/musicgen-large \\
        --config.data.dir=data/slakh2100 --config.workdir=runs/slakh

(`models/musicgen-large` is `imgen convert facebook/musicgen-large --out models/musicgen-large`.)
On a multi-host TPU / GPU slice add --config.mesh.distributed=True and e.g.
--config.mesh.fsdp=-1 --config.mesh.data=1 (shard the frozen 3.3B base over all devices).
"""

from imgen_jax.train.config import base_config


def get_config():
    c = base_config()
    c.workdir = "runs/slakh"
    c.model.base_dir = "models/musicgen-large"  # placeholder: a converted MusicGen-large directory
    c.model.adapter_layers = -1
    c.model.lora_r = 32
    c.model.lora_alpha = 64.0
    c.model.pos_emb_frames = 501
    c.data.source = "triplets"
    c.data.dir = "data/slakh2100"  # placeholder: Slakh2100 root (train / validation / test)
    c.data.tasks = ("add", "remove", "extract")
    c.data.stems = "4_stems"
    c.data.clip_seconds = 5.0
    c.data.sample_rate = 32000
    c.train.steps = 5000
    c.train.batch_size = 8
    c.train.lr = 1e-4
    c.train.weight_decay = 0.05
    c.train.warmup_steps = 100
    c.eval.every = 500
    c.eval.batches = 8
    c.eval.batch_size = 8
    c.samples.every = 1000
    c.samples.count = 2
    c.checkpoint.every = 500
    c.checkpoint.keep = 3
    return c
