"""Built-in FAD embedders, needing no download.

- `logmel`: frame embeddings = log-mel frames, log(mel + 1e-5), of the official evaluation's mel
  spectrogram (16 kHz, 128 HTK bands, hop 12.5 ms; imgen_jax.eval.mel): [T, 128]. A fixed,
  model-free spectral-statistics embedder.
- `encodec`: frame embeddings = the model directory's own EnCodec encoder latents (before
  quantisation) at the model's sample rate: [T, D] (D = 128 for MusicGen's 32 kHz codec, 50 frames/s).

Neither is VGGish (the embedder of the usual FAD numbers, and of the paper's via audioldm_eval), so
the values are not comparable with published FAD figures; plug in VGGish from a local checkpoint
for that (imgen_jax.eval.plugins).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from imgen_jax.errors import ImgenError
from imgen_jax.eval.mel import MelConfig, log_mel, mel_spectrogram
from imgen_jax.eval.plugins import register


class LogMelEmbedder:
    """wavs [N] float at 16 kHz -> log-mel frames [1 + N // 200, 128]."""

    name = "logmel"

    def __init__(self, cfg: MelConfig = MelConfig()):
        self.cfg = cfg
        self.sample_rate = cfg.sample_rate

    def __call__(self, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [log_mel(mel_spectrogram(w, self.cfg), self.cfg).T for w in wavs]


class EncodecEmbedder:
    """wavs [N] float at the codec's rate -> EnCodec encoder latents [ceil(N / hop), D] (equal lengths batched)."""

    name = "encodec"

    def __init__(self, model_dir: str, batch: int = 8):
        from imgen_jax.models.encodec import EncodecModel, load_encodec
        from imgen_jax.modeldir import read_model_config
        from imgen_jax.xla import jit_method

        if "encodec" not in read_model_config(model_dir):
            raise ImgenError(f"{model_dir}: the `encodec` embedder needs the model directory's encodec component")
        self.model = load_encodec(model_dir)
        if self.model.cfg.audio_channels != 1:
            raise ImgenError(f"{model_dir}: the `encodec` embedder needs a mono codec (this one has {self.model.cfg.audio_channels} channels)")
        self.sample_rate = self.model.cfg.sampling_rate
        self.batch = batch
        self._latent = jit_method(self.model, EncodecModel.latent)

    def __call__(self, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(wavs)
        groups: dict[int, list[int]] = {}
        for i, w in enumerate(wavs):
            groups.setdefault(int(np.asarray(w).size), []).append(i)
        for idx in groups.values():
            for s in range(0, len(idx), self.batch):
                part = idx[s:s + self.batch]
                x = np.stack([np.asarray(wavs[i], np.float32).reshape(1, -1) for i in part])  # [b, 1, N]
                lat = np.asarray(self._latent(x), np.float64)  # [b, T, D]
                for j, i in enumerate(part):
                    out[i] = lat[j]
        return out  # type: ignore[return-value]


register("embedder", "logmel", lambda model_dir=None, arg=None: LogMelEmbedder())
register("embedder", "encodec", lambda model_dir=None, arg=None: EncodecEmbedder(_need_dir(model_dir, "encodec")))


def _need_dir(model_dir: str | None, name: str) -> str:
    if model_dir is None:
        raise ImgenError(f"the `{name}` embedder needs a model directory")
    return model_dir


__all__ = ["LogMelEmbedder", "EncodecEmbedder"]
