"""Instruct-MusicGen on MoisesDB: the Slakh recipe (configs/slakh.py) on MoisesDB's stems.

    python train.py --config=configs/moisesdb.py --config.model.base_dir=models/musicgen-large \\
        --config.data.dir=data/moisesdb --config.workdir=runs/moisesdb
"""

from imgen_jax.train.config import sibling_config


def get_config():
    c = sibling_config(__file__, "slakh.py")
    c.workdir = "runs/moisesdb"
    c.data.dir = "data/moisesdb"  # placeholder: MoisesDB root
    c.data.stems = "4_stems"  # Drums, Bass, Piano, Guitar (MoisesDB: drums, bass, piano, guitar)
    return c
