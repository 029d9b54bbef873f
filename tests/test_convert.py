"""`imgen convert` end to end, and the converters' handling of bad and unsafe files.

The whole-model tests write a transformers MusicgenForConditionalGeneration (random weights)
to disk in Hugging Face layout, and the same weights in audiocraft layout (state_dict.bin +
compression_state_dict.bin, renamed by convert.lm_weights.lm_hf_to_audiocraft and
convert.encodec_weights.encodec_hf_to_audiocraft), run the `imgen` command on them, load the
result with imgen_jax.api.load_musicgen and compare teacher-forced logits with PyTorch.
Tolerance: max |ours - torch| <= 1e-4 * max(1, max |torch|) (fp32, other summation order).
"""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from convert.common import load_torch_checkpoint
from convert.encodec_weights import encodec_hf_to_audiocraft
from convert.lm_weights import lm_hf_to_audiocraft
from convert.musicgen import convert_any
from convert.reference_models import musicgen_model, musicgen_small_model, state_dict_numpy
from imgen_jax.api import load_musicgen
from imgen_jax.cli import main as imgen
from imgen_jax.errors import ImgenError


def _write_hf(model, path, spm_model=None):
    model.save_pretrained(path)
    if spm_model is not None:
        import shutil

        shutil.copyfile(spm_model, os.path.join(path, "spiece.model"))
    return str(path)


def _write_audiocraft(model, folder, codec_xp_cfg=""):
    """state_dict.bin and compression_state_dict.bin as audiocraft saves them (tensors under 'best_state',
    the codec's training config YAML under 'xp.cfg')."""
    os.makedirs(folder, exist_ok=True)
    sd = state_dict_numpy(model)
    lm = {k: torch.from_numpy(v) for k, v in lm_hf_to_audiocraft(sd).items()}
    heads = model.config.decoder.num_attention_heads
    dim = model.config.decoder.hidden_size
    xp = f"transformer_lm:\n  dim: {dim}\n  num_heads: {heads}\n"
    torch.save({"best_state": lm, "xp.cfg": xp, "version": "1.0"}, os.path.join(folder, "state_dict.bin"))
    codec_sd = {k[len("audio_encoder."):]: v for k, v in sd.items() if k.startswith("audio_encoder.")}
    codec = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in encodec_hf_to_audiocraft(codec_sd).items()}
    torch.save({"best_state": codec, "xp.cfg": codec_xp_cfg, "version": "1.0"}, os.path.join(folder, "compression_state_dict.bin"))
    return str(folder)


def _reference_logits(model, codes, seed=3, L=6):
    """audiocraft-style frame logits from the PyTorch model: pattern of T+1 steps built by loops,
    padded text zeroed and attended to, logits of frame t / codebook k read at step t + k."""
    g = torch.Generator().manual_seed(seed)
    B, K, T = codes.shape
    card = model.config.decoder.vocab_size
    ids = torch.randint(2, model.config.text_encoder.vocab_size, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[-1, L - 2:] = 0
    seq = torch.full((B, K, T + 1), card, dtype=torch.long)
    for k in range(K):
        for s in range(T + 1):
            t = s - 1 - k
            if 0 <= t < T:
                seq[:, k, s] = torch.from_numpy(codes[:, k, t])
    with torch.no_grad():
        hidden = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        # audiocraft: the projected memory is zeroed at padded positions, and no key mask is applied
        memory = model.enc_to_dec_proj(hidden) * mask[..., None]
        out = model.decoder(input_ids=seq.reshape(B * K, T + 1), encoder_hidden_states=memory).logits
    out = out.reshape(B, K, T + 1, card).numpy()
    ref = np.full((B, K, T, card), np.nan, np.float32)
    for k in range(K):
        for t in range(T):
            if t + k < T:
                ref[:, k, t] = out[:, k, t + k]
    return ids, mask, hidden, ref


def _check_lm(model_dir, model, T=7):
    mg = load_musicgen(model_dir)
    K, card = model.config.decoder.num_codebooks, model.config.decoder.vocab_size
    codes = np.random.default_rng(0).integers(0, card, (2, K, T))
    _, mask, hidden, ref = _reference_logits(model, codes)
    logits, valid = mg.lm_logits(codes, hidden.numpy(), mask.numpy())
    logits = np.asarray(logits)
    assert np.array_equal(np.isnan(ref[..., 0]), ~np.asarray(valid))
    v = np.asarray(valid)
    err = float(np.abs(logits[v] - ref[v]).max())
    tol = 1e-4 * max(1.0, float(np.abs(ref[v]).max()))
    assert err <= tol, f"max abs error {err} > {tol}"
    return mg


def test_imgen_convert_hf_and_audiocraft_layouts(tmp_path, spm_model, capsys):
    model = musicgen_model()
    hf = _write_hf(model, tmp_path / "hf", spm_model)
    assert imgen(["convert", hf, "--out", str(tmp_path / "from_hf")]) == 0
    mg = _check_lm(str(tmp_path / "from_hf"), model)
    assert mg.encodec is not None and mg.t5 is not None and mg.tokenizer is not None

    ac = _write_audiocraft(model, tmp_path / "ac")
    assert imgen(["convert", ac, "--out", str(tmp_path / "from_ac"), "--t5", hf]) == 0
    mg_ac = _check_lm(str(tmp_path / "from_ac"), model)
    # both layouts give the same codec
    wav = np.random.default_rng(1).standard_normal((1, 1, 4 * 40)).astype(np.float32) * 0.1
    assert np.array_equal(np.asarray(mg.encode_audio(wav)), np.asarray(mg_ac.encode_audio(wav)))
    out = capsys.readouterr().out
    assert "components encodec, lm, t5" in out


@pytest.mark.fullsize
def test_musicgen_small_hf_and_audiocraft_layouts(tmp_path):
    """musicgen-small shapes (1024 x 24 LM, t5-base, EnCodec 32 kHz), both layouts, logits vs PyTorch."""
    model = musicgen_small_model()
    hf = _write_hf(model, tmp_path / "hf")
    ac = _write_audiocraft(model, tmp_path / "ac")
    assert imgen(["convert", hf, "--out", str(tmp_path / "a")]) == 0
    mg = _check_lm(str(tmp_path / "a"), model, T=12)
    assert (mg.lm.cfg.dim, mg.lm.cfg.num_layers, mg.lm.cfg.num_heads, mg.lm.cfg.card) == (1024, 24, 16, 2048)
    del mg
    assert imgen(["convert", ac, "--out", str(tmp_path / "b"), "--t5", hf]) == 0
    _check_lm(str(tmp_path / "b"), model, T=12)


def test_convert_help_documents_layouts():
    out = subprocess.run([sys.executable, "-m", "imgen_jax.cli", "convert", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for word in ("Hugging Face", "audiocraft", "state_dict.bin", "compression_state_dict.bin", "--t5", "weights_only"):
        assert word in out.stdout


def test_audiocraft_compression_weights_or_pretrained_reference(tmp_path, capsys):
    """audiocraft's two packings of compression_state_dict.bin (audiocraft.utils.export): weights
    ('best_state' + 'xp.cfg') convert as they are; a reference ({'pretrained': 'facebook/encodec_32khz',
    'exported': True, 'version'}) is a one-line error naming it, and converts with --compression
    pointing at a local Hugging Face EnCodec folder. The converted codec is checked against the
    transformers EncodecModel it came from (tests/test_encodec.py: equal codes, decoded audio to
    1e-4 relative)."""
    from test_encodec import TINY_XP_CFG, _check_model

    from convert.reference_models import encodec_model, tiny_encodec_config
    from imgen_jax.models.encodec import load_encodec
    from imgen_jax.modeldir import read_model_config

    model = musicgen_model(fitted_codec=True)  # codebooks fitted: the codes depend on the weights
    ac = _write_audiocraft(model, tmp_path / "ac", codec_xp_cfg=TINY_XP_CFG)
    assert imgen(["convert", ac, "--out", str(tmp_path / "weights")]) == 0
    _check_model(tmp_path / "weights", model.audio_encoder, lengths=[64, 37])
    assert load_encodec(str(tmp_path / "weights")).cfg.sampling_rate == 800  # from xp.cfg

    codec_file = os.path.join(ac, "compression_state_dict.bin")
    torch.save({"pretrained": "facebook/encodec_32khz", "exported": True, "version": "1.3.0"}, codec_file)
    capsys.readouterr()
    assert imgen(["convert", ac, "--out", str(tmp_path / "ref")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars (\r-separated)
    assert err.startswith("error: "), err
    assert f"{codec_file} refers to the pretrained 'facebook/encodec_32khz'" in err and "--compression PATH" in err
    assert "encodec_32khz layout" in err and not os.path.exists(tmp_path / "ref")

    hf_codec = encodec_model(tiny_encodec_config(model.config.decoder.vocab_size), seed=7)  # not the LM's own codec
    hf_codec.save_pretrained(tmp_path / "encodec_hf")
    assert imgen(["convert", ac, "--compression", str(tmp_path / "encodec_hf"), "--out", str(tmp_path / "ref")]) == 0
    codec = _check_model(tmp_path / "ref", hf_codec, lengths=[64, 37])
    assert codec.cfg.sampling_rate == hf_codec.config.sampling_rate
    assert sorted(k for k in read_model_config(tmp_path / "ref") if k in ("lm", "encodec", "t5")) == ["encodec", "lm"]

    # a codec whose codes are not the LM's, and --compression on a Hugging Face source, are refused
    other = encodec_model(tiny_encodec_config(2 * model.config.decoder.vocab_size), seed=7)
    other.save_pretrained(tmp_path / "encodec_other")
    with pytest.raises(ImgenError, match="codebooks of 32 .* does not fit the LM .*codebooks of 16"):
        convert_any(ac, str(tmp_path / "bad"), compression=str(tmp_path / "encodec_other"))
    hf = tmp_path / "hf_like"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "musicgen"}')
    with pytest.raises(ImgenError, match="--compression applies to audiocraft sources only"):
        convert_any(str(hf), str(tmp_path / "bad"), compression=str(tmp_path / "encodec_hf"))
    assert not os.path.exists(tmp_path / "bad")


def test_truncated_files_are_one_line_errors(tmp_path, capsys):
    model = musicgen_model()
    hf = _write_hf(model, tmp_path / "hf")
    st = os.path.join(hf, "model.safetensors")
    with open(st, "r+b") as f:
        f.truncate(os.path.getsize(st) // 2)
    capsys.readouterr()  # drop transformers' progress output from saving the model
    assert imgen(["convert", hf, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "model.safetensors" in err
    assert not os.path.exists(tmp_path / "out")  # nothing half-written

    ac = _write_audiocraft(model, tmp_path / "ac")
    lm = os.path.join(ac, "state_dict.bin")
    with open(lm, "r+b") as f:
        f.truncate(os.path.getsize(lm) // 3)
    with pytest.raises(ImgenError, match="state_dict.bin: not a readable PyTorch checkpoint"):
        load_torch_checkpoint(lm)


def test_checkpoint_of_another_model_is_refused(tmp_path, capsys):
    from transformers import T5EncoderModel

    from convert.reference_models import tiny_t5_config

    t5 = {k: v for k, v in T5EncoderModel(tiny_t5_config()).state_dict().items()}
    os.makedirs(tmp_path / "ac")
    torch.save({"best_state": t5}, tmp_path / "ac" / "state_dict.bin")
    assert imgen(["convert", str(tmp_path / "ac"), "--out", str(tmp_path / "out")]) == 2
    assert "not a MusicGen LM checkpoint" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_missing_keys_are_listed(tmp_path, capsys):
    model = musicgen_model()
    ac = _write_audiocraft(model, tmp_path / "ac")
    ckpt = torch.load(os.path.join(ac, "state_dict.bin"), weights_only=True)
    del ckpt["best_state"]["transformer.layers.0.linear1.weight"]
    del ckpt["best_state"]["linears.2.weight"]
    torch.save(ckpt, os.path.join(ac, "state_dict.bin"))
    assert imgen(["convert", ac, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "missing keys" in err and "transformer.layers.0.linear1.weight" in err and "linears.2.weight" in err


class _RunsCode:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil" / "state_dict.bin"
    os.makedirs(path.parent)
    payload = {"best_state": {"emb.0.weight": torch.zeros(3, 2)}, "hook": _RunsCode(marker)}
    torch.save(payload, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    assert imgen(["convert", str(path.parent), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "could run code" in err
    assert not marker.exists()
    # the same file unpickled unsafely does run code: the test's payload is real
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_unconverted_directory_is_explained(tmp_path):
    model = musicgen_model()
    hf = _write_hf(model, tmp_path / "hf")
    with pytest.raises(ImgenError, match="run `imgen convert`"):
        load_musicgen(hf)
