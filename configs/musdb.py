"""Instruct-MusicGen on MUSDB18-HQ: the Slakh recipe (configs/slakh.py) on MUSDB's stems.

    python train.py --config=configs/musdb.py --config.model.base_dir=models/musicgen-large \\
        --config.data.dir=data/musdb18hq --config.workdir=runs/musdb

MUSDB has four stems: vocals, drums, bass, other (classes Vocals, Drums, Bass, Other). With the default
`4_stems` only Drums and Bass take part in triplets; `--config.data.stems=all` adds Vocals (a target too)
and Other (mixed in, never a target). The validation split is musdb's 14 official validation tracks.
"""

from imgen_jax.train.config import sibling_config


def get_config():
    c = sibling_config(__file__, "slakh.py")
    c.workdir = "runs/musdb"
    c.data.dir = "data/musdb18hq"  # placeholder: MUSDB18-HQ root (train/ test/)
    c.data.layout = "musdb"
    c.data.stems = "4_stems"  # Drums, Bass (MUSDB: drums, bass); "all" adds vocals and other
    return c
