"""`imgen eval`: edit a deterministic evaluation set, score every system, write the table; resumable.

    from imgen_jax.eval.runner import EvalOptions, run_eval

    res = run_eval("models/instruct", "data/slakh", "out/eval-remove", EvalOptions(task="remove", n=16))
    print(res.table_text)                 # one row per system: model, identity, oracle

Systems: `model` (the Instruct-MusicGen edit of the input), `identity` (output = the input, the
do-nothing yardstick) and `oracle` (output = the ground truth, the best possible score).

Output directory:

    manifest.json               settings + examples (id, track, stem, instruction, audio checksums)
    inputs/<id>.wav             the input mixes        targets/<id>.wav   the ground truths
    model/<id>.wav, identity/<id>.wav, oracle/<id>.wav   the outputs of each system
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

Per-example metrics (all computed on 16 kHz resampled audio, as the official evaluation; the
output is cut or zero-padded to the target's length first): `ssim` and `mel_l1` on mel
spectrograms (imgen_jax.eval.mel / ssim), `si_sdr` and `si_sdri` for remove / extract only (as the
official code), `clap` / `kl` when a CLAP / classifier plug-in is given. Set metrics: `fad_<name>`
per embedder, the Fréchet distance between the pooled Gaussian of a system's outputs and that of
the targets.

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

from imgen_jax.errors import ImgenError

TASKS = ("add", "remove", "extract")
SYSTEMS = ("model", "identity", "oracle")
SISDR_TASKS = ("remove", "extract")
EVAL_SR = 16000  # the official evaluation resamples everything to 16 kHz
MANIFEST = "manifest.json"
RESULTS = "results.jsonl"


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """What to evaluate and how. embedders: FAD embedder specs (imgen_jax.eval.plugins); clap /
    classifier: optional plug-in specs for the CLAP score and KL."""

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
    guidance: float = 3.0
    top_k: int = 100  # the official Instructor's top_k
    window_frames: int = 500
    stride_frames: int = 250

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
        if len(set(self.embedders)) != len(self.embedders):
            raise ImgenError(f"an embedder is given twice: {', '.join(self.embedders)}")


@dataclasses.dataclass
class EvalResult:
    """rows: the table (dicts with system, n, skipped and one value per metric); metrics: the metric
    columns; skipped: [(system, id, reason)]; edited / scored: how many edits and (system, example)
    scorings this run computed (0 and 0 on a finished directory); paths: the written table files."""

    rows: list[dict]
    metrics: list[str]
    skipped: list[tuple[str, str, str]]
    edited: int
    scored: int
    paths: dict[str, str]
    table_text: str


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
    return list(make_eval_set(data_dir, split=opts.split, task=opts.task, n=opts.n, seed=opts.seed, config=cfg))


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


def caption(task: str, stem: str) -> str:
    """CLAP text for an example: "<stem> music", as the official `evaluation/utils.py` derives it from
    the instruction for every task (its `add` captions also list the mix's other stems, which the
    evaluation set does not carry; for `remove` it names the removed stem, so read that CLAP
    score as 'how much of the removed stem is still heard')."""
    return f"{stem} music"


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


def _fit(wav: np.ndarray, n: int) -> np.ndarray:
    wav = np.asarray(wav, np.float32).reshape(-1)
    return wav[:n] if wav.size >= n else np.pad(wav, (0, n - wav.size))


def _column(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


# ---- scoring ----------------------------------------------------------------------------------


class _Scorer:
    """Per-example metrics and FAD statistics against one example's target (and input)."""

    def __init__(self, task: str, sr: int, embedders: dict[str, Any], clap=None, classifier=None):
        from imgen_jax.eval.mel import MelConfig

        self.task, self.sr = task, sr
        self.embedders, self.clap, self.classifier = embedders, clap, classifier
        self.mel_cfg = MelConfig(sample_rate=EVAL_SR)
        self._ref: dict[str, dict] = {}
        self._text: dict[str, np.ndarray] = {}

    def metric_names(self) -> list[str]:
        names = (["si_sdr", "si_sdri"] if self.task in SISDR_TASKS else []) + ["ssim", "mel_l1"]
        return names + (["clap"] if self.clap is not None else []) + (["kl"] if self.classifier is not None else [])

    def reference(self, ex_id: str, inp: np.ndarray, tgt: np.ndarray, stem: str) -> dict:
        from imgen_jax.eval.mel import mel_spectrogram, resample

        if ex_id not in self._ref:
            tgt16 = resample(tgt, self.sr, EVAL_SR)
            ref = {"n": tgt.size, "tgt": tgt, "tgt16": tgt16, "inp16": resample(_fit(inp, tgt.size), self.sr, EVAL_SR),
                   "mel": mel_spectrogram(tgt16, self.mel_cfg), "stem": stem}
            if self.classifier is not None:
                ref["logits"] = self._logits(tgt)
            self._ref[ex_id] = ref
        return self._ref[ex_id]

    def _logits(self, wav: np.ndarray) -> np.ndarray:
        from imgen_jax.eval.mel import resample

        out = np.asarray(self.classifier([resample(wav, self.sr, self.classifier.sample_rate)]), np.float64)
        if out.ndim != 2 or out.shape[0] != 1:
            raise ImgenError(f"classifier {self.classifier.name!r}: expected logits [1, classes], got shape {out.shape}")
        return out[0]

    def embed_stats(self, wav: np.ndarray) -> dict[str, Any]:
        from imgen_jax.eval.fad import GaussianStats
        from imgen_jax.eval.mel import resample

        return {name: GaussianStats.of(emb([resample(wav, self.sr, emb.sample_rate)])[0])
                for name, emb in self.embedders.items()}

    def score(self, est: np.ndarray, ref: dict) -> dict[str, float]:
        from imgen_jax.eval.mel import mel_l1, mel_spectrogram, resample
        from imgen_jax.eval.sisdr import si_sdr
        from imgen_jax.eval.ssim import ssim

        est = _fit(est, ref["n"])
        est16 = resample(est, self.sr, EVAL_SR)
        mel = mel_spectrogram(est16, self.mel_cfg)
        m: dict[str, float] = {}
        if self.task in SISDR_TASKS:
            s_out, s_in = float(si_sdr(est16, ref["tgt16"])), float(si_sdr(ref["inp16"], ref["tgt16"]))
            m["si_sdr"], m["si_sdri"] = s_out, s_out - s_in
        m["ssim"] = ssim(mel, ref["mel"], data_range=1.0)
        m["mel_l1"] = mel_l1(mel, ref["mel"], self.mel_cfg)
        if self.clap is not None:
            text = caption(self.task, ref["stem"])
            if text not in self._text:
                self._text[text] = np.asarray(self.clap.embed_text([text]), np.float64).reshape(-1)
            a = np.asarray(self.clap.embed_audio([resample(est, self.sr, self.clap.sample_rate)]), np.float64).reshape(-1)
            t = self._text[text]
            if a.shape != t.shape:
                raise ImgenError(f"clap {self.clap.name!r}: audio embedding {a.shape} and text embedding {t.shape} differ")
            m["clap"] = float(a @ t / max(np.linalg.norm(a) * np.linalg.norm(t), 1e-12))
        if self.classifier is not None:
            m["kl"] = kl_softmax(ref["logits"], self._logits(est))
        return m


def kl_softmax(logits_ref: np.ndarray, logits_est: np.ndarray) -> float:
    """KL(softmax(logits_ref) || softmax(logits_est)) in nats: logits [C] each (the target's class
    distribution against the output's, as audioldm_eval's `kl_softmax`, which the official evaluation
    uses with PANNs Cnn14 logits; audioldm_eval adds 1e-6 to the output probabilities before the
    log, we compute the exact KL)."""
    a = np.asarray(logits_ref, np.float64)
    b = np.asarray(logits_est, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ImgenError(f"KL: logits shapes {a.shape} and {b.shape} differ")
    la = a - np.logaddexp.reduce(a)
    lb = b - np.logaddexp.reduce(b)
    return float(np.sum(np.exp(la) * (la - lb)))


# ---- the run ----------------------------------------------------------------------------------


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


def run_eval(
    model_dir: str, data_dir: str | None, out_dir: str, opts: EvalOptions, items: Sequence | None = None,
    progress: bool = True, log: Callable[[str], None] | None = None, editor=None,
) -> EvalResult:
    """Evaluate the model of `model_dir` on `opts.n` examples of `data_dir` (or on `items`, Triplet-like
    objects with id / input / target / instruction / stem / track) and write everything to `out_dir`.

    editor: an already loaded imgen_jax.edit.Editor (else loaded from model_dir, only if some edit is pending).
    log(message): where warnings go (default: stderr)."""
    from imgen_jax.audio import read_audio, write_wav
    from imgen_jax.eval import report
    from imgen_jax.eval.fad import GaussianStats, fad
    from imgen_jax.eval.plugins import load_plugin

    log = log or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    opts.check()
    model_dir = os.path.abspath(os.fspath(model_dir))
    _, sr = _model_meta(model_dir)
    out_dir = os.path.abspath(os.fspath(out_dir))
    parent = os.path.dirname(out_dir)
    if not os.path.isdir(parent):
        raise ImgenError(f"{parent}: output directory's parent does not exist")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ImgenError(f"{out_dir}: exists and is not a directory")

    embedders, cache_key = {}, {}
    for spec in opts.embedders:
        emb = load_plugin("embedder", spec, model_dir)
        name = _column(getattr(emb, "name", spec))
        if name in embedders:
            raise ImgenError(f"two embedders are both named {name!r}")
        embedders[name] = emb
        cache_key[name] = f"{name}-{hashlib.sha1(spec.encode()).hexdigest()[:8]}"  # another spec, another cache
    clap = load_plugin("clap", opts.clap, model_dir) if opts.clap else None
    classifier = load_plugin("classifier", opts.classifier, model_dir) if opts.classifier else None

    if items is None:
        if data_dir is None:
            raise ImgenError("give a data directory or the evaluation items")
        items = load_eval_set(os.fspath(data_dir), opts, sr)
    items = _check_items(items, opts)

    # -- manifest: the same settings and examples, or refuse to mix results
    settings = {
        "model": model_dir, "task": opts.task, "n": opts.n, "seed": opts.seed, "split": opts.split,
        "clip_seconds": opts.clip_seconds, "stems": opts.stems, "sample_rate": sr,
        "edit": {"guidance": opts.guidance, "top_k": opts.top_k, "window_frames": opts.window_frames,
                 "stride_frames": opts.stride_frames, "seed": opts.seed},
    }
    examples = [{"id": _safe_id(t.id), "track": str(getattr(t, "track", "")), "stem": str(getattr(t, "stem", "")),
                 "instruction": str(t.instruction), "input_sha1": _digest(t.input), "target_sha1": _digest(t.target)}
                for t in items]
    os.makedirs(out_dir, exist_ok=True)
    man_path = os.path.join(out_dir, MANIFEST)
    if os.path.isfile(man_path):
        try:
            with open(man_path) as f:
                old = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ImgenError(f"{man_path}: unreadable manifest ({e}); use a new --out directory") from None
        diff = sorted(k for k in set(settings) | set(old.get("settings", {})) if settings.get(k) != old.get("settings", {}).get(k))
        if diff:
            raise ImgenError(f"{out_dir} holds an evaluation with other settings ({', '.join(diff)}); use a new --out directory")
        if old.get("examples") != examples:
            raise ImgenError(f"{out_dir} holds an evaluation of other examples (the data changed); use a new --out directory")
    else:
        report._atomic_text(man_path, json.dumps({"settings": settings, "examples": examples}, indent=1) + "\n")

    ids = [e["id"] for e in examples]
    by_id = dict(zip(ids, items))
    path = lambda d, i: os.path.join(out_dir, d, f"{i}.wav")
    for d in ("inputs", "targets", *SYSTEMS):
        os.makedirs(os.path.join(out_dir, d), exist_ok=True)

    # -- inputs / targets (ours: rewritten when missing or unreadable), identity / oracle outputs
    for i in ids:
        t = by_id[i]
        for d, a in (("inputs", t.input), ("targets", t.target)):
            p = path(d, i)
            try:
                read_audio(p, sr)
            except ImgenError:
                write_wav(p, np.asarray(a, np.float32), sr)
        for d, a in (("identity", t.input), ("oracle", t.target)):
            if not os.path.exists(path(d, i)):
                write_wav(path(d, i), np.asarray(a, np.float32), sr)

    # -- model edits: only examples without an output file
    pending = [i for i in ids if not os.path.exists(path("model", i))]
    edited = 0
    if pending:
        from imgen_jax.edit import EditConfig, Editor

        editor = editor or Editor.load(model_dir)
        window = min(opts.window_frames, editor.max_window)
        cfg = EditConfig(seed=opts.seed, guidance_scale=opts.guidance, top_k=opts.top_k, window_frames=window,
                         stride_frames=min(opts.stride_frames, window))
        frames = {i: editor.mg.encodec.cfg.num_frames(np.asarray(by_id[i].input).size) for i in pending}
        with _bar(sum(frames.values()), f"editing {len(pending)}", "frame", progress) as bar:
            for s in range(0, len(pending), opts.batch):
                part = pending[s:s + opts.batch]
                base = bar.n
                total = sum(frames[i] for i in part)

                def update(done, of, _base=base, _total=total):
                    bar.update(max(0, _base + min(_total, int(done) * _total // max(int(of), 1)) - bar.n))

                outs = editor.edit([np.asarray(by_id[i].input, np.float32)[None] for i in part],
                                   [by_id[i].instruction for i in part], cfg, update)
                for i, w in zip(part, outs):
                    write_wav(path("model", i), w, sr)
                edited += len(part)
                bar.update(base + total - bar.n)

    # -- per-example scoring (resumable through results.jsonl)
    scorer = _Scorer(opts.task, sr, embedders, clap, classifier)
    names = scorer.metric_names()
    res_path = os.path.join(out_dir, RESULTS)
    done = _read_results(res_path)
    stats_path = lambda emb, d, i: os.path.join(out_dir, "stats", cache_key[emb], d, f"{i}.npz")
    skipped: list[tuple[str, str, str]] = []
    per_system: dict[str, dict[str, dict]] = {s: {} for s in SYSTEMS}
    stats: dict[str, dict[str, list]] = {e: {s: [] for s in (*SYSTEMS, "targets")} for e in embedders}
    scored = 0
    refs_loaded: dict[str, dict] = {}

    def ref_of(i: str) -> dict:
        if i not in refs_loaded:
            tgt = read_audio(path("targets", i), sr)[0]
            inp = read_audio(path("inputs", i), sr)[0]
            refs_loaded[i] = scorer.reference(i, inp, tgt, by_id[i].stem if hasattr(by_id[i], "stem") else "")
        return refs_loaded[i]

    work = [(s, i) for s in SYSTEMS for i in ids]
    with _bar(len(work), "scoring", "clip", progress) as bar:
        for i in ids:  # the targets' FAD statistics
            for e in embedders:
                st = _load_stats(stats_path(e, "targets", i))
                if st is None:
                    st = scorer.embed_stats(ref_of(i)["tgt"])[e]
                    _save_stats(stats_path(e, "targets", i), st)
                stats[e]["targets"].append(st)
        for s, i in work:
            p = path(s, i)
            sig = _sig(p)
            rec = done.get((s, i))
            cached = None
            if rec is not None and rec.get("sig") == sig and all(k in rec.get("metrics", {}) for k in names):
                cached = {e: _load_stats(stats_path(e, s, i)) for e in embedders}
                if any(v is None for v in cached.values()):
                    cached = None
            if cached is not None:
                per_system[s][i] = rec["metrics"]
                for e in embedders:
                    stats[e][s].append(cached[e])
                bar.update(1)
                continue
            try:
                est = read_audio(p, sr)[0]
            except ImgenError as err:
                skipped.append((s, i, str(err)))
                bar.update(1)
                continue
            metrics = scorer.score(est, ref_of(i))
            st = scorer.embed_stats(_fit(est, ref_of(i)["n"]))
            for e in embedders:
                _save_stats(stats_path(e, s, i), st[e])
                stats[e][s].append(st[e])
            _append_result(res_path, {"system": s, "id": i, "sig": sig, "metrics": metrics})
            per_system[s][i] = metrics
            scored += 1
            bar.update(1)

    if skipped:
        with open(os.path.join(out_dir, "eval.log"), "a") as f:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            for s, i, why in skipped:
                f.write(f"{stamp} skipped {s}/{i}.wav: {why}\n")
        for s, i, why in skipped:
            log(f"skipped {s}/{i}.wav (not averaged; delete it to redo it): {why}")

    # -- the table
    fad_cols = [f"fad_{e}" for e in embedders]
    columns = names + fad_cols
    rows = []
    for s in SYSTEMS:
        vals = per_system[s]
        row: dict[str, Any] = {"system": s, "n": len(vals), "skipped": sum(1 for x in skipped if x[0] == s)}
        for m in names:
            row[m] = float(np.mean([v[m] for v in vals.values()])) if vals else float("nan")
        for e in embedders:
            ok = stats[e][s]
            row[f"fad_{e}"] = fad(GaussianStats.pool(ok), GaussianStats.pool(stats[e]["targets"])) if ok else float("nan")
        rows.append(row)
    text = report.format_table(rows, columns)
    info = {"settings": settings, "n_examples": len(ids), "embedders": list(embedders),
            "skipped": [{"system": s, "id": i, "reason": r} for s, i, r in skipped],
            "notes": ["per-example metrics on 16 kHz audio; SSIM on mel power spectrograms with data_range 1 (official)",
                      "FAD: Fréchet distance of pooled frame embeddings, system outputs vs targets"]}
    paths = {
        "csv": report.write_csv(os.path.join(out_dir, "table.csv"), rows, columns),
        "json": report.write_json(os.path.join(out_dir, "table.json"), rows, columns, info),
        "png": report.write_bar_chart(os.path.join(out_dir, "table.png"), rows, columns,
                                      f"{opts.task}: {len(ids)} examples ({opts.split})"),
    }
    return EvalResult(rows, columns, skipped, edited, scored, paths, text)


__all__ = ["EvalOptions", "EvalResult", "run_eval", "load_eval_set", "kl_softmax", "caption", "TASKS", "SYSTEMS"]
