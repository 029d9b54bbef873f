"""The Python API over a converted MusicGen directory (made by `imgen convert`).

    from imgen_jax.api import load_musicgen

    mg = load_musicgen("models/musicgen-small")          # EnCodec + T5 + LM, no torch needed
    codes = mg.encode_audio(wav)                         # wav [B, 1, N] float at 32 kHz -> [B, 4, T] int32
    audio = mg.decode_codes(codes)                       # [B, 4, T] -> [B, 1, T * 640]
    hidden, mask = mg.encode_text(["lofi beat", "jazz"]) # [B, L, 768] float32, [B, L] int32
    logits, valid = mg.lm_logits(codes, hidden, mask)    # [B, 4, T, 2048] float32, [B, 4, T] bool

Every method runs one jit-compiled XLA program (compiled once per input shape). Components
that the directory lacks (e.g. an audiocraft conversion without EnCodec or T5) are None and
the methods that need them raise ImgenError naming what is missing.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp

from imgen_jax.xla import jit_method
from imgen_jax.errors import ImgenError
from imgen_jax.lm import MusicGenLM, load_lm
from imgen_jax.modeldir import read_model_config


class MusicGen:
    """A loaded MusicGen: `lm` (MusicGenLM), `encodec` (EncodecModel or None), `t5` (T5Encoder or
    None) and `tokenizer` (T5Tokenizer or None)."""

    def __init__(self, lm: MusicGenLM, encodec=None, t5=None, tokenizer=None, model_dir: str | None = None):
        self.lm, self.encodec, self.t5, self.tokenizer = lm, encodec, t5, tokenizer
        self.model_dir = model_dir
        self._lm_logits = jit_method(lm, lambda m, codes, hidden, mask: m.frame_logits(codes, m.text_memory(hidden, mask), None))
        self._encode = jit_method(encodec, type(encodec).encode) if encodec is not None else None
        self._decode = jit_method(encodec, type(encodec).decode) if encodec is not None else None
        self._text = jit_method(t5, lambda m, ids, mask: m(ids, mask)) if t5 is not None else None

    @property
    def sample_rate(self) -> int:
        return self._need("encodec", self.encodec).cfg.sampling_rate

    @property
    def frame_rate(self) -> float:
        return self._need("encodec", self.encodec).cfg.frame_rate

    def _need(self, name: str, component):
        if component is None:
            raise ImgenError(f"{self.model_dir or 'model'}: no {name} component (convert it with the {name} weights)")
        return component

    def encode_audio(self, wav) -> jax.Array:
        """wav [B, C, N] float at `sample_rate` (C = audio channels, 1 for mono) -> codes [B, K, T] int32."""
        self._need("encodec", self.encodec)
        wav = jnp.asarray(wav, jnp.float32)
        if wav.ndim != 3 or wav.shape[1] != self.encodec.cfg.audio_channels:
            raise ImgenError(
                f"encode_audio: expected audio [batch, {self.encodec.cfg.audio_channels}, samples], got shape {tuple(wav.shape)}"
            )
        return self._encode(wav)

    def decode_codes(self, codes) -> jax.Array:
        """codes [B, K, T] int -> wav [B, C, N] float32."""
        self._need("encodec", self.encodec)
        codes = jnp.asarray(codes, jnp.int32)
        self._check_codes(codes, self.encodec.cfg.num_codebooks, self.encodec.cfg.codebook_size)
        return self._decode(codes)

    def encode_text(self, texts: Sequence[str] | str, max_length: int | None = None) -> tuple[jax.Array, jax.Array]:
        """texts -> (T5 last hidden state [B, L, text_dim] float32, padding mask [B, L] int32)."""
        self._need("t5", self.t5)
        self._need("tokenizer (spiece.model)", self.tokenizer)
        ids, mask = self.tokenizer(texts, max_length=max_length)
        return self._text(jnp.asarray(ids), jnp.asarray(mask)), jnp.asarray(mask)

    def lm_logits(self, codes, text_hidden, text_mask=None) -> tuple[jax.Array, jax.Array]:
        """Teacher-forced LM logits of frames, as audiocraft's `compute_predictions`.

        codes [B, K, T] int, text_hidden [B, L, text_dim] (from `encode_text`), text_mask [B, L]
        -> (logits [B, K, T, card] float32 with NaN where invalid, valid [B, K, T] bool).
        Padded text positions are zeroed in the memory and still attended to, as audiocraft does.
        """
        cfg = self.lm.cfg
        codes = jnp.asarray(codes, jnp.int32)
        self._check_codes(codes, cfg.num_codebooks, cfg.card)
        hidden = jnp.asarray(text_hidden, jnp.float32)
        if hidden.ndim != 3 or hidden.shape[0] != codes.shape[0] or hidden.shape[2] != cfg.text_dim:
            raise ImgenError(
                f"lm_logits: text_hidden must be [{codes.shape[0]}, length, {cfg.text_dim}], got {tuple(hidden.shape)}"
            )
        mask = jnp.ones(hidden.shape[:2], jnp.int32) if text_mask is None else jnp.asarray(text_mask, jnp.int32)
        return self._lm_logits(codes, hidden, mask)

    @staticmethod
    def _check_codes(codes: jax.Array, K: int, card: int) -> None:
        if codes.ndim != 3 or codes.shape[1] != K:
            raise ImgenError(f"expected codes [batch, {K}, frames], got shape {tuple(codes.shape)}")
        if codes.size:
            lo, hi = int(codes.min()), int(codes.max())
            if lo < 0 or hi >= card:
                raise ImgenError(f"codes must lie in [0, {card}); got values in [{lo}, {hi}]")


def load_musicgen(model_dir: str | os.PathLike, dtype=jnp.float32) -> MusicGen:
    """Load every component present in a converted MusicGen directory.

    dtype: compute dtype of the LM and T5 (float32; bfloat16 on accelerators). EnCodec runs in float32.
    """
    from imgen_jax.encodec import load_encodec
    from imgen_jax.t5 import load_t5

    model_dir = os.fspath(model_dir)
    meta = read_model_config(model_dir)
    if "lm" not in meta:
        raise ImgenError(f"{model_dir}: not a MusicGen directory (kind {meta.get('kind')!r}, no 'lm' component)")
    lm = load_lm(model_dir, dtype=dtype)
    encodec = load_encodec(model_dir) if "encodec" in meta else None
    t5, tokenizer = load_t5(model_dir, dtype=dtype) if "t5" in meta else (None, None)
    return MusicGen(lm, encodec, t5, tokenizer, model_dir=model_dir)


__all__ = ["MusicGen", "load_musicgen"]
