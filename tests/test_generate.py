"""Decoding parity against transformers' MusicgenForConditionalGeneration.generate (random weights, fp32).

Path under test: PyTorch weights -> converter -> converted directory -> load_lm -> imgen_jax.generate.
Greedy decoding must give exactly transformers' tokens; the guided per-step logits (transformers'
`output_scores`, i.e. after the CFG processor) must agree within 1e-4 * max(1, max |torch|) (fp32, different
summation order, same tolerance as tests/test_lm.py).
"""

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp

from convert.lm_weights import lm_from_hf
from convert.reference_models import musicgen_model, musicgen_small_model, state_dict_numpy
from imgen_jax import generate as gen
from imgen_jax.errors import ImgenError
from imgen_jax.generate import SamplingConfig, choose_tokens, filter_logits, generate
from imgen_jax.instruct.fusion import InstructFusion
from imgen_jax.models.lm import load_lm
from imgen_jax.modeldir import write_model_dir

B, L = 2, 5


def _convert(model, out_dir):
    cfg, flat = lm_from_hf(
        state_dict_numpy(model), model.config.decoder.to_dict(), "hf", text_dim=model.config.text_encoder.d_model
    )
    write_model_dir(out_dir, "musicgen", {"lm": cfg.to_dict()}, {"lm": flat}, source="test")
    return load_lm(str(out_dir))


def _text(model, batch=B, length=L, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, model.config.text_encoder.vocab_size, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(batch):
        mask[b, length - b:] = 0  # row b has b padded positions
    return ids, mask


def _hf_generate(model, ids, mask, **kw):
    """transformers' generate -> (codes [B,K,T] int, guided scores [B,K,N,V]); the codes are captured at the
    audio decoder (generate returns audio)."""
    captured = []
    original = model.audio_encoder.decode

    def capture(codes, *a, **k):  # stereo models decode the left, then the right codebooks
        captured.append(codes.clone())
        return original(codes, *a, **k)

    model.audio_encoder.decode = capture
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, return_dict_in_generate=True, output_scores=True, **kw
            )
    finally:
        model.audio_encoder.decode = original
    K = model.decoder.num_codebooks
    scores = np.stack([s.numpy().reshape(ids.shape[0], K, -1) for s in out.scores], axis=2)
    if len(captured) == 1:
        codes = captured[0][0].numpy()
    else:
        left, right = captured[0][0].numpy(), captured[1][0].numpy()
        codes = np.empty(left.shape[:1] + (K,) + left.shape[2:], left.dtype)
        codes[:, 0::2], codes[:, 1::2] = left, right
    return codes, scores


def _memory(model, lm, ids, mask):
    with torch.no_grad():
        hidden = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    m = jnp.asarray(mask.numpy())
    return lm.text_memory(jnp.asarray(hidden.numpy()), m), m


def _check_close(ours, ref):
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(ours - ref).max())
    assert err <= tol, f"max abs error {err} > {tol}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = musicgen_model(seed=3)
    lm = _convert(model, tmp_path_factory.mktemp("gen") / "out")
    ids, mask = _text(model)
    memory, m = _memory(model, lm, ids, mask)
    return model, lm, ids, mask, memory, m


@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_greedy_matches_transformers(tiny, guidance):
    model, lm, ids, mask, memory, m = tiny
    N = 14  # new pattern steps; frames = N + 1 - K
    ref_codes, ref_scores = _hf_generate(model, ids, mask, do_sample=False, guidance_scale=guidance, max_new_tokens=N)
    cfg = SamplingConfig(num_frames=N + 1 - 4, guidance_scale=guidance, use_sampling=False)
    codes, logits = generate(lm, memory, m, cfg, return_logits=True)
    assert codes.shape == ref_codes.shape == (B, 4, N - 3)
    np.testing.assert_array_equal(np.asarray(codes), ref_codes)
    _check_close(np.asarray(logits)[:, :, 1:], ref_scores)  # logits[:, :, s] chose step s; step 0 is the start


def test_stereo_greedy_matches_transformers(tmp_path):
    """8 codebooks, left/right of each level sharing a delay (delays 0,0,1,1,2,2,3,3)."""
    model = musicgen_model(codebooks=8, audio_channels=2, seed=5)
    lm = _convert(model, tmp_path / "out")
    ids, mask = _text(model)
    memory, m = _memory(model, lm, ids, mask)
    N = 12  # frames = N + 1 - (max_delay + 1)
    ref_codes, ref_scores = _hf_generate(model, ids, mask, do_sample=False, guidance_scale=3.0, max_new_tokens=N)
    codes, logits = generate(lm, memory, m, SamplingConfig(num_frames=N - 3, guidance_scale=3.0, use_sampling=False),
                             return_logits=True)
    assert codes.shape == ref_codes.shape == (B, 8, N - 3)
    np.testing.assert_array_equal(np.asarray(codes), ref_codes)
    _check_close(np.asarray(logits)[:, :, 1:], ref_scores)


def test_scanned_layers_match_unrolled(tiny):
    """unroll_layers=False (stacked cache, scanned layers) decodes the same tokens as the default."""
    model, lm, ids, mask, memory, m = tiny
    cfg = SamplingConfig(num_frames=10, guidance_scale=3.0, use_sampling=False)
    codes, logits = generate(lm, memory, m, cfg, return_logits=True, unroll_layers=True)
    codes_s, logits_s = generate(lm, memory, m, cfg, return_logits=True, unroll_layers=False)
    np.testing.assert_array_equal(np.asarray(codes), np.asarray(codes_s))
    _check_close(np.asarray(logits_s), np.asarray(logits))


def test_top_k_1_is_greedy(tiny):
    model, lm, ids, mask, memory, m = tiny
    greedy = generate(lm, memory, m, SamplingConfig(num_frames=8, guidance_scale=3.0, use_sampling=False))
    topk1 = generate(lm, memory, m, SamplingConfig(num_frames=8, guidance_scale=3.0, top_k=1, seed=5))
    np.testing.assert_array_equal(np.asarray(greedy), np.asarray(topk1))
    ref_codes, _ = _hf_generate(model, ids, mask, do_sample=True, top_k=1, guidance_scale=3.0, max_new_tokens=11)
    np.testing.assert_array_equal(np.asarray(topk1), ref_codes)


def test_audio_prompt_continuation_matches_transformers(tiny):
    model, lm, ids, mask, memory, m = tiny
    Tp, N = 6, 10
    prompt = torch.randint(0, model.config.decoder.vocab_size, (B, 4, Tp), generator=torch.Generator().manual_seed(7))
    ref_codes, ref_scores = _hf_generate(
        model, ids, mask, decoder_input_ids=prompt.reshape(B * 4, Tp), do_sample=False, guidance_scale=3.0,
        max_new_tokens=N,
    )
    cfg = SamplingConfig(num_frames=Tp + N + 1 - 4, guidance_scale=3.0, use_sampling=False)
    codes, logits = generate(lm, memory, m, cfg, prompt=prompt.numpy(), return_logits=True)
    assert codes.shape == ref_codes.shape == (B, 4, Tp + N - 3)
    np.testing.assert_array_equal(np.asarray(codes)[:, :, :Tp], prompt.numpy())
    np.testing.assert_array_equal(np.asarray(codes), ref_codes)
    _check_close(np.asarray(logits)[:, :, Tp + 1:], ref_scores)


def test_sampling_is_seeded(tiny):
    _, lm, _, _, memory, m = tiny
    cfg = SamplingConfig(num_frames=20, guidance_scale=3.0, top_k=8, temperature=1.5)
    a = np.asarray(generate(lm, memory, m, cfg))
    b = np.asarray(generate(lm, memory, m, cfg))
    c = np.asarray(generate(lm, memory, m, cfg, key=jax.random.PRNGKey(1)))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert a.min() >= 0 and a.max() < lm.cfg.card


@pytest.mark.parametrize("top_k,top_p", [(3, None), (None, 0.5), (6, 0.7)])
def test_filters_restrict_the_support(top_k, top_p):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 32)).astype(np.float32) * 2
    logits[0, 0, :5] = 1.0  # ties at the top
    filtered = np.asarray(filter_logits(jnp.asarray(logits), top_k, top_p))
    allowed = np.ones_like(logits, bool)
    if top_k:
        kth = -np.sort(-logits, -1)[..., top_k - 1:top_k]
        allowed &= logits >= kth
    if top_p:  # transformers' TopPLogitsWarper on the top-k filtered logits
        x = np.where(allowed, logits, -np.inf)
        order = np.argsort(x, -1, kind="stable")
        sx = np.take_along_axis(x, order, -1)
        p = np.exp(sx - sx.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        remove_sorted = np.cumsum(p, -1) <= 1 - top_p
        remove_sorted[..., -1] = False
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, -1)
        allowed &= ~remove
    np.testing.assert_array_equal(np.isfinite(filtered), allowed)
    keys = jax.random.split(jax.random.PRNGKey(0), 400)
    draw = jax.vmap(lambda k: choose_tokens(jnp.asarray(logits), k, greedy=False, top_k=top_k, top_p=top_p))
    draws = np.asarray(draw(keys))
    hit = np.take_along_axis(np.broadcast_to(allowed, (400,) + allowed.shape), draws[..., None], -1)[..., 0]
    assert hit.all()
    assert all(len(np.unique(draws[:, i, j])) > 1 for i in range(3) for j in range(4) if allowed[i, j].sum() > 1)


def test_sampled_tokens_lie_in_the_top_k_of_the_guided_logits(tiny):
    _, lm, _, _, memory, m = tiny
    cfg = SamplingConfig(num_frames=16, guidance_scale=3.0, top_k=3, temperature=2.0)
    codes, logits = generate(lm, memory, m, cfg, return_logits=True)
    from imgen_jax.models.patterns import build_pattern, valid_steps

    seq = np.asarray(build_pattern(np.asarray(codes), lm.cfg.card, lm.cfg.delays))
    logits = np.asarray(logits)
    valid = valid_steps(16, seq.shape[-1], lm.cfg.delays)
    kth = -np.sort(-logits, -1)[..., 2]
    chosen = np.take_along_axis(logits, np.minimum(seq, lm.cfg.card - 1)[..., None], -1)[..., 0]
    assert (chosen >= kth)[:, valid].all()


def test_long_form_windows(tiny):
    _, lm, _, _, memory, m = tiny
    W, stride, total = 12, 8, 30  # 2.5 windows
    key = jax.random.PRNGKey(4)
    cfg = SamplingConfig(num_frames=total, window_frames=W, stride_frames=stride, top_k=8, guidance_scale=3.0)
    seen = []
    out = np.asarray(generate(lm, memory, m, cfg, key=key, progress=lambda d, t: seen.append((d, t))))
    assert out.shape == (B, 4, total)
    # the first window is a plain generation of one window with the window's key
    first = generate(lm, memory, m, SamplingConfig(**{**cfg.__dict__, "num_frames": W}), key=jax.random.fold_in(key, 0))
    np.testing.assert_array_equal(out[:, :, :W], np.asarray(first))
    # the second window continues the last W - stride frames of the first
    n2 = min(total - stride, W)
    second = generate(lm, memory, m, SamplingConfig(**{**cfg.__dict__, "num_frames": n2}), prompt=first[:, :, stride:],
                      key=jax.random.fold_in(key, 1))
    np.testing.assert_array_equal(out[:, :, stride:stride + n2], np.asarray(second))
    assert seen and max(seen) == (total, total) and all(t == total for _, t in seen)


def test_long_form_with_prompt_keeps_the_prompt(tiny):
    _, lm, _, _, memory, m = tiny
    prompt = np.random.default_rng(0).integers(0, lm.cfg.card, (B, 4, 5)).astype(np.int32)
    cfg = SamplingConfig(num_frames=27, window_frames=12, stride_frames=7, use_sampling=False)
    out = np.asarray(generate(lm, memory, m, cfg, prompt=prompt))
    assert out.shape == (B, 4, 27)
    np.testing.assert_array_equal(out[:, :, :5], prompt)
    first = generate(lm, memory, m, SamplingConfig(**{**cfg.__dict__, "num_frames": 12}), prompt=prompt)
    np.testing.assert_array_equal(out[:, :, :12], np.asarray(first))


def test_compiles_once_per_bucket(tiny):
    _, lm, _, _, memory, m = tiny
    base = SamplingConfig(num_frames=21, guidance_scale=3.0, top_k=5, length_bucket=32)
    generate(lm, memory, m, base)
    before = gen.trace_count()
    # same bucket: other seed, guidance value, temperature and a length within the same 32-step buffer
    generate(lm, memory, m, base, key=jax.random.PRNGKey(9))
    generate(lm, memory, m, SamplingConfig(**{**base.__dict__, "guidance_scale": 5.0, "temperature": 0.7}))
    out = generate(lm, memory, m, SamplingConfig(**{**base.__dict__, "num_frames": 17}))
    assert out.shape == (B, 4, 17)
    assert gen.trace_count() == before
    generate(lm, memory, m, SamplingConfig(**{**base.__dict__, "num_frames": 40}))  # next bucket
    assert gen.trace_count() == before + 1
    # ahead-of-time compilation: the call afterwards starts without tracing or compiling
    other = SamplingConfig(**{**base.__dict__, "num_frames": 70})
    assert gen.compile_generate(lm, memory, m, other) == 1
    assert gen.trace_count() == before + 2
    generate(lm, memory, m, other)
    assert gen.trace_count() == before + 2
    # long form: one program per distinct window shape (first, middle, last)
    long = SamplingConfig(**{**base.__dict__, "num_frames": 45, "window_frames": 20, "stride_frames": 10,
                             "length_bucket": 1})
    assert gen.compile_generate(lm, memory, m, long) == 3  # windows of 20 (no prompt), 20 and 15 frames
    n = gen.trace_count()
    assert generate(lm, memory, m, long).shape == (B, 4, 45)
    assert gen.trace_count() == n


def test_bucketed_buffer_does_not_change_tokens(tiny):
    _, lm, _, _, memory, m = tiny
    exact = generate(lm, memory, m, SamplingConfig(num_frames=10, top_k=6, length_bucket=1))
    padded = generate(lm, memory, m, SamplingConfig(num_frames=10, top_k=6, length_bucket=64))
    np.testing.assert_array_equal(np.asarray(exact), np.asarray(padded))


def test_progress_callback(tiny):
    _, lm, _, _, memory, m = tiny
    seen = []
    generate(lm, memory, m, SamplingConfig(num_frames=9, top_k=4), progress=lambda d, t: seen.append((d, t)))
    S = 9 + 4
    assert sorted(seen) == [(i, S - 1) for i in range(1, S)]


def test_audio_prefix_path(tiny):
    _, lm, _, _, memory, m = tiny
    c = lm.cfg
    Tc = 7
    r = np.random.default_rng(0)
    shape = (c.num_layers, B, Tc, c.num_heads, c.head_dim)
    qkv = [jnp.asarray(r.normal(size=shape).astype(np.float32)) for _ in range(3)]
    cfg = SamplingConfig(num_frames=12, guidance_scale=3.0, use_sampling=False)
    plain = np.asarray(generate(lm, memory, m, cfg))
    closed = generate(lm, memory, m, cfg, fusion=InstructFusion(*qkv, gate=jnp.zeros((c.num_layers,))))
    np.testing.assert_array_equal(np.asarray(closed), plain)
    opened = generate(lm, memory, m, cfg, fusion=InstructFusion(*qkv, gate=jnp.full((c.num_layers,), 2.0), clamp=Tc - 2))
    assert opened.shape == plain.shape and (np.asarray(opened) != plain).any()


def test_bad_inputs(tiny):
    _, lm, _, _, memory, m = tiny
    with pytest.raises(ImgenError, match="shorter than the output"):
        generate(lm, memory, m, SamplingConfig(num_frames=4), prompt=np.zeros((B, 4, 4), np.int32))
    with pytest.raises(ImgenError, match="stride_frames"):
        SamplingConfig(window_frames=10, stride_frames=10)


@pytest.mark.fullsize
def test_musicgen_small_greedy_matches_transformers(tmp_path):
    model = musicgen_small_model()
    lm = _convert(model, tmp_path / "out")
    ids, mask = _text(model, batch=2, length=6)
    N = 13
    ref_codes, ref_scores = _hf_generate(model, ids, mask, do_sample=False, guidance_scale=3.0, max_new_tokens=N)
    memory, m = _memory(model, lm, ids, mask)
    codes, logits = generate(lm, memory, m, SamplingConfig(num_frames=N - 3, guidance_scale=3.0, use_sampling=False),
                             return_logits=True)
    np.testing.assert_array_equal(np.asarray(codes), ref_codes)
    _check_close(np.asarray(logits)[:, :, 1:], ref_scores)
