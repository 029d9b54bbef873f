"""The Python API over a converted MusicGen directory (made by `imgen convert`).

    from imgen_jax.api import load_musicgen

    mg = load_musicgen("models/musicgen-small")          # EnCodec + T5 + LM, no torch needed
    codes = mg.encode_audio(wav)                         # wav [B, 1, N] float at 32 kHz -> [B, 4, T] int32
    audio = mg.decode_codes(codes)                       # [B, 4, T] -> [B, 1, T * 640]
    hidden, mask = mg.encode_text(["lofi beat", "jazz"]) # [B, L, 768] float32, [B, L] int32
    logits, valid = mg.lm_logits(codes, hidden, mask)    # [B, 4, T, 2048] float32, [B, 4, T] bool

Stereo models (musicgen-stereo-*: an LM with 8 codebooks and audio_channels 2 over the mono EnCodec)
read and write [B, 2, N] audio, as transformers does: each channel is encoded alone by the mono
EnCodec and the codebooks are interleaved, codes[:, 2k + c] = level k of channel c (0 left, 1 right).

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
from imgen_jax.models.lm import MusicGenLM, load_lm
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
        self._per_channel = False  # True: a multi-channel LM over a mono EnCodec, one EnCodec pass per channel
        if encodec is not None:
            K, C = lm.cfg.num_codebooks, lm.cfg.audio_channels
            Ke, Ce = encodec.cfg.num_codebooks, encodec.cfg.audio_channels
            self._per_channel = Ce == 1 and C > 1 and K == C * Ke
            if not self._per_channel and (K, C) != (Ke, Ce):
                raise ImgenError(
                    f"{model_dir or 'model'}: the LM ({K} codebooks, {C} audio channels) does not fit the EnCodec "
                    f"({Ke} codebooks, {Ce} audio channels); expected equal, or a mono EnCodec with {Ke} x channels "
                    "LM codebooks"
                )

    @property
    def audio_channels(self) -> int:
        """Channels of the audio the model reads and writes (the LM's: 2 for musicgen-stereo, else 1)."""
        return self.lm.cfg.audio_channels

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
        """wav [B, C, N] float at `sample_rate` (C = `audio_channels`) -> codes [B, K, T] int32 (K = the LM's).

        Stereo models over a mono EnCodec encode each channel alone and interleave the codebooks
        (codes[:, 2k + c] = level k of channel c); a mono wav [B, 1, N] given to such a model is
        encoded once and its codes used for both channels (transformers' `repeat_interleave`)."""
        enc = self._need("encodec", self.encodec)
        wav = jnp.asarray(wav, jnp.float32)
        C = self.audio_channels
        if wav.ndim != 3 or wav.shape[1] not in ((1, C) if self._per_channel else (C,)):
            raise ImgenError(f"encode_audio: expected audio [batch, {C}, samples], got shape {tuple(wav.shape)}")
        if not self._per_channel:
            return self._encode(wav)
        B, Cw, N = wav.shape
        codes = self._encode(wav.reshape(B * Cw, 1, N))  # [B * Cw, Ke, T]
        Ke, T = enc.cfg.num_codebooks, codes.shape[-1]
        codes = jnp.broadcast_to(codes.reshape(B, Cw, Ke, T), (B, C, Ke, T))
        return codes.transpose(0, 2, 1, 3).reshape(B, Ke * C, T)

    def decode_codes(self, codes) -> jax.Array:
        """codes [B, K, T] int (K = the LM's codebooks) -> wav [B, C, N] float32 (C = `audio_channels`).

        Stereo models over a mono EnCodec decode codebooks 0, 2, 4, .. as the left channel and
        1, 3, 5, .. as the right (transformers' `[:, ::2]` / `[:, 1::2]`)."""
        enc = self._need("encodec", self.encodec)
        codes = jnp.asarray(codes, jnp.int32)
        if not self._per_channel:
            self._check_codes(codes, enc.cfg.num_codebooks, enc.cfg.codebook_size)
            return self._decode(codes)
        C, Ke = self.audio_channels, enc.cfg.num_codebooks
        self._check_codes(codes, C * Ke, enc.cfg.codebook_size)
        B, _, T = codes.shape
        per_channel = codes.reshape(B, Ke, C, T).transpose(0, 2, 1, 3).reshape(B * C, Ke, T)
        wav = self._decode(per_channel)  # [B * C, 1, N]
        return wav.reshape(B, C, wav.shape[-1])

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
    from imgen_jax.models.encodec import load_encodec
    from imgen_jax.models.t5 import load_t5

    model_dir = os.fspath(model_dir)
    meta = read_model_config(model_dir)
    if "lm" not in meta:
        raise ImgenError(f"{model_dir}: not a MusicGen directory (kind {meta.get('kind')!r}, no 'lm' component)")
    lm = load_lm(model_dir, dtype=dtype)
    encodec = load_encodec(model_dir) if "encodec" in meta else None
    t5, tokenizer = load_t5(model_dir, dtype=dtype) if "t5" in meta else (None, None)
    return MusicGen(lm, encodec, t5, tokenizer, model_dir=model_dir)


__all__ = ["MusicGen", "load_musicgen"]
