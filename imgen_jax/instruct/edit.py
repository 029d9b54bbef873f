"""Text-instructed editing of music mixes with Instruct-MusicGen: instructions, windows, the editor.

    from imgen_jax.instruct.edit import Editor

    ed = Editor.load("models/instruct-musicgen")          # converted MusicGen + `adapters` component
    out = ed.edit([wav], ["remove drums"])                # wav [1, N] float at 32 kHz -> list of [1, N']

Pipeline (the official `Instructor.generate`): EnCodec-encode the input mix to condition codes
[B, K, T]; the instruction goes through T5 and the LM's text projection (padded rows zeroed, no key
mask, as audiocraft); the output is decoded window by window: a window of n frames at frame offset o
is conditioned on the condition frames o..o+n (the special frame appended after the last one), its
audio-fusion prefix is computed once before its decode loop, and from the second window on the last
`window - stride` generated frames are the window's audio prompt. Decoding is `imgen_jax.generate`
(one compiled program per window shape) with the adapters as its fusion plug-in
(`imgen_jax.instruct.decode_fusion`) and CFG on the text (both halves get the same prefix).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from imgen_jax.errors import ImgenError
from imgen_jax.generate import SamplingConfig
from imgen_jax.vocab import (EDIT_TOP_K, OFFICIAL_PREFIX, OFFICIAL_VERBS, PLAIN_INSTRUCTION, PLAIN_SYNONYMS,
                             STEM_ALIASES, STEMS, instruction)

# verb (lower case) -> task: the plain verbs, their synonyms and the official verbs ("no" -> remove); the texts,
# stems and aliases are imgen_jax.vocab's
_OFFICIAL_TASKS = tuple(PLAIN_INSTRUCTION)  # add, remove, extract, generate (not replace: two stems)
_VERBS = {**{t: t for t in _OFFICIAL_TASKS}, **PLAIN_SYNONYMS, **{OFFICIAL_VERBS[t].lower(): t for t in _OFFICIAL_TASKS}}
_OFFICIAL_RX = re.compile(
    "^" + re.escape(OFFICIAL_PREFIX.strip()).replace(r"\ ", r"\s*") + r"\s*("
    + "|".join(OFFICIAL_VERBS[t].lower() for t in _OFFICIAL_TASKS) + r")\s+(.+?)\.?\s*$", re.I)
_PLAIN_RX = re.compile(r"^\s*(" + "|".join(sorted(map(re.escape, _VERBS), key=len, reverse=True)) + r")\s+(?:the\s+)?(.+?)\.?\s*$", re.I)
_STEM_BY_KEY = {**{s.lower(): s for s in STEMS}, **STEM_ALIASES}


def normalise_instruction(text: str) -> str:
    """An instruction in the official format ("Music piece. Instruct: Add Drums.") or a plain one
    ("add drums", "remove bass", "extract piano") -> the official text. Unparseable -> ImgenError
    listing the accepted forms and stems."""
    if not isinstance(text, str) or not text.strip():
        raise ImgenError("empty instruction; " + _accepted())
    m = _OFFICIAL_RX.match(text.strip()) or _PLAIN_RX.match(text.strip())
    if m is None:
        raise ImgenError(f"cannot parse the instruction {text!r}; " + _accepted())
    task = _VERBS[m.group(1).lower()]
    stem_key = re.sub(r"\s+", " ", m.group(2).strip().lower())
    stem = _STEM_BY_KEY.get(stem_key)
    if stem is None:
        raise ImgenError(f"unknown stem {m.group(2)!r} in the instruction {text!r}; " + _accepted())
    return instruction(task, stem)


def _accepted() -> str:
    return (
        "accepted: 'add STEM', 'remove STEM' (or no / without), 'extract STEM' (or only / isolate), or the official "
        f"'{OFFICIAL_PREFIX}Add|No|Only STEM.'; stems: " + ", ".join(s.lower() for s in STEMS)
    )


WINDOW_MODES = ("gapless", "official")
OFFICIAL_TOP_K = EDIT_TOP_K     # the Instructor's top_k, 100 (MusicGen's own default, 250, is overridden)
OFFICIAL_WINDOW_FRAMES = 250    # CondMusicgen: sec = 5 at 50 frames/s
OFFICIAL_STRIDE_FRAMES = 800    # extend_stride = 16 s at 50 frames/s
OFFICIAL_FRAME_RATE = 50.0      # CondMusicgen's literal frame rate (its window arithmetic is in seconds)
OFFICIAL_MAX_OFFSET = 50 * 80   # the official loop stops once the offset exceeds 80 s


@dataclasses.dataclass(frozen=True)
class EditConfig:
    """How an edit is decoded: `sampling` (the shared imgen_jax.generate.SamplingConfig; default
    `SamplingConfig.for_edit()`: top_k 100, the official Instructor's setting, CFG 3.0; its num_frames and
    long-form windows are set per edit window) and the edit's windows. windows: "gapless" (default) or "official" (see
    `gapless_window_plan` / `official_window_plan`). window_frames / stride_frames: None = what the model and
    the mode give (`resolve_windows`): gapless windows as long as the adapters' positional table allows
    (pos_emb_frames - 1; 500 = 10 s for the official checkpoint) every half window; official windows of 250
    frames (5 s) every 800 frames (16 s).
    """

    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig.for_edit)
    window_frames: int | None = None
    stride_frames: int | None = None
    windows: str = "gapless"

    def __post_init__(self):
        if not isinstance(self.sampling, SamplingConfig):
            raise ImgenError("EditConfig.sampling must be an imgen_jax.generate.SamplingConfig, "
                             f"got {type(self.sampling).__name__}")
        if self.windows not in WINDOW_MODES:
            raise ImgenError(f"windows must be one of {', '.join(WINDOW_MODES)}, got {self.windows!r}")
        if self.window_frames is not None and self.window_frames < 1:
            raise ImgenError(f"window_frames must be >= 1, got {self.window_frames}")
        if self.stride_frames is not None and self.stride_frames < 1:
            raise ImgenError(f"stride_frames must be >= 1, got {self.stride_frames}")
        if (self.windows == "gapless" and None not in (self.window_frames, self.stride_frames)
                and self.stride_frames > self.window_frames):
            raise ImgenError(f"stride_frames must be in 1..window_frames ({self.window_frames}) for gapless windows, "
                             f"got {self.stride_frames}")

    def resolve_windows(self, max_window: int) -> tuple[int, int]:
        """(window, stride) in frames for adapters whose positional table covers `max_window` decoded frames
        (pos_emb_frames - 1); ImgenError when an explicit window does not fit."""
        if self.windows == "official":
            window = self.window_frames or min(OFFICIAL_WINDOW_FRAMES, max_window)
            stride = self.stride_frames or OFFICIAL_STRIDE_FRAMES
        else:
            window = self.window_frames or max_window
            stride = self.stride_frames or max(window // 2, 1)
            if stride > window:
                raise ImgenError(f"stride_frames {stride} exceeds window_frames {window}: gapless windows must overlap "
                                 "or touch")
        if window > max_window:
            raise ImgenError(f"window_frames {window} exceeds the adapters' {max_window} positions "
                             f"(pos_emb_frames - 1); use --window-frames {max_window} or less")
        return window, stride


def gapless_window_plan(total: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """[(offset, frames, prompt_frames)] of the default plan: every frame of an edit of `total` frames is
    generated exactly once. A window of n frames at `offset` is conditioned on condition frames offset..offset+n
    and, from the second window on, continues the previous window's last (n_prev - stride) frames as its audio
    prompt (stride <= window, so consecutive windows touch or overlap and leave no gap)."""
    plan, offset, prompt = [], 0, 0
    while offset + prompt < total:
        n = min(total - offset, window)
        if prompt >= n:
            break
        plan.append((offset, n, prompt))
        prompt, offset = max(n - stride, 0), offset + stride
    return plan


def official_window_plan(total: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """[(offset, frames, prompt_frames)] of the official `CondMusicgen.generate` loop over `total` condition frames.

    Its arithmetic is in seconds at 50 frames/s, in floating point: window = window/50 s, stride int(50 * stride/50)
    frames; a window at offset f generates int(min(total/50 - f/50, window/50) * 50) frames (so some lengths lose
    a frame: total 29 gives 28), windows start at 0, stride, 2 stride, ... while offset + prompt < total, and the
    loop stops once the offset exceeds 4000 frames. Each later window's prompt is the previous window's frames
    from `stride` on: with stride > window (official: 800 > 250) it is empty, so every later window starts afresh
    and frames window..stride-1 of every stride are never generated (the output is shorter, with gaps)."""
    fr = OFFICIAL_FRAME_RATE
    window_sec, stride_sec = window / fr, stride / fr
    stride_tokens = int(fr * stride_sec)
    total_sec = total / fr
    plan, offset, prompt = [], 0, 0
    while offset + prompt < total:
        n = int(min(total_sec - offset / fr, window_sec) * fr)
        if prompt >= n:
            break
        plan.append((offset, n, prompt))
        prompt = max(n - stride_tokens, 0)
        offset += stride_tokens
        if offset > OFFICIAL_MAX_OFFSET:
            break
    return plan


def window_plan(total: int, window: int, stride: int, mode: str = "gapless") -> list[tuple[int, int, int]]:
    """The plan of `mode` ("gapless" or "official"): [(offset, frames, prompt_frames)] per window."""
    if mode not in WINDOW_MODES:
        raise ImgenError(f"windows must be one of {', '.join(WINDOW_MODES)}, got {mode!r}")
    return (official_window_plan if mode == "official" else gapless_window_plan)(total, window, stride)


def edit_tokens(
    lm, adapters, cond_codes, memory, config: EditConfig = EditConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> jax.Array:
    """The windowed edit decode: cond_codes [B, K, T] + text memory [B, L, dim] -> codes [B, K, T'].

    lm: the frozen MusicGen LM; adapters: imgen_jax.instruct.fusion.InstructAdapters (any mode). memory: `lm.text_memory(t5_hidden, mask)` (no key mask is applied, as audiocraft).
    Window w at frame offset o with n frames is conditioned on condition frames o..o+n (the special
    frame after the last), its prefix computed once; its audio prompt is the previous window's frames from
    `stride` on. T' = T for gapless windows; the official plan returns the concatenated windows (shorter).
    """
    from imgen_jax.generate import generate
    from imgen_jax.instruct import decode_fusion

    cond = jnp.asarray(cond_codes, jnp.int32)
    B, K, T = cond.shape
    window, stride = config.resolve_windows(adapters.cfg.pos_emb_frames - 1)
    plan = window_plan(T, window, stride, config.windows)
    total = sum(n - tp for _, n, tp in plan)
    key = jax.random.PRNGKey(config.sampling.seed)
    out, prompt, done = [], None, 0
    for w, (offset, n, tp) in enumerate(plan):
        fusion = decode_fusion(lm, adapters, cond[:, :, offset:], num_frames=n)
        sampling = dataclasses.replace(config.sampling, num_frames=n, window_frames=None)
        report = None
        if progress is not None:
            def report(steps_done, steps, _start=done, _new=n - tp):
                progress(_start + (steps_done * _new) // max(steps, 1), total)
        gen = generate(
            lm, memory, None, sampling, prompt=prompt if tp else None, key=jax.random.fold_in(key, w),
            fusion=fusion, progress=report,
        )
        out.append(gen[:, :, tp:])
        done += n - tp
        prompt = gen[:, :, stride:] if n > stride else None
    return jnp.concatenate(out, axis=-1)


class Editor:
    """MusicGen + Instruct adapters, ready to edit. `mg`: imgen_jax.api.MusicGen (EnCodec, T5 and tokenizer
    required); `adapters`: imgen_jax.instruct.fusion.InstructAdapters."""

    def __init__(self, mg, adapters):
        for name in ("encodec", "t5", "tokenizer"):
            if getattr(mg, name) is None:
                raise ImgenError(f"{mg.model_dir or 'model'}: editing needs the {name} component")
        adapters.cfg.check_lm(mg.lm.cfg, mg.model_dir or "model")
        self.mg = mg
        self.adapters = adapters
        self.lm = mg.lm
        self.max_window = adapters.cfg.pos_emb_frames - 1  # decoded frames the positional table covers

    @classmethod
    def load(cls, model_dir: str, dtype=jnp.float32) -> "Editor":
        from imgen_jax.api import load_musicgen
        from imgen_jax.instruct.fusion import load_adapters
        from imgen_jax.modeldir import read_model_config

        meta = read_model_config(model_dir)
        if "adapters" not in meta:
            raise ImgenError(
                f"{model_dir}: no Instruct-MusicGen adapters in this model directory; add them with "
                "`imgen convert SRC --adapters finetuned.ckpt --out DIR`"
            )
        mg = load_musicgen(model_dir, dtype=dtype)
        return cls(mg, load_adapters(model_dir, mg.lm.cfg))

    @property
    def sample_rate(self) -> int:
        return self.mg.sample_rate

    def edit_codes(
        self, cond_codes, instructions: Sequence[str], config: EditConfig = EditConfig(),
        progress: Callable[[int, int], None] | None = None,
    ) -> jax.Array:
        """cond_codes [B, K, T] (the input mix's codes) + B instructions -> edited codes [B, K, T].

        progress(frames_done, T) is called as decoding advances (from inside the compiled loop)."""
        B = cond_codes.shape[0]
        if len(instructions) != B:
            raise ImgenError(f"{len(instructions)} instructions for {B} inputs")
        config.resolve_windows(self.max_window)  # refuse a window the adapters cannot cover before any work
        hidden, mask = self.mg.encode_text([normalise_instruction(t) for t in instructions])
        return edit_tokens(self.lm, self.adapters, cond_codes, self.lm.text_memory(hidden, mask), config, progress)

    def edit(
        self, wavs: Sequence[np.ndarray], instructions: Sequence[str], config: EditConfig = EditConfig(),
        progress: Callable[[int, int], None] | None = None,
    ) -> list[np.ndarray]:
        """wavs [C, N_i] (or [N_i]) float32 at `sample_rate` + one instruction each -> edited wavs [C, N_i'].

        C = `mg.audio_channels` (2 for a stereo model, whose channels are encoded one by one with the mono
        EnCodec and interleaved into [B, 8, T] condition codes); a mono input to a stereo model is used for
        both channels. Inputs of equal length are edited as one batch; different lengths run one after
        another. progress(frames_done, frames_total) counts output frames over all batches."""
        if len(wavs) != len(instructions):
            raise ImgenError(f"{len(instructions)} instructions for {len(wavs)} inputs")
        for t in instructions:
            normalise_instruction(t)  # refuse a bad instruction before any work
        C = self.mg.audio_channels
        wavs = [np.asarray(w, np.float32) for w in wavs]
        for i, w in enumerate(wavs):
            if w.ndim not in (1, 2) or (w.ndim == 2 and w.shape[0] not in (1, C)) or w.shape[-1] == 0:
                raise ImgenError(f"edit: input {i} has shape {w.shape}; expected [channels 1 or {C}, samples > 0]")
        wavs = [np.broadcast_to(w.reshape(1, -1) if w.ndim == 1 else w, (C, w.shape[-1])) for w in wavs]
        results: list[np.ndarray | None] = [None] * len(wavs)
        groups: dict[int, list[int]] = {}
        for i, w in enumerate(wavs):
            groups.setdefault(np.asarray(w).shape[-1], []).append(i)
        frames = {n: self.mg.encodec.cfg.num_frames(n) for n in groups}
        total, before = sum(frames.values()), 0
        for n, idx in groups.items():
            batch = np.stack([wavs[i] for i in idx])  # [B, C, N]
            codes = self.mg.encode_audio(batch)
            report = None
            if progress is not None:
                def report(done, _T, _before=before):
                    progress(_before + done, total)
            edited = self.edit_codes(codes, [instructions[i] for i in idx], config, report)
            before += frames[n]
            audio = np.asarray(self.mg.decode_codes(edited))
            for j, i in enumerate(idx):
                results[i] = audio[j]
        return results  # type: ignore[return-value]


__all__ = [
    "normalise_instruction", "EditConfig", "WINDOW_MODES", "gapless_window_plan", "official_window_plan", "window_plan",
    "edit_tokens", "Editor", "STEMS",
]
