"""Overhead of Instruct-MusicGen's fusion path: an edit of N seconds vs plain generation of N seconds.

Same LM on both sides (random weights, musicgen-small shape by default: 1024 x 24 layers, 16 heads,
4 codebooks x 2048; --size large for MusicGen-large on an accelerator), same sampling (CFG 3.0,
top-k 250, seed 0), batch 1, 12-token text memory. The edit adds what Instruct-MusicGen adds: the
audio-fusion prefix (a pass of the condition through the LM's own layers, once per window) and the
gated prefix attention in every decoding step of every adapter layer, and the LoRA's q delta in every
step of every layer (its v delta is in the text values, once). Both sides are compiled before timing
(compile reported apart), then timed in turns (generate, edit, generate, ...); the load average is printed.

Last line: `fusion_overhead: X.XX` = edit seconds / generation seconds.

    python bench/edit.py [--seconds 10] [--size small|medium|large] [--repeats 2]
"""

from __future__ import annotations

import argparse

from _common import alternate, device_line, load_average, timed_once


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", default="small", choices=("small", "medium", "large"))
    ap.add_argument("--layers", type=int, default=None, help="override the layer count (quick runs)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ab-prefix", action="store_true",
                    help="also time the edit with the prefix duplicated for the two CFG halves (the layout before "
                         "2026-12-03), as a third alternating side")
    args = ap.parse_args()

    import dataclasses

    import jax.numpy as jnp
    import numpy as np

    from imgen_jax.instruct.edit import EditConfig, edit_tokens
    from imgen_jax.instruct.fusion import FusionConfig, init_adapters
    from imgen_jax.generate import SamplingConfig, generate
    from imgen_jax.models.lm import LMConfig, init_lm
    from imgen_jax.weights import load_into, module_weights

    print(device_line())
    cfg = LMConfig.preset(args.size)
    if args.layers:
        cfg = dataclasses.replace(cfg, num_layers=args.layers)
    lm = init_lm(cfg, seed=0)
    fcfg = FusionConfig.for_lm(cfg)
    adapters = init_adapters(fcfg, seed=1)
    flat = module_weights(adapters)
    rng = np.random.default_rng(0)
    flat = {k: (v + 0.02 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in flat.items()}
    load_into(adapters, flat, "bench")  # non-zero gates and LoRA B: every fusion path does work

    frames = int(args.seconds * 50)
    memory = jnp.asarray(rng.standard_normal((1, 12, cfg.dim)).astype(np.float32))
    cond = jnp.asarray(rng.integers(0, cfg.card, (1, cfg.num_codebooks, frames)), jnp.int32)
    sampling = SamplingConfig(num_frames=frames, guidance_scale=3.0, top_k=250, window_frames=None)
    window = min(frames, fcfg.pos_emb_frames - 1)
    edit_cfg = EditConfig(dataclasses.replace(sampling, num_frames=window), window_frames=window,
                          stride_frames=max(1, window // 2))

    def run_generate():
        return generate(lm, memory, None, sampling).block_until_ready()

    def run_edit():
        return edit_tokens(lm, adapters, cond, memory, edit_cfg).block_until_ready()

    from imgen_jax.instruct.fusion import InstructFusion

    shared_prefix = InstructFusion.for_guidance

    def duplicated_prefix(self):  # one copy of the prefix per CFG half
        if self.q is None:
            return self
        dup = lambda a: jnp.concatenate([a, a], axis=1)  # noqa: E731
        return dataclasses.replace(self, q=dup(self.q), k=dup(self.k), v=dup(self.v))

    def run_edit_duplicated():
        InstructFusion.for_guidance = duplicated_prefix
        try:
            return run_edit()
        finally:
            InstructFusion.for_guidance = shared_prefix

    sides = {"generate": run_generate, "edit": run_edit}
    if args.ab_prefix:
        sides["edit, prefix duplicated"] = run_edit_duplicated
    g_first, e_first = timed_once(run_generate), timed_once(run_edit)  # compile + first run
    if args.ab_prefix:
        timed_once(run_edit_duplicated)
    print(load_average(), "at start")
    med = alternate(sides, args.repeats, warmup=0)
    g, e = med["generate"], med["edit"]
    print(load_average(), "at end")
    steps = frames + cfg.num_codebooks
    print(f"model: {args.size} ({cfg.num_layers} layers x {cfg.dim}), {frames} frames ({steps} decode steps), batch 1, CFG")
    print(f"generate: {g:.2f} s ({steps / g:.1f} steps/s); first call incl. compile {g_first:.2f} s")
    print(f"edit:     {e:.2f} s ({steps / e:.1f} steps/s); first call incl. compile {e_first:.2f} s")
    if args.ab_prefix:
        d = med["edit, prefix duplicated"]
        print(f"edit with the prefix duplicated per CFG half: {d:.2f} s (shared prefix: {e / d:.2f} of it)")
    print(f"fusion_overhead: {e / g:.2f}")


if __name__ == "__main__":
    main()
