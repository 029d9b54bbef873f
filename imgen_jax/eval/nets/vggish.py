"""VGGish (Hershey et al. 2017) in Flax NNX, with its log-mel frontend in jnp: the FAD embedder.

Recipe (the TensorFlow VGGish's, as ported by torchvggish and used by frechet_audio_distance with
`use_pca=False, use_activation=False`):

    frontend   16 kHz mono; frames of 25 ms (400 samples) every 10 ms (160), no padding; periodic
               Hann window; |rfft| with n_fft 512 (magnitude, not power); 64 HTK-mel bands
               (mel = 1127 ln(1 + f / 700)) over 125-7500 Hz, triangles in the mel domain, DC bin
               zeroed, no area normalisation; log(mel + 0.01)
    patches    0.96 s = 96 frames x 64 bands, hop 96 frames; incomplete trailing patches dropped
    network    [conv3x3 64, maxpool] [conv 128, maxpool] [conv 256, conv 256, maxpool]
               [conv 512, conv 512, maxpool] (ReLU after each conv) -> flatten (6 x 4 x 512, in
               time, band, channel order) -> fc 4096, ReLU -> fc 4096, ReLU -> fc 128
    embedding  the last fc's output before its ReLU (`final_relu=True` gives torchvggish's plain
               `VGG` output); no PCA / quantisation

`embed(wav [B, N]) -> [B, P, 128]` with P = 1 + (T - 96) // 96 patches, T = 1 + (N - 400) // 160
frames: N >= 15,600 samples (0.975 s).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imgen_jax.errors import ImgenError
from imgen_jax.eval.nets.common import HIGHEST, conv3x3, frame, load_net, periodic_hann, pool2d

KIND = "vggish"
# (output channels, max-pool after it) of the six 3x3 convolutions
CONVS = ((64, True), (128, True), (256, False), (256, True), (512, False), (512, True))
FCS = (4096, 4096, 128)


@dataclasses.dataclass(frozen=True)
class VGGishConfig:
    """Frontend settings (defaults: VGGish's vggish_params) and whether the embedding is ReLU'd."""

    sample_rate: int = 16000
    window_seconds: float = 0.025
    hop_seconds: float = 0.010
    n_mels: int = 64
    f_min: float = 125.0
    f_max: float = 7500.0
    log_offset: float = 0.01
    patch_frames: int = 96
    patch_hop_frames: int = 96
    final_relu: bool = False

    @property
    def window(self) -> int:
        return int(round(self.sample_rate * self.window_seconds))

    @property
    def hop(self) -> int:
        return int(round(self.sample_rate * self.hop_seconds))

    @property
    def n_fft(self) -> int:
        """The smallest power of two >= the window length."""
        return 1 << (self.window - 1).bit_length()


def htk_mel(f):
    """VGGish's HTK mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)


@functools.lru_cache(maxsize=8)
def mel_matrix(cfg: VGGishConfig) -> np.ndarray:
    """Mel weights [n_fft // 2 + 1, n_mels] float64: triangles linear in mel, DC row zero, unnormalised."""
    nyquist = cfg.sample_rate / 2.0
    if not 0.0 <= cfg.f_min < cfg.f_max <= nyquist:
        raise ImgenError(f"VGGishConfig: need 0 <= f_min < f_max <= {nyquist}, got f_min {cfg.f_min}, f_max {cfg.f_max}")
    bins = htk_mel(np.linspace(0.0, nyquist, cfg.n_fft // 2 + 1))
    edges = np.linspace(htk_mel(cfg.f_min), htk_mel(cfg.f_max), cfg.n_mels + 2)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (bins[:, None] - lo) / (mid - lo)
    down = (hi - bins[:, None]) / (hi - mid)
    w = np.maximum(0.0, np.minimum(up, down))
    w[0] = 0.0
    return w


def num_patches(n_samples: int, cfg: VGGishConfig = VGGishConfig()) -> int:
    """Patches VGGish makes of n_samples (0 when too short for one)."""
    if n_samples < cfg.window:
        return 0
    frames = 1 + (n_samples - cfg.window) // cfg.hop
    return 0 if frames < cfg.patch_frames else 1 + (frames - cfg.patch_frames) // cfg.patch_hop_frames


def log_mel_patches(wav: jax.Array, cfg: VGGishConfig = VGGishConfig()) -> jax.Array:
    """wav [B, N] float at cfg.sample_rate -> log-mel patches [B, P, patch_frames, n_mels] float32."""
    n = wav.shape[-1]
    p = num_patches(n, cfg)
    if p == 0:
        need = cfg.window + cfg.hop * (cfg.patch_frames - 1)
        raise ImgenError(f"VGGish: {n} samples is too short (need at least {need} at {cfg.sample_rate} Hz)")
    starts = (np.arange(p)[:, None] * cfg.patch_hop_frames + np.arange(cfg.patch_frames)[None, :]).reshape(-1)
    t = int(starts.max()) + 1
    frames = frame(wav.astype(jnp.float32), cfg.window, cfg.hop, t)  # [B, T, window]
    frames = frames * jnp.asarray(periodic_hann(cfg.window), jnp.float32)
    mag = jnp.abs(jnp.fft.rfft(frames, n=cfg.n_fft, axis=-1))  # [B, T, n_fft // 2 + 1]
    mel = jnp.einsum("btf,fm->btm", mag, jnp.asarray(mel_matrix(cfg), jnp.float32), precision=HIGHEST)
    logmel = jnp.log(mel + cfg.log_offset)
    return logmel[:, starts].reshape(wav.shape[0], p, cfg.patch_frames, cfg.n_mels)


class VGGish(nnx.Module):
    """VGGish: log-mel patches [M, 96, 64] -> embeddings [M, 128]; `embed` adds the frontend."""

    def __init__(self, cfg: VGGishConfig = VGGishConfig(), *, rngs: nnx.Rngs):
        self.cfg = cfg
        convs, cin = [], 1
        for cout, _ in CONVS:
            convs.append(nnx.Conv(cin, cout, (3, 3), padding=((1, 1), (1, 1)), precision=HIGHEST, rngs=rngs))
            cin = cout
        self.convs = nnx.List(convs)
        h, w = cfg.patch_frames, cfg.n_mels
        for _, pool in CONVS:
            h, w = (h // 2, w // 2) if pool else (h, w)
        dims = (h * w * cin,) + FCS
        self.fcs = nnx.List([nnx.Linear(a, b, precision=HIGHEST, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])

    def __call__(self, patches: jax.Array) -> jax.Array:
        """patches [M, patch_frames, n_mels] -> embeddings [M, 128]."""
        x = patches[..., None]
        for conv, (_, pool) in zip(self.convs, CONVS):
            x = jax.nn.relu(conv3x3(x, conv.kernel[...], conv.bias[...]))  # Winograd; nnx.Conv holds the weights
            if pool:
                x = pool2d(x, "max")
        x = x.reshape(x.shape[0], -1)  # time, band, channel: torchvggish's transposed flatten
        for i, fc in enumerate(self.fcs):
            x = fc(x)
            if i < len(self.fcs) - 1 or self.cfg.final_relu:
                x = jax.nn.relu(x)
        return x

    def embed(self, wav: jax.Array) -> jax.Array:
        """wav [B, N] at cfg.sample_rate -> embeddings [B, P, 128] (one per 0.96 s patch)."""
        patches = log_mel_patches(wav, self.cfg)
        b, p = patches.shape[:2]
        return self(patches.reshape(b * p, *patches.shape[2:])).reshape(b, p, -1)


def abstract_vggish(cfg: VGGishConfig = VGGishConfig()) -> VGGish:
    """A VGGish with abstract (shape-only) parameters, to be filled by `load_vggish`."""
    return nnx.eval_shape(lambda: VGGish(cfg, rngs=nnx.Rngs(0)))


def load_vggish(path: str | os.PathLike) -> VGGish:
    """The VGGish of a file written by convert/vggish_weights.py (names and shapes checked)."""
    return load_net(path, KIND, VGGishConfig, abstract_vggish)[1]


def vggish_embedder(model: VGGish):
    """A jitted `wav [B, N] -> [B, P, 128]` over `model` (compiled once per input shape)."""
    from imgen_jax.xla import jit_method

    return jit_method(model, VGGish.embed)
