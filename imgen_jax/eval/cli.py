"""The `imgen eval` subcommand (registered by imgen_jax.cli.build_parser through `add_parser`)."""

from __future__ import annotations

import argparse

from imgen_jax import vocab

EVAL_HELP = """\
Evaluate instructed edits on a deterministic set of examples drawn from a Slakh2100, MoisesDB,
MUSDB18-HQ or stems-folder dataset (imgen_jax.data.make_eval_set; --layout, default detected)
with the Instruct-MusicGen paper's metrics: SI-SDR and SI-SDRi (remove / extract), SSIM of mel spectrograms, mel L1, and FAD per embedder (built-in:
`encodec` = the model's EnCodec latents, `logmel` = log-mel frames; plug-ins: module:factory,
file.py:factory[=ARG]). The paper's networks, in JAX, from converted weights files:
  --vggish FILE   FAD on VGGish embeddings (column fad_vggish, the paper's FAD)
  --cnn14 FILE    KL on PANNs Cnn14 logits (kl_softmax, kl_sigmoid: audioldm_eval's KL, KL_Sigmoid)
  --clap FILE     CLAP score (clap; FILE or a plug-in module:factory[=ARG])
  --demucs FILE   P-Demucs (p_demucs) and, for remove / extract, the htdemucs baseline row
FILE comes from the converters (e.g. python -m convert.vggish_weights vggish-10086976.pth
vggish.safetensors); PyTorch checkpoints are not read directly (the runtime never imports torch).
The table has one row per system: model (the edit), identity (output = input), oracle
(output = ground truth) and htdemucs (with --demucs), with the number of examples each row
averages. Written to OUT: inputs/, targets/, <system>/<id>.wav, results.jsonl, table.csv,
table.json, table.png, tests.csv. Every cell gets a 95% bootstrap confidence interval and the
model row a paired test against each other row (Wilcoxon signed-rank per example metric, paired
bootstrap for FAD), seed fixed. Rerunning with the same OUT resumes: finished edits and scores
are not recomputed.
"""


def add_parser(sub) -> argparse.ArgumentParser:
    """Add `eval` to an argparse subparsers object."""
    v = sub.add_parser("eval", help="evaluate edits with the paper's metrics (table + chart)", description=EVAL_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("--model", required=True, help="converted model directory with adapters")
    v.add_argument("--data", required=True, help="dataset root: Slakh2100 (e.g. `imgen data mini-slakh`), MoisesDB, "
                   "MUSDB18-HQ or a folder of stems (see --layout)")
    v.add_argument("--task", required=True, help="add, remove or extract")
    v.add_argument("--n", type=int, required=True, help="number of examples")
    v.add_argument("--batch", type=int, default=4, help="examples edited together")
    v.add_argument("--out", default=None, help="output directory (default: imgen-eval-TASK); reuse it to resume")
    v.add_argument("--seed", type=int, default=0, help="seed of the example draw and of the edits")
    v.add_argument("--split", default="test")
    v.add_argument("--clip-seconds", type=float, default=5.0)
    v.add_argument("--stems", default="4_stems", help="4_stems or all")
    v.add_argument("--embedder", action="append", default=None,
                   help="FAD embedder (repeatable; default: encodec and logmel): NAME, module:factory or file.py:factory[=ARG]")
    v.add_argument("--vggish", default=None, metavar="FILE", help="converted VGGish weights: the paper's FAD (fad_vggish)")
    v.add_argument("--cnn14", default=None, metavar="FILE", help="converted PANNs Cnn14 weights: KL (kl_softmax, kl_sigmoid)")
    v.add_argument("--clap", default=None,
                   help="converted LAION-CLAP weights file, or a CLAP plug-in module:factory[=ARG]: the CLAP score")
    v.add_argument("--demucs", default=None, metavar="FILE",
                   help="converted HTDemucs weights: P-Demucs and the htdemucs baseline row (remove / extract)")
    v.add_argument("--classifier", default=None, help="audio classifier plug-in module:factory[=ARG] for KL "
                   "(instead of --cnn14)")
    v.add_argument("--guidance", type=float, default=vocab.GUIDANCE_SCALE)
    v.add_argument("--top-k", type=int, default=vocab.EDIT_TOP_K,
                   help=f"top-k sampling of the edits (official: {vocab.EDIT_TOP_K})")
    v.add_argument("--window-frames", type=int, default=vocab.EVAL_WINDOW_FRAMES)
    v.add_argument("--stride-frames", type=int, default=vocab.EVAL_STRIDE_FRAMES)
    v.add_argument("--resamples", type=int, default=1000,
                   help="bootstrap resamples of the 95%% intervals and the FAD paired tests (seed fixed: 0)")
    v.add_argument("--no-stats", action="store_true", help="no intervals and no paired tests (tests.csv not written)")
    v.add_argument("--layout", default="auto", help="dataset layout of --data: auto, slakh, moisesdb, musdb or stems")
    v.add_argument("--no-progress", action="store_true", help="no progress bars")
    v.set_defaults(func=run)
    return v


def plugin_specs(args: argparse.Namespace) -> dict:
    """EvalOptions' plug-in fields from the flags: --vggish / --cnn14 / --clap FILE / --demucs become the
    registered plug-ins of imgen_jax.eval.networks (NAME=FILE); --embedder / --classifier / --clap SPEC
    stay plug-in specs."""
    import os

    from imgen_jax.errors import ImgenError

    embedders = tuple(args.embedder) if args.embedder else ("encodec", "logmel")
    if args.vggish:
        embedders += (f"vggish={args.vggish}",)
    if args.cnn14 and args.classifier:
        raise ImgenError("give --cnn14 or --classifier, not both (one classifier computes KL)")
    clap = args.clap
    if clap and (os.path.exists(clap) or clap.endswith((".safetensors", ".pt", ".pth", ".ckpt"))):
        clap = f"clap={clap}"
    return {"embedders": embedders, "clap": clap, "classifier": f"cnn14={args.cnn14}" if args.cnn14 else args.classifier,
            "separator": f"htdemucs={args.demucs}" if args.demucs else None}


def run(args: argparse.Namespace) -> int:
    from imgen_jax.eval.runner import EvalOptions, run_eval
    from imgen_jax.generate import SamplingConfig

    opts = EvalOptions(
        task=args.task, n=args.n, seed=args.seed, split=args.split, batch=args.batch, clip_seconds=args.clip_seconds,
        stems=args.stems, **plugin_specs(args),
        sampling=SamplingConfig.for_edit(guidance_scale=args.guidance, top_k=args.top_k, seed=args.seed),
        window_frames=args.window_frames, stride_frames=args.stride_frames,
        resamples=0 if args.no_stats else args.resamples, layout=args.layout,
    )
    opts.check()
    res = run_eval(args.model, args.data, args.out or f"imgen-eval-{args.task}", opts, progress=not args.no_progress)
    print(res.table_text)
    for key in ("csv", "json", "png", "tests"):
        if key in res.paths:
            print(res.paths[key])
    return 0


__all__ = ["add_parser", "run", "plugin_specs", "EVAL_HELP"]
