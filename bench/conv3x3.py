"""The 3x3 convolutions of VGGish (and Cnn14) on the CPU: XLA's direct convolution vs im2col vs Winograd
F(2x2, 3x3) and F(4x4, 3x3) (`imgen_jax.eval.nets.common`), per layer and for the whole VGGish network.

Per layer: one jitted program (`imgen_jax.xla.jit`) per variant on a random input of the layer's real shape
(VGGish on --batch patches [96, 64], 40 = 8 clips x 5 patches as bench/eval.py runs it; with --cnn14 S also the
first conv of each Cnn14 block on 8 clips of S seconds), the path `conv3x3` picks for it, and each variant's
relative (Frobenius) error on 2 items against a float64 numpy convolution. Network: `VGGish.__call__` (random
nnx weights) on --batch patches with every conv computed by XLA's convolution ("direct", what nnx.Conv does)
or by `conv3x3` with tile 2 / 4 ("auto F2" / "auto F4"; the default is F4), and the error of 4 embeddings
against the network in float64 numpy. Variants run in turns (background load hits all alike); medians after
warm-up. The machine's load average is printed: on a shared 2-core VM the absolute times vary ~2x with it.

    python bench/conv3x3.py [--batch 40] [--repeats 5] [--cnn14 SECONDS] [--layers-only | --net-only]
"""

from __future__ import annotations

import argparse
import functools

from _common import alternate, device_line, load_average


def conv_ref(x, kernel, bias):
    """float64 numpy 'SAME' 3x3 correlation: x [B, H, W, C], kernel [3, 3, C, O] -> [B, H, W, O]."""
    import numpy as np

    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    b, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, h, w, kernel.shape[-1])) + np.asarray(bias, np.float64)
    for i in range(3):
        for j in range(3):
            out += np.einsum("bhwc,co->bhwo", xp[:, i:i + h, j:j + w], kernel[i, j], optimize=True)
    return out


def net_ref(net, patches):
    """The VGGish forward in float64 numpy (conv_ref, ReLU, 2x2 max pool, fcs)."""
    import numpy as np

    from imgen_jax.eval.nets.vggish import CONVS

    x = np.asarray(patches, np.float64)[..., None]
    for conv, (_, pool) in zip(net.convs, CONVS):
        x = np.maximum(conv_ref(x, conv.kernel[...], conv.bias[...]), 0)
        if pool:
            b, h, w, c = x.shape
            x = x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    x = x.reshape(x.shape[0], -1)
    for i, fc in enumerate(net.fcs):
        x = x @ np.asarray(fc.kernel[...], np.float64) + np.asarray(fc.bias[...], np.float64)
        if i < len(net.fcs) - 1:
            x = np.maximum(x, 0)
    return x


def rel(got, want) -> float:
    import numpy as np

    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


def vggish_shapes(batch: int) -> list[tuple[str, int, int, int, int, int]]:
    """(name, B, H, W, C, O) of VGGish's six convolutions on `batch` patches."""
    from imgen_jax.eval.nets.vggish import CONVS

    out, h, w, c = [], 96, 64, 1
    for i, (o, pool) in enumerate(CONVS):
        out.append((f"vggish conv{i + 1}", batch, h, w, c, o))
        c = o
        if pool:
            h, w = h // 2, w // 2
    return out


def cnn14_shapes(batch: int, seconds: float) -> list[tuple[str, int, int, int, int, int]]:
    """(name, B, H, W, C, O) of the first convolution of each Cnn14 block (16 kHz) on `batch` clips."""
    from imgen_jax.eval.nets.cnn14 import CHANNELS, Cnn14Config

    cfg = Cnn14Config()
    out, h, w, c = [], 1 + int(cfg.sample_rate * seconds) // cfg.hop, cfg.n_mels, 1
    for i, o in enumerate(CHANNELS):
        out.append((f"cnn14 block{i + 1}", batch, h, w, c, o))
        c, h, w = o, h // 2, w // 2
    return out


def layers(shapes, repeats: int) -> None:
    import numpy as np

    from imgen_jax.eval.nets import common
    from imgen_jax.xla import jit

    variants = {
        "direct": lambda x, k, b: common.xla_conv3x3(x, k) + b,
        "im2col": lambda x, k, b: common.im2col3x3(x, k) + b,
        "wino F2": lambda x, k, b: common.winograd3x3(x, k, 2) + b,
        "wino F4": lambda x, k, b: common.winograd3x3(x, k, 4) + b,
    }
    rng = np.random.default_rng(0)
    print(f"{'layer (B x H x W, C -> O)':<40}" + "".join(f"{n:>11}" for n in variants)
          + "   conv3x3   rel. error vs float64 (same order)")
    for name, b, h, w, c, o in shapes:
        x = np.abs(rng.standard_normal((b, h, w, c))).astype(np.float32)  # post-ReLU-like inputs
        k = (rng.standard_normal((3, 3, c, o)) * (2.0 / (9 * c)) ** 0.5).astype(np.float32)
        bias = (rng.uniform(-0.1, 0.1, o)).astype(np.float32)
        fns = {n: jit(f) for n, f in variants.items()}
        want = conv_ref(x[:2], k, bias)
        errs = [rel(fns[n](x, k, bias)[:2], want) for n in variants]
        times = alternate({n: functools.partial(lambda f: f(x, k, bias).block_until_ready(), f) for n, f in fns.items()},
                          repeats)
        picked = common.conv3x3_path(b, h, w, c, o)
        label = f"{name} {b}x{h}x{w}, {c}->{o} ({2 * b * h * w * 9 * c * o / 1e9:.1f} GF)"
        print(f"{label:<40}" + "".join(f"{times[n] * 1e3:>9.1f}ms" for n in variants)
              + f"   {picked:<9} " + " ".join(f"{e:.1e}" for e in errs), flush=True)


def network(batch: int, repeats: int) -> None:
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import imgen_jax.eval.nets.vggish as vggish
    from imgen_jax.eval.nets.common import conv3x3, xla_conv3x3
    from imgen_jax.xla import jit_method

    net = vggish.VGGish(rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    patches = jnp.asarray(rng.standard_normal((batch, 96, 64)).astype(np.float32))
    variants = {"direct": lambda x, k, b: xla_conv3x3(x, k) + b, "auto F2": functools.partial(conv3x3, tile=2),
                "auto F4": functools.partial(conv3x3, tile=4)}
    fns = {}
    for name, conv in variants.items():
        vggish.conv3x3 = conv  # VGGish.__call__ looks the name up when traced
        fn = jit_method(net, vggish.VGGish.__call__)
        fn(patches).block_until_ready()  # trace + compile now, under this variant
        fns[name] = fn
    vggish.conv3x3 = conv3x3
    want = net_ref(net, patches[:4])
    errs = {n: rel(fn(patches)[:4], want) for n, fn in fns.items()}
    times = alternate({n: functools.partial(lambda f: f(patches).block_until_ready(), f) for n, f in fns.items()},
                      repeats)
    print(f"\nVGGish network, {batch} patches:")
    for n in variants:
        print(f"  {n:<8} {times[n] * 1e3:8.1f} ms   x{times['direct'] / times[n]:.2f} vs direct   "
              f"rel. error of 4 embeddings vs float64 {errs[n]:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers-only", action="store_true")
    ap.add_argument("--net-only", action="store_true")
    ap.add_argument("--cnn14", type=float, default=0.0, metavar="SECONDS",
                    help="also time Cnn14's block convolutions on 8 clips of this length")
    args = ap.parse_args()
    print(device_line())
    print(load_average())
    if not args.net_only:
        layers(vggish_shapes(args.batch) + (cnn14_shapes(8, args.cnn14) if args.cnn14 else []), args.repeats)
    if not args.layers_only:
        network(args.batch, args.repeats)
    print(load_average())


if __name__ == "__main__":
    main()
