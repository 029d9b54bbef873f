"""A tiny end-to-end training run on mini-Slakh that fits a 2-core CPU in a few minutes.

The base model is the tiny random MusicGen that examples/train_demo.py builds (LM 64 x 2 layers,
card 64, EnCodec at 8 kHz with 100 frames/s, tiny T5): the losses fall from the random base's
level as the adapters learn the condition -> target mapping. The full job is examples/train_demo.sh:

    python train.py --config=configs/demo.py --config.model.base_dir=out/train_demo/base \\
        --config.data.dir=out/train_demo/mini_slakh --config.workdir=out/train_demo/run
"""

from imgen_jax.train.config import base_config


def get_config():
    c = base_config()
    c.seed = 0
    c.workdir = "out/train_demo/run"
    c.model.base_dir = "out/train_demo/base"
    c.model.lora_r = 8
    c.model.lora_alpha = 16.0
    c.model.pos_emb_frames = 201
    c.data.source = "triplets"
    c.data.dir = "out/train_demo/mini_slakh"
    c.data.clip_seconds = 2.0
    c.data.sample_rate = 8000
    c.data.text_max_length = 24
    c.train.steps = 300
    c.train.batch_size = 8
    c.train.grad_accum = 1
    c.train.schedule_steps = 0      # the cosine reaches 0 at the last of the 300 steps
    c.model.text_dropout = 0.0      # few steps on a tiny model: every step learns the instruction
    c.train.lr = 3e-3
    c.train.weight_decay = 0.05
    c.train.warmup_steps = 20
    c.train.log_every = 10
    c.eval.every = 100
    c.eval.batches = 2
    c.eval.batch_size = 8
    c.samples.every = 300
    c.samples.count = 2
    c.samples.seconds = 1.0
    c.samples.top_k = 32
    c.checkpoint.every = 100
    c.checkpoint.keep = 2
    return c
