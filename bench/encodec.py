"""EnCodec encode + decode: imgen_jax vs transformers' EncodecModel, same random weights.

MusicGen's 32 kHz codec shape (SEANet 64 filters, ratios 8,5,4,4, 2-layer LSTM, 4 x 2048 RVQ)
on 10 s of mono audio at batch 1, float32. The transformers model gets random weights (its
own init, random codebooks) and is converted in-process by convert.encodec_weights. PyTorch
runs under torch.no_grad() with all CPU threads; JAX runs one jitted program for encode and
one for decode. Runs alternate between the two sides (so background load hits both alike);
prints per-part medians after warm-up, the JAX compile time separately, a parity check, and
as its last line `speedup: X.XX` (PyTorch seconds / JAX seconds, encode + decode).

    python bench/encodec.py [--seconds 10] [--batch 1] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from _common import device_line, load_average, timed_once


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    import jax.numpy as jnp
    import numpy as np
    import torch
    from transformers import EncodecConfig as HFEncodecConfig
    from transformers import EncodecModel as HFEncodecModel

    from convert.encodec_weights import encodec_from_hf
    from imgen_jax.models.encodec import EncodecModel, abstract_encodec
    from imgen_jax.xla import jit_method
    from imgen_jax.weights import load_into

    torch.set_num_threads(os.cpu_count() or 1)
    print(device_line(), f"| torch {torch.__version__} threads {torch.get_num_threads()}")
    print(load_average(), "at start (other processes on the machine slow both sides, PyTorch's threads usually more)")
    hf_cfg = HFEncodecConfig(
        sampling_rate=32000, audio_channels=1, num_filters=64, hidden_size=128, upsampling_ratios=[8, 5, 4, 4],
        codebook_size=2048, target_bandwidths=[2.2], num_lstm_layers=2, normalize=False, use_causal_conv=False,
        pad_mode="reflect", norm_type="weight_norm", use_conv_shortcut=False, compress=2, kernel_size=7,
        last_kernel_size=7, residual_kernel_size=3, num_residual_layers=1,
    )
    torch.manual_seed(0)
    ref = HFEncodecModel(hf_cfg).eval()
    n = int(args.seconds * hf_cfg.sampling_rate)
    wav = (0.1 * torch.randn(args.batch, 1, n, generator=torch.Generator().manual_seed(1))).float()
    with torch.no_grad():  # random codebooks at the latent's scale (transformers initialises them to zeros)
        latent = ref.encoder(wav[..., : hf_cfg.sampling_rate])
        scale = latent.std()
        for layer in ref.quantizer.layers:
            layer.codebook.embed.copy_(scale * torch.randn(layer.codebook.embed.shape))
            scale = scale * 0.5
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    cfg, flat = encodec_from_hf(sd, hf_cfg.to_dict(), "bench")
    model = abstract_encodec(cfg)
    load_into(model, flat, "bench")
    encode_jit = jit_method(model, EncodecModel.encode)  # the library's jit (imgen_jax.xla compiler options)
    decode_jit = jit_method(model, EncodecModel.decode)
    wav_j = jnp.asarray(wav.numpy())
    print(f"audio: batch {args.batch} x {n} samples ({args.seconds:g} s at {hf_cfg.sampling_rate} Hz), "
          f"codes [{args.batch}, {cfg.num_codebooks}, {cfg.num_frames(n)}]")

    def torch_encode():
        with torch.no_grad():
            return ref.encode(wav, bandwidth=2.2).audio_codes

    def torch_decode(codes):
        with torch.no_grad():
            return ref.decode(codes, [None]).audio_values

    def jax_encode():
        return encode_jit(wav_j).block_until_ready()

    def jax_decode(codes):
        return decode_jit(codes).block_until_ready()

    first_enc = timed_once(jax_encode)
    codes_j = jax_encode()
    first_dec = timed_once(lambda: jax_decode(codes_j))
    codes_t = torch_encode()
    torch_decode(codes_t)  # warm-up
    jax_decode(codes_j)

    times: dict[str, list[float]] = {"torch encode": [], "torch decode": [], "jax encode": [], "jax decode": []}

    def clock(name, fn):
        t0 = time.perf_counter()
        out = fn()
        times[name].append(time.perf_counter() - t0)
        return out

    for _ in range(args.repeats):  # alternate the sides
        clock("torch encode", torch_encode)
        clock("torch decode", lambda: torch_decode(codes_t))
        clock("jax encode", jax_encode)
        clock("jax decode", lambda: jax_decode(codes_j))
    med = {k: statistics.median(v) for k, v in times.items()}
    enc_run, dec_run = med["jax encode"], med["jax decode"]
    print(f"jax compile: encode {first_enc - enc_run:.2f} s, decode {first_dec - dec_run:.2f} s "
          f"(first call minus median run; first calls {first_enc:.2f} s / {first_dec:.2f} s)")
    print(f"median of {args.repeats} runs after warm-up:")
    for part in ("encode", "decode"):
        t, j = med[f"torch {part}"], med[f"jax {part}"]
        print(f"  {part:7s} torch {t * 1e3:8.1f} ms   jax {j * 1e3:8.1f} ms   ratio {t / j:5.2f}")
    torch_total = med["torch encode"] + med["torch decode"]
    jax_total = enc_run + dec_run
    print(f"  total   torch {torch_total * 1e3:8.1f} ms   jax {jax_total * 1e3:8.1f} ms")

    codes_np, codes_t_np = np.asarray(codes_j), codes_t[0].numpy()
    audio_t = torch_decode(codes_t).numpy()
    audio_j = np.asarray(jax_decode(jnp.asarray(codes_t_np, jnp.int32)))
    print(f"parity: codes equal {float((codes_np == codes_t_np).mean()) * 100:.2f}%, decoded audio max |diff| "
          f"{float(np.abs(audio_j - audio_t).max()):.2e} (max |audio| {float(np.abs(audio_t).max()):.2e})")
    print(load_average(), "at end")
    print(f"speedup: {torch_total / jax_total:.2f}")


if __name__ == "__main__":
    main()
