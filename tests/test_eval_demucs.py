"""HTDemucs parity with demucs 4.1.0 (imgen_jax.eval.nets.htdemucs, convert/htdemucs_weights.py).

The reference is demucs' own `HTDemucs` with the published htdemucs kwargs (dconv_mode 3,
bottom_channels 512, t_layers 5, depth 4, channels 48: every weight has the real shape), random
weights (layer scales and norms randomised too, so no branch is ~0), saved in demucs' package format
(torch.save of {klass, args, kwargs, state in float16}) -> our converter -> our file -> load_htdemucs,
and the reference model rebuilt from the same file by `demucs.states.load_model`. The model's segment
is 0.25 s instead of the published 39/5 s (the segment changes no weight shape) to keep the CPU time
small; the full-size segment is the `fullsize` test. Tolerance: 1e-4 relative (L2 over the whole
output), float32. demucs.api needs sphn (not installed), so the separation reference is
`apply_model` wrapped in the four lines of `Separator.separate_tensor`'s normalisation.
"""

from __future__ import annotations

import random
from fractions import Fraction

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("demucs.htdemucs")

from imgen_jax.errors import ImgenError  # noqa: E402

TOL = 1e-4
SOURCES = ["drums", "bass", "other", "vocals"]
# the published htdemucs (955717e8) kwargs that differ from HTDemucs' defaults (demucs grids/mmi.py)
PUBLISHED = dict(dconv_mode=3, depth=4, t_layers=5, bottom_channels=512, t_dropout=0.02)


def _rel(got, want) -> float:
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


def _reference_package(path, segment, **kwargs) -> None:
    """An HTDemucs with random weights (default: of the published shapes), saved as demucs' serialize_model does."""
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    model = HTDemucs(sources=SOURCES, segment=segment, **(kwargs or PUBLISHED))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".scale"):  # LayerScales (1e-3 / 1e-4 at init): make every branch count
                p.copy_(0.1 + 0.4 * torch.rand_like(p))
            elif "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
    args, kwargs = model._init_args_kwargs
    package = {"klass": HTDemucs, "args": args, "kwargs": kwargs, "training_args": {},
               "state": {k: v.half() for k, v in model.state_dict().items()}}
    torch.save(package, path)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(reference demucs model, our HTDemucs, package path, separator (batch 2)) at a 0.25 s segment."""
    from demucs.states import load_model

    from convert.htdemucs_weights import convert_htdemucs
    from imgen_jax.eval.nets.htdemucs import htdemucs_separator, load_htdemucs

    tmp = tmp_path_factory.mktemp("htdemucs")
    _reference_package(tmp / "model.th", Fraction(1, 4))
    cfg = convert_htdemucs(tmp / "model.th", tmp / "htdemucs.safetensors")
    assert cfg.segment_length == 11025 and cfg.bottom_channels == 512 and cfg.sources == tuple(SOURCES)
    torch.set_num_threads(2)
    model = load_htdemucs(tmp / "htdemucs.safetensors")
    # one separator (one compiled [2, 2, 11025] forward) shared by the tests
    return load_model(str(tmp / "model.th")).eval(), model, tmp / "model.th", htdemucs_separator(model, batch_size=2)


def test_htdemucs_forward_matches_demucs(converted):
    """One batch of two segments through the model."""
    import jax.numpy as jnp

    ref_model, _, _, sep = converted
    x = (0.3 * np.random.default_rng(1).standard_normal((2, 2, 11025))).astype(np.float32)
    x[1] = 0.01 * x[1] + 0.2  # another level and offset (the model normalises per example)
    with torch.no_grad():
        want = ref_model(torch.from_numpy(x)).numpy()
    got = np.asarray(sep.forward(jnp.asarray(x)))
    assert got.shape == want.shape == (2, 4, 2, 11025)
    assert _rel(got[0], want[0]) < TOL and _rel(got[1], want[1]) < TOL


def test_htdemucs_other_structure_matches_demucs(tmp_path):
    """A small HTDemucs with the branches the published one skips: depth 5 (the time branch's last layer is
    conv-only and is injected into the freq branch, whose last layer collapses 8 bins to 1; the time
    decoder starts from the freq decoder's pre-activation), GroupNorms (norm_starts 3), no bottom
    channels, cross attention first, DConv in the encoder only, rewrite context 1 in the encoder."""
    import jax.numpy as jnp
    from demucs.states import load_model

    from convert.htdemucs_weights import convert_htdemucs
    from imgen_jax.eval.nets.htdemucs import HTDemucs, load_htdemucs
    from imgen_jax.xla import jit_method

    kw = dict(channels=8, depth=5, norm_starts=3, bottom_channels=0, t_layers=2, t_cross_first=True,
              dconv_mode=1, context_enc=1)
    _reference_package(tmp_path / "small.th", Fraction(1, 4), **kw)
    cfg = convert_htdemucs(tmp_path / "small.th", tmp_path / "small.safetensors")
    assert (cfg.depth, cfg.channels, cfg.bottom_channels, cfg.t_cross_first) == (5, 8, 0, True)
    ref_model = load_model(str(tmp_path / "small.th")).eval()
    assert ref_model.tencoder[4].empty
    x = (0.3 * np.random.default_rng(6).standard_normal((1, 2, 11025))).astype(np.float32)
    with torch.no_grad():
        want = ref_model(torch.from_numpy(x)).numpy()
    got = np.asarray(jit_method(load_htdemucs(tmp_path / "small.safetensors"), HTDemucs.__call__)(jnp.asarray(x)))
    assert _rel(got, want) < TOL


def test_htdemucs_separate_matches_apply_model(converted):
    """A 0.45 s mix over 0.25 s segments: 3 overlapping chunks, the last one short (centred, padded)."""
    from demucs.apply import apply_model

    from imgen_jax.eval.nets.htdemucs import chunk_offsets

    ref_model, _, _, sep = converted
    n = 19845
    assert chunk_offsets(n, 11025, 0.25) == [0, 8268, 16536]
    t = np.arange(n) / 44100.0
    rng = np.random.default_rng(2)
    mix = np.stack([np.sin(2 * np.pi * 220 * t), np.sign(np.sin(2 * np.pi * 3 * t))]) * 0.4
    mix = (mix + 0.05 * rng.standard_normal((2, n)) + 0.1).astype(np.float32)

    wav = torch.from_numpy(mix)  # demucs.api.Separator.separate_tensor
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    with torch.no_grad():
        want = apply_model(ref_model, ((wav - mean) / std)[None], shifts=0, split=True, overlap=0.25)
    want = (want * std + mean)[0].numpy()

    assert (sep.name, sep.sample_rate, sep.sources, sep.channels) == ("htdemucs", 44100, tuple(SOURCES), 2)
    got = sep.separate(mix)
    assert got.shape == (4, 2, n) and got.dtype == np.float32
    assert _rel(got, want) < TOL


def test_htdemucs_random_shift_matches_apply_model(converted):
    """shifts=1 with the same seeded offset as apply_model's `random.randint` (a 0.1 s mix); mono input."""
    from demucs.apply import apply_model

    ref_model, _, _, sep = converted
    mix = (0.2 * np.random.default_rng(3).standard_normal((2, 4410)) + 0.05).astype(np.float32)
    wav = torch.from_numpy(mix)
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std() + 1e-8
    random.seed(5)
    with torch.no_grad():
        want = apply_model(ref_model, ((wav - mean) / std)[None], shifts=1, split=True, overlap=0.25)
    want = (want * std + mean)[0].numpy()
    got = sep.separate(mix, shifts=1, seed=5)
    assert _rel(got, want) < TOL
    # mono is duplicated to the model's channels
    mono = sep.separate(mix[:1])
    assert mono.shape == (4, 2, 4410) and _rel(mono, sep.separate(np.repeat(mix[:1], 2, axis=0))) < 1e-6
    # a silent mix separates into silence (demucs 4.0.1's CLI normalisation, without the 1e-8, gave NaN)
    assert not sep.separate(np.zeros((2, 4410), np.float32)).any()
    with pytest.raises(ImgenError, match="mix must be"):
        sep.separate(np.zeros((3, 100), np.float32))


def test_htdemucs_converter_reads_safetensors_and_bags(converted, tmp_path):
    """demucs 4.1's Hugging Face export (metadata JSON, fraction segment) and single-model bag yamls."""
    import json

    from safetensors.numpy import save_file

    from convert.htdemucs_weights import convert_htdemucs, read_package
    from imgen_jax.eval.nets.htdemucs import load_htdemucs
    from imgen_jax.weights import module_weights

    _, model, th_path, _ = converted
    klass, args, kwargs, state = read_package(th_path)
    assert klass == "demucs.htdemucs.HTDemucs" and kwargs["segment"] == Fraction(1, 4)
    meta = {"klass": klass, "args": json.dumps(args),
            "kwargs": json.dumps(dict(kwargs, segment={"_type": "fraction", "numerator": 1, "denominator": 4}))}
    save_file(state, str(tmp_path / "955717e8.safetensors"), metadata=meta)
    cfg = convert_htdemucs(tmp_path / "955717e8.safetensors", tmp_path / "a.safetensors")
    assert cfg == model.cfg
    a = module_weights(load_htdemucs(tmp_path / "a.safetensors"))
    b = module_weights(model)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    (tmp_path / "htdemucs.yaml").write_text("models: ['955717e8']\nsegment: 0.2\n")
    cfg = convert_htdemucs(tmp_path / "htdemucs.yaml", tmp_path / "b.safetensors")
    assert cfg.segment_length == int(0.2 * 44100)  # a bag segment shorter than the model's wins
    (tmp_path / "htdemucs_ft.yaml").write_text("models: ['f7e0c4bc', 'd12395a8']\n")
    with pytest.raises(ImgenError, match="a bag of 2 models"):
        convert_htdemucs(tmp_path / "htdemucs_ft.yaml", tmp_path / "c.safetensors")


def test_htdemucs_converter_reports_problems(converted, tmp_path):
    """Key problems in one error; other model classes, unsupported options and code in pickles refused."""
    from convert.htdemucs_weights import config_from_kwargs, convert_htdemucs, htdemucs_from_torch, read_package

    _, model, th_path, _ = converted
    _, args, kwargs, state = read_package(th_path)
    bad = dict(state)
    bad.pop("crosstransformer.layers.1.cross_attn.in_proj_weight")
    bad["encoder.0.conv.weight"] = bad["encoder.0.conv.weight"][:, :2]
    bad["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ImgenError) as e:
        htdemucs_from_torch(bad, model.cfg, "bad.th")
    msg = str(e.value)
    assert "missing keys: crosstransformer.layers.1.cross_attn.in_proj_weight" in msg
    assert "encoder.0.conv.weight (expected [48, 4, 8, 1], got [48, 2, 8, 1])" in msg
    assert "unexpected keys: extra.weight" in msg

    with pytest.raises(ImgenError, match="not supported by the port: cac=False"):
        config_from_kwargs(args, dict(kwargs, cac=False), "x.th")
    # every HTDemucs parameter is either read, known to be training-only, or checked; others are dropped
    # with a warning, as demucs' load_model does
    import inspect

    from demucs.htdemucs import HTDemucs

    from convert.htdemucs_weights import CONFIG_KWARGS, REQUIRED_DEFAULTS, TRAINING_ONLY

    params = set(inspect.signature(HTDemucs).parameters)
    assert params == (CONFIG_KWARGS - {"segment_length"}) | TRAINING_ONLY | set(REQUIRED_DEFAULTS)
    with pytest.warns(UserWarning, match=r"does not take: \['bogus'\]"):
        assert config_from_kwargs(args, dict(kwargs, bogus=1), "x.th") == model.cfg

    from demucs.hdemucs import HDemucs

    torch.save({"klass": HDemucs, "args": [], "kwargs": {"sources": SOURCES}, "state": {}}, tmp_path / "h.th")
    with pytest.raises(ImgenError, match="holds a demucs.hdemucs.HDemucs, expected demucs.htdemucs.HTDemucs"):
        convert_htdemucs(tmp_path / "h.th", tmp_path / "h.safetensors")
    import os

    torch.save({"klass": os.system, "args": [], "kwargs": {}, "state": {}}, tmp_path / "evil.th")
    with pytest.raises(ImgenError, match="refused"):
        convert_htdemucs(tmp_path / "evil.th", tmp_path / "evil.safetensors")


@pytest.mark.fullsize
def test_htdemucs_forward_published_segment(tmp_path):
    """The published segment (39/5 s = 343,980 samples): one forward, 1e-4 relative (~1-2 min on CPU)."""
    import jax.numpy as jnp
    from demucs.states import load_model

    from convert.htdemucs_weights import convert_htdemucs
    from imgen_jax.eval.nets.htdemucs import HTDemucs, HTDemucsConfig, load_htdemucs
    from imgen_jax.xla import jit_method

    _reference_package(tmp_path / "model.th", Fraction(39, 5))
    assert convert_htdemucs(tmp_path / "model.th", tmp_path / "h.safetensors") == HTDemucsConfig()
    ref_model = load_model(str(tmp_path / "model.th")).eval()
    x = (0.3 * np.random.default_rng(4).standard_normal((1, 2, 343980))).astype(np.float32)
    with torch.no_grad():
        want = ref_model(torch.from_numpy(x)).numpy()
    got = np.asarray(jit_method(load_htdemucs(tmp_path / "h.safetensors"), HTDemucs.__call__)(jnp.asarray(x)))
    assert _rel(got, want) < TOL
