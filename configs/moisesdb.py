"""Instruct-MusicGen on MoisesDB: the Slakh recipe (configs/slakh.py) on MoisesDB's stems.

    python train.py --config=configs/moisesdb.py --config.model.base_dir=models/musicgen-large \\
        --config.data.dir=data/moisesdb --config.workdir=runs/moisesdb
"""

import importlib.util
import os


def _slakh():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slakh.py")
    spec = importlib.util.spec_from_file_location("_imgen_config_slakh", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def get_config():
    c = _slakh().get_config()
    c.workdir = "runs/moisesdb"
    c.data.dir = "data/moisesdb"  # placeholder: MoisesDB root
    c.data.stems = "4_stems"  # Drums, Bass, Piano, Guitar (MoisesDB: drums, bass, piano, guitar)
    return c
