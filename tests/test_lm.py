"""MusicGen LM parity against transformers' MusicgenForConditionalGeneration (random weights, fp32).

Path under test: PyTorch weights -> file on disk -> converter -> converted directory -> load_lm
-> teacher-forced logits. Tolerance: max |ours - torch| <= 1e-4 * max(1, max |torch|) (fp32 with
different summation order over 2-24 layers).
"""

import numpy as np
import pytest
import torch

import jax.numpy as jnp

from convert.common import load_torch_checkpoint
from convert.lm_weights import lm_from_audiocraft, lm_from_hf, lm_hf_to_audiocraft
from convert.reference_models import musicgen_model, state_dict_numpy
from imgen_jax.errors import ImgenError
from imgen_jax.models.lm import LMConfig, load_lm
from imgen_jax.modeldir import write_model_dir


def _inputs(model, B=2, S=9, L=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    K, card = cfg.decoder.num_codebooks, cfg.decoder.vocab_size
    seq = torch.randint(0, card + 1, (B, K, S), generator=g)  # includes the special token
    text_ids = torch.randint(2, cfg.text_encoder.vocab_size, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    for b in range(B):
        mask[b, L - b:] = 0  # row b has b padded positions
    with torch.no_grad():
        hidden = model.text_encoder(input_ids=text_ids, attention_mask=mask).last_hidden_state
        ref = model(encoder_outputs=(hidden,), attention_mask=mask, decoder_input_ids=seq.reshape(B * K, S)).logits
    return seq, hidden, mask, ref.reshape(B, K, S, -1).numpy()


def _ours(model_dir, seq, hidden, mask):
    lm = load_lm(str(model_dir))
    memory = lm.text_memory(jnp.asarray(hidden.numpy()), jnp.asarray(mask.numpy()))
    return np.asarray(lm(jnp.asarray(seq.numpy(), jnp.int32), memory, jnp.asarray(mask.numpy())))


def _check(ours, ref):
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(ours - ref).max())
    assert err <= tol, f"max abs error {err} > {tol}"


@pytest.mark.parametrize("channels,codebooks", [(1, 4), (2, 8)])
def test_lm_logits_hf_layout(tmp_path, channels, codebooks):
    model = musicgen_model(codebooks=codebooks, audio_channels=channels)
    model.save_pretrained(tmp_path / "hf")
    sd, _ = load_torch_checkpoint(tmp_path / "hf" / "model.safetensors")
    cfg, flat = lm_from_hf(
        {k: v for k, v in sd.items() if not k.startswith(("text_encoder.", "audio_encoder."))},
        model.config.decoder.to_dict(), "hf", text_dim=model.config.text_encoder.d_model,
    )
    assert (cfg.num_codebooks, cfg.audio_channels, cfg.num_layers, cfg.dim) == (codebooks, channels, 2, 32)
    write_model_dir(tmp_path / "out", "musicgen", {"lm": cfg.to_dict()}, {"lm": flat}, source="test")
    seq, hidden, mask, ref = _inputs(model)
    _check(_ours(tmp_path / "out", seq, hidden, mask), ref)


def test_lm_logits_audiocraft_layout(tmp_path):
    model = musicgen_model()
    ac = {k: torch.from_numpy(v) for k, v in lm_hf_to_audiocraft(state_dict_numpy(model)).items()}
    path = tmp_path / "state_dict.bin"
    torch.save({"best_state": ac, "xp.cfg": "transformer_lm:\n  dim: 32\n  num_heads: 4\n", "version": "1.0"}, path)
    tensors, meta = load_torch_checkpoint(path)
    cfg, flat = lm_from_audiocraft({k[len("best_state."):]: v for k, v in tensors.items()}, str(path), meta)
    assert cfg.num_heads == 4  # read from xp.cfg, not guessed from dim
    write_model_dir(tmp_path / "out", "musicgen", {"lm": cfg.to_dict()}, {"lm": flat}, source="test")
    seq, hidden, mask, _ = _inputs(model)
    # audiocraft semantics: padded text keys are zero vectors that are attended to (no key mask)
    B, K, S = seq.shape
    with torch.no_grad():
        ref = model(encoder_outputs=(hidden,), attention_mask=mask, decoder_input_ids=seq.reshape(B * K, S)).logits
    lm = load_lm(str(tmp_path / "out"))
    memory = lm.text_memory(jnp.asarray(hidden.numpy()), jnp.asarray(mask.numpy()))
    ours_masked = np.asarray(lm(jnp.asarray(seq.numpy(), jnp.int32), memory, jnp.asarray(mask.numpy())))
    _check(ours_masked, ref.reshape(B, K, S, -1).numpy())


def test_kv_cache_matches_teacher_forcing(tmp_path):
    model = musicgen_model()
    cfg, flat = lm_from_hf(state_dict_numpy(model), model.config.decoder.to_dict(), "hf")
    write_model_dir(tmp_path / "out", "musicgen", {"lm": cfg.to_dict()}, {"lm": flat}, source="test")
    seq, hidden, mask, ref = _inputs(model, S=8)
    lm = load_lm(str(tmp_path / "out"))
    m = jnp.asarray(mask.numpy())
    memory = lm.text_memory(jnp.asarray(hidden.numpy()), m)
    seq_j = jnp.asarray(seq.numpy(), jnp.int32)
    cache = lm.init_cache(seq.shape[0], 12, memory, m)
    first, cache = lm.extend(seq_j[..., :5], cache)  # prefill 5 steps
    steps = [first]
    for s in range(5, 8):  # then one step at a time
        out, cache = lm.extend(seq_j[..., s:s + 1], cache)
        steps.append(out)
    _check(np.concatenate([np.asarray(x) for x in steps], axis=2), ref)
    assert int(cache.pos) == 8


def test_hf_config_disagreeing_with_weights_is_an_error():
    model = musicgen_model()
    dc = model.config.decoder.to_dict()
    dc["num_hidden_layers"] = 3
    with pytest.raises(ImgenError, match="num_hidden_layers is 3 but the weights say 2"):
        lm_from_hf(state_dict_numpy(model), dc, "hf")


def test_missing_and_misshaped_lm_keys_are_listed():
    sd = lm_hf_to_audiocraft(state_dict_numpy(musicgen_model()))
    del sd["transformer.layers.1.linear2.weight"]
    sd["out_norm.bias"] = np.zeros(7, np.float32)
    sd["transformer.layers.0.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ImgenError) as e:
        lm_from_audiocraft(sd, "ckpt")
    msg = str(e.value)
    assert "\n" not in msg
    assert "transformer.layers.1.linear2.weight" in msg and "missing" in msg
    assert "out_norm.bias (expected [32], got [7])" in msg
    assert "unexpected keys: transformer.layers.0.extra.weight" in msg


def test_other_model_is_rejected():
    from convert.reference_models import tiny_t5_config
    from transformers import T5EncoderModel

    sd = state_dict_numpy(T5EncoderModel(tiny_t5_config()))
    with pytest.raises(ImgenError, match="not a MusicGen LM checkpoint"):
        lm_from_audiocraft(sd, "t5.bin")
    with pytest.raises(ImgenError, match="not a MusicGen LM checkpoint"):
        lm_from_hf(sd, None, "t5.bin")


def test_presets():
    assert LMConfig.preset("small").num_layers == 24
    assert LMConfig.preset("medium").dim == 1536 and LMConfig.preset("medium").num_heads == 24
    assert LMConfig.preset("large-stereo").num_codebooks == 8
    assert LMConfig.preset("large-stereo").delays == (0, 0, 1, 1, 2, 2, 3, 3)
    with pytest.raises(ImgenError):
        LMConfig.preset("huge")


def test_layer_norm_value_and_gradients_match_torch():
    """`layer_norm` (its gradient written out) against torch.nn.functional.layer_norm and autograd: the value,
    and the gradients of x, scale and bias, within 1e-5 relative to each tensor's largest entry."""
    import jax

    from imgen_jax.models.lm import layer_norm

    rng = np.random.default_rng(0)
    x, dy = (rng.standard_normal((3, 7, 16)).astype(np.float32) * 3 + 1 for _ in range(2))
    scale, bias = 1 + 0.3 * rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    tx, ts, tb = (torch.tensor(a, requires_grad=True) for a in (x, scale, bias))
    ref = torch.nn.functional.layer_norm(tx, (16,), ts, tb, eps=1e-5)
    ref.backward(torch.from_numpy(dy))
    value, vjp = jax.vjp(lambda *a: layer_norm(*a, 1e-5), jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias))
    grads = vjp(jnp.asarray(dy))
    for ours, theirs in zip((value,) + grads, (ref, tx.grad, ts.grad, tb.grad)):
        theirs = theirs.detach().numpy()
        np.testing.assert_allclose(np.asarray(ours), theirs, rtol=0, atol=1e-5 * float(np.abs(theirs).max()))
