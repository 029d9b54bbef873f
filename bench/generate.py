"""MusicGen decoding: imgen_jax.generate vs transformers' MusicgenForConditionalGeneration.generate.

Same random weights on both sides: the musicgen-small decoder (1024 x 24 layers, 16 heads, 4 codebooks
x 2048) with a tiny T5 text encoder (the decoder and its cross-attention see a realistic 12-token text
memory, projected by enc_to_dec_proj). Sampling with classifier-free guidance 3.0, top-k 250, float32,
--seconds of audio at 50 frames/s (5 s = 250 frames = 253 decode steps), at each --batch size.

transformers runs its own generate (text encoder, CFG batch of 2B, KV cache, logits processors,
multinomial sampling) under torch.no_grad(); only its final EnCodec decode of the tokens is stubbed out,
so both sides time token generation alone. It is warmed up with a short generate, then timed once with
torch's default thread count (all cores) and once with 1 thread: on a machine shared with other work,
OpenMP's multi-threaded kernels can slow down several-fold, so PyTorch's time is the better of the two.
JAX is compiled ahead of time (`compile_generate`, timed separately) and then timed on one call of the
compiled decode program, between the two PyTorch runs.

Prints, per batch: seconds and decode steps/s of each side, the JAX compile time, the load average, and
the decode loop's weight-read rate next to the machine's matrix-vector ceiling measured in the same run
(x [2B, K] @ W [K, N] over the step's weight shapes) and the fraction of it reached, counting the weights
alone and then the weights plus the keys and values of the steps decoded so far (reads no decode can skip);
the last line is `speedup: X.XX` = PyTorch seconds / JAX seconds (excluding compile) at the first --batch.

    python bench/generate.py [--seconds 5] [--batch 1 4] [--layers 24] [--torch-threads N ...]
    python bench/generate.py --size large --compile-only [--seconds 10]   # compile time of the MusicGen-large
        decode program (abstract weights, nothing run; last line `compile_s: X`)
"""

from __future__ import annotations

import argparse
import os

from _common import device_line, timed_once

from imgen_jax import vocab


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def decode_weight_shapes(cfg, rows: int | None = None, text_len: int | None = None) -> list[tuple[int, int]]:
    """[K, N] shapes of the weights one decode step reads: per layer the self-attention in/out projections,
    the cross-attention query / out projections (the text keys / values are computed once, before the
    loop) and the MLP, then the K output heads. With rows and text_len: what imgen_jax's decode reads, whose
    cross-attention is folded with the text when that reads fewer bytes (`models.lm.folds_cross_attention`:
    then rows x H x L x dim numbers each for the query and out sides, written [dim, rows x H x L])."""
    from imgen_jax.models.lm import folds_cross_attention

    d, f = cfg.dim, cfg.ffn_dim
    cross = [(d, d), (d, d)]
    if rows is not None and folds_cross_attention(rows, text_len, cfg):
        cross = [(d, rows * cfg.num_heads * text_len)] * 2
    per_layer = [(d, 3 * d), (d, d), *cross, (d, f), (f, d)]
    return per_layer * cfg.num_layers + [(d, cfg.card)] * cfg.num_codebooks


def matvec_ceiling(shapes: list[tuple[int, int]], rows: int, repeats: int = 5) -> tuple[float, float]:
    """(seconds, GB/s) of the machine's matrix-vector ceiling for a decode step: x [rows, K] @ W [K, N] for
    every weight shape of the step, one jitted program, float32 (the weights read once per call), compiled
    with the decode program's own XLA options (imgen_jax.xla.jit: XLA's default YNNPACK dots read about 20%
    slower here, so a plain jax.jit probe would understate the ceiling)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from _common import median_seconds
    from imgen_jax.xla import jit

    rng = np.random.default_rng(0)
    ws = [jnp.asarray(rng.standard_normal((k, n), np.float32)) for k, n in shapes]
    xs = {k: jnp.asarray(rng.standard_normal((rows, k), np.float32)) for k in {k for k, _ in shapes}}
    probe = jit(lambda xs, ws: [xs[w.shape[0]] @ w for w in ws])
    jax.block_until_ready(probe(xs, ws))
    t = median_seconds(lambda: jax.block_until_ready(probe(xs, ws)), repeats)
    nbytes = sum(4 * k * n for k, n in shapes)
    del ws
    return t, nbytes / t / 1e9


def _compile_only(args) -> None:
    """Compile (lower + XLA compile, nothing run) the decode program of a MusicGen size from abstract weights."""
    import time

    import numpy as np

    from imgen_jax.generate import SamplingConfig, compile_generate
    from imgen_jax.models.lm import LMConfig, abstract_lm

    cfg = LMConfig.preset(args.size)
    lm = abstract_lm(cfg)  # ShapeDtypeStruct weights: nothing is allocated or read
    B, frames = args.batch[0], int(args.seconds * 50)
    memory = np.zeros((B, args.text_len, cfg.dim), np.float32)
    sampling = SamplingConfig(num_frames=frames, guidance_scale=args.guidance, top_k=args.top_k, window_frames=None)
    print(device_line(), f"| musicgen-{args.size} decoder {cfg.num_layers} x {cfg.dim}, {args.seconds:g} s = {frames} "
          f"frames, batch {B}, CFG {args.guidance}, top-k {args.top_k}; load average {_load()}")
    t0 = time.perf_counter()
    compile_generate(lm, memory, None, sampling)
    print(f"compile_s: {time.perf_counter() - t0:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--text-len", type=int, default=12)
    ap.add_argument("--top-k", type=int, default=vocab.GENERATE_TOP_K)
    ap.add_argument("--guidance", type=float, default=vocab.GUIDANCE_SCALE)
    ap.add_argument("--torch-threads", type=int, nargs="+", default=None,
                    help="torch thread counts to time (default: torch's default, then 1)")
    ap.add_argument("--size", choices=("small", "medium", "large"), default="small",
                    help="with --compile-only: the MusicGen size whose decode program is compiled")
    ap.add_argument("--compile-only", action="store_true",
                    help="only compile the decode program of --size for --seconds at the first --batch (no peer)")
    args = ap.parse_args()
    if args.compile_only:
        _compile_only(args)
        return

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from transformers import (
        EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration, T5Config,
    )

    from convert.lm_weights import lm_from_hf
    from imgen_jax.generate import SamplingConfig, compile_generate, generate
    from imgen_jax.models.lm import MusicGenLM, abstract_lm
    from imgen_jax.weights import load_into

    default_threads = max(1, torch.get_num_threads())
    thread_counts = args.torch_threads or sorted({default_threads, 1}, reverse=True)
    print(device_line(), f"| torch {torch.__version__}, timed with threads {thread_counts}")
    dim, card, K = 1024, 2048, 4
    decoder = MusicgenDecoderConfig(
        hidden_size=dim, ffn_dim=4 * dim, num_hidden_layers=args.layers, num_attention_heads=16, vocab_size=card,
        num_codebooks=K, pad_token_id=card, bos_token_id=card, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, max_position_embeddings=2048,
    )
    text = T5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0)
    codec = EncodecConfig(sampling_rate=32000, audio_channels=1, num_filters=4, hidden_size=8,
                          upsampling_ratios=[8, 5, 4, 4], codebook_size=card, target_bandwidths=[2.2],
                          num_lstm_layers=1, normalize=False, use_causal_conv=False)
    torch.manual_seed(0)
    ref = MusicgenForConditionalGeneration(
        MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=codec.to_dict(), decoder=decoder.to_dict())
    ).eval()

    class _Codes:  # stands in for the EnCodec output: generate's last step decodes the tokens to audio
        def __init__(self, codes):
            self.audio_values = codes

    ref.audio_encoder.decode = lambda codes, *a, **k: _Codes(codes)

    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()
          if not k.startswith(("text_encoder.", "audio_encoder."))}
    cfg, flat = lm_from_hf(sd, decoder.to_dict(), "bench", text_dim=text.d_model)
    lm: MusicGenLM = abstract_lm(cfg)
    load_into(lm, flat, "bench")

    frames = int(args.seconds * 50)
    new_tokens = frames + K - 1  # transformers counts pattern steps: frames = max_new_tokens + 1 - K
    sampling = SamplingConfig(num_frames=frames, guidance_scale=args.guidance, top_k=args.top_k, window_frames=None)
    print(f"decoder {args.layers} x {dim}, text memory {args.text_len} tokens, CFG {args.guidance}, "
          f"top-k {args.top_k}, sampling; {args.seconds:g} s = {frames} frames = {new_tokens} decode steps")

    results = {}
    for B in args.batch:
        ids = torch.randint(2, text.vocab_size, (B, args.text_len), generator=torch.Generator().manual_seed(B))
        mask = torch.ones(B, args.text_len, dtype=torch.long)
        with torch.no_grad():
            hidden = ref.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        j_mask = jnp.asarray(mask.numpy())
        memory = lm.text_memory(jnp.asarray(hidden.numpy()), j_mask)

        compile_s = timed_once(lambda: compile_generate(lm, memory, j_mask, sampling))

        def run_torch(steps=new_tokens, n_frames=frames):
            with torch.no_grad():
                out = ref.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=args.top_k,
                                   guidance_scale=args.guidance, max_new_tokens=steps)
            assert out.shape == (1, B, K, n_frames), out.shape

        def run_jax():
            codes = np.asarray(generate(lm, memory, j_mask, sampling, key=jax.random.PRNGKey(B)))
            assert codes.shape == (B, K, frames) and codes.min() >= 0 and codes.max() < card

        print(f"batch {B}: jax compile {compile_s:.2f} s  (load average {_load()})")
        torch.set_num_threads(thread_counts[0])
        run_torch(8, 8 + 1 - K)  # warm-up
        t_torch = {}
        for i, n in enumerate(thread_counts):
            torch.set_num_threads(n)
            t_torch[n] = timed_once(run_torch)
            print(f"batch {B}: torch {t_torch[n]:7.2f} s  {new_tokens / t_torch[n]:6.2f} steps/s  "
                  f"({n} thread{'s' if n > 1 else ''}; load average {_load()})")
            if i == 0:
                t_jax = timed_once(run_jax)
                print(f"batch {B}: jax   {t_jax:7.2f} s  {new_tokens / t_jax:6.2f} steps/s  (load average {_load()})")
        torch.set_num_threads(default_threads)
        best = min(t_torch.values())
        results[B] = (best, t_jax)
        print(f"batch {B}: ratio {best / t_jax:.2f} (best torch {best:.2f} s / jax {t_jax:.2f} s)")
        rows = 2 * B if sampling.cfg else B
        shapes = decode_weight_shapes(lm.cfg, rows, args.text_len)  # what our decode reads
        step_bytes = sum(4 * k * n for k, n in shapes)
        torch_bytes = sum(4 * k * n for k, n in decode_weight_shapes(lm.cfg))
        rate = step_bytes * new_tokens / t_jax / 1e9
        # the attention's matrix-vector reads a step cannot avoid: every layer's keys and values of the steps so far
        kv_bytes = cfg.num_layers * 2 * rows * cfg.dim * 4 * (new_tokens + 1) / 2  # mean over the steps
        kv_rate = (step_bytes + kv_bytes) * new_tokens / t_jax / 1e9
        t_probe, ceiling = matvec_ceiling(shapes, rows)
        print(f"batch {B}: decode loop reads {step_bytes / 1e9:.2f} GB of weights per step (torch "
              f"{torch_bytes / 1e9:.2f} GB): {rate:.1f} GB/s; matrix-vector ceiling (x [{rows}, K] @ W [K, N], the "
              f"step's weight shapes, one jit): {ceiling:.1f} GB/s ({t_probe * 1000:.1f} ms); fraction "
              f"{rate / ceiling:.2f}; with the KV cache filled so far (mean {kv_bytes / 1e6:.0f} MB per step) "
              f"{kv_rate:.1f} GB/s, fraction {kv_rate / ceiling:.2f}  (load average {_load()})")
        print(f"batch {B}: per step jax {t_jax / new_tokens * 1000:.1f} ms, of which the weight reads at the ceiling "
              f"{t_probe * 1000:.1f} ms; torch reads its weights at {torch_bytes * new_tokens / best / 1e9:.1f} GB/s; "
              f"a decode at the ceiling would be {best / (new_tokens * t_probe):.2f}x torch")
    t_torch, t_jax = results[args.batch[0]]
    print(f"speedup: {t_torch / t_jax:.2f}")


if __name__ == "__main__":
    main()
