"""The `imgen` command.

    imgen convert SRC --out DIR [--compression PATH] [--t5 DIR] [--adapters CKPT] [--overwrite]
    imgen export-adapters DIR --out adapters.pt [--layout save_weights|lightning]
    imgen info DIR
    imgen plan --config=configs/slakh.py --topology=v5e:2x4 [--config.FIELD=VALUE ...] [--skip-decode]
    imgen generate --model DIR --prompt TEXT --seconds S --out out.wav [--seed N] [--spectrogram out.png]
    imgen edit --model DIR --input mix.wav --instruction "remove drums" --out out.wav [--spectrogram ba.png]
    imgen data mini-slakh --out DIR [--tracks N] [--seconds S] [--seed N] [--overwrite]
    imgen data build --source DIR --out DIR [--sample-rate 32000] [--chunk-seconds 5] [--overwrite]
    imgen eval --model DIR --data DIR --task add|remove|extract --n N [--batch B] [--out OUT] [--seed S] [--split test]

Errors meant for the user (ImgenError) print as one line `error: ...` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from imgen_jax import vocab
from imgen_jax.errors import ImgenError

CONVERT_HELP = """\
Convert PyTorch weights into an imgen_jax model directory (config.json + safetensors) that
loads without torch. SRC may be:
  - a Hugging Face MusicGen snapshot directory (config.json with model_type "musicgen" and
    model.safetensors / pytorch_model.bin, sharded or not): LM, EnCodec and T5 are converted;
    spiece.model is copied when present;
  - an audiocraft MusicGen directory holding state_dict.bin (LM + the T5 output_proj) and
    optionally compression_state_dict.bin (EnCodec 32 kHz), or the state_dict.bin file itself;
    audiocraft does not ship T5: pass a Hugging Face t5-base directory with --t5. When
    compression_state_dict.bin only names a pretrained codec ({'pretrained':
    'facebook/encodec_32khz'}), pass --compression with a local Hugging Face EnCodec folder
    (config.json + model.safetensors / pytorch_model.bin, the encodec_32khz layout);
  - a Hugging Face T5 directory (model_type "t5"): converted alone.
The model size (small, medium, large, stereo variants) is read from the weights. Pickled
checkpoints are loaded with torch.load(weights_only=True): a file holding anything but tensors
is refused. Needs the `convert` extra (torch, transformers, safetensors).
"""


def _convert(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ImgenError("imgen convert needs PyTorch: pip install 'imgen_jax[convert]'") from None
    from convert.musicgen import convert_any

    if args.adapters is not None and not os.path.isfile(args.adapters):
        raise ImgenError(f"{args.adapters}: adapter checkpoint not found")
    out = convert_any(args.src, args.out, compression=args.compression, t5_dir=args.t5, overwrite=args.overwrite)
    if args.adapters is not None:
        from convert.instruct_ckpt import add_adapters

        try:
            ck = add_adapters(out, args.adapters, lora_alpha=args.lora_alpha)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)  # no model directory that silently lacks the adapters
            raise
        for note in ck.notes:
            print(f"note: {note}")
    _print_info(out)
    return 0


def _export_adapters(args: argparse.Namespace) -> int:
    from convert.instruct_ckpt import export_official_adapters
    from imgen_jax.audio import check_writable
    from imgen_jax.instruct.fusion import read_adapters

    out = check_writable(args.out)
    cfg, flat = read_adapters(args.model_dir)
    print(export_official_adapters(out, cfg, flat, layout=args.layout))
    return 0


MAX_SECONDS = 600.0


def _progress_bar(total: int, desc: str, unit: str):
    """(tqdm bar, callback(done, total)) updating the bar from the compiled loop's progress reports."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)

    def update(done: int, of: int) -> None:  # reports may count decoding steps: scale them to the bar
        value = min(total, int(done) * total // max(int(of), 1))
        bar.update(max(0, value - bar.n))

    return bar, update


def _out_paths(out: str, n: int) -> list[str]:
    from imgen_jax.audio import check_writable

    if n == 1:
        return [check_writable(out)]
    root, ext = os.path.splitext(out)
    return [check_writable(f"{root}_{i}{ext or '.wav'}") for i in range(n)]


def _generate(args: argparse.Namespace) -> int:
    if not (0 < args.seconds <= MAX_SECONDS):
        raise ImgenError(f"--seconds must be in (0, {MAX_SECONDS:g}], got {args.seconds:g}")
    prompts = [p.strip() for p in args.prompt]
    if any(not p for p in prompts):
        raise ImgenError("--prompt is empty; describe the music to generate")
    outs = _out_paths(args.out, len(prompts))
    spec = None if args.spectrogram is None else _out_paths(args.spectrogram, 1)[0]
    import numpy as np

    from imgen_jax.api import load_musicgen
    from imgen_jax.audio import save_spectrograms, write_wav
    from imgen_jax.generate import SamplingConfig, generate

    mg = load_musicgen(args.model)
    for name in ("encodec", "t5", "tokenizer"):
        if getattr(mg, name) is None:
            raise ImgenError(f"{args.model}: generation needs the {name} component (convert it with T5 and EnCodec)")
    config = SamplingConfig.for_duration(
        args.seconds, frame_rate=mg.frame_rate, guidance_scale=args.guidance, top_k=args.top_k, top_p=args.top_p,
        temperature=args.temperature, seed=args.seed,
    )
    hidden, mask = mg.encode_text(prompts)
    memory = mg.lm.text_memory(hidden, mask)
    bar, update = _progress_bar(config.num_frames, "generating", "frame")
    with bar:
        codes = generate(mg.lm, memory, None, config, progress=update)
        codes.block_until_ready()
        bar.update(config.num_frames - bar.n)
    audio = np.asarray(mg.decode_codes(codes))
    for wav, out in zip(audio, outs):
        print(write_wav(out, wav, mg.sample_rate))
    if spec is not None:
        print(save_spectrograms(spec, [w.mean(0) for w in audio], [p[:40] for p in prompts], mg.sample_rate))
    return 0


def _edit(args: argparse.Namespace) -> int:
    from imgen_jax.instruct.edit import EditConfig, normalise_instruction
    from imgen_jax.generate import SamplingConfig

    instructions = args.instruction
    if len(instructions) == 1:
        instructions = instructions * len(args.input)
    if len(instructions) != len(args.input):
        raise ImgenError(f"{len(args.input)} inputs but {len(instructions)} instructions (give one, or one per input)")
    for t in instructions:
        normalise_instruction(t)
    outs = _out_paths(args.out, len(args.input))
    spec = None if args.spectrogram is None else _out_paths(args.spectrogram, 1)[0]
    sampling = SamplingConfig.for_edit(seed=args.seed, guidance_scale=args.guidance, top_k=args.top_k)
    config = EditConfig(sampling, windows=args.windows, window_frames=args.window_frames,
                        stride_frames=args.stride_frames)
    from imgen_jax.audio import read_audio, save_spectrograms, write_wav
    from imgen_jax.instruct.edit import Editor
    from imgen_jax.modeldir import read_model_config

    meta = read_model_config(args.model)
    sr = int(meta.get("encodec", {}).get("sampling_rate", 32000))
    channels = int(meta.get("lm", {}).get("audio_channels", 1))  # 2 for a stereo model: mono inputs are duplicated
    wavs = [read_audio(p, sr, channels) for p in args.input]  # every input checked before the model loads
    editor = Editor.load(args.model)
    total = sum(editor.mg.encodec.cfg.num_frames(w.shape[-1]) for w in wavs)
    bar, update = _progress_bar(total, "editing", "frame")
    with bar:
        results = editor.edit(wavs, instructions, config, update)
        bar.update(total - bar.n)
    for wav, out in zip(results, outs):
        print(write_wav(out, wav, sr))
    if spec is not None:
        print(save_spectrograms(spec, [wavs[0].mean(0), results[0].mean(0)], ["before", f"after: {instructions[0]}"], sr))
    return 0


def _print_info(model_dir: str) -> None:
    from imgen_jax.modeldir import read_model_config

    meta = read_model_config(model_dir)
    parts = {k: v for k, v in meta.items() if isinstance(v, dict)}
    print(f"{model_dir}: kind {meta['kind']}, components {', '.join(sorted(parts)) or 'none'}")
    for name, cfg in sorted(parts.items()):
        print(f"  {name}: {json.dumps(cfg, sort_keys=True)}")


def _info(args: argparse.Namespace) -> int:
    from imgen_jax.train.plan import format_counts, model_dir_counts

    _print_info(args.model_dir)
    print("parameters (from the safetensors headers):")
    for line in format_counts(model_dir_counts(args.model_dir)):
        print(line)
    return 0


def load_config_file(path: str, overrides: list[str], prog: str = "imgen"):
    """An ml_collections config file (`get_config()`) with `--config.FIELD=VALUE` overrides, parsed as
    train.py parses them; ImgenError (one line) for a missing file, a bad override or a stray argument."""
    from absl import flags
    from ml_collections import config_flags

    stray = [a for a in overrides if not a.startswith("--config.")]
    if stray:
        raise ImgenError(f"unexpected arguments {stray}; settings go through --config.FIELD=VALUE")
    if not os.path.isfile(path):
        raise ImgenError(f"--config: {path}: no such config file")
    argv = [prog, f"--config={path}", *overrides]
    fv = flags.FlagValues()
    try:  # sys_argv: config_flags finds the overridable fields from the argv it is given
        holder = config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv, lock_config=True,
                                                 sys_argv=argv)
        fv(argv)
        holder.value.to_json()  # a config file that failed to load raises here
    except Exception as e:  # absl / config files raise arbitrary exceptions
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f" (overrides: {' '.join(overrides)})" if overrides else ""
        raise ImgenError(f"config: {path}: {msg}{where}") from None
    return holder.value


def _plan(args: argparse.Namespace) -> int:
    from imgen_jax.train.plan import plan

    config = load_config_file(args.config, args.overrides)
    batches = [] if args.skip_decode else [int(b) for b in args.decode_batch.split(",") if b.strip()]
    print(plan(config, args.topology, batches))
    return 0


PLAN_HELP = """\
Compile the real training step (EnCodec encode, T5, audio fusion + LoRA, loss, AdamW) and the edit decode
program for a TPU slice with the TPU compiler (libtpu: pip install 'imgen_jax[tpu]'), from abstract weights:
no TPU, weights or data needed. Prints the compiler's per-chip memory (arguments, temporaries, outputs, total
against HBM), the parameter counts, and a roofline estimate (compute, HBM and collective terms; step time,
clips/s, MFU) that is not a measured speed. The last line is `peak_gib_per_chip: X` (the train step). The base
size comes from config.model.base_size (else the configs of config.model.base_dir). Settings go through
--config.FIELD=VALUE, as for train.py."""


def _data_mini_slakh(args: argparse.Namespace) -> int:
    from imgen_jax.data.mini_slakh import render_mini_slakh

    report = render_mini_slakh(args.out, tracks=args.tracks, seconds=args.seconds, sample_rate=args.sample_rate,
                               seed=args.seed, overwrite=args.overwrite)
    splits = ", ".join(f"{k} {v}" for k, v in report["tracks"].items())
    classes = ", ".join(f"{k} {v}" for k, v in report["stems_per_class"].items())
    print(f"{report['out']}: {sum(report['tracks'].values())} tracks of {report['seconds']:g} s ({splits}); "
          f"stems: {classes}")
    return 0


def _data_build(args: argparse.Namespace) -> int:
    from imgen_jax.data.build import build_dataset

    report = build_dataset(args.source, args.out, sample_rate=args.sample_rate, chunk_seconds=args.chunk_seconds,
                           overwrite=args.overwrite, layout=args.layout)
    splits = ", ".join(f"{k} {v}" for k, v in report["tracks"].items())
    print(f"{os.path.abspath(args.out)}: {splits} tracks, {report['stems']} stems; {len(report['skipped'])} skipped "
          f"(reasons in imgen_stems.json)")
    for s in report["skipped"]:
        print(f"  skipped {s['what']} {s['name']}: {s['reason']}")
    return 0


def _add_data_commands(sub) -> None:
    """`imgen data <command>`: dataset tools (mini-slakh, build)."""
    d = sub.add_parser("data", help="dataset tools: render mini-Slakh, build the stems dataset")
    dsub = d.add_subparsers(dest="data_command", required=True)
    m = dsub.add_parser("mini-slakh", help="render a small offline dataset in the Slakh2100 layout",
                        description="Render Bach chorales from music21's corpus as Piano / Guitar / Bass / Drums "
                                    "(+ one more class on some tracks) stems with the General-MIDI soundfont "
                                    "that pretty_midi ships, in the exact Slakh2100 layout (train / validation / "
                                    "test, metadata.yaml, stems/*.flac, MIDI/*.mid, mix.flac). Deterministic; "
                                    "written atomically. Needs tinysoundfont: "
                                    "pip install --no-deps tinysoundfont==0.3.7")
    m.add_argument("--out", required=True, help="output dataset directory (refused if non-empty without --overwrite)")
    m.add_argument("--tracks", type=int, default=20, help="number of tracks (70/15/15 train/validation/test)")
    m.add_argument("--seconds", type=float, default=30.0, help="length of every track")
    m.add_argument("--sample-rate", type=int, default=44100)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    m.set_defaults(func=_data_mini_slakh)
    b = dsub.add_parser("build", help="write a dataset folder's stems as a tfds array_record dataset",
                        description="Decode every usable stem once, resample to the model's rate and store int16 "
                                    "chunks in array_record files (tfds, no TensorFlow), with an index and a report "
                                    "of every skipped stem / track / split. Training and evaluation read either the "
                                    "source folder or this (much faster) build.")
    b.add_argument("--source", required=True, help="a Slakh2100, MoisesDB, MUSDB18-HQ or folder-of-stems dataset")
    b.add_argument("--layout", default="auto", choices=("auto", "slakh", "moisesdb", "musdb", "stems"),
                   help="layout of --source (default: detected)")
    b.add_argument("--out", required=True, help="output folder (refused if non-empty without --overwrite)")
    b.add_argument("--sample-rate", type=int, default=32000)
    b.add_argument("--chunk-seconds", type=float, default=5.0, help="record length (clips may span records)")
    b.add_argument("--overwrite", action="store_true")
    b.set_defaults(func=_data_build)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="imgen", description="Instruct-MusicGen in JAX/Flax: convert, generate, edit.")
    sub = ap.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert PyTorch MusicGen / T5 weights", description=CONVERT_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("src", help="Hugging Face directory, audiocraft directory or state_dict.bin")
    c.add_argument("--out", required=True, help="output model directory (written atomically)")
    c.add_argument("--compression", metavar="PATH",
                   help="EnCodec for an audiocraft SRC: a compression_state_dict.bin holding weights, or a local "
                        "Hugging Face EnCodec folder (e.g. facebook/encodec_32khz); default: the one next to SRC")
    c.add_argument("--t5", help="Hugging Face T5 directory to include (audiocraft sources)")
    c.add_argument("--adapters", help="official Instruct-MusicGen checkpoint (finetuned.ckpt or save_weights file) to add")
    c.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha of the adapters (official: 64)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    c.set_defaults(func=_convert)

    x = sub.add_parser("export-adapters", help="write a directory's adapters as an official PyTorch file")
    x.add_argument("model_dir")
    x.add_argument("--out", required=True)
    x.add_argument("--layout", choices=("save_weights", "lightning"), default="save_weights")
    x.set_defaults(func=_export_adapters)

    g = sub.add_parser("generate", help="text-to-music with a converted MusicGen")
    g.add_argument("--model", required=True, help="converted model directory")
    g.add_argument("--prompt", required=True, action="append", help="text description (repeat for a batch)")
    g.add_argument("--seconds", type=float, default=10.0)
    g.add_argument("--out", required=True, help="output wav (out_0.wav, out_1.wav, ... for several prompts)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--guidance", type=float, default=vocab.GUIDANCE_SCALE,
                   help="classifier-free guidance scale (1 = off)")
    g.add_argument("--top-k", type=int, default=vocab.GENERATE_TOP_K)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--temperature", type=float, default=vocab.TEMPERATURE)
    g.add_argument("--spectrogram", help="also write a spectrogram PNG")
    g.set_defaults(func=_generate)

    e = sub.add_parser("edit", help="edit music mixes by instruction (Instruct-MusicGen)")
    e.add_argument("--model", required=True, help="converted model directory with adapters")
    e.add_argument("--input", required=True, action="append", help="input audio, any rate / channels (repeatable)")
    e.add_argument("--instruction", required=True, action="append",
                   help=f"'{vocab.plain_instruction('add', 'Drums')}', '{vocab.plain_instruction('remove', 'Bass')}', "
                        f"'{vocab.plain_instruction('extract', 'Piano')}' or '{vocab.instruction('remove', 'Bass')}'")
    e.add_argument("--out", required=True, help="output wav (out_0.wav, ... for several inputs)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--guidance", type=float, default=vocab.GUIDANCE_SCALE)
    e.add_argument("--top-k", type=int, default=vocab.EDIT_TOP_K,
                   help=f"top-k sampling (default {vocab.EDIT_TOP_K}, the official Instructor's)")
    e.add_argument("--windows", choices=("gapless", "official"), default="gapless",
                   help="how inputs longer than one window are cut. gapless (default): every frame is generated once; "
                        "each window is conditioned on its own stretch of the input and continues the previous "
                        "window's tail. official: the official code's loop (5 s windows every 16 s, each started "
                        "afresh), which leaves the frames between a window's end and the next start ungenerated, so "
                        "a long input comes back shorter, with those stretches cut out; for comparisons with the paper")
    e.add_argument("--window-frames", type=int, default=None,
                   help="frames per decoding window (default: gapless, the adapters' positional table, "
                        "pos_emb_frames - 1 = 500 for the official checkpoint; official, 250)")
    e.add_argument("--stride-frames", type=int, default=None,
                   help="frames between window starts (default: gapless, half a window; official, 800)")
    e.add_argument("--spectrogram", help="before / after spectrogram PNG of the first input")
    e.set_defaults(func=_edit)

    i = sub.add_parser("info", help="print the components, sizes and parameter counts of a converted directory")
    i.add_argument("model_dir")
    i.set_defaults(func=_info)

    pl = sub.add_parser("plan", help="TPU memory and roofline of training and editing, from the TPU compiler",
                        description=PLAN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    pl.add_argument("--config", required=True, help="training config file (configs/*.py)")
    pl.add_argument("--topology", required=True, help="TPU slice, e.g. v5e:1x1, v5e:2x4, v5e:16x16, v5p:2x2x1")
    pl.add_argument("--decode-batch", default="1,8", help="clips per edit decode to compile (comma-separated)")
    pl.add_argument("--skip-decode", action="store_true", help="compile the train step only")
    pl.set_defaults(func=_plan, overrides=[], takes_overrides=True)

    _add_data_commands(sub)

    from imgen_jax.eval.cli import add_parser as add_eval_parser  # `imgen eval` (imgen_jax/eval/cli.py)

    add_eval_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if extra and not getattr(args, "takes_overrides", False):
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = extra  # `imgen plan --config.FIELD=VALUE ...`
    try:
        return args.func(args)
    except ImgenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
