"""VGGish weights: torchvggish's state dict (`vggish-10086976.pth`) -> imgen_jax `VGGish` names.

    torchvggish (VGG: features + embeddings)          ours (imgen_jax.eval.nets.vggish)
    features.{0,3,6,8,11,13}.weight  [out, in, 3, 3]   convs/{0..5}/kernel  [3, 3, in, out]
    features.{0,3,6,8,11,13}.bias    [out]             convs/{0..5}/bias
    embeddings.{0,2,4}.weight        [out, in]         fcs/{0,1,2}/kernel   [in, out]
    embeddings.{0,2,4}.bias          [out]             fcs/{0,1,2}/bias

The indices are positions in torchvggish's nn.Sequential (ReLU / MaxPool layers hold no weights).
`pproc.*` (the PCA of torch.hub's VGGish with postprocess=True) is ignored: the FAD embedding
takes no PCA. The file is opened with `torch.load(weights_only=True)` (convert.common).

    python -m convert.vggish_weights vggish-10086976.pth vggish.safetensors
"""

from __future__ import annotations

import argparse
import os
from typing import Mapping

import numpy as np

from convert.common import KeyReader, load_torch_checkpoint
from imgen_jax.eval.nets.common import save_net
from imgen_jax.eval.nets.vggish import CONVS, FCS, KIND, VGGishConfig

CONV_INDICES = (0, 3, 6, 8, 11, 13)
FC_INDICES = (0, 2, 4)


def _conv_key_indices() -> tuple[int, ...]:
    """The Sequential index of each conv: conv + ReLU (+ MaxPool) per entry of CONVS."""
    idx, i = [], 0
    for _, pool in CONVS:
        idx.append(i)
        i += 3 if pool else 2
    return tuple(idx)


assert _conv_key_indices() == CONV_INDICES


def vggish_from_torch(sd: Mapping[str, np.ndarray], source: str, cfg: VGGishConfig = VGGishConfig()) -> dict[str, np.ndarray]:
    """torchvggish state dict -> our flat weights; every key problem in one ImgenError."""
    r = KeyReader(sd, source, ignore=("pproc.",))
    flat: dict[str, np.ndarray | None] = {}
    cin = 1
    for n, (i, (cout, _)) in enumerate(zip(CONV_INDICES, CONVS)):
        w = r.take(f"features.{i}.weight", (cout, cin, 3, 3))
        flat[f"convs/{n}/kernel"] = None if w is None else w.transpose(2, 3, 1, 0)
        flat[f"convs/{n}/bias"] = r.take(f"features.{i}.bias", (cout,))
        cin = cout
    h, w_ = cfg.patch_frames, cfg.n_mels
    for _, pool in CONVS:
        h, w_ = (h // 2, w_ // 2) if pool else (h, w_)
    dims = (h * w_ * cin,) + FCS
    for n, (i, din, dout) in enumerate(zip(FC_INDICES, dims[:-1], dims[1:])):
        w = r.take(f"embeddings.{i}.weight", (dout, din))
        flat[f"fcs/{n}/kernel"] = None if w is None else w.T
        flat[f"fcs/{n}/bias"] = r.take(f"embeddings.{i}.bias", (dout,))
    r.finish()
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in flat.items()}  # type: ignore[arg-type]


def convert_vggish(src: str | os.PathLike, out: str | os.PathLike, cfg: VGGishConfig = VGGishConfig()) -> None:
    """Convert a torchvggish checkpoint file (.pth / .pt / .safetensors) to our safetensors file."""
    sd, _ = load_torch_checkpoint(src)
    save_net(out, KIND, cfg, vggish_from_torch(sd, os.fspath(src), cfg))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="torchvggish state dict, e.g. vggish-10086976.pth")
    p.add_argument("out", help="output .safetensors")
    p.add_argument("--final-relu", action="store_true", help="embedding after the last ReLU (torchvggish's VGG output)")
    a = p.parse_args(argv)
    convert_vggish(a.src, a.out, VGGishConfig(final_relu=a.final_relu))


if __name__ == "__main__":
    from imgen_jax.errors import ImgenError

    try:
        main()
    except ImgenError as e:
        raise SystemExit(f"error: {e}")
