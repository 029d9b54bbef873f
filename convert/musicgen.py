"""Whole-model converters: a Hugging Face MusicGen directory, or audiocraft checkpoints, or a
Hugging Face T5 directory -> an imgen_jax converted model directory (see imgen_jax.modeldir).

`convert_any` picks the converter from what the source is:
- a directory with config.json of model_type "musicgen"      -> convert_hf_musicgen
- a directory with config.json of model_type "t5"            -> convert.t5_weights.convert_hf_t5_dir
- a directory holding state_dict.bin (+ compression_state_dict.bin), or a state_dict.bin file
                                                             -> convert_audiocraft

audiocraft packs the compression model (compression_state_dict.bin) in one of two ways
(audiocraft.utils.export, read back by audiocraft.models.loaders.load_compression_model):
- weights: {'best_state': {EnCodec state dict}, 'xp.cfg': training config YAML, 'version', 'exported'};
- a reference: {'pretrained': 'facebook/encodec_32khz', 'exported': True, 'version'}, which
  audiocraft resolves at load time (CompressionModel.get_pretrained: a Hugging Face EncodecModel of
  that name). Nothing is downloaded here: such a file is an ImgenError naming the reference, and
  `compression` may point at a local Hugging Face EnCodec folder (config.json of model_type
  "encodec" + model.safetensors / pytorch_model.bin) to convert instead, as audiocraft would use it.
"""

from __future__ import annotations

import os

from convert.common import load_hf_weights, load_torch_checkpoint, read_json, strip_prefix
from convert.encodec_weights import encodec_from_audiocraft, encodec_from_hf
from convert.lm_weights import lm_from_audiocraft, lm_from_hf
from convert.t5_weights import convert_hf_t5_dir, t5_from_hf
from imgen_jax.models.encodec import EncodecConfig
from imgen_jax.configs import config_to_dict
from imgen_jax.errors import ImgenError
from imgen_jax.modeldir import TOKENIZER_NAME, write_model_dir

AUDIOCRAFT_LM = "state_dict.bin"
AUDIOCRAFT_CODEC = "compression_state_dict.bin"


def _tokenizer_in(d: str | None) -> str | None:
    if d is None:
        return None
    p = os.path.join(d, TOKENIZER_NAME)
    return p if os.path.isfile(p) else None


def convert_hf_musicgen(hf_dir: str, out_dir: str, overwrite: bool = False) -> str:
    """Convert a Hugging Face MusicGen snapshot (config.json + safetensors/.bin) to `out_dir`."""
    config = read_json(os.path.join(hf_dir, "config.json"))
    if config.get("model_type") != "musicgen":
        raise ImgenError(
            f"{hf_dir}/config.json: field model_type is {config.get('model_type')!r}, expected 'musicgen'"
        )
    sd = load_hf_weights(hf_dir)
    source = hf_dir
    enc_cfg, enc_flat = encodec_from_hf(strip_prefix(sd, "audio_encoder."), config.get("audio_encoder"), f"{source} [audio_encoder]")
    t5_cfg, t5_flat = t5_from_hf(sd, config.get("text_encoder"), f"{source} [text_encoder]", prefix="text_encoder.")
    lm_sd = {k: v for k, v in sd.items() if not k.startswith(("audio_encoder.", "text_encoder."))}
    lm_cfg, lm_flat = lm_from_hf(lm_sd, config.get("decoder"), f"{source} [decoder]", text_dim=t5_cfg.d_model)
    return write_model_dir(
        out_dir, "musicgen",
        {"lm": lm_cfg.to_dict(), "encodec": config_to_dict(enc_cfg), "t5": config_to_dict(t5_cfg)},
        {"lm": lm_flat, "encodec": enc_flat, "t5": t5_flat},
        source=os.path.abspath(hf_dir), tokenizer_model=_tokenizer_in(hf_dir), overwrite=overwrite,
    )


def _best_state(path: str) -> tuple[dict, dict]:
    tensors, meta = load_torch_checkpoint(path)
    if any(k.startswith("best_state.") for k in tensors):
        tensors = strip_prefix(tensors, "best_state.")
    return tensors, meta


def _audiocraft_compression(path: str) -> tuple[dict, dict]:
    """(state dict, meta) of an audiocraft compression_state_dict.bin that holds weights; an
    ImgenError naming the reference when it is a {'pretrained': name} pointer instead."""
    tensors, meta = _best_state(path)
    ref = meta.get("pretrained")
    if not tensors and isinstance(ref, str):
        hint = f"{ref.rsplit('/', 1)[-1]} layout" if ref.startswith("facebook/encodec") else "imgen_jax converts EnCodec only"
        raise ImgenError(
            f"{path} refers to the pretrained {ref!r} instead of holding weights; pass --compression PATH to a "
            f"local Hugging Face EnCodec folder ({hint})"
        )
    return tensors, meta


def convert_compression(path: str) -> tuple[EncodecConfig, dict]:
    """The EnCodec component from `path`: a local Hugging Face EnCodec folder (config.json of
    model_type "encodec" + weights), an audiocraft compression_state_dict.bin holding weights, or
    a folder containing one. -> (EncodecConfig, our flat weights)."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")):
            config = read_json(os.path.join(path, "config.json"))
            if config.get("model_type") != "encodec":
                raise ImgenError(
                    f"{path}/config.json: field model_type is {config.get('model_type')!r}, expected 'encodec' "
                    "(a Hugging Face EnCodec folder such as facebook/encodec_32khz)"
                )
            return encodec_from_hf(load_hf_weights(path), config, path)
        if os.path.isfile(os.path.join(path, AUDIOCRAFT_CODEC)):
            path = os.path.join(path, AUDIOCRAFT_CODEC)
        else:
            raise ImgenError(
                f"{path}: neither a Hugging Face EnCodec folder (config.json) nor one holding {AUDIOCRAFT_CODEC}"
            )
    enc_sd, enc_meta = _audiocraft_compression(path)
    return encodec_from_audiocraft(enc_sd, path, enc_meta)  # xp.cfg: rate, padding


def _check_codec_fits(lm_cfg, enc_cfg: EncodecConfig, source: str) -> None:
    """The LM's codes must be the EnCodec's: same card, and K codebooks equal to the EnCodec's or,
    for a multi-channel LM over a mono EnCodec, channels x the EnCodec's (imgen_jax.api)."""
    K, C, Ke = lm_cfg.num_codebooks, lm_cfg.audio_channels, enc_cfg.num_codebooks
    if enc_cfg.codebook_size != lm_cfg.card or not (
        (K, C) == (Ke, enc_cfg.audio_channels) or (enc_cfg.audio_channels == 1 and K == C * Ke)
    ):
        raise ImgenError(
            f"{source}: EnCodec with {Ke} codebooks of {enc_cfg.codebook_size} ({enc_cfg.audio_channels} channel(s)) "
            f"does not fit the LM ({K} codebooks of {lm_cfg.card}, {C} audio channel(s))"
        )


def convert_audiocraft(
    lm_path: str, out_dir: str, compression_path: str | None = None, t5_dir: str | None = None, overwrite: bool = False
) -> str:
    """Convert audiocraft's `state_dict.bin` (LM + conditioner output_proj), optionally with
    `compression_state_dict.bin` (EnCodec) and a Hugging Face T5 directory (audiocraft loads
    t5-base from Hugging Face; its weights are not in the audiocraft files).

    `compression_path` (else the compression_state_dict.bin beside state_dict.bin, if any): see
    `convert_compression`; a local Hugging Face EnCodec folder replaces a compression file that
    only refers to a pretrained model (module docstring)."""
    if os.path.isdir(lm_path):
        folder = lm_path
        lm_path = os.path.join(folder, AUDIOCRAFT_LM)
        if compression_path is None and os.path.isfile(os.path.join(folder, AUDIOCRAFT_CODEC)):
            compression_path = os.path.join(folder, AUDIOCRAFT_CODEC)
    lm_sd, lm_meta = _best_state(lm_path)
    lm_cfg, lm_flat = lm_from_audiocraft(lm_sd, lm_path, lm_meta)
    configs, weights = {"lm": lm_cfg.to_dict()}, {"lm": lm_flat}
    if compression_path is not None:
        enc_cfg, enc_flat = convert_compression(compression_path)
        _check_codec_fits(lm_cfg, enc_cfg, compression_path)
        configs["encodec"], weights["encodec"] = config_to_dict(enc_cfg), enc_flat
    if t5_dir is not None:
        t5_config = read_json(os.path.join(t5_dir, "config.json"))
        t5_cfg, t5_flat = t5_from_hf(load_hf_weights(t5_dir), t5_config, t5_dir)
        if t5_cfg.d_model != lm_cfg.text_dim:
            raise ImgenError(f"{t5_dir}: T5 width {t5_cfg.d_model} does not match the LM's text projection input {lm_cfg.text_dim}")
        configs["t5"], weights["t5"] = config_to_dict(t5_cfg), t5_flat
    return write_model_dir(
        out_dir, "musicgen", configs, weights, source=os.path.abspath(lm_path),
        tokenizer_model=_tokenizer_in(t5_dir), overwrite=overwrite,
    )


def convert_any(
    source: str, out_dir: str, compression: str | None = None, t5_dir: str | None = None, overwrite: bool = False
) -> str:
    """Detect the layout of `source` and convert it (see the module docstring)."""
    if not os.path.exists(source):
        raise ImgenError(f"{source}: no such file or directory")
    if os.path.isdir(source) and os.path.isfile(os.path.join(source, "config.json")):
        if compression is not None:
            raise ImgenError(f"{source}: --compression applies to audiocraft sources only (this is a Hugging Face directory)")
        model_type = read_json(os.path.join(source, "config.json")).get("model_type")
        if model_type == "musicgen":
            return convert_hf_musicgen(source, out_dir, overwrite)
        if model_type == "t5":
            return convert_hf_t5_dir(source, out_dir, overwrite)
        raise ImgenError(f"{source}/config.json: model_type {model_type!r} is not one of 'musicgen', 't5'")
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, AUDIOCRAFT_LM)):
        raise ImgenError(f"{source}: neither a Hugging Face directory (config.json) nor an audiocraft one ({AUDIOCRAFT_LM})")
    return convert_audiocraft(source, out_dir, compression, t5_dir, overwrite)
