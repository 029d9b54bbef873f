"""EnCodec parity against transformers' EncodecModel (random weights, fp32).

Path under test: PyTorch weights -> file on disk (HF save_pretrained, or audiocraft's
compression_state_dict.bin written with torch.save) -> converter -> converted directory ->
load_encodec -> jitted encode / decode.

Tolerances: codes must be exactly equal. The latents agree to ~1e-6 while, with these seeded
weights (convert.reference_models.encodec_model: codebooks drawn at the residuals' scale) and inputs, the gap
between the nearest and second-nearest codeword is >= 1e-5 in squared distance (tiny models)
and >= 3e-3 (32 kHz), so no nearest-neighbour decision is a float tie. Decoded audio:
max |ours - torch| <= 1e-4 * max(1, max |torch|) (fp32, other summation order).
"""

import numpy as np
import pytest
import torch

from convert.common import load_hf_weights, load_torch_checkpoint, strip_prefix
from convert.encodec_weights import encodec_from_audiocraft, encodec_from_hf, encodec_hf_to_audiocraft
from convert.reference_models import encodec_32k_config, encodec_model, state_dict_numpy, tiny_encodec_config
from imgen_jax.models.encodec import EncodecConfig, EncodecModel, init_encodec, load_encodec
from imgen_jax.xla import jit_method
from imgen_jax.errors import ImgenError
from imgen_jax.modeldir import write_model_dir


def _tiny(**changes):
    """The tiny HF config with `changes`, keeping 4 codebooks of 16 (the bandwidth follows the frame rate)."""
    cfg = tiny_encodec_config()
    for k, v in changes.items():
        setattr(cfg, k, v)
    cfg.target_bandwidths = [(4 * 4 * cfg.frame_rate + 1) / 1000]
    return cfg


def _reference(model, wav: np.ndarray):
    """(codes [B, K, T], decoded audio of those codes [B, C, T * hop]) from transformers."""
    with torch.no_grad():
        codes = model.encode(torch.from_numpy(wav), bandwidth=model.config.target_bandwidths[-1]).audio_codes
        audio = model.decode(codes, [None]).audio_values
    return codes[0].numpy(), audio.numpy()


def _wav(config, batch: int, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / config.sampling_rate
    tone = np.sin(2 * np.pi * rng.uniform(0.01, 0.2) * config.sampling_rate * t)
    return (0.3 * rng.standard_normal((batch, config.audio_channels, n)) + 0.2 * tone).astype(np.float32)


def _check_audio(ours, ref):
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(ours - ref).max())
    assert err <= tol, f"max abs error {err} > {tol}"


def _check_model(model_dir, model, lengths, batch=2):
    codec = load_encodec(str(model_dir))
    encode, decode = jit_method(codec, EncodecModel.encode), jit_method(codec, EncodecModel.decode)
    hop = model.config.hop_length
    for n in lengths:
        wav = _wav(model.config, batch, n, seed=n)
        ref_codes, ref_audio = _reference(model, wav)
        codes = np.asarray(encode(wav))
        assert codes.dtype == np.int32 and codes.shape == (batch, codec.cfg.num_codebooks, -(-n // hop))
        np.testing.assert_array_equal(codes, ref_codes)
        _check_audio(np.asarray(decode(ref_codes)), ref_audio)
    return codec


def _convert_hf_dir(model, tmp_path):
    model.save_pretrained(tmp_path / "hf")
    sd = load_hf_weights(tmp_path / "hf")
    cfg, flat = encodec_from_hf(sd, model.config.to_dict(), str(tmp_path / "hf"))
    return write_model_dir(tmp_path / "out", "encodec", {"encodec": cfg.to_dict()}, {"encodec": flat}, source="test")


@pytest.mark.parametrize(
    "changes,lengths",
    [
        # ragged length, and one shorter than the first conv's padding (reflect's small-input path)
        ({}, [61, 3]),
        # stereo, causal (trim 0.5), 1x1-conv shortcuts, two residual layers (dilation 3), zero padding
        (dict(audio_channels=2, use_causal_conv=True, trim_right_ratio=0.5, use_conv_shortcut=True,
              num_residual_layers=2, dilation_growth_rate=3, pad_mode="constant", upsampling_ratios=[3, 2]), [66, 37]),
    ],
    ids=["musicgen-like", "variants"],
)
def test_tiny_hf_layout(tmp_path, changes, lengths):
    model = encodec_model(_tiny(**changes))
    out = _convert_hf_dir(model, tmp_path)
    codec = _check_model(out, model, lengths=lengths)
    cfg = codec.cfg
    assert cfg.num_codebooks == 4 and cfg.codebook_size == 16 and cfg.hidden_size == 8
    assert cfg.upsampling_ratios == tuple(model.config.upsampling_ratios)
    assert cfg.causal == model.config.use_causal_conv and cfg.pad_mode == model.config.pad_mode


# audiocraft's xp.cfg (training config YAML) of the tiny codec (convert.reference_models.tiny_encodec_config)
TINY_XP_CFG = (
    "sample_rate: 800\nchannels: 1\nencodec:\n  causal: false\n  renormalize: false\n"
    "seanet:\n  dimension: 8\n  channels: ${channels}\n  causal: ${encodec.causal}\n  n_filters: 4\n"
    "  n_residual_layers: 1\n  ratios: [2, 2]\n  norm: weight_norm\n  pad_mode: reflect\n  true_skip: true\n"
    "  lstm: 2\n  decoder:\n    trim_right_ratio: 1.0\n    final_activation: null\n  encoder: {}\n"
    "rvq:\n  n_q: 4\n  bins: 16\n"
)


def test_tiny_audiocraft_layout(tmp_path):
    model = encodec_model(_tiny())
    ac = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in encodec_hf_to_audiocraft(state_dict_numpy(model)).items()}
    assert "encoder.model.0.conv.conv.weight_g" in ac and "decoder.model.3.convtr.convtr.weight_v" in ac
    assert "quantizer.vq.layers.3._codebook.embed" in ac and "encoder.model.7.lstm.weight_hh_l1" in ac
    xp = TINY_XP_CFG
    path = tmp_path / "compression_state_dict.bin"
    torch.save({"best_state": ac, "xp.cfg": xp, "version": "1.0"}, path)
    tensors, meta = load_torch_checkpoint(path)
    cfg, flat = encodec_from_audiocraft(strip_prefix(tensors, "best_state."), str(path), meta)
    hf_cfg, _ = encodec_from_hf(state_dict_numpy(model), model.config.to_dict(), "hf")
    assert cfg == hf_cfg
    # without xp.cfg: sizes from the weights, the rest from EncodecConfig's defaults (as HF's port)
    cfg2, flat2 = encodec_from_audiocraft(strip_prefix(tensors, "best_state."), str(path))
    assert cfg2 == EncodecConfig(**{**hf_cfg.to_dict(), "sampling_rate": 32000})
    assert all(np.array_equal(flat[k], flat2[k]) for k in flat)
    out = write_model_dir(tmp_path / "out", "encodec", {"encodec": cfg.to_dict()}, {"encodec": flat}, source="test")
    _check_model(out, model, lengths=[64, 37])


@pytest.mark.fullsize
def test_encodec_32khz_hf_layout(tmp_path):
    """MusicGen's 32 kHz codec shapes, about 1 s of audio."""
    model = encodec_model(encodec_32k_config())
    out = _convert_hf_dir(model, tmp_path)
    codec = _check_model(out, model, lengths=[32000 + 123], batch=1)
    assert codec.cfg == EncodecConfig()  # the defaults are MusicGen's codec
    assert codec.cfg.hop_length == 640 and codec.cfg.frame_rate == 50.0


def _tiny_sd():
    model = encodec_model(_tiny())
    return model, state_dict_numpy(model)


def test_missing_misshaped_unexpected_keys_are_listed():
    model, sd = _tiny_sd()
    sd = dict(sd)
    del sd["decoder.layers.1.lstm.weight_hh_l1"]
    sd["encoder.layers.1.block.3.conv.bias"] = np.zeros(5, np.float32)
    sd["encoder.layers.2.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ImgenError) as e:
        encodec_from_hf(sd, model.config.to_dict(), "codec.bin")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("codec.bin: ")
    assert "missing keys: decoder.layers.1.lstm.weight_hh_l1" in msg
    assert "encoder.layers.1.block.3.conv.bias (expected [4], got [5])" in msg
    assert "unexpected keys: encoder.layers.2.extra.weight" in msg

    ac = encodec_hf_to_audiocraft(state_dict_numpy(model))
    del ac["quantizer.vq.layers.2._codebook.embed"]
    ac["quantizer.vq.layers.0._codebook.cluster_size"] = np.zeros(3, np.float32)  # buffers are ignored
    with pytest.raises(ImgenError, match=r"missing keys: quantizer\.vq\.layers\.2\._codebook\.embed$"):
        encodec_from_audiocraft(ac, "compression_state_dict.bin")


def test_config_disagreeing_with_weights_is_an_error():
    model, sd = _tiny_sd()
    c = model.config.to_dict()
    c["upsampling_ratios"] = [4, 2]
    with pytest.raises(ImgenError, match=r"upsampling_ratios is \[4, 2\] but the weights say \[2, 2\]"):
        encodec_from_hf(sd, c, "hf")
    c = model.config.to_dict()
    c["normalize"] = True
    with pytest.raises(ImgenError, match="normalize"):
        encodec_from_hf(sd, c, "hf")


def test_other_model_is_rejected():
    from convert.reference_models import tiny_t5_config
    from transformers import T5EncoderModel

    sd = state_dict_numpy(T5EncoderModel(tiny_t5_config()))
    with pytest.raises(ImgenError, match="not an EnCodec checkpoint"):
        encodec_from_hf(sd, None, "t5.bin")
    with pytest.raises(ImgenError, match="not an EnCodec checkpoint"):
        encodec_from_audiocraft(sd, "t5.bin")
    _, enc_sd = _tiny_sd()
    with pytest.raises(ImgenError, match="not an EnCodec checkpoint in audiocraft layout"):
        encodec_from_audiocraft(enc_sd, "hf-layout.bin")


def test_config_roundtrip_and_shapes(tmp_path):
    cfg = EncodecConfig()
    assert EncodecConfig.from_dict(cfg.to_dict()) == cfg
    assert (cfg.hop_length, cfg.frame_rate, cfg.width, cfg.num_frames(32001)) == (640, 50.0, 1024, 51)
    with pytest.raises(ImgenError, match="unknown EncodecConfig fields"):
        EncodecConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ImgenError, match="pad_mode"):
        EncodecConfig.from_dict({**cfg.to_dict(), "pad_mode": "circular"})
    small = EncodecConfig(sampling_rate=800, num_filters=4, hidden_size=8, upsampling_ratios=(2, 2), codebook_size=16)
    codec = init_encodec(small, seed=0)
    wav = np.zeros((1, 1, 10), np.float32)
    assert jit_method(codec, EncodecModel.encode)(wav).shape == (1, 4, 3)
    assert jit_method(codec, EncodecModel.decode)(np.zeros((1, 4, 3), np.int32)).shape == (1, 1, 12)
    with pytest.raises(ImgenError, match="expected audio"):
        codec.encode(np.zeros((1, 2, 10), np.float32))
    write_model_dir(tmp_path / "lm_only", "musicgen", {}, {}, source="test")
    with pytest.raises(ImgenError, match="no 'encodec' component"):
        load_encodec(str(tmp_path / "lm_only"))
