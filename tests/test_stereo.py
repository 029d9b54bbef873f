"""Stereo MusicGen (Hugging Face `musicgen-stereo-*` layout) end to end, against transformers.

The model (tests/conftest.py `tiny_stereo_model_dirs`): a tiny random MusicgenForConditionalGeneration
with decoder num_codebooks 8, audio_channels 2 over the mono EnCodec (codebooks fitted, so decoded audio
depends on the codes), written in Hugging Face layout and converted with `imgen convert` (with and
without random Instruct adapters). transformers' layout: codebooks 0, 2, 4, 6 are the left channel's 4
EnCodec levels and 1, 3, 5, 7 the right's; each half is decoded by the mono EnCodec.

Tokens must equal transformers' greedy `generate` exactly; decoded audio must agree within
1e-4 * max(1, max |torch|) (fp32 EnCodec decoder, other summation order; tests/test_encodec.py's tolerance).
"""

import numpy as np
import pytest
import soundfile as sf
import torch

from test_generate import _check_close, _hf_generate, _memory, _text

from imgen_jax.api import load_musicgen
from imgen_jax.cli import main as imgen
from imgen_jax.instruct.edit import EditConfig, Editor
from imgen_jax.errors import ImgenError
from imgen_jax.generate import SamplingConfig, generate

B = 2


@pytest.fixture(scope="module")
def stereo(tiny_stereo_model_dirs):
    root, model = tiny_stereo_model_dirs
    return root, model, load_musicgen(str(root / "plain"))


def _stereo_wav(model, batch=B, frames=12, seed=2):
    """[batch, 2, frames * hop] float32: different tones + noise on the two channels."""
    hop = int(np.prod(model.config.audio_encoder.upsampling_ratios))
    sr = model.config.audio_encoder.sampling_rate
    n = frames * hop
    t = np.arange(n) / sr
    rng = np.random.default_rng(seed)
    tones = np.stack([np.sin(2 * np.pi * 50 * t), np.sin(2 * np.pi * 130 * t + 1.0)])
    return (0.3 * tones[None] + 0.1 * rng.standard_normal((batch, 2, n))).astype(np.float32)


def test_converted_config_and_layout(stereo):
    _, _, mg = stereo
    assert (mg.lm.cfg.num_codebooks, mg.lm.cfg.audio_channels, mg.lm.cfg.delays) == (8, 2, (0, 0, 1, 1, 2, 2, 3, 3))
    assert (mg.encodec.cfg.num_codebooks, mg.encodec.cfg.audio_channels, mg.audio_channels) == (4, 1, 2)


def test_greedy_tokens_and_audio_match_transformers(stereo):
    """(a) greedy tokens equal transformers' stereo generate; (b) the [B, 2, N] audio matches its output."""
    _, model, mg = stereo
    ids, mask = _text(model)
    memory, m = _memory(model, mg.lm, ids, mask)
    N = 12  # new pattern steps: frames = N - max_delay
    ref_codes, ref_scores = _hf_generate(model, ids, mask, do_sample=False, guidance_scale=3.0, max_new_tokens=N)
    with torch.no_grad():
        ref_audio = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, guidance_scale=3.0,
                                   max_new_tokens=N).numpy()
    codes, logits = generate(mg.lm, memory, m, SamplingConfig(num_frames=N - 3, guidance_scale=3.0, use_sampling=False),
                             return_logits=True)
    assert codes.shape == ref_codes.shape == (B, 8, N - 3)
    np.testing.assert_array_equal(np.asarray(codes), ref_codes)
    _check_close(np.asarray(logits)[:, :, 1:], ref_scores)

    audio = np.asarray(mg.decode_codes(codes))
    hop = mg.encodec.cfg.hop_length
    assert audio.shape == ref_audio.shape == (B, 2, (N - 3) * hop)
    _check_close(audio, ref_audio)
    assert np.abs(audio[:, 0] - audio[:, 1]).max() > 1e-3  # the channels are decoded from different codebooks
    # each channel is the mono EnCodec decode of its own half of the codebooks
    left = np.asarray(mg._decode(np.asarray(codes)[:, 0::2]))
    np.testing.assert_allclose(audio[:, :1], left, rtol=0, atol=1e-6)


def test_stereo_audio_prompt_matches_transformers(stereo):
    """A stereo audio prompt: each channel encoded by the mono EnCodec, codebooks interleaved (transformers'
    `input_values` path of generate); the continuation's tokens equal transformers' greedy ones."""
    _, model, mg = stereo
    ids, mask = _text(model)
    memory, m = _memory(model, mg.lm, ids, mask)
    Tp, N = 6, 8
    wav = _stereo_wav(model, frames=Tp)
    prompt = np.asarray(mg.encode_audio(wav))
    assert prompt.shape == (B, 8, Tp)
    with torch.no_grad():
        for c in range(2):  # transformers' mono EnCodec on each channel -> codebooks c, c + 2, ...
            ref = model.audio_encoder.encode(torch.from_numpy(wav[:, c:c + 1])).audio_codes[0].numpy()
            np.testing.assert_array_equal(prompt[:, c::2], ref)
    ref_codes, _ = _hf_generate(model, ids, mask, input_values=torch.from_numpy(wav), do_sample=False,
                                guidance_scale=3.0, max_new_tokens=N)
    codes = generate(mg.lm, memory, m, SamplingConfig(num_frames=Tp + N - 3, guidance_scale=3.0, use_sampling=False),
                     prompt=prompt)
    assert codes.shape == ref_codes.shape == (B, 8, Tp + N - 3)
    np.testing.assert_array_equal(np.asarray(codes)[:, :, :Tp], prompt)
    np.testing.assert_array_equal(np.asarray(codes), ref_codes)


def test_mono_audio_to_stereo_model_and_bad_shapes(stereo):
    """A mono wav given to a stereo model is used for both channels (transformers' `repeat_interleave`)."""
    _, model, mg = stereo
    wav = _stereo_wav(model)[:, :1]
    mono = np.asarray(mg.encode_audio(wav))
    np.testing.assert_array_equal(mono, np.asarray(mg.encode_audio(np.repeat(wav, 2, axis=1))))
    np.testing.assert_array_equal(mono, np.repeat(np.asarray(mg._encode(wav)), 2, axis=1))
    with pytest.raises(ImgenError, match=r"expected audio \[batch, 2, samples\]"):
        mg.encode_audio(np.zeros((1, 3, 40), np.float32))
    with pytest.raises(ImgenError, match=r"expected codes \[batch, 8, frames\]"):
        mg.decode_codes(mono[:, :4])


def test_imgen_generate_writes_stereo_wav(stereo, tmp_path):
    """(c) `imgen generate` on the converted stereo directory writes a 2-channel wav."""
    root, model, mg = stereo
    out, png = tmp_path / "gen.wav", tmp_path / "gen.png"
    assert imgen(["generate", "--model", str(root / "plain"), "--prompt", "lofi beat", "--seconds", "0.1",
                  "--out", str(out), "--spectrogram", str(png), "--seed", "3"]) == 0
    wav, sr = sf.read(out, always_2d=True)
    assert sr == model.config.audio_encoder.sampling_rate
    assert wav.shape == (int(0.1 * mg.frame_rate) * mg.encodec.cfg.hop_length, 2) and np.isfinite(wav).all()
    assert np.abs(wav[:, 0] - wav[:, 1]).max() > 0
    assert png.stat().st_size > 1000


def test_imgen_edit_writes_stereo_wav(stereo, tmp_path, capsys):
    """(d) `imgen edit` with adapters on a stereo model: mono and stereo inputs -> 2-channel wavs."""
    root, model, _ = stereo
    sr_in = 1000  # resampled to the model's 800 Hz
    t = np.arange(int(0.3 * sr_in)) / sr_in
    mono, stereo_in = tmp_path / "mono.wav", tmp_path / "stereo.wav"
    sf.write(mono, (0.3 * np.sin(2 * np.pi * 60 * t)).astype(np.float32), sr_in)
    sf.write(stereo_in, np.stack([0.3 * np.sin(2 * np.pi * 60 * t), 0.2 * np.sin(2 * np.pi * 90 * t)], 1), sr_in)
    outs = tmp_path / "edited.wav"
    assert imgen(["edit", "--model", str(root / "instruct"), "--input", str(mono), "--input", str(stereo_in),
                  "--instruction", "add drums", "--out", str(outs), "--spectrogram", str(tmp_path / "ba.png")]) == 0
    sr_model = model.config.audio_encoder.sampling_rate
    for i in range(2):
        wav, sr = sf.read(tmp_path / f"edited_{i}.wav", always_2d=True)
        assert sr == sr_model and wav.shape == (int(0.3 * sr_model), 2) and np.isfinite(wav).all()

    three = tmp_path / "three.wav"
    sf.write(three, np.zeros((300, 3), np.float32), sr_in)
    assert imgen(["edit", "--model", str(root / "instruct"), "--input", str(three), "--instruction", "add drums",
                  "--out", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "three.wav" in err[-1] and "3 audio channels to 2" in err[-1]
    assert not (tmp_path / "x.wav").exists()


def test_editor_stereo_codes(stereo, tiny_stereo_model_dirs):
    """Editor.edit on a stereo model: condition codes [B, 8, T]; a mono input equals its two-channel copy."""
    root, model = tiny_stereo_model_dirs
    ed = Editor.load(str(root / "instruct"))
    wav = _stereo_wav(model, batch=1, frames=20)[0]
    cfg = EditConfig(SamplingConfig.for_edit(seed=1, top_k=8))
    from_mono = ed.edit([wav[:1]], ["add bass"], cfg)[0]
    from_copy = ed.edit([np.repeat(wav[:1], 2, axis=0)], ["add bass"], cfg)[0]
    assert from_mono.shape == (2, wav.shape[-1])
    np.testing.assert_array_equal(from_mono, from_copy)
    out = ed.edit([wav], ["add bass"], cfg)[0]
    assert out.shape == wav.shape and np.isfinite(out).all()
    codes = ed.mg.encode_audio(wav[None])
    edited = np.asarray(ed.edit_codes(codes, ["add bass"], cfg))
    assert edited.shape == (1, 8, 20)
    np.testing.assert_allclose(out, np.asarray(ed.mg.decode_codes(edited))[0], rtol=0, atol=1e-6)
    with pytest.raises(ImgenError, match="expected \\[channels 1 or 2"):
        ed.edit([np.zeros((3, 80), np.float32)], ["add bass"], cfg)
