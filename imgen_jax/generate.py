"""MusicGen decoding as one compiled XLA program: prefill, KV-cached loop, CFG, sampling, long form.

Semantics (audiocraft `LMModel.generate` / transformers `MusicgenForConditionalGeneration.generate`):

- Delay pattern (`imgen_jax.models.patterns`): a window of T frames is a pattern of S = T + max_delay + 1
  steps; step 0 is all special tokens (`card`). Positions the pattern marks invalid are forced to the
  special token, positions holding audio-prompt frames are forced to the prompt, every other position
  is sampled from the model output of the previous step.
- The prompt part (steps 0..Tp, Tp = prompt frames) is fed in one prefill; then one step per loop
  iteration, inside a `lax.while_loop`, against the self-attention KV cache of `MusicGenLM.init_cache`
  (text keys/values are computed once, before the loop).
- Classifier-free guidance: conditional and unconditional rows are one batch of 2B (conditional first).
  The unconditional text memory is all zeros with an all-zero text mask, which is what transformers does
  (`_prepare_text_encoder_kwargs_for_generation` concatenates zeros to the T5 states and to the mask; the
  forward then multiplies the projected states by the mask) and what audiocraft's null condition gives
  (T5 of "" with mask 0, multiplied by the mask). Either way the cross-attention of those rows outputs 0.
  logits = uncond + (cond - uncond) * guidance_scale.
- Then temperature, top-k, top-p (transformers' order and tie rules: top-k keeps every logit >= the k-th
  largest; top-p keeps the smallest set of most likely tokens whose mass reaches top_p), and a draw with
  `jax.random.categorical` with the key `fold_in(key, step)`. Greedy (argmax of the guided logits) when
  `use_sampling` is False, temperature is 0 or top_k is 1.
- Long form (more frames than `window_frames`): audiocraft's `_generate_tokens` sliding window. Each
  window of at most `window_frames` frames is generated with the last `window_frames - stride_frames`
  frames of the previous window as its audio prompt (text conditioning repeated); windows advance by
  `stride_frames`.

Differences from the PyTorch peers, by design: audiocraft ignores top_k when top_p > 0 (we apply both,
as transformers does); transformers disables CFG for guidance_scale <= 1 (we apply any scale other than
1.0 / None, as audiocraft does).

Compilation: the model is `nnx.split` into graphdef + state and one jitted pure function runs the whole
decode. It is compiled once per bucket: (graphdef, batch, text length, prompt frames, pattern buffer
length rounded up to `length_bucket` steps, greedy/top-k/CFG/top-p on-off, the fusion's structure and
shapes, progress on/off).

Conditioning plug-ins: `fusion` (an `imgen_jax.models.lm.LayerFusion`, e.g. Instruct-MusicGen's
`imgen_jax.instruct.fusion.InstructFusion`) goes to the LM unchanged; the sampler only asks it for its CFG rows
(`for_guidance`) and its decode layout (`for_decoding`).
Guidance scale, temperature, top_p values, the number of frames within the bucket and the key are
runtime values.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from imgen_jax import vocab, xla
from imgen_jax.errors import ImgenError
from imgen_jax.models.lm import LayerFusion, MusicGenLM, layer_slices
from imgen_jax.models.patterns import build_pattern, pattern_length, revert_pattern

ProgressFn = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to decode: the one decoding-settings type of generation (`imgen generate`), edits
    (`imgen_jax.instruct.edit.EditConfig.sampling`), evaluation (`EvalOptions.sampling`) and training samples
    (`imgen_jax.train.config.samples_sampling`). Defaults come from imgen_jax.vocab; `for_edit` gives
    the edit defaults (top_k 100, no long-form windows: edits cut their own).

    num_frames: frames of the output, audio prompt included (audiocraft's duration * frame_rate).
    guidance_scale: classifier-free guidance coefficient; None or 1.0 switches CFG off (one pass of B rows).
    use_sampling / temperature / top_k / top_p: sampling (greedy when use_sampling is False, temperature
    is 0 or top_k is 1); top_k None or 0 and top_p None, <= 0 or >= 1 switch that filter off.
    seed: seed of the `jax.random` key used when `generate` gets no key.
    window_frames / stride_frames: long-form generation when num_frames > window_frames (audiocraft's
    max_duration * frame_rate and extend_stride * frame_rate; MusicGen: 1500 and 900 at 50 Hz). None: one
    window of any length.
    length_bucket: the pattern buffer is rounded up to a multiple of this many steps, so that nearby
    lengths share one compiled program.
    """

    num_frames: int = vocab.GENERATE_WINDOW_FRAMES
    guidance_scale: float | None = vocab.GUIDANCE_SCALE
    use_sampling: bool = True
    temperature: float = vocab.TEMPERATURE
    top_k: int | None = vocab.GENERATE_TOP_K
    top_p: float | None = None
    seed: int = 0
    window_frames: int | None = vocab.GENERATE_WINDOW_FRAMES
    stride_frames: int = vocab.GENERATE_STRIDE_FRAMES
    length_bucket: int = 50

    def __post_init__(self):
        if self.num_frames < 1:
            raise ImgenError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.temperature < 0:
            raise ImgenError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ImgenError(f"top_k must be >= 0, got {self.top_k}")
        if self.length_bucket < 1:
            raise ImgenError(f"length_bucket must be >= 1, got {self.length_bucket}")
        if self.window_frames is not None and not 0 < self.stride_frames < self.window_frames:
            raise ImgenError(
                f"stride_frames must be in 1..window_frames-1, got {self.stride_frames} "
                f"with window {self.window_frames}"
            )

    @staticmethod
    def for_duration(seconds: float, frame_rate: float = 50.0, max_duration: float | None = 30.0,
                     extend_stride: float = 18.0, **kw) -> "SamplingConfig":
        """audiocraft's parametrisation in seconds: int(seconds * frame_rate) frames, windows of max_duration."""
        return SamplingConfig(
            num_frames=int(seconds * frame_rate),
            window_frames=None if max_duration is None else int(max_duration * frame_rate),
            stride_frames=int(extend_stride * frame_rate), **kw,
        )

    @staticmethod
    def for_edit(**kw) -> "SamplingConfig":
        """The edit defaults (the official Instructor: top_k 100, CFG 3.0), any field overridden by `kw`;
        the editor sets num_frames per window and decodes each window in one piece (window_frames None)."""
        return SamplingConfig(**{"top_k": vocab.EDIT_TOP_K, "window_frames": None, **kw})

    @property
    def cfg(self) -> bool:
        return self.guidance_scale is not None and float(self.guidance_scale) != 1.0

    @property
    def greedy(self) -> bool:
        return (not self.use_sampling) or self.temperature == 0 or self.top_k == 1

    @property
    def uses_top_k(self) -> bool:
        return bool(self.top_k) and not self.greedy

    @property
    def uses_top_p(self) -> bool:
        return self.top_p is not None and 0.0 < float(self.top_p) < 1.0 and not self.greedy


# ---- sampling ------------------------------------------------------------------------------------
def filter_logits(logits: jax.Array, top_k: int | None = None, top_p: jax.Array | float | None = None) -> jax.Array:
    """transformers' TopK then TopP warpers on logits [..., V]: removed entries become -inf.

    top_k keeps every logit >= the k-th largest (ties kept). top_p keeps token i iff the probability mass of
    the tokens strictly more likely than i is < top_p (so the most likely token is always kept).
    """
    if top_k:
        k = min(int(top_k), logits.shape[-1])
        kth = jax.lax.top_k(logits, k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        sorted_desc = -jnp.sort(-logits, axis=-1)
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < top_p
        keep = keep.at[..., 0].set(True)
        threshold = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def guide(logits: jax.Array, batch: int, cfg: bool, scale: jax.Array | float) -> jax.Array:
    """[2B or B, ...] model logits -> guided logits [B, ...]: uncond + (cond - uncond) * scale (cond rows first)."""
    if not cfg:
        return logits
    cond, uncond = logits[:batch], logits[batch:]
    return uncond + (cond - uncond) * scale


def choose_tokens(logits: jax.Array, key: jax.Array, *, greedy: bool, temperature: jax.Array | float = 1.0,
                  top_k: int | None = None, top_p: jax.Array | float | None = None) -> jax.Array:
    """Guided logits [..., V] -> tokens [...] int32 (argmax when greedy, else temperature/top-k/top-p draw)."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    x = filter_logits(logits.astype(jnp.float32) / temperature, top_k, top_p)
    return jax.random.categorical(key, x, axis=-1).astype(jnp.int32)


# ---- progress ------------------------------------------------------------------------------------
_PROGRESS: dict[int, ProgressFn] = {}
_PROGRESS_IDS = itertools.count(1)
_PROGRESS_LOCK = threading.Lock()


def _progress_trampoline(pid, done, total):
    fn = _PROGRESS.get(int(pid))
    if fn is not None:
        fn(int(done), int(total))


# ---- the compiled program ------------------------------------------------------------------------
class _Static(NamedTuple):
    """Everything about a decode that changes the compiled program (besides shapes and graphdef)."""

    prompt_steps: int  # prefill length P (steps 0..P-1 are known before decoding)
    cfg: bool
    greedy: bool
    top_k: int  # 0 = off
    top_p: bool
    progress: bool
    return_logits: bool
    unroll: bool  # per-layer cache and unrolled layers (see MusicGenLM.init_cache / extend)


_TRACES = [0]


def trace_count() -> int:
    """How many times the decode program has been traced (= compiled) in this process."""
    return _TRACES[0]


def _dup_batch(x: jax.Array, axis: int = 0) -> jax.Array:
    return jnp.concatenate([x, x], axis=axis)


def _decode_program(graphdef, state, memory, text_mask, template, n_steps, key, params, fusion, progress_id,
                    *, static: _Static):
    """The whole decode. template [B,K,Smax] int32: forced tokens (special / prompt) and -1 where to sample.

    n_steps: [] int32, the pattern length S <= Smax actually decoded. params: [3] float32 (guidance scale,
    temperature, top_p). fusion: a `LayerFusion` for B rows, or None. Returns the filled pattern [B,K,Smax] (and the guided logits [B,K,Smax,card]
    used to choose each step, when static.return_logits).
    """
    _TRACES[0] += 1
    lm: MusicGenLM = nnx.merge(graphdef, state)
    B, K, Smax = template.shape
    P = static.prompt_steps
    scale, temperature, top_p = params[0], params[1], params[2]
    if static.cfg:
        memory = jnp.concatenate([memory, jnp.zeros_like(memory)], axis=0)
        if text_mask is not None:
            text_mask = jnp.concatenate([text_mask, jnp.zeros_like(text_mask)], axis=0)
        if fusion is not None:
            fusion = fusion.for_guidance()
    if fusion is not None:
        fusion = fusion.for_decoding(static.unroll)
    rows = 2 * B if static.cfg else B

    def rows_of(tokens):
        return _dup_batch(tokens) if static.cfg else tokens

    def pick(model_logits, s):
        """Model logits [rows,K,card] of the step before s -> tokens [B,K] for step s, and the guided logits."""
        guided = guide(model_logits, B, static.cfg, scale)
        tok = choose_tokens(guided, jax.random.fold_in(key, s), greedy=static.greedy, temperature=temperature,
                            top_k=static.top_k or None, top_p=top_p if static.top_p else None)
        forced = jax.lax.dynamic_slice_in_dim(template, s, 1, axis=2)[..., 0]
        return jnp.where(forced >= 0, forced, tok), guided

    def write(buf, values, s):
        return jax.lax.dynamic_update_slice_in_dim(buf, values[:, :, None], s, axis=2)

    cache = lm.init_cache(rows, Smax, memory, text_mask, fusion, per_layer=static.unroll)
    if static.unroll:  # each layer's fusion arrays sliced once, not on every step of the loop
        fusion = layer_slices(fusion, lm.cfg.num_layers)
    logits, cache = lm.extend(rows_of(template[:, :, :P]), cache, fusion)
    logits = logits[:, :, -1]
    seq = template
    logit_buf = jnp.zeros((B, K, Smax, logits.shape[-1]), jnp.float32) if static.return_logits else None

    def record(buf, guided, s):
        if buf is None:
            return None
        return jax.lax.dynamic_update_slice_in_dim(buf, guided[:, :, None].astype(jnp.float32), s, axis=2)

    def body(s, carry):
        seq, cache, logits, buf = carry
        tok, guided = pick(logits, s)
        seq = write(seq, tok, s)
        buf = record(buf, guided, s)
        if static.progress:
            jax.debug.callback(_progress_trampoline, progress_id, s - P + 1, n_steps - P, ordered=False)
        out, cache = lm.extend(rows_of(tok[:, :, None]), cache, fusion)
        return seq, cache, out[:, :, -1], buf

    seq, cache, logits, logit_buf = jax.lax.fori_loop(P, n_steps - 1, body, (seq, cache, logits, logit_buf))
    last = n_steps - 1
    tok, guided = pick(logits, last)
    seq = write(seq, tok, last)
    logit_buf = record(logit_buf, guided, last)
    if static.progress:
        jax.debug.callback(_progress_trampoline, progress_id, n_steps - P, n_steps - P, ordered=False)
    return (seq, logit_buf) if static.return_logits else seq


def _run_compiled(args, static, lower_only: bool = False):
    """Call (or only compile) the decode program, jitted once per backend with `imgen_jax.xla` options."""
    fn = xla.backend_jit(_decode_program, static_argnames=("graphdef", "static"), donate_argnames=("template",))
    return fn.lower(*args, static=static).compile() if lower_only else fn(*args, static=static)


# ---- public entry points -------------------------------------------------------------------------
def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _unroll(unroll_layers: bool | None) -> bool:
    """Per-layer KV cache and unrolled layers (`MusicGenLM.init_cache(per_layer=True)`): default on except on TPU."""
    return jax.default_backend() != "tpu" if unroll_layers is None else bool(unroll_layers)


def generate(
    lm: MusicGenLM,
    memory: jax.Array,
    text_mask: jax.Array | None = None,
    config: SamplingConfig = SamplingConfig(),
    *,
    prompt: jax.Array | np.ndarray | None = None,
    key: jax.Array | None = None,
    fusion: LayerFusion | None = None,
    progress: ProgressFn | None = None,
    return_logits: bool = False,
    unroll_layers: bool | None = None,
):
    """Generate codes [B, K, config.num_frames] (pattern reverted; the audio prompt's frames come first).

    lm: the MusicGen LM. memory [B, L, dim]: `lm.text_memory(t5_hidden, mask)`. text_mask [B, L] (1 = real
    token): masks padded text keys (transformers semantics), or None to attend to every key (audiocraft).
    prompt [B, K, Tp] int: audio-prompt codes to continue (Tp < num_frames). key: a `jax.random` key
    (default `PRNGKey(config.seed)`). fusion: a conditioning plug-in (`imgen_jax.models.lm.LayerFusion` for the B
    rows, e.g. `imgen_jax.instruct.decode_fusion`), or None for plain MusicGen. progress(done, total):
    called from the running program (audiocraft's convention: steps of this window; long form: frames of the
    output). return_logits: also return the guided logits [B, K, S, card] (float32) that chose each pattern
    step (zeros at prefilled steps); single window only. unroll_layers: per-layer KV cache and unrolled layers
    (`MusicGenLM.init_cache(per_layer=True)`): faster steps, longer compile; default: on except on TPU.
    """
    if key is None:
        key = jax.random.PRNGKey(config.seed)
    extras = _Extras(fusion, _unroll(unroll_layers))
    T = config.num_frames
    if config.window_frames is not None and T > config.window_frames:
        if return_logits:
            raise ImgenError("return_logits is only available for single-window generation")
        return _generate_long(lm, memory, text_mask, config, prompt, key, extras, progress)
    return _generate_window(lm, memory, text_mask, config, T, prompt, key, extras, progress, return_logits)


def compile_generate(
    lm: MusicGenLM,
    memory: jax.Array,
    text_mask: jax.Array | None = None,
    config: SamplingConfig = SamplingConfig(),
    *,
    prompt: jax.Array | np.ndarray | None = None,
    fusion: LayerFusion | None = None,
    progress: bool = False,
    return_logits: bool = False,
    unroll_layers: bool | None = None,
) -> int:
    """Compile (without running) the program(s) that `generate` with these arguments will run.

    Same arguments as `generate` (`progress`: whether a callback will be given). Later `generate` calls of
    the same buckets start without compiling. Returns the number of programs compiled or found compiled
    (one per distinct window shape; long form has up to three).
    """
    extras = _Extras(fusion, _unroll(unroll_layers))
    shapes = []  # (frames, prompt frames) of each window
    T = config.num_frames
    Tp = 0 if prompt is None else int(prompt.shape[-1])
    if config.window_frames is not None and T > config.window_frames:
        W, stride, offset = config.window_frames, config.stride_frames, 0
        while offset + Tp < T:
            shapes.append((min(T - offset, W), Tp))
            Tp, offset = W - stride, offset + stride
    else:
        shapes.append((T, Tp))
    B, K = memory.shape[0], lm.cfg.num_codebooks
    key = jax.random.PRNGKey(0)
    seen = set()
    for n, tp in shapes:
        dummy = None if tp == 0 else np.zeros((B, K, tp), np.int32)
        args, static, S = _window_args(lm, memory, text_mask, config, n, dummy, key, extras, progress, return_logits)
        bucket = (args[4].shape, static)
        if bucket not in seen:
            seen.add(bucket)
            _run_compiled(args, static, lower_only=True)
    return len(seen)


class _Extras(NamedTuple):
    """What a decode adds to the LM: the fusion plug-in (or None) and the cache layout."""

    fusion: LayerFusion | None
    unroll: bool


def _window_args(lm, memory, text_mask, config, T, prompt, key, extras: _Extras, progress: bool, return_logits: bool):
    """The arguments of the decode program for one window (and the pattern length S)."""
    cfg = lm.cfg
    delays = cfg.delays
    B = memory.shape[0]
    Tp = 0 if prompt is None else int(prompt.shape[-1])
    if prompt is not None and (prompt.shape[0] != B or prompt.shape[1] != cfg.num_codebooks):
        raise ImgenError(f"prompt has shape {tuple(prompt.shape)}, expected [{B}, {cfg.num_codebooks}, Tp]")
    if Tp >= T:
        raise ImgenError(f"the audio prompt ({Tp} frames) must be shorter than the output ({T} frames)")
    if text_mask is not None and tuple(text_mask.shape) != tuple(memory.shape[:2]):
        raise ImgenError(f"text_mask has shape {tuple(text_mask.shape)}, expected {tuple(memory.shape[:2])}")
    S = pattern_length(T, delays)
    Smax = _round_up(S, config.length_bucket)
    codes = np.full((B, cfg.num_codebooks, T), -1, np.int32)
    if prompt is not None:
        codes[:, :, :Tp] = np.asarray(prompt, np.int32)
    template = build_pattern(codes, cfg.special_token, delays, num_steps=Smax)
    static = _Static(
        prompt_steps=Tp + 1,  # steps 0..Tp hold only special and prompt tokens (step Tp+1 holds frame Tp of codebook 0)
        cfg=config.cfg, greedy=config.greedy, top_k=int(config.top_k) if config.uses_top_k else 0,
        top_p=config.uses_top_p, progress=bool(progress),
        return_logits=return_logits, unroll=extras.unroll,
    )
    params = jnp.asarray([
        config.guidance_scale if config.cfg else 1.0,
        config.temperature if not config.greedy else 1.0,
        config.top_p if config.uses_top_p else 1.0,
    ], jnp.float32)
    graphdef, state = nnx.split(lm)
    args = (
        graphdef, state, jnp.asarray(memory), None if text_mask is None else jnp.asarray(text_mask, jnp.int32),
        jnp.asarray(template), jnp.asarray(S, jnp.int32), key, params, extras.fusion, jnp.asarray(0, jnp.int32),
    )
    return args, static, S


def _generate_window(lm, memory, text_mask, config, T, prompt, key, extras: _Extras, progress, return_logits=False):
    args, static, S = _window_args(lm, memory, text_mask, config, T, prompt, key, extras, progress is not None,
                                   return_logits)
    pid = 0
    if progress is not None:
        with _PROGRESS_LOCK:
            pid = next(_PROGRESS_IDS)
            _PROGRESS[pid] = progress
    try:
        out = _run_compiled(args[:-1] + (jnp.asarray(pid, jnp.int32),), static)
        if progress is not None:
            jax.block_until_ready(out)
            jax.effects_barrier()
    finally:
        if progress is not None:
            with _PROGRESS_LOCK:
                _PROGRESS.pop(pid, None)
    seq, logits = out if return_logits else (out, None)
    codes_out = revert_pattern(seq[:, :, :S], lm.cfg.delays, T)
    if return_logits:
        return codes_out, logits[:, :, :S]
    return codes_out


def _generate_long(lm, memory, text_mask, config, prompt, key, extras, progress):
    """audiocraft's `MusicGen._generate_tokens` for durations longer than one window."""
    total, W, stride = config.num_frames, config.window_frames, config.stride_frames
    pieces = []
    if prompt is None:
        prompt_len = 0
    else:
        prompt = jnp.asarray(prompt, jnp.int32)
        pieces.append(prompt)
        prompt_len = int(prompt.shape[-1])
        if prompt_len > W:
            raise ImgenError(f"the audio prompt ({prompt_len} frames) is longer than one window ({W} frames)")
    offset = 0
    for window in itertools.count():
        if offset + prompt_len >= total:
            break
        n = min(total - offset, W)
        report = None
        if progress is not None:
            def report(done, steps, _start=offset + prompt_len, _new=n - prompt_len):
                progress(_start + (done * _new) // max(steps, 1), total)  # frames of the whole output
        gen = _generate_window(lm, memory, text_mask, config, n, prompt, jax.random.fold_in(key, window), extras,
                               report)
        pieces.append(gen[:, :, prompt_len:])
        prompt = gen[:, :, stride:]
        prompt_len = int(prompt.shape[-1])
        offset += stride
    return jnp.concatenate(pieces, axis=-1)
