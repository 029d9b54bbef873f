"""Shared test set-up: float32 everywhere, deterministic torch, the repo importable."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

try:
    import torch  # noqa: E402

    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
except ImportError:  # pragma: no cover - torch is part of the test extra
    pass


import pytest  # noqa: E402

@pytest.fixture(scope="session")
def spm_model(tmp_path_factory) -> str:
    """Path of a tiny T5-style sentencepiece model (convert.reference_models.train_tiny_spiece)."""
    from convert.reference_models import train_tiny_spiece

    return train_tiny_spiece(tmp_path_factory.mktemp("spm") / "spiece.model")


@pytest.fixture(scope="session")
def mini_slakh_root(tmp_path_factory) -> str:
    """Path of a small mini-Slakh (imgen_jax.data.mini_slakh) rendered once per test run, Slakh2100 layout.

    6 tracks of 12 s, mono 44.1 kHz FLAC, seed 0: train Track00001-00003, validation Track00004,
    test Track00005-00006; every track has Drums, Bass, Piano and Guitar stems (some one more class).
    A few seconds on 2 cores.
    """
    from imgen_jax.data.mini_slakh import render_mini_slakh

    root = tmp_path_factory.mktemp("mini_slakh") / "slakh"
    render_mini_slakh(str(root), tracks=6, seconds=12.0, seed=0, progress=False, splits=(3, 1, 2))
    return str(root)
