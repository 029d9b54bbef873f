"""MusicGen LM teacher-forced forward: imgen_jax vs transformers, same random weights, one run.

musicgen-small decoder shape (1024 x 24 layers, 16 heads, 4 codebooks x 2048) on
batch 2 x 250 pattern steps with a 12-token text memory. Both sides compute the full
logits [B, K, S, card] in float32. The sides run in turns (torch, jax, torch, ...); prints per-side
medians after warm-up, the load average, the JAX compile
time separately, the bound the matrix work puts on the ratio (`floor_lines`), and as its last line `speedup: X.XX` (PyTorch seconds / JAX seconds).

    python bench/lm_forward.py [--batch 2] [--steps 250] [--repeats 5] [--layers 24]
"""

from __future__ import annotations

import argparse

from _common import alternate, device_line, floor_lines, load_average, matmul_rates, matrix_flops, timed_once


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--text-len", type=int, default=12)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import jax.numpy as jnp
    import numpy as np
    import torch
    from transformers import MusicgenDecoderConfig, MusicgenForCausalLM

    from convert.lm_weights import lm_from_hf
    from imgen_jax.xla import jit_method
    from imgen_jax.models.lm import MusicGenLM, abstract_lm
    from imgen_jax.weights import load_into

    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(device_line(), f"| torch {torch.__version__} threads {torch.get_num_threads()}")
    dim, card, K = 1024, 2048, 4
    hf_cfg = MusicgenDecoderConfig(
        hidden_size=dim, ffn_dim=4 * dim, num_hidden_layers=args.layers, num_attention_heads=16, vocab_size=card,
        num_codebooks=K, pad_token_id=card, bos_token_id=card, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0,
    )
    torch.manual_seed(0)
    ref = MusicgenForCausalLM(hf_cfg).eval()
    sd = {"decoder." + k: v.detach().numpy() for k, v in ref.state_dict().items()}
    cfg, flat = lm_from_hf(sd, hf_cfg.to_dict(), "bench")
    lm: MusicGenLM = abstract_lm(cfg)
    load_into(lm, flat, "bench")

    B, S, L = args.batch, args.steps, args.text_len
    rng = np.random.default_rng(0)
    seq = rng.integers(0, card + 1, (B, K, S))
    memory = rng.standard_normal((B, L, dim)).astype(np.float32)

    t_seq, t_mem = torch.from_numpy(seq).reshape(B * K, S), torch.from_numpy(memory)

    def torch_fwd():
        with torch.inference_mode():
            return ref(input_ids=t_seq, encoder_hidden_states=t_mem).logits

    forward = jit_method(lm, lambda m, seq, memory: m(seq, memory))  # the runtime's jit path (imgen_jax.api)
    j_seq, j_mem = jnp.asarray(seq, jnp.int32), jnp.asarray(memory)
    compile_s = timed_once(lambda: forward(j_seq, j_mem).block_until_ready())

    ours = np.asarray(forward(j_seq, j_mem))
    theirs = torch_fwd().reshape(B, K, S, card).numpy()
    err = float(np.abs(ours - theirs).max())

    print(load_average(), "at start")
    med = alternate({"torch": torch_fwd, "jax": lambda: forward(j_seq, j_mem).block_until_ready()}, args.repeats)
    t_torch, t_jax = med["torch"], med["jax"]
    print(load_average(), "at end")
    print(f"shape: batch {B} x {S} steps, {args.layers} layers x {dim}; max |jax - torch| = {err:.2e}")
    print(f"jax compile (first call): {compile_s:.2f} s")
    print(f"torch forward: {t_torch * 1000:.1f} ms (median of {args.repeats}, sides alternated)")
    print(f"jax forward:   {t_jax * 1000:.1f} ms (median of {args.repeats}, sides alternated)")
    for line in floor_lines(matrix_flops(forward, j_seq, j_mem), matmul_rates(), t_jax, t_torch):
        print(line)
    print(f"speedup: {t_torch / t_jax:.2f}")


if __name__ == "__main__":
    main()
