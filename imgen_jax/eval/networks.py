"""The paper's evaluation networks (imgen_jax.eval.nets) as evaluation plug-ins: `imgen eval --vggish PATH
--cnn14 PATH --clap PATH --demucs PATH`.

Each PATH is a converted safetensors file (convert/vggish_weights.py, convert/cnn14_weights.py, and the
CLAP / HTDemucs converters); the published PyTorch checkpoints are not read here, since opening them
needs torch, which the runtime never imports. The plug-ins registered here (imgen_jax.eval.plugins,
spec `NAME=PATH`):

    embedder   `vggish`    VGGish 128-d embeddings per 0.96 s patch at 16 kHz [P, 128] (the FAD column fad_vggish)
    classifier `cnn14`     PANNs Cnn14 AudioSet logits [527] at the file's rate (16 kHz: KL as audioldm_eval)
    clap       `clap`      LAION-CLAP audio / text embeddings (imgen_jax.eval.nets.clap, imported when loaded)
    separator  `htdemucs`  HTDemucs four-stem separation (imgen_jax.eval.nets.htdemucs, imported when loaded)

VGGish and Cnn14 run as one jitted program per clip length at a fixed batch (`Batched`): a list of
clips is grouped by length, each group cut into batches of `batch` clips, the last one zero-padded,
so a whole evaluation compiles once per network.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from imgen_jax.errors import ImgenError
from imgen_jax.eval.plugins import register

BATCH = 8
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


class Batched:
    """A jitted `fn(x [B, N]) -> [B, ...]` applied to a list of 1-D clips at a fixed batch size `batch`:
    clips of equal length go together; the last batch of a group is padded with silent rows (dropped
    from the result), so each clip length compiles one program."""

    def __init__(self, fn: Callable, batch: int = BATCH):
        if batch < 1:
            raise ImgenError(f"batch must be >= 1, got {batch}")
        self.fn, self.batch = fn, int(batch)

    def __call__(self, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """[x_i [N_i]] -> [fn(x_i)] (float64 numpy), in order."""
        out: list[np.ndarray | None] = [None] * len(wavs)
        groups: dict[int, list[int]] = {}
        for i, w in enumerate(wavs):
            groups.setdefault(int(np.asarray(w).size), []).append(i)
        for n, idx in groups.items():
            for s in range(0, len(idx), self.batch):
                part = idx[s:s + self.batch]
                x = np.zeros((self.batch, n), np.float32)
                for j, i in enumerate(part):
                    x[j] = np.asarray(wavs[i], np.float32).reshape(-1)
                y = np.asarray(self.fn(x), np.float64)
                for j, i in enumerate(part):
                    out[i] = y[j]
        return out  # type: ignore[return-value]


def _converted(path: str | None, flag: str, converter: str) -> str:
    """The path of a converted file, or one ImgenError saying what to give."""
    if not path:
        raise ImgenError(f"{flag} needs the path of a converted weights file")
    path = os.fspath(path)
    if path.endswith(TORCH_SUFFIXES):
        raise ImgenError(f"{path}: a PyTorch checkpoint; convert it first with `python -m {converter} {path} OUT.safetensors` "
                         f"and give {flag} OUT.safetensors")
    if not os.path.isfile(path):
        raise ImgenError(f"{path}: {flag} weights file not found")
    return path


class VGGishEmbedder:
    """FAD embedder: wavs [N] at 16 kHz -> VGGish embeddings [P, 128] per clip (before the last ReLU, no PCA)."""

    name = "vggish"

    def __init__(self, path: str, batch: int = BATCH):
        from imgen_jax.eval.nets.vggish import load_vggish, vggish_embedder

        self.model = load_vggish(path)
        self.sample_rate = self.model.cfg.sample_rate
        self._run = Batched(vggish_embedder(self.model), batch)

    def __call__(self, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self._run(wavs)


class Cnn14Classifier:
    """KL classifier: wavs [N] at the file's rate (16 kHz for Cnn14_16k) -> AudioSet logits [n, 527]."""

    name = "cnn14"

    def __init__(self, path: str, batch: int = BATCH):
        from imgen_jax.eval.nets.cnn14 import cnn14_classifier, load_cnn14

        self.model = load_cnn14(path)
        self.sample_rate = self.model.cfg.sample_rate
        self._run = Batched(cnn14_classifier(self.model), batch)

    def __call__(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(self._run(wavs)) if len(wavs) else np.zeros((0, self.model.cfg.classes))


def _optional_net(module: str, what: str):
    """imgen_jax.eval.nets.<module>, or one ImgenError when this build lacks it."""
    import importlib

    try:
        return importlib.import_module(f"imgen_jax.eval.nets.{module}")
    except ModuleNotFoundError as e:
        if e.name != f"imgen_jax.eval.nets.{module}":
            raise
        raise ImgenError(f"{what} needs imgen_jax.eval.nets.{module}, which this build of imgen_jax lacks") from None


def load_clap_plugin(path: str):
    """The CLAP scorer of a converted LAION-CLAP file (imgen_jax.eval.nets.clap: .embed_audio / .embed_text at 48 kHz)."""
    path = _converted(path, "--clap", "convert.clap_weights")
    clap = _optional_net("clap", "--clap")
    return clap.clap_scorer(clap.load_clap(path))


def load_htdemucs_plugin(path: str):
    """The HTDemucs separator of a converted file (imgen_jax.eval.nets.htdemucs: .separate(mix [C, n]) -> [S, C, n])."""
    path = _converted(path, "--demucs", "convert.htdemucs_weights")
    demucs = _optional_net("htdemucs", "--demucs")
    return demucs.htdemucs_separator(demucs.load_htdemucs(path))


register("embedder", "vggish", lambda model_dir=None, arg=None:
         VGGishEmbedder(_converted(arg, "--vggish", "convert.vggish_weights")))
register("classifier", "cnn14", lambda model_dir=None, arg=None:
         Cnn14Classifier(_converted(arg, "--cnn14", "convert.cnn14_weights")))
register("clap", "clap", lambda model_dir=None, arg=None: load_clap_plugin(arg))
register("separator", "htdemucs", lambda model_dir=None, arg=None: load_htdemucs_plugin(arg))

__all__ = ["Batched", "VGGishEmbedder", "Cnn14Classifier", "load_clap_plugin", "load_htdemucs_plugin", "BATCH"]
