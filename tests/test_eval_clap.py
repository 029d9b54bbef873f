"""LAION-CLAP (imgen_jax.eval.nets.clap, .bpe, convert/clap_weights.py) against laion_clap 1.1.7.

- Tokenizer: our byte-level BPE against transformers' RobertaTokenizer built from the same small
  vocab.json / merges.txt (convert.reference_models.write_clap_tokenizer: a BPE learnt on a few sentences), ids and attention masks
  at laion_clap's settings (max_length 77, padding, truncation): equal.
- Input preparation: laion_clap's own `int16_to_float32(float32_to_int16(.))` and `get_audio_features`
  (read from its training/data.py, which cannot be imported here) against `prepare_audio`: equal.
- Parity: laion_clap's non-fusion `CLAP` (convert.reference_models.clap_model: HTSAT-base + roberta, as
  `CLAP_Module(amodel="HTSAT-base")` builds it; the RoBERTa made from a local roberta-base `RobertaConfig`
  instead of a download) with random weights of the real shapes, saved as the published checkpoint is laid out ({"state_dict":
  {"module.<key>"}}, with the position_ids buffer older transformers saved), converted, loaded;
  audio embeddings of two clips (one repeat-padded, one clipped above 1) and text embeddings of
  three captions within 1e-4 relative (Frobenius norm of the difference over the reference's).
Nothing is downloaded.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convert.reference_models import (clap_model, laion_clap_audio_embedding, laion_clap_audio_input, save_clap_checkpoint,
                                      write_clap_tokenizer)
from imgen_jax.errors import ImgenError

TOL = 1e-4
TEXTS = ["drums music", "The quick brown fox's electric guitar, and bass!", "  café naïve 日本語 — “piano”  solo\n"]


def _rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


# ------------------------------------------------------------------------------------------ tokenizer


def _hf_tokenizer(folder):
    from transformers import RobertaTokenizer

    return RobertaTokenizer.from_pretrained(str(folder), local_files_only=True)


def test_bpe_matches_transformers_roberta_tokenizer(tmp_path):
    from imgen_jax.eval.nets.bpe import RobertaBPE

    write_clap_tokenizer(tmp_path / "tok")
    ref = _hf_tokenizer(tmp_path / "tok")
    ours = RobertaBPE.from_files(tmp_path / "tok" / "vocab.json", tmp_path / "tok" / "merges.txt")
    texts = TEXTS + ["tabs\tand\nnewlines\n\n x", "Don't stop; we'll SEE it's 120bpm...", "x" * 200, "", " ",
                     "a  b   c ", "!!! ??? 's 'S ''s", "\u00a0nbsp\u2003em dash—", "🎸 emoji 🥁🥁", "ÀÉÎ õü ß", "a\r\nb"]
    want = ref(texts, padding="max_length", truncation=True, max_length=77)
    ids, mask = ours.batch(texts, 77)
    assert ids.shape == mask.shape == (len(texts), 77) and ids.dtype == np.int32
    for row, text in enumerate(texts):
        assert ids[row].tolist() == want["input_ids"][row], text
        assert mask[row].tolist() == want["attention_mask"][row], text
    assert ids.max() > 260  # merges were applied
    assert ours.encode("drums music") == ref("drums music", add_special_tokens=False)["input_ids"]


def test_bpe_reports_bad_files(tmp_path):
    from imgen_jax.eval.nets.bpe import RobertaBPE

    with pytest.raises(ImgenError, match="vocabulary lacks the special tokens \\['<pad>'\\]"):
        RobertaBPE.from_strings(json.dumps({"<s>": 0, "</s>": 2, "<unk>": 3}), "")
    with pytest.raises(ImgenError, match="merges.txt line 2 is not two symbols"):
        RobertaBPE.from_strings(json.dumps({"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}), "#version: 0.2\na b c\n")
    with pytest.raises(ImgenError, match="vocab.json: file not found"):
        RobertaBPE.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")


# ------------------------------------------------------------------------------ laion_clap reference


@pytest.fixture(scope="module")
def laion_clap():
    return clap_model(seed=5)


def _clips() -> list[np.ndarray]:
    """Two clips at 48 kHz: 3.7 s (repeat-padded, with a zero tail) and 10 s peaking at 1.2 (clipped)."""
    rng = np.random.default_rng(4)
    out = []
    for seconds, amp in ((3.7, 0.4), (10.0, 1.2)):
        t = np.arange(int(48000 * seconds)) / 48000
        tone = np.sin(2 * np.pi * 330.0 * t) * np.sin(2 * np.pi * 0.5 * t)
        out.append((amp * tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
    return out


def test_prepare_audio_matches_laion_clap(monkeypatch):
    from imgen_jax.eval.nets.clap import ClapConfig, prepare_audio

    rng = np.random.default_rng(0)
    for n, dtype in ((1000, np.float32), (47999, np.float64), (160000, np.float32), (480000, np.float32)):
        wav = (rng.standard_normal(n) * 0.6).astype(dtype)
        want = laion_clap_audio_input(wav)["waveform"].numpy()
        got = prepare_audio(wav)
        assert got.shape == (480000,) and got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    # longer than 10 s: laion_clap crops at np.random.randint(0, overflow + 1); we take the start
    long = (rng.standard_normal(500000) * 0.6).astype(np.float32)
    monkeypatch.setattr(np.random, "randint", lambda lo, hi: 0)
    np.testing.assert_array_equal(prepare_audio(long), laion_clap_audio_input(long)["waveform"].numpy())
    np.testing.assert_array_equal(prepare_audio(long, ClapConfig(quantize=False)), long[:480000])
    with pytest.raises(ImgenError, match="expected a 1-D float waveform at 48000 Hz"):
        prepare_audio(np.zeros((2, 100), np.float32))
    with pytest.raises(ImgenError, match="empty waveform"):
        prepare_audio(np.zeros(0, np.float32))


def test_bicubic_matrix_matches_torch():
    from imgen_jax.eval.nets.clap import bicubic_matrix

    x = torch.randn(1, 1, 1001, 3)
    want = F.interpolate(x, (1024, 3), mode="bicubic", align_corners=True)[0, 0].numpy()
    got = bicubic_matrix(1001, 1024) @ x[0, 0].numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_clap_matches_laion_clap(tmp_path, laion_clap):
    from convert.clap_weights import convert_clap
    from imgen_jax.eval.nets.clap import ClapConfig, ClapScorer
    from imgen_jax.eval.plugins import load_plugin

    model = laion_clap
    save_clap_checkpoint(model, tmp_path / "music_audioset_epoch_15_esc_90.14.pt")  # the published layout
    write_clap_tokenizer(tmp_path / "roberta-base")
    cfg = convert_clap(tmp_path / "music_audioset_epoch_15_esc_90.14.pt", tmp_path / "roberta-base", tmp_path / "clap.safetensors")
    assert cfg == ClapConfig()
    scorer = load_plugin("clap", f"imgen_jax.eval.nets.clap:clap_plugin={tmp_path / 'clap.safetensors'}")
    assert isinstance(scorer, ClapScorer) and (scorer.name, scorer.sample_rate, scorer.batch_size) == ("clap", 48000, 8)

    clips = _clips()
    want_audio = laion_clap_audio_embedding(model, clips)
    with torch.no_grad():
        tok = _hf_tokenizer(tmp_path / "roberta-base")
        want_text = model.get_text_embedding(tok(TEXTS, padding="max_length", truncation=True, max_length=77,
                                                 return_tensors="pt")).numpy()
    got_audio = scorer.embed_audio(clips)
    assert got_audio.shape == want_audio.shape == (2, 512) and got_audio.dtype == np.float32
    assert _rel(got_audio, want_audio) < TOL
    got_text = scorer.embed_text(TEXTS)  # 3 texts: one batch padded to 4 (powers of two up to batch_size 8)
    assert got_text.shape == want_text.shape == (3, 512)
    assert _rel(got_text, want_text) < TOL
    np.testing.assert_allclose(np.linalg.norm(got_audio, axis=1), 1.0, rtol=1e-5)
    # the random towers tell their inputs apart by far more than the tolerance (no near-constant outputs)
    assert _rel(want_audio[0], want_audio[1]) > 0.1 and min(_rel(want_text[i], want_text[j]) for i, j in ((0, 1), (0, 2), (1, 2))) > 0.1


def test_clap_converter_reports_key_problems(laion_clap, tmp_path):
    from convert.clap_weights import clap_from_torch, read_tokenizer
    from imgen_jax.eval.nets.clap import ClapConfig

    sd = {k: v.numpy() for k, v in laion_clap.state_dict().items()}
    bad = dict(sd)
    del bad["audio_branch.layers.2.blocks.7.mlp.fc2.bias"]
    bad["text_branch.encoder.layer.3.intermediate.dense.weight"] = np.zeros((3072, 767), np.float32)
    bad["audio_branch.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ImgenError) as e:
        clap_from_torch({f"module.{k}": v for k, v in bad.items()}, "bad.pt")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("bad.pt: ")
    assert "missing keys: audio_branch.layers.2.blocks.7.mlp.fc2.bias" in msg
    assert "mis-shaped: text_branch.encoder.layer.3.intermediate.dense.weight (expected [3072, 768], got [3072, 767])" in msg
    assert "unexpected keys: audio_branch.extra.weight" in msg
    other = dict(sd, **{"audio_branch.logmel_extractor.melW": sd["audio_branch.logmel_extractor.melW"] * 1.01})
    with pytest.raises(ImgenError, match="logmel_extractor.melW differs from the Slaney filters"):
        clap_from_torch(other, "other.pt")
    fusion = dict(sd, **{"audio_branch.patch_embed.mel_conv2d.weight": np.zeros(3, np.float32)})
    with pytest.raises(ImgenError, match="a fusion CLAP checkpoint"):
        clap_from_torch(fusion, "fusion.pt")
    with pytest.raises(ImgenError, match="not a laion_clap HTSAT \\+ roberta state dict"):
        clap_from_torch({"model.fc1.weight": np.zeros(3)}, "cnn14.pth")
    cfg, flat = clap_from_torch(sd, "ok.pt")
    assert cfg == ClapConfig()
    assert flat["audio/stages/2/pairs/b/attn/qkv/kernel"].shape == (6, 512, 1536)
    assert flat["text/layers/ff_in/kernel"].shape == (12, 768, 3072)
    with pytest.raises(ImgenError, match="merges.txt: file not found"):
        (tmp_path / "tok").mkdir()
        (tmp_path / "tok" / "vocab.json").write_text("{}")
        read_tokenizer(tmp_path / "tok", cfg)


def test_clap_runtime_imports_no_reference_package():
    from import_check import assert_imports_none

    assert_imports_none(("imgen_jax.eval.nets.clap", "imgen_jax.eval.nets.bpe"),
                        ("torch", "transformers", "laion_clap", "regex", "librosa", "torchlibrosa"))


def test_clap_loader_and_scorer_batching(tmp_path):
    """A tiny random ClapModel through save_net / load_clap: the file checks, and the scorer's batching
    (padded power-of-two batches give each clip / text the embedding it gets alone)."""
    from convert.clap_weights import read_tokenizer
    from imgen_jax.eval.nets.clap import ClapConfig, abstract_clap, clap_plugin, clap_scorer, load_clap
    from imgen_jax.eval.nets.common import save_net
    from imgen_jax.weights import module_shapes

    cfg = ClapConfig(clip_samples=9600, n_mels=8, spec_size=16, patch_size=2, embed_dim=8, depths=(2, 2), heads=(1, 2),
                     window_size=2, vocab_size=400, text_width=16, text_layers=1, text_heads=2, text_ff=32,
                     max_positions=80, joint_dim=8)
    rng = np.random.default_rng(1)
    flat = {k: (rng.standard_normal(shape) * 0.3).astype(np.float32) for k, (shape, _) in module_shapes(abstract_clap(cfg)).items()}
    save_net(tmp_path / "notok.safetensors", "clap", cfg, flat)
    with pytest.raises(ImgenError, match="no tokenizer in the metadata"):
        load_clap(tmp_path / "notok.safetensors")
    save_net(tmp_path / "other.safetensors", "vggish", cfg, flat)
    with pytest.raises(ImgenError, match="metadata kind is 'vggish', expected 'clap'"):
        load_clap(tmp_path / "other.safetensors")
    with pytest.raises(ImgenError, match="give the converted CLAP file"):
        clap_plugin()
    write_clap_tokenizer(tmp_path / "tok")
    save_net(tmp_path / "clap.safetensors", "clap", cfg, flat, extra=read_tokenizer(tmp_path / "tok", cfg))
    scorer = clap_scorer(load_clap(tmp_path / "clap.safetensors"), batch_size=2)
    wavs = [(rng.standard_normal(n) * 0.3).astype(np.float32) for n in (3000, 9600, 20000)]
    together = scorer.embed_audio(wavs)  # a batch of 2, then one of 1
    assert together.shape == (3, 8) and together.dtype == np.float32
    alone = np.concatenate([scorer.embed_audio([w]) for w in wavs])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert _rel(together[0], together[1]) > 1e-3
    texts = scorer.embed_text(TEXTS)
    np.testing.assert_allclose(texts, np.concatenate([scorer.embed_text([t]) for t in TEXTS]), atol=1e-5)
    assert scorer.embed_audio([]).shape == scorer.embed_text([]).shape == (0, 8)
    with pytest.raises(ImgenError, match="tokenizer ids up to .* do not fit the model's vocabulary of 100"):
        read_tokenizer(tmp_path / "tok", ClapConfig(vocab_size=100))
