"""Evaluation embeddings: imgen_jax's Flax VGGish (and CLAP) vs the PyTorch references, same random weights.

VGGish: 100 clips of 5 s at 16 kHz -> [5, 128] embeddings per clip. The reference is torchvggish 0.2's
`VGG` (without its last ReLU, as frechet_audio_distance / audioldm_eval run it) with its numpy frontend
`vggish_input.waveform_to_examples`, timed two ways: one clip per forward (how the FAD packages call
it) and all clips' patches in batches of --batch clips; the faster of the two is the PyTorch figure.
The JAX side is `imgen_jax.eval.networks.VGGishEmbedder`: frontend + network in one jitted program at
a fixed batch of --batch clips (compiled once). Weights: random torchvggish weights, converted with
convert.vggish_weights and loaded from the converted file.

CLAP: 100 clips (--clap-clips, default --clips) of 5 s at 48 kHz -> [512] audio embeddings. The
reference is laion_clap 1.1.7's non-fusion HTSAT-base + roberta-base CLAP with random weights
(`convert.reference_models.clap_model`, no download), run as `CLAP_Module.get_audio_embedding_from_data`
does it (`laion_clap_audio_embedding`: int16 quantisation, repeat-pad to 10 s, mel, HTSAT, projection;
the hook module itself cannot be imported without torchvision / wget), one call per batch of --batch
clips. The JAX side is `clap_scorer(load_clap(...), batch_size=--batch).embed_audio` on the file
written by `convert.clap_weights.convert_clap` (a checkpoint saved in the published layout, plus a
small synthetic tokenizer folder). Skipped, with the reason printed, where laion_clap or the CLAP port
is missing; the total is then VGGish alone.

PyTorch runs under torch.no_grad() with all CPU threads. Runs alternate between the sides (so
background load hits both alike); prints medians after warm-up, the JAX compile time separately, a
parity check, the machine's load average at start and end, the bound each network's matrix work puts
on the ratio (`_common.floor_lines`: the JAX program's dot / convolution FLOPs at the fp32 matmul rate
measured in the same run), and as its last line `speedup: X.XX`
(PyTorch seconds / JAX seconds over the networks timed).

    python bench/eval.py [--clips 100] [--clap-clips N] [--seconds 5] [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from _common import device_line, floor_lines, load_average, matmul_rates, matrix_flops, timed_once


def flops_per_clip(model, method, batch: int, samples: int) -> float:
    """Matrix FLOPs per clip of `method(model, wav [batch, samples])` as the JAX side compiles it."""
    import jax.numpy as jnp

    from imgen_jax.xla import jit_method

    return matrix_flops(jit_method(model, method), jnp.zeros((batch, samples), jnp.float32)) / batch


def vggish_sides(clips16, batch: int, tmp: str):
    """({side name: fn() -> embeddings}, the JAX embedder's first-call time, its matrix FLOPs per clip)."""
    import numpy as np
    import torch
    from torchvggish import vggish_input
    from torchvggish.torchvggish import _vgg

    from convert.vggish_weights import convert_vggish
    from imgen_jax.eval.networks import VGGishEmbedder

    model = _vgg(postprocess=False)
    model.embeddings = torch.nn.Sequential(*list(model.embeddings.children())[:-1])  # use_activation=False
    model.eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.dim() > 1:
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5)
            else:
                t.copy_(torch.rand(t.shape, generator=g) * 0.2 - 0.1)
    torch.save(model.state_dict(), os.path.join(tmp, "vggish.pth"))
    convert_vggish(os.path.join(tmp, "vggish.pth"), os.path.join(tmp, "vggish.safetensors"))
    jax_emb = VGGishEmbedder(os.path.join(tmp, "vggish.safetensors"), batch=batch)

    def torch_per_clip():
        with torch.no_grad():
            return [model(torch.from_numpy(vggish_input.waveform_to_examples(w, 16000, return_tensor=False)[:, None])
                          .float()).numpy() for w in clips16]

    def torch_batched():
        out = []
        with torch.no_grad():
            for s in range(0, len(clips16), batch):
                ex = [vggish_input.waveform_to_examples(w, 16000, return_tensor=False) for w in clips16[s:s + batch]]
                emb = model(torch.from_numpy(np.concatenate(ex)[:, None]).float()).numpy()
                out += np.split(emb, np.cumsum([len(e) for e in ex])[:-1])
        return out

    first = timed_once(lambda: jax_emb(clips16[:batch]))
    from imgen_jax.eval.nets.vggish import VGGish

    flops = flops_per_clip(jax_emb.model, VGGish.embed, batch, len(clips16[0]))
    sides = {"torch per clip": torch_per_clip, "torch batched": torch_batched, "jax": lambda: jax_emb(clips16)}
    return sides, first, flops


def clap_sides(clips48, batch: int, tmp: str):
    """({side: fn}, JAX first-call time, matrix FLOPs per clip) for CLAP, or (None, why it is skipped, 0)."""
    import importlib.util

    if not clips48:
        return None, "--clap-clips 0", 0.0
    if importlib.util.find_spec("imgen_jax.eval.nets.clap") is None:
        return None, "imgen_jax.eval.nets.clap is not in this build", 0.0
    try:
        from convert.clap_weights import convert_clap
        from convert.reference_models import clap_model, laion_clap_audio_embedding, save_clap_checkpoint, write_clap_tokenizer
    except ImportError as e:
        return None, f"needs convert.clap_weights.convert_clap and convert.reference_models.clap_model ({e})", 0.0
    if importlib.util.find_spec("laion_clap") is None:
        return None, "laion_clap is not installed (pip install --no-deps laion-clap==1.1.7)", 0.0

    from imgen_jax.eval.nets.clap import ClapModel, clap_scorer, load_clap

    ref = clap_model(seed=0)
    src = save_clap_checkpoint(ref, os.path.join(tmp, "clap.pt"))  # the published checkpoints' layout
    out = os.path.join(tmp, "clap.safetensors")
    convert_clap(src, write_clap_tokenizer(os.path.join(tmp, "roberta-base")), out)
    os.remove(src)
    model = load_clap(out)
    scorer = clap_scorer(model, batch_size=batch)

    def torch_hook():  # CLAP_Module.get_audio_embedding_from_data, one call per batch of clips
        return [laion_clap_audio_embedding(ref, clips48[s:s + batch]) for s in range(0, len(clips48), batch)]

    first = timed_once(lambda: scorer.embed_audio(clips48[:batch]))
    flops = flops_per_clip(model, ClapModel.embed_audio, batch, model.cfg.clip_samples)
    return {"torch hook": torch_hook, "jax": lambda: scorer.embed_audio(clips48)}, first, flops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=100)
    ap.add_argument("--clap-clips", type=int, default=None, help="CLAP clips (default: --clips)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    print(device_line(), f"| torch {torch.__version__} threads {torch.get_num_threads()}")
    print(load_average(), "at start (other processes on the machine slow both sides)")
    rng = np.random.default_rng(0)

    clap_clips = args.clips if args.clap_clips is None else args.clap_clips

    def clips(rate, count):
        n = int(args.seconds * rate)
        t = np.arange(n) / rate
        return [(0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
                for _ in range(count)]

    with tempfile.TemporaryDirectory() as tmp:
        nets, counts = {}, {"vggish": args.clips, "clap": clap_clips}
        vgg, first, flops = vggish_sides(clips(16000, args.clips), args.batch, tmp)
        nets["vggish"] = (vgg, first)
        work = {"vggish": flops * args.clips}
        clap, why, flops = clap_sides(clips(48000, clap_clips), args.batch, tmp)
        if clap is None:
            print(f"CLAP: skipped ({why})")
        else:
            nets["clap"] = (clap, why)
            work["clap"] = flops * clap_clips
        sizes = {"vggish": f"VGGish {args.clips} clips at 16 kHz", "clap": f"CLAP {clap_clips} clips at 48 kHz"}
        print(", ".join(sizes[net] for net in nets) + f"; {args.seconds:g} s each; batch {args.batch}")

        results = {net: {side: None for side in sides} for net, (sides, _) in nets.items()}
        for net, (sides, _) in nets.items():  # warm-up, and keep one output of each side for the parity check
            for side, fn in sides.items():
                results[net][side] = fn()
        times = {(net, side): [] for net, (sides, _) in nets.items() for side in sides}
        for _ in range(args.repeats):  # alternate the sides
            for net, (sides, _) in nets.items():
                for side, fn in sides.items():
                    t0 = time.perf_counter()
                    fn()
                    times[(net, side)].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}

    print(f"median of {args.repeats} runs after warm-up (compile = first call on one batch, not timed below):")
    torch_total = jax_total = 0.0
    fastest = {}
    for net, (sides, first) in nets.items():
        jax_s = med[(net, "jax")]
        torch_sides = {s: med[(net, s)] for s in sides if s != "jax"}
        best = min(torch_sides, key=torch_sides.get)
        for s, v in torch_sides.items():
            print(f"  {net:7s} {s:15s} {v:8.2f} s   ({counts[net] / v:7.1f} clips/s)")
        print(f"  {net:7s} {'jax':15s} {jax_s:8.2f} s   ({counts[net] / jax_s:7.1f} clips/s)   compile+first batch {first:.2f} s")
        print(f"  {net:7s} ratio {torch_sides[best] / jax_s:5.2f} (vs {best})")
        torch_total += torch_sides[best]
        jax_total += jax_s
        ref = np.concatenate([np.asarray(r).reshape(-1) for r in results[net][best]])
        got = np.concatenate([np.asarray(r).reshape(-1) for r in results[net]["jax"]])
        print(f"  {net:7s} parity: relative error {np.linalg.norm(got - ref) / np.linalg.norm(ref):.2e}")
        fastest[net] = (jax_s, torch_sides[best])
    print(load_average(), "at end")
    rates = matmul_rates()
    for net, (jax_s, torch_s) in fastest.items():
        # VGGish: the JAX side's Winograd convolutions do fewer FLOPs than torchvggish's direct ones
        for line in floor_lines(work[net], rates, jax_s, torch_s, net, same_work=net != "vggish"):
            print("  " + line)
    if len(fastest) > 1:
        for line in floor_lines(sum(work.values()), rates, jax_total, torch_total, "all", same_work=False):
            print("  " + line)
    print(f"speedup: {torch_total / jax_total:.2f}")


if __name__ == "__main__":
    main()
