"""The evaluation networks (imgen_jax.eval.nets) against their PyTorch reference packages.

Each parity test builds the reference package's model with random weights of the real shapes,
saves its state dict the way the published checkpoint is laid out, converts it with our converter,
loads it with imgen_jax.weights and compares the whole pipeline (our jnp frontend + network vs the
reference frontend + network) on a few seconds of random audio: relative error (Frobenius norm of
the difference over that of the reference) below 1e-4. Nothing is downloaded.

- VGGish: torchvggish 0.2's `VGG` without its last ReLU (= frechet_audio_distance's VGGish with
  use_pca=False, use_activation=False) and its numpy frontend `vggish_input.waveform_to_examples`.
- Cnn14: panns_inference's `Cnn14` at audioldm_eval's 16 kHz settings (torchlibrosa frontend),
  logits = fc_audioset's output (audioldm_eval's "logits").
"""

import importlib.util
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from imgen_jax.errors import ImgenError

TOL = 1e-4


def _rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _audio(batch: int, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(16000 * seconds)
    tone = np.sin(2 * np.pi * 440.0 * np.arange(n) / 16000)[None] * rng.uniform(0.1, 0.5, (batch, 1))
    return (tone + 0.1 * rng.standard_normal((batch, n))).astype(np.float32)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Random weights of moderate scale in every parameter and batch-norm statistic."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() > 1:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            else:
                t.copy_(torch.rand(t.shape, generator=g) * 0.2 - 0.1)


# ---------------------------------------------------------------------------------- 3x3 convolution

CONV_TOL = 1e-5  # relative; measured <= 2.5e-6 for Winograd F(4x4, 3x3) at 512 channels (F(2x2) and XLA ~4e-7)


@pytest.mark.parametrize("b, h, w, c, o", [(2, 5, 3, 3, 4), (1, 96, 64, 16, 32), (3, 6, 4, 5, 7), (2, 1, 1, 2, 3),
                                           (2, 3, 2, 6, 5), (2, 7, 9, 4, 8), (6, 12, 8, 256, 512)])
def test_conv3x3_matches_xla_convolution(b, h, w, c, o):
    """Winograd F(2x2) / F(4x4), im2col and conv3x3's choice = lax.conv_general_dilated (padding 1), odd sizes too."""
    import jax

    from imgen_jax.eval.nets.common import HIGHEST, conv3x3, im2col3x3, winograd3x3

    rng = np.random.default_rng(b * h * w * c * o)
    x = jnp.asarray(rng.standard_normal((b, h, w, c)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, c, o)) / np.sqrt(9 * c), jnp.float32)
    bias = jnp.asarray(rng.uniform(-0.1, 0.1, o), jnp.float32)
    want = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=HIGHEST)
    for tile in (2, 4):
        got = jax.jit(winograd3x3, static_argnums=2)(x, kernel, tile)
        assert got.shape == want.shape and _rel(got, want) < CONV_TOL, tile
    assert _rel(im2col3x3(x, kernel), want) < CONV_TOL
    assert _rel(jax.jit(conv3x3)(x, kernel, bias), want + bias) < CONV_TOL


def test_winograd3x3_in_batch_chunks(monkeypatch):
    """A batch larger than one chunk (5 items in chunks of 2, the last one padded) gives the same convolution."""
    import jax

    from imgen_jax.eval.nets import common

    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((5, 10, 7, 6)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 6, 9)) / np.sqrt(54), jnp.float32)
    whole = common.winograd3x3(x, kernel)
    monkeypatch.setattr(common, "WINOGRAD_CHUNK_BYTES", 2 * 36 * 3 * 2 * (6 + 9) * 4)  # two items' tiles (F(4x4))
    run = jax.jit(lambda x, kernel: common.winograd3x3(x, kernel))  # traced now, under the patched chunk size
    assert "stablehlo.while" in run.lower(x, kernel).as_text()  # lax.map over 3 chunks
    chunked = run(x, kernel)
    assert _rel(chunked, whole) < 1e-6
    want = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=common.HIGHEST)
    assert _rel(chunked, want) < CONV_TOL


def test_conv3x3_path_uses_winograd_for_the_wide_vggish_and_cnn14_layers():
    from imgen_jax.eval.nets.common import conv3x3_path

    vggish = [(96, 64, 1, 64), (48, 32, 64, 128), (24, 16, 128, 256), (24, 16, 256, 256), (12, 8, 256, 512),
              (12, 8, 512, 512)]
    assert [conv3x3_path(40, h, w, c, o) for h, w, c, o in vggish] == ["xla"] + ["winograd"] * 5
    assert [conv3x3_path(6, h, w, c, o) for h, w, c, o in vggish] == ["xla"] + ["winograd"] * 5  # the parity test's
    assert conv3x3_path(8, 31, 2, 1024, 2048) == "xla" and conv3x3_path(2, 5, 2, 1024, 2048) == "im2col"
    assert conv3x3_path(2, 40, 16, 128, 256) == "winograd"  # Cnn14's block 3 in test_cnn14_matches_panns


# ---------------------------------------------------------------------------------------- VGGish


def _torchvggish():
    """torchvggish's VGG without its last ReLU, as frechet_audio_distance runs it (use_activation=False)."""
    from torchvggish.torchvggish import _vgg

    model = _vgg(postprocess=False)
    model.embeddings = torch.nn.Sequential(*list(model.embeddings.children())[:-1])
    return model.eval()


def test_vggish_matches_torchvggish(tmp_path):
    from torchvggish import vggish_input

    from convert.vggish_weights import convert_vggish
    from imgen_jax.eval.nets.vggish import VGGish, VGGishConfig, load_vggish, log_mel_patches, vggish_embedder
    from imgen_jax.weights import load_into, read_safetensors

    model = _torchvggish()
    _randomise(model, seed=1)
    torch.save(model.state_dict(), tmp_path / "vggish.pth")
    convert_vggish(tmp_path / "vggish.pth", tmp_path / "vggish.safetensors")
    net = load_vggish(tmp_path / "vggish.safetensors")

    wav = _audio(2, 3.2)
    ref_patches = np.stack([vggish_input.waveform_to_examples(w.astype(np.float64), 16000, return_tensor=False) for w in wav])
    patches = np.asarray(log_mel_patches(jnp.asarray(wav)))
    assert patches.shape == ref_patches.shape == (2, 3, 96, 64)
    assert _rel(patches, ref_patches) < 1e-6

    got = np.asarray(vggish_embedder(net)(jnp.asarray(wav)))
    with torch.no_grad():
        want = np.stack([model(torch.from_numpy(p[:, None]).float()).numpy() for p in ref_patches])
    assert got.shape == want.shape == (2, 3, 128)
    assert (want < 0).any()  # taken before the last ReLU
    assert _rel(got, want) < TOL

    # torchvggish's plain VGG ends with that ReLU
    relu_net = VGGish(VGGishConfig(final_relu=True), rngs=nnx.Rngs(0))
    load_into(relu_net, read_safetensors(tmp_path / "vggish.safetensors"), "vggish")
    assert _rel(vggish_embedder(relu_net)(jnp.asarray(wav[:1])), np.maximum(want[:1], 0)) < TOL


def test_vggish_patch_count_and_short_input():
    from imgen_jax.eval.nets.vggish import log_mel_patches, num_patches

    assert num_patches(15600) == 1 and num_patches(15599) == 0
    assert num_patches(16000 * 2) == 2 and num_patches(400 + 160 * 286) == 2 and num_patches(400 + 160 * 287) == 3
    with pytest.raises(ImgenError, match="15599 samples is too short \\(need at least 15600"):
        log_mel_patches(jnp.zeros((1, 15599)))


def _vggish_state_dict() -> dict:
    from convert.vggish_weights import CONV_INDICES, FC_INDICES

    sd, cin = {}, 1
    for i, cout in zip(CONV_INDICES, (64, 128, 256, 256, 512, 512)):
        sd[f"features.{i}.weight"], sd[f"features.{i}.bias"] = np.zeros((cout, cin, 3, 3), np.float32), np.zeros(cout, np.float32)
        cin = cout
    for i, (din, dout) in zip(FC_INDICES, ((12288, 4096), (4096, 4096), (4096, 128))):
        sd[f"embeddings.{i}.weight"], sd[f"embeddings.{i}.bias"] = np.zeros((dout, din), np.float32), np.zeros(dout, np.float32)
    return sd


def test_vggish_converter_reports_key_problems():
    from convert.vggish_weights import vggish_from_torch

    sd = _vggish_state_dict()
    hub = {"pproc.pca_eigen_vectors": np.zeros((128, 128)), "pproc.pca_means": np.zeros((128, 1))}  # torch.hub's VGGish
    flat = vggish_from_torch(dict(sd, **hub), "ok.pth")
    assert flat["convs/5/kernel"].shape == (3, 3, 512, 512) and flat["fcs/0/kernel"].shape == (12288, 4096)
    bad = dict(sd)
    del bad["features.6.bias"]
    bad["embeddings.2.weight"] = np.zeros((4096, 4095), np.float32)
    bad["embeddings.6.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ImgenError) as e:
        vggish_from_torch(bad, "bad.pth")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("bad.pth: ")
    assert "missing keys: features.6.bias" in msg
    assert "mis-shaped: embeddings.2.weight (expected [4096, 4096], got [4096, 4095])" in msg
    assert "unexpected keys: embeddings.6.weight" in msg


def test_vggish_loader_checks_kind_and_weights(tmp_path):
    from imgen_jax.eval.nets.common import save_net
    from imgen_jax.eval.nets.vggish import VGGishConfig, load_vggish
    from convert.vggish_weights import vggish_from_torch

    flat = vggish_from_torch(_vggish_state_dict(), "sd")
    save_net(tmp_path / "other.safetensors", "cnn14", VGGishConfig(), flat)
    with pytest.raises(ImgenError, match="metadata kind is 'cnn14', expected 'vggish'"):
        load_vggish(tmp_path / "other.safetensors")
    del flat["fcs/2/bias"]
    save_net(tmp_path / "short.safetensors", "vggish", VGGishConfig(), flat)
    with pytest.raises(ImgenError, match="missing: fcs/2/bias"):
        load_vggish(tmp_path / "short.safetensors")
    with pytest.raises(ImgenError, match="weights file not found"):
        load_vggish(tmp_path / "absent.safetensors")


# ----------------------------------------------------------------------------------------- Cnn14


def _panns_models():
    """panns_inference.models without running the package's __init__ (whose config module downloads
    AudioSet's label list with wget)."""
    name = "panns_inference.models"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("panns_inference")
    pkg = types.ModuleType("panns_inference")
    pkg.__path__ = list(spec.submodule_search_locations)
    saved = sys.modules.get("panns_inference")
    sys.modules["panns_inference"] = pkg
    try:
        return importlib.import_module(name)
    finally:
        if saved is not None:
            sys.modules["panns_inference"] = saved


def _panns_cnn14(**cfg):
    """panns_inference's Cnn14 at audioldm_eval's 16 kHz settings (or `cfg`), in eval mode."""
    settings = dict(sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000, classes_num=527)
    return _panns_models().Cnn14(**dict(settings, **cfg)).eval()


def _randomise_cnn14(model: torch.nn.Module, seed: int) -> None:
    """`_randomise` on everything but the frontend (STFT kernels and mel filters stay as built)."""
    frontend = {k: v.clone() for k, v in model.state_dict().items() if "_extractor." in k}
    _randomise(model, seed)
    model.load_state_dict(frontend, strict=False)


def test_cnn14_matches_panns(tmp_path):
    import librosa

    from convert.cnn14_weights import convert_cnn14
    from imgen_jax.eval.nets.cnn14 import Cnn14, Cnn14Config, cnn14_classifier, load_cnn14, log_mel, mel_matrix
    from imgen_jax.xla import jit_method

    cfg = Cnn14Config()
    np.testing.assert_allclose(mel_matrix(cfg), librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=50, fmax=8000).T,
                               rtol=1e-5, atol=1e-9)
    model = _panns_cnn14()
    _randomise_cnn14(model, seed=2)
    torch.save({"model": model.state_dict(), "iteration": 0}, tmp_path / "Cnn14_16k.pth")
    assert convert_cnn14(tmp_path / "Cnn14_16k.pth", tmp_path / "cnn14.safetensors") == cfg
    net = load_cnn14(tmp_path / "cnn14.safetensors")

    wav = _audio(2, 1.6, seed=3)
    x = torch.from_numpy(wav)
    with torch.no_grad():
        ref_mel = model.logmel_extractor(model.spectrogram_extractor(x))[:, 0].numpy()
        logits = {}
        hook = model.fc_audioset.register_forward_hook(lambda m, i, o: logits.update(out=o))
        out = model(x)
        hook.remove()
    assert _rel(log_mel(jnp.asarray(wav), cfg), ref_mel) < 1e-5
    emb, got = (np.asarray(a) for a in jit_method(net, Cnn14.features)(jnp.asarray(wav)))
    want = logits["out"].numpy()
    assert got.shape == want.shape == (2, 527)
    assert _rel(got, want) < TOL
    np.testing.assert_allclose(1 / (1 + np.exp(-got)), out["clipwise_output"].numpy(), atol=1e-5)
    assert _rel(emb, out["embedding"].numpy()) < TOL
    assert _rel(cnn14_classifier(net)(jnp.asarray(wav[1:])), got[1:]) < 1e-5  # batch of one, other program


def test_cnn14_converter_detects_32k_and_reports_key_problems():
    from convert.cnn14_weights import cnn14_from_torch

    sd = {k: v.numpy() for k, v in _panns_cnn14(sample_rate=32000, window_size=1024, hop_size=320, fmax=14000).state_dict().items()}
    cfg, flat = cnn14_from_torch(sd, "ok.pth")
    assert (cfg.sample_rate, cfg.window, cfg.hop, cfg.f_max) == (32000, 1024, 320, 14000.0)
    assert flat["blocks/5/conv2/kernel"].shape == (3, 3, 2048, 2048) and flat["bn0/scale"].shape == (64,)
    bad = dict(sd)
    del bad["conv_block3.bn2.running_var"]
    bad["fc1.weight"] = np.zeros((2048, 2047), np.float32)
    bad["head.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ImgenError) as e:
        cnn14_from_torch(bad, "bad.pth")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("bad.pth: ")
    assert "missing keys: conv_block3.bn2.running_var" in msg
    assert "mis-shaped: fc1.weight (expected [2048, 2048], got [2048, 2047])" in msg
    assert "unexpected keys: head.weight" in msg
    other = dict(sd, **{"logmel_extractor.melW": sd["logmel_extractor.melW"] * 1.01})
    with pytest.raises(ImgenError, match="logmel_extractor.melW differs from the Slaney mel filters"):
        cnn14_from_torch(other, "other.pth")
    with pytest.raises(ImgenError, match="not a PANNs Cnn14 state dict"):
        cnn14_from_torch({"features.0.weight": np.zeros(3)}, "vggish.pth")


def test_eval_nets_runtime_imports_no_reference_package():
    from import_check import assert_imports_none

    assert_imports_none(("imgen_jax.eval.nets.vggish", "imgen_jax.eval.nets.cnn14"),
                        ("torch", "librosa", "torchvggish", "torchlibrosa", "resampy"))
