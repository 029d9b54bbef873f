"""PANNs Cnn14 (Kong et al. 2020) in Flax NNX, with its log-mel frontend in jnp: the KL classifier.

Recipe (PANNs' Cnn14 as audioldm_eval 0.0.3 runs it for KL at 16 kHz, checkpoint
`Cnn14_16k_mAP=0.438.pth`; panns_inference's default is the 32 kHz model, `Cnn14Config.at_32k()`):

    frontend   mono at sample_rate; centred STFT (reflect padding of window // 2 each side, so
               T = 1 + N // hop frames), periodic Hann window = n_fft (512 at 16 kHz, 1024 at 32 kHz),
               hop 160 / 320; power |X|^2; 64 Slaney-scale mel bands (librosa's default
               `filters.mel`: linear below 1 kHz, log above, area-normalised triangles) over
               f_min 50 Hz - f_max 8 / 14 kHz; 10 log10(max(mel, 1e-10)) (ref 1, no top_db)
    bn0        batch norm over the mel bands (inference statistics)
    blocks     six [conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> ReLU] with 64..2048 channels, each
               followed by 2x2 average pooling (floor) except the last
    head       mean over mel bands, then max + mean over time; fc1 2048 + ReLU (the "2048"
               embedding); fc_audioset -> logits [527] (sigmoid gives PANNs' clipwise_output)

Batch norms are folded at conversion: each conv gets the bias b - mean * s and kernel * s with
s = gamma / sqrt(var + eps); bn0 becomes a per-band affine (`bn0/scale`, `bn0/bias`).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np
from flax import nnx

from imgen_jax.eval.nets.common import HIGHEST, Affine, conv3x3, load_net, pool2d, power_log_mel, slaney_mel_filters

KIND = "cnn14"
CHANNELS = (64, 128, 256, 512, 1024, 2048)


@dataclasses.dataclass(frozen=True)
class Cnn14Config:
    """Frontend settings and classes (defaults: the 16 kHz Cnn14 of audioldm_eval)."""

    sample_rate: int = 16000
    window: int = 512  # = n_fft
    hop: int = 160
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 8000.0
    amin: float = 1e-10
    classes: int = 527

    @staticmethod
    def at_32k(classes: int = 527) -> "Cnn14Config":
        """The 32 kHz Cnn14 (`Cnn14_mAP=0.431.pth`, panns_inference's default)."""
        return Cnn14Config(sample_rate=32000, window=1024, hop=320, f_max=14000.0, classes=classes)


@functools.lru_cache(maxsize=8)
def mel_matrix(cfg: Cnn14Config) -> np.ndarray:
    """Area-normalised Slaney mel filters [window // 2 + 1, n_mels] float64 (= librosa.filters.mel(...).T)."""
    return slaney_mel_filters(cfg.sample_rate, cfg.window, cfg.n_mels, cfg.f_min, cfg.f_max, "Cnn14Config")


def log_mel(wav: jax.Array, cfg: Cnn14Config = Cnn14Config()) -> jax.Array:
    """wav [B, N] at cfg.sample_rate -> log-mel (dB) [B, 1 + N // hop, n_mels] float32."""
    return power_log_mel(wav, cfg.sample_rate, cfg.window, cfg.hop, mel_matrix(cfg), cfg.amin, "Cnn14")


class ConvBlock(nnx.Module):
    """Two 3x3 convolutions (batch norms folded in), each followed by ReLU; the nnx.Conv modules hold the
    parameters, `conv3x3` computes them."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        kw = dict(kernel_size=(3, 3), padding=((1, 1), (1, 1)), precision=HIGHEST, rngs=rngs)
        self.conv1 = nnx.Conv(cin, cout, **kw)
        self.conv2 = nnx.Conv(cout, cout, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv in (self.conv1, self.conv2):
            x = jax.nn.relu(conv3x3(x, conv.kernel[...], conv.bias[...]))
        return x


class Cnn14(nnx.Module):
    """Cnn14: wav [B, N] -> logits [B, classes]; `features` also gives the 2048-d embedding."""

    def __init__(self, cfg: Cnn14Config = Cnn14Config(), *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.bn0 = Affine(cfg.n_mels)
        dims = (1,) + CHANNELS
        self.blocks = nnx.List([ConvBlock(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
        self.fc1 = nnx.Linear(CHANNELS[-1], CHANNELS[-1], precision=HIGHEST, rngs=rngs)
        self.fc_audioset = nnx.Linear(CHANNELS[-1], cfg.classes, precision=HIGHEST, rngs=rngs)

    def features(self, wav: jax.Array) -> tuple[jax.Array, jax.Array]:
        """wav [B, N] -> (embedding [B, 2048] = ReLU(fc1), logits [B, classes])."""
        x = self.bn0(log_mel(wav, self.cfg))[..., None]  # [B, T, mels, 1]
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.blocks) - 1:
                x = pool2d(x, "avg")
        x = x.mean(axis=2)  # over mel bands: [B, T', C]
        x = x.max(axis=1) + x.mean(axis=1)
        emb = jax.nn.relu(self.fc1(x))
        return emb, self.fc_audioset(emb)

    def __call__(self, wav: jax.Array) -> jax.Array:
        """wav [B, N] at cfg.sample_rate -> logits [B, classes]."""
        return self.features(wav)[1]


def abstract_cnn14(cfg: Cnn14Config = Cnn14Config()) -> Cnn14:
    """A Cnn14 with abstract (shape-only) parameters, to be filled by `load_cnn14`."""
    return nnx.eval_shape(lambda: Cnn14(cfg, rngs=nnx.Rngs(0)))


def load_cnn14(path: str | os.PathLike) -> Cnn14:
    """The Cnn14 of a file written by convert/cnn14_weights.py (names and shapes checked)."""
    return load_net(path, KIND, Cnn14Config, abstract_cnn14)[1]


def cnn14_classifier(model: Cnn14):
    """A jitted `wav [B, N] -> logits [B, classes]` over `model` (compiled once per input shape)."""
    from imgen_jax.xla import jit_method

    return jit_method(model, Cnn14.__call__)
