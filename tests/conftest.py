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


def build_model_dirs(root, spm_model, model):
    """root/hf (Hugging Face layout of `model` + spiece.model), root/adapters.pt (random Instruct adapters
    for its LM in the official format, gates and LoRA B non-zero), root/plain and root/instruct (converted
    without / with the adapters); returns (root, model)."""
    import shutil

    import numpy as np

    from convert.instruct_ckpt import export_official_adapters
    from imgen_jax.cli import main as imgen
    from imgen_jax.instruct.fusion import FusionConfig, init_adapters
    from imgen_jax.models.lm import LMConfig
    from imgen_jax.weights import module_weights

    model.save_pretrained(root / "hf")
    shutil.copyfile(spm_model, root / "hf" / "spiece.model")
    dec = model.config.decoder
    fcfg = FusionConfig.for_lm(LMConfig(dim=dec.hidden_size, num_heads=dec.num_attention_heads,
                                        num_layers=dec.num_hidden_layers, card=dec.vocab_size))
    adapters = init_adapters(fcfg, seed=1)
    flat = module_weights(adapters)
    rng = np.random.default_rng(0)
    flat = {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in flat.items()}  # gates, B != 0
    export_official_adapters(root / "adapters.pt", fcfg, flat)
    assert imgen(["convert", str(root / "hf"), "--out", str(root / "plain")]) == 0
    assert imgen(["convert", str(root / "hf"), "--adapters", str(root / "adapters.pt"), "--out", str(root / "instruct")]) == 0
    return root, model


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, spm_model):
    """(root, transformers model) of a tiny random MusicGen: root/hf (Hugging Face layout + spiece.model),
    root/adapters.pt (random Instruct adapters in the official format, gates and LoRA B non-zero),
    root/plain and root/instruct (converted without / with the adapters). Read-only for tests."""
    from convert.reference_models import musicgen_model

    return build_model_dirs(tmp_path_factory.mktemp("tiny_model"), spm_model, musicgen_model())


@pytest.fixture(scope="session")
def tiny_stereo_model_dirs(tmp_path_factory, spm_model):
    """As tiny_model_dirs for a tiny random musicgen-stereo layout (LM: 8 interleaved codebooks, audio_channels
    2; the tiny mono EnCodec with fitted codebooks, so decoded audio depends on the codes). Read-only."""
    from convert.reference_models import musicgen_model

    model = musicgen_model(codebooks=8, audio_channels=2, seed=5, fitted_codec=True)
    return build_model_dirs(tmp_path_factory.mktemp("tiny_stereo_model"), spm_model, model)
