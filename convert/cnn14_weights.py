"""PANNs Cnn14 weights: the published checkpoint (`Cnn14_16k_mAP=0.438.pth`, {"model": state dict})
-> imgen_jax `Cnn14` names, batch norms folded (imgen_jax.eval.nets.cnn14).

    PANNs Cnn14 state dict                                   ours
    bn0.{weight,bias,running_mean,running_var}  [64]         bn0/scale, bn0/bias  [64]
    conv_block{k}.conv{j}.weight  [out, in, 3, 3]  +         blocks/{k-1}/conv{j}/kernel [3, 3, in, out],
    conv_block{k}.bn{j}.{weight,bias,running_mean,running_var}                  blocks/{k-1}/conv{j}/bias
    fc1.{weight,bias}, fc_audioset.{weight,bias}             fc1/{kernel,bias}, fc_audioset/{kernel,bias}
    spectrogram_extractor.stft.conv_{real,imag}.weight       (checked for shape; our frontend computes them)
    logmel_extractor.melW  [n_fft // 2 + 1, mel_bins]        (checked against our Slaney filters)

Folding: s = gamma / sqrt(running_var + eps), eps = 1e-5 (PyTorch's BatchNorm2d default); conv
kernel * s, bias = beta - running_mean * s; bn0: scale = s, bias = beta - running_mean * s.
The frontend is detected from melW: n_fft 512 is the 16 kHz model, 1024 the 32 kHz one
(Cnn14Config.at_32k); the classes from fc_audioset. `num_batches_tracked` counters are ignored.

    python -m convert.cnn14_weights Cnn14_16k_mAP=0.438.pth cnn14_16k.safetensors
"""

from __future__ import annotations

import argparse
import os
from typing import Mapping

import numpy as np

from convert.common import KeyReader, fold_batch_norm, load_torch_checkpoint, strip_prefix
from imgen_jax.errors import ImgenError
from imgen_jax.eval.nets.cnn14 import CHANNELS, KIND, Cnn14Config, mel_matrix
from imgen_jax.eval.nets.common import save_net

BN_EPS = 1e-5
MEL_KEY = "logmel_extractor.melW"
STFT_KEYS = ("spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight")


def detect_config(sd: Mapping[str, np.ndarray], source: str) -> Cnn14Config:
    """The frontend preset from melW's shape and the classes from fc_audioset's."""
    if MEL_KEY not in sd or "fc_audioset.weight" not in sd:
        raise ImgenError(f"{source}: not a PANNs Cnn14 state dict (no {MEL_KEY} / fc_audioset.weight; "
                         f"first keys: {', '.join(sorted(sd)[:4])})")
    rows, mels = sd[MEL_KEY].shape
    classes = int(sd["fc_audioset.weight"].shape[0])
    presets = {512: Cnn14Config(classes=classes), 1024: Cnn14Config.at_32k(classes)}
    if 2 * (rows - 1) not in presets or mels != 64:
        raise ImgenError(f"{source}: {MEL_KEY} has shape {[rows, mels]}; known Cnn14 frontends have "
                         f"[257, 64] (16 kHz) or [513, 64] (32 kHz)")
    return presets[2 * (rows - 1)]


def _conv_bn(r: KeyReader, flat: dict, k: int, j: int, cin: int, cout: int) -> None:
    w = r.take(f"conv_block{k}.conv{j}.weight", (cout, cin, 3, 3))
    bn = fold_batch_norm(r, f"conv_block{k}.bn{j}", cout, BN_EPS)
    ok = w is not None and bn is not None
    flat[f"blocks/{k - 1}/conv{j}/kernel"] = w.transpose(2, 3, 1, 0) * bn[0] if ok else None
    flat[f"blocks/{k - 1}/conv{j}/bias"] = bn[1] if ok else None


def _check_frontend(r: KeyReader, cfg: Cnn14Config, source: str) -> None:
    for key in STFT_KEYS:
        r.take(key, (cfg.window // 2 + 1, 1, cfg.window))
    mel = r.take(MEL_KEY, (cfg.window // 2 + 1, cfg.n_mels))
    if mel is not None:
        diff = float(np.abs(mel - mel_matrix(cfg)).max())
        if diff > 1e-5 * float(np.abs(mel).max()):
            raise ImgenError(f"{source}: {MEL_KEY} differs from the Slaney mel filters of {cfg} "
                             f"(max difference {diff:.3g}): a Cnn14 with other frontend settings")


def cnn14_from_torch(sd: Mapping[str, np.ndarray], source: str, cfg: Cnn14Config | None = None) -> tuple[Cnn14Config, dict[str, np.ndarray]]:
    """PANNs Cnn14 state dict (or a checkpoint flattened with its "model." prefix) -> (config, our flat weights)."""
    if any(k.startswith("model.") for k in sd):
        sd = strip_prefix(sd, "model.")
    cfg = cfg or detect_config(sd, source)
    r = KeyReader(sd, source, ignore=("num_batches_tracked",))
    _check_frontend(r, cfg, source)
    flat: dict[str, np.ndarray | None] = {}
    bn0 = fold_batch_norm(r, "bn0", cfg.n_mels, BN_EPS)
    flat["bn0/scale"], flat["bn0/bias"] = bn0 if bn0 is not None else (None, None)
    cin = 1
    for k, cout in enumerate(CHANNELS, start=1):
        _conv_bn(r, flat, k, 1, cin, cout)
        _conv_bn(r, flat, k, 2, cout, cout)
        cin = cout
    for name, dout in (("fc1", CHANNELS[-1]), ("fc_audioset", cfg.classes)):
        w = r.take(f"{name}.weight", (dout, CHANNELS[-1]))
        flat[f"{name}/kernel"] = None if w is None else w.T
        flat[f"{name}/bias"] = r.take(f"{name}.bias", (dout,))
    r.finish()
    return cfg, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in flat.items()}  # type: ignore[arg-type]


def convert_cnn14(src: str | os.PathLike, out: str | os.PathLike, cfg: Cnn14Config | None = None) -> Cnn14Config:
    """Convert a PANNs Cnn14 checkpoint file (.pth / .safetensors) to our safetensors file; returns its config."""
    sd, _ = load_torch_checkpoint(src)
    cfg, flat = cnn14_from_torch(sd, os.fspath(src), cfg)
    save_net(out, KIND, cfg, flat)
    return cfg


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="PANNs checkpoint, e.g. Cnn14_16k_mAP=0.438.pth")
    p.add_argument("out", help="output .safetensors")
    a = p.parse_args(argv)
    convert_cnn14(a.src, a.out)


if __name__ == "__main__":
    try:
        main()
    except ImgenError as e:
        raise SystemExit(f"error: {e}")
