"""T5 encoder and tokenizer parity against transformers (random weights, float32).

Encoder path under test: transformers `T5EncoderModel` with random weights -> `save_pretrained`
(safetensors + config.json on disk) -> `convert.t5_weights.convert_hf_t5_dir` -> `imgen_jax.models.t5.load_t5`
-> jitted forward (nnx.split / jax.jit, static [B, L]) -> last_hidden_state, compared with HF's
on the same ids and attention mask (rows with padding, and a fully padded row, as audiocraft
makes for empty descriptions). HF runs with both its "sdpa" (default) and "eager" attention.
Tolerance: max |ours - hf| <= 1e-4 * max(1, max |hf|) (fp32, different summation order).
The relative-attention bias is given std 1 (not 0.05) so that a wrong bucket shows far above it.

Tokenizer: `imgen_jax.models.t5.T5Tokenizer` on the `spm_model` fixture vs transformers' `T5Tokenizer`
loaded from the same spiece.model (extra_ids=100): ids and attention masks must be equal.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from convert.t5_weights import convert_hf_t5_dir, t5_from_hf
from convert.reference_models import randomize_, state_dict_numpy, t5_base_config, tiny_t5_config
from imgen_jax.errors import ImgenError
from imgen_jax.models.t5 import T5Config, T5Tokenizer, load_t5, relative_position_bucket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------------
# helpers


def _hf_encoder(cfg, seed=0):
    from transformers import T5EncoderModel

    torch.manual_seed(seed)
    model = randomize_(T5EncoderModel(cfg), seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        rel = model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
        rel.copy_(torch.randn(rel.shape, generator=g))
    return model


def _convert(model, tmp_path, spm_model=None):
    """save_pretrained -> convert_hf_t5_dir -> load_t5; returns (encoder, tokenizer, converted dir)."""
    hf_dir = tmp_path / "hf"
    model.save_pretrained(hf_dir)
    if spm_model is not None:
        shutil.copyfile(spm_model, hf_dir / "spiece.model")
    out = convert_hf_t5_dir(hf_dir, tmp_path / "out")
    enc, tok = load_t5(out)
    return enc, tok, out


def _ids_and_mask(B, L, vocab, seed=1, fully_padded_row=False):
    """Random ids; row b has b padded positions (pad id 0); optionally a last row of padding only."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(B, L)).astype(np.int32)
    mask = np.ones((B, L), np.int32)
    for b in range(B):
        if b:
            mask[b, L - b:] = 0
    if fully_padded_row:
        mask[-1] = 0
    ids[mask == 0] = 0
    return ids, mask


def _jit_forward(enc):
    """The encoder as the runtime calls it: one jitted pure function of (state, ids, mask)."""
    graphdef, state = nnx.split(enc)

    @jax.jit
    def f(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask)

    return lambda ids, mask: np.asarray(f(state, jnp.asarray(ids), jnp.asarray(mask)))


def _hf_hidden(model, ids, mask, attn="sdpa"):
    model.set_attn_implementation(attn)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
    return out.last_hidden_state.numpy()


def _check(ours, ref):
    assert np.isfinite(ours).all()
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(ours - ref).max())
    assert err <= tol, f"max abs error {err} > {tol}"


def _compare(model, enc, ids, mask):
    ours = _jit_forward(enc)(ids, mask)
    for attn in ("sdpa", "eager"):
        _check(ours, _hf_hidden(model, ids, mask, attn))


# --------------------------------------------------------------------------------------------
# encoder parity


def test_relu_tiny_with_tokenizer(tmp_path, spm_model):
    """t5-base style (relu FF), converted with its spiece.model; ids from our tokenizer."""
    model = _hf_encoder(tiny_t5_config(vocab=256))
    enc, tok, _ = _convert(model, tmp_path, spm_model)
    assert isinstance(tok, T5Tokenizer) and tok.vocab_size == 250
    cfg = enc.cfg
    assert (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff) == (2, 24, 3, 8, 48)
    assert not cfg.is_gated and cfg.activation == "relu"
    ids, mask = tok(["Music piece. Instruct: Add drums.", "Only piano", "", "No bass <extra_id_0>"])
    assert mask.sum(1).tolist()[2] == 1 and mask.min() == 0  # "" is just </s>; rows are padded
    _compare(model, enc, ids, mask)
    ids, mask = _ids_and_mask(3, 7, 256, fully_padded_row=True)
    _compare(model, enc, ids, mask)
    # no mask = every position is a token
    ids, _ = _ids_and_mask(2, 5, 256)
    ours = np.asarray(enc(jnp.asarray(ids)))
    _check(ours, _hf_hidden(model, ids, np.ones_like(ids)))


@pytest.mark.parametrize("proj", ["gated-gelu", "gated-silu", "gelu"])
def test_other_feed_forwards_tiny(tmp_path, proj):
    """gated-gelu (t5 v1.1 / flan-t5, tanh gelu), gated-silu and plain (exact) gelu."""
    model = _hf_encoder(tiny_t5_config(vocab=100, feed_forward_proj=proj), seed=3)
    enc, tok, _ = _convert(model, tmp_path)
    assert tok is None
    assert enc.cfg.feed_forward_proj == proj and enc.cfg.is_gated == proj.startswith("gated")
    ids, mask = _ids_and_mask(3, 9, 100, seed=4)
    _compare(model, enc, ids, mask)


def test_sequences_longer_than_max_distance(tmp_path):
    """L = 70 > relative_attention_max_distance = 16: the log-spaced and the clipped buckets."""
    model = _hf_encoder(tiny_t5_config(vocab=100, num_buckets=10, max_distance=16), seed=5)
    enc, _, _ = _convert(model, tmp_path)
    ids, mask = _ids_and_mask(2, 70, 100, seed=6)
    mask[1, 40:] = 0
    _compare(model, enc, ids, mask)


@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 16), (10, 16), (6, 20), (64, 256), (4, 4)])
def test_relative_position_bucket_matches_hf(num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = np.arange(-1200, 1201)
    for bidirectional in (True, False):
        ref = T5Attention._relative_position_bucket(
            torch.from_numpy(rel), bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
        ).numpy()
        ours = relative_position_bucket(rel, num_buckets, max_distance, bidirectional=bidirectional)
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("proj", ["relu", "gelu", "gated-gelu", "gated-silu", "silu", "gelu_new"])
def test_activation_is_hf_one(proj):
    """The FF activation of each feed_forward_proj equals transformers' (e.g. gated-gelu = tanh gelu).

    Checked directly: through random tiny weights, tanh-vs-erf gelu is below the parity tolerance.
    """
    from transformers import T5Config as HFT5Config
    from transformers.activations import ACT2FN

    from imgen_jax.models.t5 import _ACTIVATIONS

    hf = HFT5Config(feed_forward_proj=proj)
    ours = T5Config(feed_forward_proj=proj)
    assert ours.is_gated == hf.is_gated_act
    x = np.linspace(-8, 8, 4001, dtype=np.float32)
    ref = ACT2FN[hf.dense_act_fn](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(_ACTIVATIONS[ours.activation](jnp.asarray(x))), ref, rtol=0, atol=2e-6)


@pytest.mark.fullsize
def test_t5_base_shapes(tmp_path):
    """Full t5-base shapes (12 x 768, 12 heads, 32128 vocab), random weights, short sequences."""
    model = _hf_encoder(t5_base_config(), seed=7)
    enc, _, _ = _convert(model, tmp_path)
    assert enc.cfg == T5Config()  # the defaults are t5-base
    ids, mask = _ids_and_mask(2, 12, 32128, seed=8)
    ours = _jit_forward(enc)(ids, mask)
    _check(ours, _hf_hidden(model, ids, mask))


def test_forward_compiles_once_per_shape(tmp_path):
    """Static [B, L] shapes: repeated calls reuse one compiled program; works under nnx.jit too."""
    model = _hf_encoder(tiny_t5_config())
    enc, _, _ = _convert(model, tmp_path)
    graphdef, state = nnx.split(enc)
    traces = []

    @jax.jit
    def f(state, ids, mask):
        traces.append(ids.shape)
        return nnx.merge(graphdef, state)(ids, mask)

    ids, mask = _ids_and_mask(2, 6, 100)
    a = f(state, ids, mask)
    b = f(state, ids + 1, mask)
    assert len(traces) == 1 and a.shape == (2, 6, 24) and a.dtype == jnp.float32
    assert not np.allclose(np.asarray(a), np.asarray(b))
    c = nnx.jit(lambda m, i, k: m(i, k))(enc, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-6, atol=1e-6)


def test_bfloat16_compute_is_close(tmp_path):
    """dtype=bfloat16 (accelerator setting) stays close to the float32 result."""
    model = _hf_encoder(tiny_t5_config())
    model.save_pretrained(tmp_path / "hf")
    out = convert_hf_t5_dir(tmp_path / "hf", tmp_path / "out")
    enc32, _ = load_t5(out)
    enc16, _ = load_t5(out, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    ids, mask = _ids_and_mask(2, 6, 100)
    a, b = _jit_forward(enc32)(ids, mask), _jit_forward(enc16)(ids, mask)
    assert b.dtype == np.float32
    assert float(np.abs(a - b).max()) < 0.1 * max(1.0, float(np.abs(a).max()))


def test_runtime_does_not_import_torch(tmp_path, spm_model):
    model = _hf_encoder(tiny_t5_config(vocab=256))
    model.save_pretrained(tmp_path / "hf")
    shutil.copyfile(spm_model, tmp_path / "hf" / "spiece.model")
    out = convert_hf_t5_dir(tmp_path / "hf", tmp_path / "out")
    code = (
        "import sys; from imgen_jax.models.t5 import load_t5\n"
        f"enc, tok = load_t5({str(out)!r})\n"
        "ids, mask = tok(['Add drums.', 'x'])\n"
        "h = enc(ids, mask); h.block_until_ready()\n"
        "bad = [m for m in ('torch', 'transformers', 'convert') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


# --------------------------------------------------------------------------------------------
# tokenizer parity

TEXTS = [
    "",
    "Music piece. Instruct: Add drums.",
    "Music piece. Instruct: Remove bass, keep the piano!",
    "  Only   piano,\tplease!\n",
    "What?! (live) [remix] -- 120 bpm; 4/4 time... ok?",
    "Ünïcödé ｆｕｌｌｗｉｄｔｈ café 日本の音楽 🎹 ﬁ ① ™ ½",
    "No bass \u2014 and  no\u00a0drums\u2026 \u200b\u3000zero width",
    "a<extra_id_0>b </s> <pad>x<unk> <extra_id_99><extra_id_10> <extra_id_100> <extra_id_1",
    "QQQ xyz ZZZ",  # characters missing from the tiny vocabulary -> <unk>
    " ".join(["A dreamy lo-fi hip hop track with mellow piano and soft vinyl crackle."] * 6),
]


@pytest.fixture(scope="module")
def tokenizers(spm_model, tmp_path_factory):
    from transformers import T5Tokenizer as HFT5Tokenizer

    d = tmp_path_factory.mktemp("hf_tok")
    shutil.copyfile(spm_model, d / "spiece.model")
    return T5Tokenizer(spm_model), HFT5Tokenizer.from_pretrained(str(d), extra_ids=100)


def test_tokenizer_special_ids(tokenizers):
    ours, hf = tokenizers
    assert (ours.pad_id, ours.eos_id, ours.unk_id) == (0, 1, 2) == (hf.pad_token_id, hf.eos_token_id, hf.unk_token_id)
    assert ours.vocab_size == len(hf) == 250
    for i in (0, 1, 57, 99):
        assert ours.special[f"<extra_id_{i}>"] == hf.convert_tokens_to_ids(f"<extra_id_{i}>") == 249 - i


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_single_texts(tokenizers, text):
    ours, hf = tokenizers
    ref = hf(text)["input_ids"]
    assert ours.encode(text) == ref
    assert ref[-1] == 1
    ids, mask = ours(text)
    assert ids.tolist() == [ref] and mask.tolist() == [[1] * len(ref)]


@pytest.mark.parametrize("max_length", [None, 1, 2, 8, 40])
def test_tokenizer_batches_with_padding_and_truncation(tokenizers, max_length):
    ours, hf = tokenizers
    kw = {} if max_length is None else dict(truncation=True, max_length=max_length)
    ref = hf(TEXTS, padding=True, **kw)
    ids, mask = ours(TEXTS, max_length=max_length)
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    assert ids.tolist() == ref["input_ids"]
    assert mask.tolist() == ref["attention_mask"]
    assert (ids[mask == 0] == 0).all()
    if max_length is not None:
        assert ids.shape[1] <= max_length
        # padding to a fixed width, for a static jit shape
        ref = hf(TEXTS, padding="max_length", **kw)
        ids, mask = ours(TEXTS, max_length=max_length, padding="max_length")
        assert ids.shape == (len(TEXTS), max_length)
        assert ids.tolist() == ref["input_ids"] and mask.tolist() == ref["attention_mask"]


def test_tokenizer_bad_arguments(tokenizers):
    ours, _ = tokenizers
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ImgenError, match="max_length"):
            ours(["x"], max_length=bad)
    with pytest.raises(ImgenError, match="padding"):
        ours(["x"], padding="max_length")
    with pytest.raises(ImgenError, match="string"):
        ours([b"bytes"])
    ids, mask = ours([])
    assert ids.shape == (0, 0) and mask.shape == (0, 0)


def test_damaged_or_foreign_spiece_model(tmp_path, spm_model):
    import sentencepiece as spm

    data = open(spm_model, "rb").read()
    for name, blob in (("truncated", data[: len(data) // 2]), ("empty", b""), ("text", b"not a model\n" * 20)):
        p = tmp_path / f"{name}.model"
        p.write_bytes(blob)
        with pytest.raises(ImgenError) as e:
            T5Tokenizer(p)
        assert str(p) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ImgenError, match="not found"):
        T5Tokenizer(tmp_path / "missing.model")
    # a readable sentencepiece model without T5's <pad>
    p = tmp_path / "nopad.model"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["add drums", "remove bass", "only piano"] * 20), model_writer=open(p, "wb"),
        vocab_size=20, hard_vocab_limit=False, minloglevel=2, num_threads=1,
    )
    with pytest.raises(ImgenError, match="not a T5 sentencepiece model"):
        T5Tokenizer(p)


def test_damaged_spiece_in_snapshot_and_converted_dir(tmp_path, spm_model):
    model = _hf_encoder(tiny_t5_config(vocab=256))
    model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "spiece.model").write_bytes(open(spm_model, "rb").read()[:300])
    with pytest.raises(ImgenError, match="spiece.model"):
        convert_hf_t5_dir(tmp_path / "hf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    shutil.copyfile(spm_model, tmp_path / "hf" / "spiece.model")
    out = convert_hf_t5_dir(tmp_path / "hf", tmp_path / "out")
    with open(os.path.join(out, "spiece.model"), "r+b") as f:
        f.truncate(100)
    with pytest.raises(ImgenError, match="spiece.model"):
        load_t5(out)


def test_tokenizer_larger_than_embedding_is_an_error(tmp_path, spm_model):
    """250 token ids (150 pieces + 100 sentinels) cannot index a 100-row embedding."""
    model = _hf_encoder(tiny_t5_config(vocab=100))
    model.save_pretrained(tmp_path / "hf")
    shutil.copyfile(spm_model, tmp_path / "hf" / "spiece.model")
    with pytest.raises(ImgenError, match="250.*100"):
        convert_hf_t5_dir(tmp_path / "hf", tmp_path / "out")


# --------------------------------------------------------------------------------------------
# converter errors


def _snapshot(tmp_path, cfg=None):
    model = _hf_encoder(cfg or tiny_t5_config(vocab=100))
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def _edit_weights(hf_dir, fn):
    from safetensors.numpy import load_file, save_file

    path = hf_dir / "model.safetensors"
    sd = load_file(path)
    fn(sd)
    save_file(sd, path)


def _error(hf_dir, tmp_path):
    with pytest.raises(ImgenError) as e:
        convert_hf_t5_dir(hf_dir, tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and str(hf_dir) in msg
    assert not (tmp_path / "out").exists()
    return msg


def test_missing_misshaped_and_unexpected_keys_are_listed(tmp_path):
    hf_dir = _snapshot(tmp_path)

    def damage(sd):
        del sd["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
        sd["encoder.final_layer_norm.weight"] = np.zeros(7, np.float32)
        sd["encoder.block.0.layer.0.SelfAttention.extra.weight"] = np.zeros(3, np.float32)

    _edit_weights(hf_dir, damage)
    msg = _error(hf_dir, tmp_path)
    assert "missing keys: encoder.block.1.layer.1.DenseReluDense.wo.weight" in msg
    assert "encoder.final_layer_norm.weight (expected [24], got [7])" in msg
    assert "unexpected keys: encoder.block.0.layer.0.SelfAttention.extra.weight" in msg


def test_missing_embedding_is_named(tmp_path):
    hf_dir = _snapshot(tmp_path)
    _edit_weights(hf_dir, lambda sd: sd.pop("shared.weight"))
    assert "shared.weight" in _error(hf_dir, tmp_path)


def test_non_t5_state_dict_is_rejected(tmp_path):
    from convert.reference_models import musicgen_model

    sd = {k: v for k, v in state_dict_numpy(musicgen_model()).items() if k.startswith("decoder.")}
    with pytest.raises(ImgenError, match="not a T5 encoder state dict") as e:
        t5_from_hf(sd, None, "lm.bin")
    assert "\n" not in str(e.value)
    with pytest.raises(ImgenError, match="not a T5 encoder state dict"):
        t5_from_hf(sd, tiny_t5_config().to_dict(), "lm.bin")
    # ... and through a directory whose config.json is not a T5 one
    hf_dir = _snapshot(tmp_path)
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["model_type"] = "bert"
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    assert "model_type is 'bert'" in _error(hf_dir, tmp_path)


@pytest.mark.parametrize(
    "field,value,expect",
    [
        ("num_layers", 3, "num_layers is 3 but the weights say 2"),
        ("num_layers", 1, "num_layers is 1 but the weights say 2"),
        ("d_model", 32, "d_model is 32 but the weights say 24"),
        ("num_heads", 4, "num_heads is 4 but the weights say 3"),
        ("d_kv", 4, "d_kv is 4 but the weights say 8"),
        ("d_ff", 64, "d_ff is 64 but the weights say 48"),
        ("vocab_size", 128, "vocab_size is 128 but the weights say 100"),
        ("relative_attention_num_buckets", 32, "relative_attention_num_buckets is 32 but the weights say 8"),
        ("feed_forward_proj", "gated-gelu", "feed_forward_proj is 'gated-gelu' (gated) but the weights say not gated"),
    ],
)
def test_config_disagreeing_with_weights_is_an_error(tmp_path, field, value, expect):
    hf_dir = _snapshot(tmp_path)
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg[field] = value
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    msg = _error(hf_dir, tmp_path)
    assert expect in msg, msg


def test_config_less_state_dict_and_musicgen_prefix():
    """Sizes inferred from the weights when there is no config; a MusicGen-style `text_encoder.` prefix."""
    # the weights do not record max_distance (T5's 128 is assumed) nor which gated activation
    model = _hf_encoder(tiny_t5_config(feed_forward_proj="gated-gelu", max_distance=128))
    sd = state_dict_numpy(model)
    cfg, flat = t5_from_hf(sd, None, "sd")
    assert cfg == T5Config.from_hf(model.config.to_dict())
    pre = {"text_encoder." + k: v for k, v in sd.items()}
    pre["decoder.model.decoder.layers.0.fc1.weight"] = np.zeros((2, 2), np.float32)  # other components: not T5's
    cfg2, flat2 = t5_from_hf(pre, {"text_encoder": model.config.to_dict(), "decoder": {}}, "musicgen", prefix="text_encoder.")
    # without a prefix, a whole MusicGen state dict is recognised by its text_encoder.* keys
    cfg3, flat3 = t5_from_hf(pre, {"text_encoder": model.config.to_dict(), "decoder": {}}, "musicgen")
    assert cfg2 == cfg == cfg3 and sorted(flat2) == sorted(flat) == sorted(flat3)
    for k in flat:
        np.testing.assert_array_equal(flat[k], flat2[k])
        np.testing.assert_array_equal(flat[k], flat3[k])
