"""The official Slakh2100 recipe (configs/slakh.py) on one 16 GiB accelerator, e.g. a TPU v5e chip.

Same model, data, optimiser and global batch as configs/slakh.py: 32 clips of 5 s per update, here as 32
accumulated micro-batches of one clip (train.grad_accum), so the update is the same. What changes is how it
is held in memory:
- model.frozen_dtype = "bfloat16": the frozen LM and T5 weights (and their compute) in bf16, half the bytes of
  the 3.3B frozen parameters; EnCodec, the adapters and the AdamW state stay float32;
- model.remat = "full": each LM layer and each audio-fusion layer keeps only its input for the backward pass
  and recomputes the rest (about one more forward pass of compute).

`imgen plan --config=configs/slakh_one_chip.py --topology=v5e:1x1 --skip-decode` prints the TPU compiler's
per-chip memory of this step (docs/scaling.md has the figures). Train with the paths set as for slakh.py:

    python train.py --config=configs/slakh_one_chip.py --config.model.base_dir=models/musicgen-large \\
        --config.data.dir=data/slakh2100 --config.workdir=runs/slakh_one_chip
"""

from imgen_jax.train.config import sibling_config


def get_config():
    c = sibling_config(__file__, "slakh.py")
    c.workdir = "runs/slakh_one_chip"
    c.model.frozen_dtype = "bfloat16"
    c.model.remat = "full"
    c.train.batch_size = 32
    c.train.grad_accum = 32
    c.mesh.data = 1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    return c
