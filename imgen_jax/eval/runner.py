"""`imgen eval`: edit a deterministic evaluation set, score every system, write the table; resumable.

    from imgen_jax.eval.runner import EvalOptions, run_eval

    res = run_eval("models/instruct", "data/slakh", "out/eval-remove", EvalOptions(task="remove", n=16))
    print(res.table_text)                 # one row per system: model, identity, oracle

Systems: `model` (the Instruct-MusicGen edit of the input), `identity` (output = the input, the
do-nothing yardstick), `oracle` (output = the ground truth, the best possible score) and, for remove /
extract with a separator (--demucs), `htdemucs`: the separator applied to the input mix (extract: the
separated stem; remove: the mix minus it), the baseline a user would reach for instead of an editor.

Output directory:

    manifest.json               settings + examples (id, track, stem, instruction, audio checksums)
    inputs/<id>.wav             the input mixes        targets/<id>.wav   the ground truths
    model/<id>.wav, identity/<id>.wav, oracle/<id>.wav   the outputs of each system (+ htdemucs/<id>.wav)
    results.jsonl               one line per scored (system, example): per-example metrics
    stats/<embedder>-<spec hash>/<system or targets>/<id>.npz   per-clip FAD statistics
    eval.log                    outputs that were skipped, with the reason
    table.csv, table.json, table.png                     the table

Resuming: a run in an existing directory checks that the settings and examples match the manifest
(else one ImgenError), edits only the examples whose model output file does not exist, and scores
only (system, example) pairs without a results.jsonl line for the output file's current size and
mtime (and with every requested metric). A written output file that cannot be read (unreadable,
empty, NaN) is reported on stderr and in eval.log and left out of its row (the table's `n` says how
many examples each row averages; `skipped` how many were left out); delete it to have it redone.

Metrics: those of the registry (imgen_jax.eval.metrics, one file each) that apply to the task and
the given plug-ins. Per-example metrics (on 16 kHz resampled audio, as the official evaluation; the
output is cut or zero-padded to the target's length first): `si_sdr` and `si_sdri` for remove /
extract only (as the official code), `ssim` and `mel_l1` on mel spectrograms (imgen_jax.eval.mel /
ssim), `clap` with a CLAP (--clap), `kl_softmax` / `kl_sigmoid` with a classifier (--cnn14 /
--classifier), `p_demucs` with a separator (--demucs). Set metrics: `fad_<name>` per embedder
(`fad_vggish` with --vggish: the paper's FAD), the Fréchet distance between the pooled Gaussian of a
system's outputs and that of the targets. Networks run on batches of SCORE_CHUNK clips.

Edits run in batches of `batch` examples with one seed for the run; batch composition changes the
random draws, so a resumed run with a different --batch can give different (equally valid) edits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from imgen_jax import vocab
from imgen_jax.errors import ImgenError
from imgen_jax.eval.metrics.clap import caption
from imgen_jax.eval.metrics.kl_softmax import kl_softmax
from imgen_jax.eval.scoring import EVAL_SR, Scorer
from imgen_jax.eval.scoring import fit as _fit
from imgen_jax.generate import SamplingConfig

TASKS = vocab.TASKS
SYSTEMS = ("model", "identity", "oracle")
MODEL_SYSTEMS = ("model",)  # rows tested against every other row (the baselines) by imgen_jax.eval.stats
BASELINE = "htdemucs"  # the separation baseline's row (remove / extract, with a separator)
BASELINE_TASKS = ("remove", "extract")
SCORE_CHUNK = 32  # (system, example) pairs scored together: one network call per batch
MANIFEST = "manifest.json"
RESULTS = "results.jsonl"


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """What to evaluate and how. embedders: FAD embedder specs (imgen_jax.eval.plugins, e.g.
    "vggish=vggish.safetensors"); clap / classifier / separator: optional plug-in specs for the CLAP score,
    KL and P-Demucs + the htdemucs row (e.g. "cnn14=cnn14_16k.safetensors", "htdemucs=htdemucs.safetensors"). sampling: how the edits decode (the
    shared imgen_jax.generate.SamplingConfig; default `SamplingConfig.for_edit()`: CFG 3.0, top_k 100);
    its seed is set to `seed`. window_frames / stride_frames: the edit windows (capped at the adapters'
    positional table)."""

    task: str
    n: int
    seed: int = 0
    split: str = "test"
    batch: int = 4
    clip_seconds: float = 5.0
    stems: str = "4_stems"
    embedders: tuple[str, ...] = ("encodec", "logmel")
    clap: str | None = None
    classifier: str | None = None
    separator: str | None = None
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig.for_edit)
    window_frames: int = vocab.EVAL_WINDOW_FRAMES
    stride_frames: int = vocab.EVAL_STRIDE_FRAMES
    resamples: int = 1000    # bootstrap resamples of the intervals and FAD tests (imgen_jax.eval.stats); 0: none
    layout: str = "auto"     # dataset layout of data_dir (imgen_jax.data.tracks.LAYOUTS)

    def __post_init__(self):
        if isinstance(self.sampling, SamplingConfig) and self.sampling.seed != self.seed:
            object.__setattr__(self, "sampling", dataclasses.replace(self.sampling, seed=self.seed))

    def check(self) -> None:
        """One ImgenError for the first bad option."""
        if self.task not in TASKS:
            raise ImgenError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not isinstance(self.n, int) or self.n < 1:
            raise ImgenError(f"--n must be a positive number of examples, got {self.n}")
        if self.batch < 1:
            raise ImgenError(f"--batch must be >= 1, got {self.batch}")
        if not self.clip_seconds > 0:
            raise ImgenError(f"--clip-seconds must be > 0, got {self.clip_seconds}")
        if not 0 < self.stride_frames <= self.window_frames:
            raise ImgenError(f"--stride-frames must be in 1..--window-frames ({self.window_frames}), got {self.stride_frames}")
        if not isinstance(self.resamples, int) or self.resamples < 0:
            raise ImgenError(f"--resamples must be a number of bootstrap resamples >= 0, got {self.resamples}")
        from imgen_jax.data.tracks import LAYOUTS

        if self.layout not in ("auto", *LAYOUTS):
            raise ImgenError(f"--layout must be auto or one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if len(set(self.embedders)) != len(self.embedders):
            raise ImgenError(f"an embedder is given twice: {', '.join(self.embedders)}")
        if not isinstance(self.sampling, SamplingConfig):
            raise ImgenError(f"EvalOptions.sampling must be an imgen_jax.generate.SamplingConfig, "
                             f"got {type(self.sampling).__name__}")

    def edit_config(self, max_window: int):
        """The imgen_jax.instruct.edit.EditConfig of the edits for adapters covering `max_window` frames."""
        from imgen_jax.instruct.edit import EditConfig

        window = min(self.window_frames, max_window)
        return EditConfig(self.sampling, window_frames=window, stride_frames=min(self.stride_frames, window))

    def edit_settings(self) -> dict:
        """How the edits decode, as the manifest records it (a resumed run must match)."""
        s = self.sampling
        out = {"guidance": s.guidance_scale, "top_k": s.top_k, "window_frames": self.window_frames,
               "stride_frames": self.stride_frames, "seed": self.seed}
        default = SamplingConfig.for_edit()
        for name in ("use_sampling", "temperature", "top_p"):  # recorded only when changed (older manifests lack them)
            if getattr(s, name) != getattr(default, name):
                out[name] = getattr(s, name)
        return out


@dataclasses.dataclass
class EvalResult:
    """rows: the table (dicts with system, n, skipped and one value per metric, plus <metric>_lo /
    <metric>_hi, its 95% bootstrap interval, unless resamples=0); metrics: the metric columns;
    skipped: [(system, id, reason)]; edited / scored: how many edits and (system, example) scorings
    this run computed (0 and 0 on a finished directory); paths: the written table files."""

    rows: list[dict]
    metrics: list[str]
    skipped: list[tuple[str, str, str]]
    edited: int
    scored: int
    paths: dict[str, str]
    table_text: str
    tests: list[dict] = dataclasses.field(default_factory=list)  # paired tests (imgen_jax.eval.stats), [] with resamples=0


# ---- the evaluation set ---------------------------------------------------------------------


def load_eval_set(data_dir: str, opts: EvalOptions, sample_rate: int) -> list:
    """The deterministic evaluation set (imgen_jax.data.make_eval_set) at the model's sample rate."""
    try:
        from imgen_jax.data import TripletConfig, make_eval_set
    except ImportError as e:
        raise ImgenError(f"the data API (imgen_jax.data) is not available: {e}") from None

    if not os.path.isdir(data_dir):
        raise ImgenError(f"{data_dir}: data directory not found")
    cfg = TripletConfig(tasks=(opts.task,), stems=opts.stems, clip_seconds=opts.clip_seconds, sample_rate=sample_rate)
    return list(make_eval_set(data_dir, split=opts.split, task=opts.task, n=opts.n, seed=opts.seed, config=cfg,
                              layout=opts.layout))


def _safe_id(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(s)) or "_"


def _digest(x: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(np.asarray(x, np.float32)).tobytes()).hexdigest()[:16]


def _check_items(items: Sequence, opts: EvalOptions) -> list:
    if len(items) < opts.n:
        raise ImgenError(f"the {opts.split} split has only {len(items)} {opts.task} examples; use --n {len(items)} or fewer")
    items = list(items)[: opts.n]
    ids = [_safe_id(t.id) for t in items]
    if len(set(ids)) != len(ids):
        raise ImgenError("the evaluation set has duplicate example ids")
    for t in items:
        for name in ("input", "target"):
            a = np.asarray(getattr(t, name))
            if a.ndim != 1 or a.size == 0 or not np.isfinite(a).all():
                raise ImgenError(f"example {t.id}: {name} must be a finite mono array [N > 0], got shape {a.shape}")
    return items


# ---- files ------------------------------------------------------------------------------------


def _sig(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def _read_results(path: str) -> dict[tuple[str, str], dict]:
    out: dict[tuple[str, str], dict] = {}
    if not os.path.isfile(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
                out[(rec["system"], rec["id"])] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line of an interrupted run
    return out


def _append_result(path: str, rec: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _save_stats(path: str, stats) -> None:
    from imgen_jax.files import atomic_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_file(path, ".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **stats.to_arrays())


def _load_stats(path: str):
    from imgen_jax.eval.fad import GaussianStats

    try:
        with np.load(path) as d:
            return GaussianStats.from_arrays(d)
    except Exception:
        return None


def _column(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


@dataclasses.dataclass
class _Run:
    """One evaluation directory: where each file of an example goes."""

    out_dir: str
    sr: int
    ids: list[str]
    by_id: dict[str, Any]
    cache_key: dict[str, str]  # embedder -> stats folder name (another spec, another cache)
    systems: tuple[str, ...] = SYSTEMS

    def wav(self, d: str, i: str) -> str:
        return os.path.join(self.out_dir, d, f"{i}.wav")

    def stats(self, emb: str, d: str, i: str) -> str:
        return os.path.join(self.out_dir, "stats", self.cache_key[emb], d, f"{i}.npz")


@dataclasses.dataclass
class _Scores:
    """What scoring gathered: per-example metrics per system, per-clip statistics per embedder and system
    (and "targets"), skipped outputs, how many (system, example) pairs were scored now."""

    per_system: dict[str, dict[str, dict]]
    stats: dict[str, dict[str, dict]]  # embedder -> system or "targets" -> example id -> GaussianStats
    skipped: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    scored: int = 0


# ---- set-up -----------------------------------------------------------------------------------


def _model_meta(model_dir: str) -> tuple[dict, int]:
    from imgen_jax.modeldir import read_model_config

    meta = read_model_config(model_dir)
    if "adapters" not in meta:
        raise ImgenError(f"{model_dir}: no Instruct-MusicGen adapters in this model directory; add them with "
                         "`imgen convert SRC --adapters finetuned.ckpt --out DIR`")
    for name in ("encodec", "t5", "lm"):
        if name not in meta:
            raise ImgenError(f"{model_dir}: evaluation needs the {name} component")
    if int(meta["encodec"].get("audio_channels", 1)) != 1:
        raise ImgenError(f"{model_dir}: evaluation supports mono models only")
    return meta, int(meta["encodec"].get("sampling_rate", 32000))


def _bar(total: int, desc: str, unit: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=not enabled)


def _check_out_dir(out_dir) -> str:
    out_dir = os.path.abspath(os.fspath(out_dir))
    parent = os.path.dirname(out_dir)
    if not os.path.isdir(parent):
        raise ImgenError(f"{parent}: output directory's parent does not exist")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ImgenError(f"{out_dir}: exists and is not a directory")
    return out_dir


def _load_plugins(opts: EvalOptions, model_dir: str) -> tuple[dict, dict, dict]:
    """(embedders by column name, their stats cache keys, {"clap", "classifier", "separator"} plug-ins or None)."""
    from imgen_jax.eval.plugins import load_plugin

    embedders, cache_key = {}, {}
    for spec in opts.embedders:
        emb = load_plugin("embedder", spec, model_dir)
        name = _column(getattr(emb, "name", spec))
        if name in embedders:
            raise ImgenError(f"two embedders are both named {name!r}")
        embedders[name] = emb
        cache_key[name] = f"{name}-{hashlib.sha1(spec.encode()).hexdigest()[:8]}"  # another spec, another cache
    plugins = {kind: load_plugin(kind, spec, model_dir) if spec else None
               for kind, spec in (("clap", opts.clap), ("classifier", opts.classifier), ("separator", opts.separator))}
    return embedders, cache_key, plugins


def _check_manifest(out_dir: str, settings: dict, examples: list[dict]) -> None:
    """Write the manifest of a new directory; refuse one holding other settings or examples."""
    from imgen_jax.eval import report

    os.makedirs(out_dir, exist_ok=True)
    man_path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(man_path):
        report._atomic_text(man_path, json.dumps({"settings": settings, "examples": examples}, indent=1) + "\n")
        return
    try:
        with open(man_path) as f:
            old = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ImgenError(f"{man_path}: unreadable manifest ({e}); use a new --out directory") from None
    old_settings = old.get("settings", {})
    diff = sorted(k for k in set(settings) | set(old_settings) if settings.get(k) != old_settings.get(k))
    if diff:
        raise ImgenError(f"{out_dir} holds an evaluation with other settings ({', '.join(diff)}); use a new --out directory")
    if old.get("examples") != examples:
        raise ImgenError(f"{out_dir} holds an evaluation of other examples (the data changed); use a new --out directory")


def _settings(opts: EvalOptions, model_dir: str, sr: int) -> dict:
    return {"model": model_dir, "task": opts.task, "n": opts.n, "seed": opts.seed, "split": opts.split,
            "clip_seconds": opts.clip_seconds, "stems": opts.stems, "sample_rate": sr, "edit": opts.edit_settings()}


def _examples(items: Sequence) -> list[dict]:
    return [{"id": _safe_id(t.id), "track": str(getattr(t, "track", "")), "stem": str(getattr(t, "stem", "")),
             "instruction": str(t.instruction), "input_sha1": _digest(t.input), "target_sha1": _digest(t.target)}
            for t in items]


# ---- outputs ----------------------------------------------------------------------------------


def _write_references(run: _Run) -> None:
    """inputs / targets (rewritten when missing or unreadable) and the identity / oracle outputs."""
    from imgen_jax.audio import read_audio, write_wav

    for d in ("inputs", "targets", *run.systems):
        os.makedirs(os.path.join(run.out_dir, d), exist_ok=True)
    for i in run.ids:
        t = run.by_id[i]
        for d, a in (("inputs", t.input), ("targets", t.target)):
            try:
                read_audio(run.wav(d, i), run.sr)
            except ImgenError:
                write_wav(run.wav(d, i), np.asarray(a, np.float32), run.sr)
        for d, a in (("identity", t.input), ("oracle", t.target)):
            if not os.path.exists(run.wav(d, i)):
                write_wav(run.wav(d, i), np.asarray(a, np.float32), run.sr)


def _edit_pending(run: _Run, opts: EvalOptions, model_dir: str, editor, progress: bool) -> int:
    """Edit the examples without a model output file, in batches of opts.batch; returns how many."""
    pending = [i for i in run.ids if not os.path.exists(run.wav("model", i))]
    if not pending:
        return 0
    from imgen_jax.instruct.edit import Editor

    editor = editor or Editor.load(model_dir)
    cfg = opts.edit_config(editor.max_window)
    frames = {i: editor.mg.encodec.cfg.num_frames(np.asarray(run.by_id[i].input).size) for i in pending}
    with _bar(sum(frames.values()), f"editing {len(pending)}", "frame", progress) as bar:
        for s in range(0, len(pending), opts.batch):
            _edit_batch(run, editor, cfg, pending[s:s + opts.batch], frames, bar)
    return len(pending)


def _edit_batch(run: _Run, editor, cfg, part: list[str], frames: dict[str, int], bar) -> None:
    from imgen_jax.audio import write_wav

    base, total = bar.n, sum(frames[i] for i in part)

    def update(done, of):
        bar.update(max(0, base + min(total, int(done) * total // max(int(of), 1)) - bar.n))

    outs = editor.edit([np.asarray(run.by_id[i].input, np.float32)[None] for i in part],
                       [run.by_id[i].instruction for i in part], cfg, update)
    for i, w in zip(part, outs):
        write_wav(run.wav("model", i), w, run.sr)
    bar.update(base + total - bar.n)


def _baseline_pending(run: _Run, opts: EvalOptions, separator, progress: bool) -> int:
    """Write the htdemucs row's outputs that are missing (all of them when the separator spec changed,
    recorded in htdemucs/separator.json); returns how many were separated."""
    from imgen_jax.audio import write_wav
    from imgen_jax.eval import report
    from imgen_jax.eval.separation import baseline

    if BASELINE not in run.systems:
        return 0
    folder = os.path.join(run.out_dir, BASELINE)
    spec_path = os.path.join(folder, "separator.json")
    try:
        with open(spec_path) as f:
            old = json.load(f).get("spec")
    except (OSError, json.JSONDecodeError, AttributeError):
        old = None
    if old != opts.separator:  # another separator: its outputs are stale
        for i in run.ids:
            if os.path.exists(run.wav(BASELINE, i)):
                os.remove(run.wav(BASELINE, i))
        report._atomic_text(spec_path, json.dumps({"spec": opts.separator}) + "\n")
    pending = [i for i in run.ids if not os.path.exists(run.wav(BASELINE, i))]
    with _bar(len(pending), f"separating {len(pending)}", "clip", progress and bool(pending)) as bar:
        for i in pending:
            t = run.by_id[i]
            out = baseline(separator, opts.task, str(getattr(t, "stem", "")), np.asarray(t.input, np.float32), run.sr)
            write_wav(run.wav(BASELINE, i), out, run.sr)
            bar.update(1)
    return len(pending)


# ---- scoring ----------------------------------------------------------------------------------


def _score_all(run: _Run, scorer: Scorer, progress: bool) -> _Scores:
    """Score every (system, example) not already in results.jsonl for its output file's current size and
    mtime, SCORE_CHUNK pairs at a time (each network runs once per chunk)."""
    from imgen_jax.audio import read_audio

    res_path = os.path.join(run.out_dir, RESULTS)
    done = _read_results(res_path)
    sc = _Scores({s: {} for s in run.systems}, {e: {s: {} for s in (*run.systems, "targets")} for e in scorer.embedders})
    examples: dict[str, Any] = {}

    def example(i: str):
        if i not in examples:
            tgt = read_audio(run.wav("targets", i), run.sr)[0]
            inp = read_audio(run.wav("inputs", i), run.sr)[0]
            examples[i] = scorer.example(tgt, inp, getattr(run.by_id[i], "stem", ""))
        return examples[i]

    _target_stats(run, scorer, sc, example)
    pending = []
    for s in run.systems:
        for i in run.ids:
            sig = _sig(run.wav(s, i))
            cached = _cached(run, scorer, done.get((s, i)), sig, s, i)
            if cached is None:
                pending.append((s, i, sig))
                continue
            sc.per_system[s][i] = done[(s, i)]["metrics"]
            for e, st in cached.items():
                sc.stats[e][s][i] = st
    with _bar(len(pending), "scoring", "clip", progress) as bar:
        for c in range(0, len(pending), SCORE_CHUNK):
            part = pending[c:c + SCORE_CHUNK]
            _score_chunk(run, scorer, sc, part, res_path, example)
            bar.update(len(part))
    return sc


def _target_stats(run: _Run, scorer: Scorer, sc: _Scores, example: Callable[[str], Any]) -> None:
    """The targets' FAD statistics: cached files, the missing ones embedded together."""
    have = {(e, i): _load_stats(run.stats(e, "targets", i)) for e in scorer.embedders for i in run.ids}
    missing = [i for i in run.ids if any(have[(e, i)] is None for e in scorer.embedders)]
    for c in range(0, len(missing), SCORE_CHUNK):
        part = missing[c:c + SCORE_CHUNK]
        for i, st in zip(part, scorer.embed_stats_batch([example(i).target.wav for i in part])):
            for e in scorer.embedders:
                _save_stats(run.stats(e, "targets", i), st[e])
                have[(e, i)] = st[e]
    for e in scorer.embedders:
        sc.stats[e]["targets"] = {i: have[(e, i)] for i in run.ids}


def _cached(run: _Run, scorer: Scorer, rec: dict | None, sig, s: str, i: str) -> dict | None:
    """The cached statistics of (system s, example i) when its results line is current and complete, else None."""
    if rec is None or rec.get("sig") != sig or not all(k in rec.get("metrics", {}) for k in scorer.metric_names()):
        return None
    cached = {e: _load_stats(run.stats(e, s, i)) for e in scorer.embedders}
    return None if any(v is None for v in cached.values()) else cached


def _score_chunk(run: _Run, scorer: Scorer, sc: _Scores, part: list[tuple[str, str, Any]], res_path: str,
                 example: Callable[[str], Any]) -> None:
    """Read, score and embed the outputs of `part` [(system, id, file signature)] together; unreadable ones are skipped."""
    from imgen_jax.audio import read_audio

    ok, ests = [], []
    for s, i, sig in part:
        try:
            ests.append(read_audio(run.wav(s, i), run.sr)[0])
        except ImgenError as err:
            sc.skipped.append((s, i, str(err)))
            continue
        ok.append((s, i, sig))
    exs = [example(i) for _, i, _ in ok]
    metrics = scorer.score_batch(ests, exs)
    stats = scorer.embed_stats_batch([_fit(e, ex.n) for e, ex in zip(ests, exs)])
    for (s, i, sig), m, st in zip(ok, metrics, stats):
        for e in scorer.embedders:
            _save_stats(run.stats(e, s, i), st[e])
            sc.stats[e][s][i] = st[e]
        _append_result(res_path, {"system": s, "id": i, "sig": sig, "metrics": m})
        sc.per_system[s][i] = m
        sc.scored += 1


def _log_skipped(out_dir: str, skipped: list[tuple[str, str, str]], log: Callable[[str], None]) -> None:
    if not skipped:
        return
    with open(os.path.join(out_dir, "eval.log"), "a") as f:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        for s, i, why in skipped:
            f.write(f"{stamp} skipped {s}/{i}.wav: {why}\n")
    for s, i, why in skipped:
        log(f"skipped {s}/{i}.wav (not averaged; delete it to redo it): {why}")


# ---- the table --------------------------------------------------------------------------------


def _row(s: str, sc: _Scores, scorer: Scorer) -> dict[str, Any]:
    """System s's row: n, skipped, the mean of each per-example metric, each set metric per embedder."""
    vals = sc.per_system[s]
    row: dict[str, Any] = {"system": s, "n": len(vals), "skipped": sum(1 for x in sc.skipped if x[0] == s)}
    for m in scorer.metric_names():
        row[m] = float(np.mean([v[m] for v in vals.values()])) if vals else float("nan")
    for col, metric, e in scorer.set_columns():
        ok = list(sc.stats[e][s].values())
        row[col] = metric.compute(ok, list(sc.stats[e]["targets"].values())) if ok else float("nan")
    return row


def _write_table(run: _Run, opts: EvalOptions, scorer: Scorer, sc: _Scores, settings: dict,
                 edited: int) -> EvalResult:
    from imgen_jax.eval import report

    columns = scorer.metric_names() + [c for c, _, _ in scorer.set_columns()]
    rows = [_row(s, sc, scorer) for s in run.systems]
    tests = _statistics(rows, opts, scorer, sc)
    info = {"settings": settings, "n_examples": len(run.ids), "embedders": list(scorer.embedders),
            "plugins": {"embedders": list(opts.embedders), "clap": opts.clap, "classifier": opts.classifier,
                        "separator": opts.separator},
            "skipped": [{"system": s, "id": i, "reason": r} for s, i, r in sc.skipped],
            "notes": ["per-example metrics on 16 kHz audio; SSIM on mel power spectrograms with data_range 1 (official)",
                      "FAD: Fréchet distance of pooled frame embeddings, system outputs vs targets",
                      "kl_softmax / kl_sigmoid: audioldm_eval's KL(target || output) forms; p_demucs: success rate"]}
    if opts.resamples:
        info["statistics"] = _statistics_note(opts)
    out = lambda name: os.path.join(run.out_dir, name)
    paths = {
        "csv": report.write_csv(out("table.csv"), rows, columns),
        "json": report.write_json(out("table.json"), rows, columns, info, tests if opts.resamples else None),
        "png": report.write_bar_chart(out("table.png"), rows, columns,
                                      f"{opts.task}: {len(run.ids)} examples ({opts.split})"),
    }
    text = report.format_table(rows, columns)
    if opts.resamples:
        paths["tests"] = report.write_tests_csv(out("tests.csv"), tests)
        text += "\n\npaired tests (Wilcoxon signed-rank / paired bootstrap for FAD; diff = model - baseline)\n"
        text += report.format_tests(tests)
    return EvalResult(rows, columns, sc.skipped, edited, sc.scored, paths, text, tests)


def _statistics(rows: list[dict], opts: EvalOptions, scorer: Scorer, sc: _Scores) -> list[dict]:
    """Add the 95% bootstrap intervals to the rows and return the paired tests of the model rows against
    the other rows (imgen_jax.eval.stats); nothing with opts.resamples = 0."""
    from imgen_jax.eval import stats

    if not opts.resamples:
        return []
    ts = stats.TableStats(sc.per_system, scorer.metric_names(),
                          [(col, metric.compute, sc.stats[e]) for col, metric, e in scorer.set_columns()],
                          MODEL_SYSTEMS, resamples=opts.resamples)
    ts.intervals(rows)
    return ts.tests([r["system"] for r in rows])


def _statistics_note(opts: EvalOptions) -> dict:
    from imgen_jax.eval import stats

    return {"interval": f"{stats.LEVEL:.0%} percentile bootstrap over examples", "resamples": opts.resamples,
            "seed": stats.SEED, "models": list(MODEL_SYSTEMS),
            "example_test": "Wilcoxon signed-rank, two-sided, zero differences dropped, exact (ties included) up to "
                            f"{stats.EXACT_MAX} non-zero differences, else normal approximation (tie-corrected, "
                            "no continuity correction)",
            "set_test": "paired bootstrap of the difference on the same resamples, p = min(1, 2 (k + 1) / (B + 1))",
            "p_holm": "Holm-adjusted over all tests of one model row"}


# ---- the run ----------------------------------------------------------------------------------


def run_eval(
    model_dir: str, data_dir: str | None, out_dir: str, opts: EvalOptions, items: Sequence | None = None,
    progress: bool = True, log: Callable[[str], None] | None = None, editor=None,
) -> EvalResult:
    """Evaluate the model of `model_dir` on `opts.n` examples of `data_dir` (or on `items`, Triplet-like
    objects with id / input / target / instruction / stem / track) and write everything to `out_dir`.

    editor: an already loaded imgen_jax.instruct.edit.Editor (else loaded from model_dir, only if some edit is pending).
    log(message): where warnings go (default: stderr)."""
    log = log or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    opts.check()
    model_dir = os.path.abspath(os.fspath(model_dir))
    _, sr = _model_meta(model_dir)
    out_dir = _check_out_dir(out_dir)
    embedders, cache_key, plugins = _load_plugins(opts, model_dir)
    if items is None:
        if data_dir is None:
            raise ImgenError("give a data directory or the evaluation items")
        items = load_eval_set(os.fspath(data_dir), opts, sr)
    items = _check_items(items, opts)
    settings, examples = _settings(opts, model_dir, sr), _examples(items)
    _check_manifest(out_dir, settings, examples)  # the same settings and examples, or refuse to mix results
    ids = [e["id"] for e in examples]
    systems = SYSTEMS + ((BASELINE,) if plugins["separator"] is not None and opts.task in BASELINE_TASKS else ())
    run = _Run(out_dir, sr, ids, dict(zip(ids, items)), cache_key, systems)
    _write_references(run)
    edited = _edit_pending(run, opts, model_dir, editor, progress)
    _baseline_pending(run, opts, plugins["separator"], progress)
    scorer = Scorer(opts.task, sr, embedders, **plugins)
    sc = _score_all(run, scorer, progress)
    _log_skipped(out_dir, sc.skipped, log)
    return _write_table(run, opts, scorer, sc, settings, edited)


__all__ = ["EvalOptions", "EvalResult", "run_eval", "load_eval_set", "kl_softmax", "caption", "TASKS", "SYSTEMS",
           "BASELINE",
           "EVAL_SR"]
