"""HTDemucs weights: demucs' model package -> imgen_jax `HTDemucs` (imgen_jax.eval.nets.htdemucs).

Inputs (all read without executing pickled code):
    *.th          demucs' `serialize_model` package, written by torch.save: {"klass": the model class,
                  "args", "kwargs", "state": {name: tensor (float16 in the published files)},
                  "training_args"}. Opened with torch's weights-only unpickler, where the class
                  reference `demucs.htdemucs.HTDemucs` is rebuilt as a stand-in that records its name
                  (demucs is never imported) and `fractions.Fraction` (the `segment` kwarg) is allowed.
                  The published htdemucs is `955717e8-8726e21a.th`.
    *.safetensors demucs 4.1's Hugging Face export (`adefossez/HTDemucs`: 955717e8.safetensors), klass /
                  args / kwargs as JSON in the metadata, fractions as {"_type": "fraction", ...}.
    *.yaml        a bag of models (remote/htdemucs.yaml: `models: ['955717e8']`): only a bag of ONE model
                  is accepted; its file `<sig>-*.th` / `<sig>.th` / `<sig>.safetensors` is looked up
                  beside the yaml, and a bag `segment` shorter than the model's replaces it. Bags of
                  several models (htdemucs_ft, mdx) are refused with a clear error.

Config: HTDemucsConfig from the kwargs (segment_length = int(segment * samplerate), as demucs computes
its training length). Options the port does not implement (cac=False / Wiener filtering, multi_freqs,
CAPE / scaled embeddings, sparse attention, group norms in the transformer, random sin shifts,
use_train_segment=False) are refused; training-only kwargs (dropout, init, learning rates) are ignored;
kwargs that HTDemucs does not take are dropped with a warning, as demucs' `load_model` does.

Names (demucs state key -> ours; conv kernels [out, in, *k] -> [*k, in, out], transposed-conv kernels
[in, out, *k] -> [*k, in, out], linear / 1x1 conv weights -> [in, out]; norms' weight -> scale):

    {encoder,tencoder,decoder,tdecoder}.{i}.{conv,conv_tr,rewrite}.{weight,bias}   same path, kernel/bias
    ....{norm1,norm2}.{weight,bias}                     (GroupNorm, layers >= norm_starts) scale/bias
    ....dconv.layers.{d}.{0,1,3,4}.{weight,bias}        dconv/layers/{d}/{conv1,norm1,conv2,norm2}/...
    ....dconv.layers.{d}.6.scale                        dconv/layers/{d}/scale
    freq_emb.embedding.weight  [F, C]                   freq_emb (the raw weight; x 10 x 0.2 at run time)
    channel_{up,down}sampler{,_t}.{weight [o, i, 1],bias}  channel_..../kernel [i, o], bias
    crosstransformer.norm_in{,_t}.*                     crosstransformer/norm_in{,_t}/{scale,bias}
    crosstransformer.layers{,_t}.{i}.{self,cross}_attn.in_proj_{weight [3d, d],bias}   .../in_proj/{kernel [d, 3d],bias}
    ....{self,cross}_attn.out_proj.*, linear1.*, linear2.*   .../{kernel [in, out], bias}
    ....norm{1,2,3,_out}.{weight,bias}, gamma_{1,2}.scale    .../scale, bias; gamma_{1,2}

    python -m convert.htdemucs_weights 955717e8-8726e21a.th htdemucs.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from fractions import Fraction
from typing import Any, Mapping

import numpy as np

from convert.common import KeyReader, load_torch_checkpoint, strip_prefix
from imgen_jax.errors import ImgenError
from imgen_jax.eval.nets.common import save_net
from imgen_jax.eval.nets.htdemucs import KIND, HTDemucsConfig, abstract_htdemucs

HTDEMUCS_CLASS = "demucs.htdemucs.HTDemucs"
OTHER_CLASSES = ("demucs.hdemucs.HDemucs", "demucs.demucs.Demucs", "demucs.train.TorchHDemucsWrapper")

# HTDemucs kwargs our config takes (same names), those that do not change inference, and the
# values of the options we do not implement that must keep their defaults
CONFIG_KWARGS = {f for f in HTDemucsConfig.__dataclass_fields__ if f not in ("segment_length",)}
TRAINING_ONLY = {"t_dropout", "t_weight_decay", "t_lr", "rescale", "emb_smooth", "dconv_init", "end_iters",
                 "wiener_residual", "t_max_positions", "t_cape_mean_normalize", "t_cape_augment",
                 "t_cape_glob_loc_scale", "t_mask_type", "t_mask_random_seed", "t_sparse_attn_window",
                 "t_global_window", "t_sparsity", "t_auto_sparsity", "multi_freqs_depth", "segment"}
REQUIRED_DEFAULTS = {"cac": True, "wiener_iters": 0, "multi_freqs": None, "t_emb": "sin", "t_norm_in_group": False,
                     "t_group_norm": False, "t_sparse_self_attn": False, "t_sparse_cross_attn": False,
                     "t_sin_random_shift": 0, "use_train_segment": True}


class ClassRef:
    """Stand-in for a class named in a pickle: records the dotted name, imports nothing."""

    path = ""


def _stand_ins() -> list[tuple[type, str]]:
    return [(type(p.rsplit(".", 1)[1], (ClassRef,), {"path": p}), p) for p in (HTDEMUCS_CLASS,) + OTHER_CLASSES]


def _fraction(v: Any) -> Any:
    if isinstance(v, dict) and v.get("_type") == "fraction":
        return Fraction(v["numerator"], v["denominator"])
    if isinstance(v, dict):
        return {k: _fraction(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_fraction(x) for x in v]
    return v


def read_package(path: str | os.PathLike) -> tuple[str, list, dict, dict[str, np.ndarray]]:
    """(class path, args, kwargs, state {key: float32 array}) of a demucs model package (.th / .safetensors)."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        tensors, _ = load_torch_checkpoint(path)
        try:
            with safe_open(path, framework="numpy") as f:
                meta = f.metadata() or {}
            klass = meta["klass"]
            args = _fraction(json.loads(meta.get("args", "[]")))
            kwargs = _fraction(json.loads(meta["kwargs"]))
        except (KeyError, json.JSONDecodeError) as e:
            raise ImgenError(f"{path}: not a demucs safetensors export (metadata klass / kwargs "
                             f"unreadable: {e})") from None
        if "structure" in meta:
            raise ImgenError(f"{path}: a quantized (diffq) demucs model; only plain float weights are supported")
        return klass, list(args), dict(kwargs), tensors
    tensors, other = load_torch_checkpoint(path, safe_globals=[*_stand_ins(), Fraction])
    klass = other.get("klass")
    if not (isinstance(klass, type) and issubclass(klass, ClassRef)):
        raise ImgenError(f"{path}: not a demucs model package (no 'klass'; top-level keys: "
                         f"{', '.join(sorted({k.split('.')[0] for k in [*tensors, *other]})[:6])})")
    if other.get("state.__quantized"):
        raise ImgenError(f"{path}: a quantized (diffq) demucs model; only plain float weights are supported")
    kwargs = {k[len("kwargs."):]: v for k, v in other.items() if k.startswith("kwargs.")}
    return klass.path, list(other.get("args") or []), kwargs, strip_prefix(tensors, "state.")


def config_from_kwargs(args: list, kwargs: Mapping[str, Any], source: str,
                       segment: float | Fraction | None = None) -> HTDemucsConfig:
    """HTDemucsConfig from HTDemucs' init arguments; unsupported options are one ImgenError."""
    kw = dict(kwargs)
    if args:
        if len(args) > 1 or "sources" in kw:
            raise ImgenError(f"{source}: unexpected positional HTDemucs arguments {args!r}")
        kw["sources"] = args[0]
    if "sources" not in kw:
        raise ImgenError(f"{source}: HTDemucs kwargs have no 'sources'")
    unknown = sorted(set(kw) - CONFIG_KWARGS - TRAINING_ONLY - set(REQUIRED_DEFAULTS))
    if unknown:  # not HTDemucs parameters: demucs' load_model drops them too ("Dropping inexistant parameter")
        warnings.warn(f"{source}: ignoring kwargs that HTDemucs does not take: {unknown}", stacklevel=2)
    bad = [f"{k}={kw[k]!r} (supported: {v!r})" for k, v in REQUIRED_DEFAULTS.items()
           if k in kw and kw[k] != v and not (k == "multi_freqs" and not kw[k])]
    if bad:
        raise ImgenError(f"{source}: HTDemucs options not supported by the port: {', '.join(bad)}")
    seg = kw.get("segment", 10)
    if segment is not None and segment <= seg:  # BagOfModels' override for HTDemucs
        seg = segment
    samplerate = int(kw.get("samplerate", 44100))
    fields = {k: v for k, v in kw.items() if k in CONFIG_KWARGS}
    fields["sources"] = tuple(str(s) for s in kw["sources"])
    if fields.get("channels_time") is not None:
        fields["channels_time"] = int(fields["channels_time"])
    for k in ("growth", "dconv_comp", "freq_emb", "emb_scale", "t_hidden_scale", "t_max_period", "t_weight_pos_embed"):
        if k in fields:
            fields[k] = float(fields[k])
    for k in ("bottom_channels",):
        if k in fields:
            fields[k] = int(fields[k] or 0)
    return HTDemucsConfig(**fields, segment_length=int(seg * samplerate))


def _torch_name(name: str) -> str:
    """Our parameter name -> the demucs state key."""
    parts = name.split("/")
    if parts == ["freq_emb"]:
        return "freq_emb.embedding.weight"
    if parts[-1] in ("gamma_1", "gamma_2"):
        return ".".join(parts) + ".scale"
    if "dconv" in parts:
        i = parts.index("dconv")
        sub = {"conv1": "0", "norm1": "1", "conv2": "3", "norm2": "4"}
        tail = parts[i + 3:]  # after dconv/layers/{d}
        if tail == ["scale"]:
            tail = ["6", "scale"]
        else:
            tail = [sub[tail[0]], "weight" if tail[1] in ("kernel", "scale") else "bias"]
        return ".".join(parts[: i + 3] + tail)
    if parts[-2] == "in_proj":
        return ".".join(parts[:-2]) + (".in_proj_weight" if parts[-1] == "kernel" else ".in_proj_bias")
    last = {"kernel": "weight", "scale": "weight"}.get(parts[-1], parts[-1])
    return ".".join(parts[:-1] + [last])


def _torch_layout(name: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """(demucs tensor shape, axes permutation demucs -> ours) of our parameter `name` with `shape`."""
    parts = name.split("/")
    if parts[-1] != "kernel":
        return shape, None
    if len(shape) == 2:  # Dense: [in, out] <- [out, in] (or [out, in, 1] for the 1x1 channel convs)
        if parts[0].startswith("channel_"):
            return (shape[1], shape[0], 1), (1, 0, 2)
        return (shape[1], shape[0]), (1, 0)
    nk = len(shape) - 2
    k, cin, cout = shape[:nk], shape[-2], shape[-1]
    if "conv_tr" in parts:  # [in, out, *k] -> [*k, in, out]
        return (cin, cout, *k), tuple(range(2, 2 + nk)) + (0, 1)
    return (cout, cin, *k), tuple(range(2, 2 + nk)) + (1, 0)


def htdemucs_from_torch(state: Mapping[str, np.ndarray], cfg: HTDemucsConfig, source: str) -> dict[str, np.ndarray]:
    """demucs HTDemucs state dict -> our flat weights for `cfg`; every key problem reported at once."""
    from imgen_jax.weights import module_shapes

    r = KeyReader(state, source)
    flat: dict[str, np.ndarray] = {}
    for name, (shape, _) in sorted(module_shapes(abstract_htdemucs(cfg)).items()):
        tshape, perm = _torch_layout(name, shape)
        w = r.take(_torch_name(name), tshape)
        if w is not None:
            w = w if perm is None else np.transpose(w, perm).reshape(shape)
            flat[name] = np.ascontiguousarray(w, dtype=np.float32)
    r.finish()
    return flat


def _bag_model(path: str) -> tuple[str, Fraction | float | None]:
    """The one model file of a single-model bag yaml, and the bag's segment override."""
    import yaml

    try:
        with open(path) as f:
            bag = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ImgenError(f"{path}: unreadable bag-of-models yaml ({e})") from None
    models = bag.get("models") if isinstance(bag, dict) else None
    if not isinstance(models, list) or not models:
        raise ImgenError(f"{path}: a bag-of-models yaml needs a non-empty 'models' list")
    if len(models) != 1:
        raise ImgenError(f"{path}: a bag of {len(models)} models ({', '.join(map(str, models))}); the port runs one "
                         f"model: convert the single htdemucs model (955717e8) instead")
    sig = str(models[0])
    folder = os.path.dirname(os.path.abspath(path))
    names = sorted(os.listdir(folder))
    found = [n for n in names
             if n in (f"{sig}.th", f"{sig}.safetensors") or (n.startswith(f"{sig}-") and n.endswith(".th"))]
    if not found:
        raise ImgenError(f"{path}: model {sig} not found beside the yaml (expected {sig}-*.th, {sig}.th or "
                         f"{sig}.safetensors in {folder})")
    return os.path.join(folder, found[0]), bag.get("segment")


def convert_htdemucs(src: str | os.PathLike, out: str | os.PathLike) -> HTDemucsConfig:
    """Convert a demucs HTDemucs package (.th / .safetensors / single-model bag .yaml) to our file."""
    src = os.fspath(src)
    segment = None
    if src.endswith((".yaml", ".yml")):
        src, segment = _bag_model(src)
    klass, args, kwargs, state = read_package(src)
    if klass != HTDEMUCS_CLASS:
        raise ImgenError(f"{src}: the package holds a {klass}, expected {HTDEMUCS_CLASS} (only HTDemucs is ported)")
    cfg = config_from_kwargs(args, kwargs, src, segment)
    save_net(out, KIND, cfg, htdemucs_from_torch(state, cfg, src))
    return cfg


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="demucs model: 955717e8-8726e21a.th, 955717e8.safetensors or htdemucs.yaml")
    p.add_argument("out", help="output .safetensors")
    a = p.parse_args(argv)
    cfg = convert_htdemucs(a.src, a.out)
    print(f"htdemucs: {len(cfg.sources)} sources {', '.join(cfg.sources)}, {cfg.audio_channels} channels, "
          f"segment {cfg.segment_length} samples -> {a.out}")


if __name__ == "__main__":
    try:
        main()
    except ImgenError as e:
        raise SystemExit(f"error: {e}")
