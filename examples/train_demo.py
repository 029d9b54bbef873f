"""Build the tiny random base model of the training demo (configs/demo.py) as a converted directory.

    python examples/train_demo.py --out out/train_demo/base

A transformers MusicGen with random weights (LM 64 wide x 2 layers, 4 heads, card 64; EnCodec at 8 kHz
with hop 80 = 100 frames/s and 4 codebooks of 64; a tiny T5 with a tiny sentencepiece tokenizer),
saved in Hugging Face layout and converted with `imgen convert` (no torch after that). Small enough
that configs/demo.py trains its adapters on 2 CPU cores in a few minutes. examples/train_demo.sh runs
the whole job: mini-Slakh -> this model -> train.py -> imgen edit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/train_demo/base", help="converted model directory to write (replaced)")
    args = ap.parse_args()
    from transformers import EncodecConfig

    from convert.reference_models import musicgen_model, tiny_t5_config, train_tiny_spiece

    codec = EncodecConfig(
        sampling_rate=8000, audio_channels=1, num_filters=8, hidden_size=16, upsampling_ratios=[8, 5, 2],
        num_residual_layers=1, codebook_size=64, target_bandwidths=[4 * 100 * 6 / 1000], num_lstm_layers=1,
        normalize=False, use_causal_conv=False, pad_mode="reflect", norm_type="weight_norm", use_conv_shortcut=False,
        compress=2, kernel_size=7, last_kernel_size=7, residual_kernel_size=3,
    )
    model = musicgen_model(dim=64, layers=2, heads=4, card=64, text_config=tiny_t5_config(), audio_config=codec)
    with tempfile.TemporaryDirectory() as tmp:
        hf = os.path.join(tmp, "hf")
        model.save_pretrained(hf)
        train_tiny_spiece(os.path.join(hf, "spiece.model"))
        out = os.path.abspath(args.out)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        subprocess.run([sys.executable, "-m", "imgen_jax.cli", "convert", hf, "--out", out], check=True, cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
