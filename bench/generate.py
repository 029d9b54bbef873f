"""MusicGen decoding: imgen_jax.generate vs transformers' MusicgenForConditionalGeneration.generate.

Same random weights on both sides: the musicgen-small decoder (1024 x 24 layers, 16 heads, 4 codebooks
x 2048) with a tiny T5 text encoder (the decoder and its cross-attention see a realistic 12-token text
memory, projected by enc_to_dec_proj). Sampling with classifier-free guidance 3.0, top-k 250, float32,
--seconds of audio at 50 frames/s (5 s = 250 frames = 253 decode steps), at each --batch size.

transformers runs its own generate (text encoder, CFG batch of 2B, KV cache, logits processors,
multinomial sampling) under torch.no_grad() with all CPU threads; only its final EnCodec decode of the
tokens is stubbed out, so both sides time token generation alone. JAX is compiled ahead of time
(`compile_generate`, timed separately) and then runs one call of the compiled decode program.

Prints, per batch: seconds and decode steps/s of each side, the JAX compile time; the last line is
`speedup: X.XX` = PyTorch seconds / JAX seconds (excluding compile) at the first --batch.

    python bench/generate.py [--seconds 5] [--batch 1 4] [--layers 24]
"""

from __future__ import annotations

import argparse
import time

from _common import device_line, timed_once


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--text-len", type=int, default=12)
    ap.add_argument("--top-k", type=int, default=250)
    ap.add_argument("--guidance", type=float, default=3.0)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from transformers import (
        EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration, T5Config,
    )

    from convert.lm_weights import lm_from_hf
    from imgen_jax.generate import SamplingConfig, compile_generate, generate
    from imgen_jax.lm import MusicGenLM, abstract_lm
    from imgen_jax.weights import load_into

    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(device_line(), f"| torch {torch.__version__} threads {torch.get_num_threads()}")
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
        t0 = time.perf_counter()
        codes = np.asarray(generate(lm, memory, j_mask, sampling, key=jax.random.PRNGKey(B)))
        t_jax = time.perf_counter() - t0
        assert codes.shape == (B, K, frames) and codes.min() >= 0 and codes.max() < card

        def run_torch():
            with torch.no_grad():
                out = ref.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=args.top_k,
                                   guidance_scale=args.guidance, max_new_tokens=new_tokens)
            assert out.shape == (1, B, K, frames), out.shape

        t_torch = timed_once(run_torch)
        results[B] = (t_torch, t_jax)
        print(f"batch {B}: jax compile {compile_s:.2f} s")
        print(f"batch {B}: torch {t_torch:7.2f} s  {new_tokens / t_torch:6.2f} steps/s")
        print(f"batch {B}: jax   {t_jax:7.2f} s  {new_tokens / t_jax:6.2f} steps/s   ratio {t_torch / t_jax:.2f}")
    t_torch, t_jax = results[args.batch[0]]
    print(f"speedup: {t_torch / t_jax:.2f}")


if __name__ == "__main__":
    main()
