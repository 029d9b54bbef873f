"""End-to-end demo on a machine with no model weights: PyTorch MusicGen (tiny, random weights)
in Hugging Face layout -> `imgen convert` -> imgen_jax API (no torch at run time).

    python examples/demo.py --out out/demo

Writes OUT/hf (the PyTorch model), OUT/model (the converted directory), OUT/input.wav and
OUT/roundtrip.wav (audio through EnCodec encode + decode), OUT/generated.wav + .png
(`imgen generate`), OUT/instruct (the model with random Instruct-MusicGen adapters, imported from
an official-format adapter file) and OUT/edited.wav + OUT/before_after.png (`imgen edit`), and
prints how far the JAX results are from the PyTorch ones. The weights are random: the audio is
noise-like; the demo shows the pipeline, not music.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/demo", help="output folder (replaced if it exists)")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)

    import soundfile as sf
    import torch

    from convert.reference_models import musicgen_model, train_tiny_spiece

    print("1/6 building a tiny MusicGen with random weights in Hugging Face layout (transformers)")
    model = musicgen_model(dim=64, layers=2, heads=4, card=64)
    model.save_pretrained(os.path.join(out, "hf"))
    train_tiny_spiece(os.path.join(out, "hf", "spiece.model"))

    print("2/6 imgen convert")
    subprocess.run([sys.executable, "-m", "imgen_jax.cli", "convert", os.path.join(out, "hf"),
                    "--out", os.path.join(out, "model")], check=True)

    print("3/6 loading the converted model with imgen_jax (no torch) and running it")
    from imgen_jax.api import load_musicgen

    mg = load_musicgen(os.path.join(out, "model"))
    sr = mg.sample_rate
    t = np.arange(2 * sr) / sr
    wav = (0.3 * np.sin(2 * np.pi * 110 * t) * np.exp(-t)).astype(np.float32)[None, None]
    codes = np.asarray(mg.encode_audio(wav))
    audio = np.asarray(mg.decode_codes(codes))
    sf.write(os.path.join(out, "input.wav"), wav[0, 0], sr)
    sf.write(os.path.join(out, "roundtrip.wav"), audio[0, 0], sr)
    hidden, mask = mg.encode_text(["Music piece. Instruct: Add drums.", "lofi beat"])
    logits, valid = mg.lm_logits(np.concatenate([codes, codes]), hidden, mask)
    print(f"    audio {wav.shape} at {sr} Hz -> codes {codes.shape} -> audio {audio.shape}")
    print(f"    text -> hidden {tuple(hidden.shape)}; LM logits {tuple(logits.shape)}, {int(np.asarray(valid).sum())} valid")

    print("4/6 the same computations in PyTorch, for comparison")
    with torch.no_grad():
        ref_codes = model.audio_encoder.encode(torch.from_numpy(wav)).audio_codes[0].numpy()
        ref_hidden = model.text_encoder(
            input_ids=torch.from_numpy(np.asarray(mg.tokenizer(["Music piece. Instruct: Add drums.", "lofi beat"])[0]).astype(np.int64)),
            attention_mask=torch.from_numpy(np.asarray(mask).astype(np.int64)),
        ).last_hidden_state.numpy()
    print(f"    EnCodec codes equal to PyTorch: {np.array_equal(ref_codes, codes)}")
    print(f"    T5 max |jax - torch|: {np.abs(ref_hidden - np.asarray(hidden)).max():.2e}")

    print("5/6 imgen generate")
    imgen = [sys.executable, "-m", "imgen_jax.cli"]
    subprocess.run(imgen + ["generate", "--model", os.path.join(out, "model"), "--prompt", "lofi hip hop beat",
                            "--seconds", "2", "--out", os.path.join(out, "generated.wav"),
                            "--spectrogram", os.path.join(out, "generated.png")], check=True)

    print("6/6 Instruct-MusicGen: random adapters in the official format -> imgen convert --adapters -> imgen edit")
    from convert.instruct_ckpt import export_official_adapters
    from imgen_jax.instruct.fusion import FusionConfig, init_adapters
    from imgen_jax.weights import module_weights

    fcfg = FusionConfig.for_lm(mg.lm.cfg)
    rng = np.random.default_rng(0)
    flat = {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float32)
            for k, v in module_weights(init_adapters(fcfg, seed=0)).items()}
    export_official_adapters(os.path.join(out, "adapters.pt"), fcfg, flat)
    subprocess.run(imgen + ["convert", os.path.join(out, "hf"), "--adapters", os.path.join(out, "adapters.pt"),
                            "--out", os.path.join(out, "instruct")], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(imgen + ["edit", "--model", os.path.join(out, "instruct"), "--input", os.path.join(out, "input.wav"),
                            "--instruction", "remove drums", "--out", os.path.join(out, "edited.wav"),
                            "--spectrogram", os.path.join(out, "before_after.png")], check=True)
    print(f"done: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
