"""Ablation: audio fusion only (no text LoRA), otherwise the official Slakh2100 recipe (configs/slakh.py).

The paper trains audio fusion and text fusion together and ablates neither; this config trains the
audio-fusion module alone (`model.fusion = "audio"`: merge_linear, pos_emb and gates; the LM's
cross-attention stays the frozen MusicGen's), configs/ablation_text.py the LoRA alone. Compare their
`imgen eval` scores with the full model's. A quick run on the demo set:

    python train.py --config=configs/demo.py --config.model.fusion=audio ...   (examples/train_demo.sh)
    python train.py --config=configs/ablation_audio.py --config.model.base_dir=models/musicgen-large \\
        --config.data.dir=data/slakh2100 --config.workdir=runs/ablation_audio
"""

from imgen_jax.train.config import sibling_config


def get_config():
    c = sibling_config(__file__, "slakh.py")
    c.workdir = "runs/ablation_audio"
    c.model.fusion = "audio"
    return c
