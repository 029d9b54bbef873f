"""Ablation: text fusion (LoRA on the cross-attention q / v) only, no audio fusion, otherwise the official
Slakh2100 recipe (configs/slakh.py).

Without the audio fusion the model never sees the input mix: this variant measures how much of an edit
the instruction text alone explains (see configs/ablation_audio.py for the other half). A quick run on
the demo set:

    python train.py --config=configs/demo.py --config.model.fusion=text ...   (examples/train_demo.sh)
    python train.py --config=configs/ablation_text.py --config.model.base_dir=models/musicgen-large \\
        --config.data.dir=data/slakh2100 --config.workdir=runs/ablation_text
"""

from imgen_jax.train.config import sibling_config


def get_config():
    c = sibling_config(__file__, "slakh.py")
    c.workdir = "runs/ablation_text"
    c.model.fusion = "text"
    return c
