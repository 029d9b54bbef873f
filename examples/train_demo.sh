#!/usr/bin/env bash
# The training job end to end on a fresh machine, CPU only, a few minutes on 2 cores:
#   1. render mini-Slakh (Bach chorales as Piano / Guitar / Bass / Drums stems, Slakh2100 layout)
#   2. build a tiny random MusicGen and convert it (examples/train_demo.py)
#   3. train the Instruct-MusicGen adapters on it (train.py --config=configs/demo.py)
#   4. edit a validation mix with the trained model (imgen edit)
#   5. evaluate it on the test split against the identity / oracle yardsticks (imgen eval)
# Usage: examples/train_demo.sh [OUT]   (default out/train_demo; replaced)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-out/train_demo}"
rm -rf "$OUT"
mkdir -p "$OUT"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

stamp "1/5 mini-Slakh -> $OUT/mini_slakh"
python -m imgen_jax.cli data mini-slakh --out "$OUT/mini_slakh" --tracks 20 --sample-rate 8000

stamp "2/5 tiny random base model -> $OUT/base"
python examples/train_demo.py --out "$OUT/base" > /dev/null

stamp "3/5 training (configs/demo.py) -> $OUT/run"
python train.py --config=configs/demo.py --config.model.base_dir="$OUT/base" \
    --config.data.dir="$OUT/mini_slakh" --config.workdir="$OUT/run"
python - "$OUT/run/metrics.jsonl" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
train = [r["loss"] for r in recs if r["kind"] == "train"]
evals = [(r["step"], round(r["loss"], 3)) for r in recs if r["kind"] == "eval"]
print(f"train loss: first 10 steps {sum(train[:10]) / 10:.3f} -> last 10 steps {sum(train[-10:]) / 10:.3f}; "
      f"validation loss by step: {evals}")
PY

stamp "4/5 imgen edit with the trained model -> $OUT/edited.wav"
MIX=$(ls "$OUT"/mini_slakh/validation/*/mix.flac | head -n 1)
python -m imgen_jax.cli edit --model "$OUT/run/model" --input "$MIX" --instruction "add drums" \
    --out "$OUT/edited.wav" --spectrogram "$OUT/edited.png" --top-k 32 --window-frames 200 --stride-frames 100
stamp "5/5 imgen eval (remove, 6 test clips of 2 s) -> $OUT/eval"
python -m imgen_jax.cli eval --model "$OUT/run/model" --data "$OUT/mini_slakh" --task remove --n 6 --batch 3 \
    --clip-seconds 2 --out "$OUT/eval" --no-progress
stamp "done: $OUT (samples during training in $OUT/run/samples, TensorBoard logs in $OUT/run/tb)"
