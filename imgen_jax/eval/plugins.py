"""Pluggable models for the evaluation: FAD embedders, CLAP (text-audio) scorers, audio classifiers (KL).

A plug-in is named by a spec string:

    NAME                      a registered factory (`register(kind, NAME, factory)`); built-in
                              embedders: `encodec`, `logmel` (imgen_jax.eval.embedders); the paper's
                              networks (imgen_jax.eval.networks): embedder `vggish`, classifier
                              `cnn14`, clap `clap`, separator `htdemucs`, each as NAME=PATH
    NAME=ARG                  a registered factory given the string ARG (e.g. `vggish=vggish.safetensors`)
    package.module:factory    a factory importable from the Python path
    path/to/file.py:factory   a factory defined in a file
    ...:factory=ARG           the factory gets the string ARG (e.g. a local checkpoint path)

The factory is called as `factory(model_dir=MODEL_DIR, arg=ARG_or_None)` and returns the model
object. Plug-ins may use any framework (a VGGish / CLAP / PaSST plug-in will usually import torch);
imgen_jax's own runtime never imports torch, and no plug-in model ships with imgen_jax.

The kinds and what their objects must provide (wavs are mono float32 [N] at `sample_rate`;
the evaluation resamples to it):

    embedder    .sample_rate: int, __call__(wavs) -> list of [T_i, D] frame embeddings (or [D])
                .name: str (optional; the table column is `fad_<name>`)
    clap        .sample_rate: int, .embed_audio(wavs) -> [B, D], .embed_text(texts) -> [B, D]
    classifier  .sample_rate: int, __call__(wavs) -> class logits [B, C]  (KL: softmax / sigmoid over C)
    separator   .sample_rate: int, .sources (names, e.g. drums, bass, other, vocals), .channels: int,
                .separate(mix [channels, n]) -> [len(sources), channels, n]  (P-Demucs, the htdemucs row)
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any, Callable

from imgen_jax.errors import ImgenError

KINDS = {
    "embedder": ("__call__",),
    "clap": ("embed_audio", "embed_text"),
    "classifier": ("__call__",),
    "separator": ("separate", "sources", "channels"),
}
_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {k: {} for k in KINDS}


def register(kind: str, name: str, factory: Callable[..., Any]) -> None:
    """Register `factory(model_dir=..., arg=...)` under `name` for `kind` (embedder / clap / classifier)."""
    if kind not in KINDS:
        raise ImgenError(f"unknown plug-in kind {kind!r}; one of {', '.join(KINDS)}")
    _REGISTRY[kind][name] = factory


def registered(kind: str) -> list[str]:
    """Names registered for `kind`."""
    return sorted(_REGISTRY[kind])


def _import_factory(target: str, spec: str) -> Callable[..., Any]:
    mod_name, _, attr = target.rpartition(":")
    if not mod_name or not attr:
        raise ImgenError(f"plug-in {spec!r}: expected NAME, module:factory or file.py:factory")
    try:
        if mod_name.endswith(".py"):
            if not os.path.isfile(mod_name):
                raise ImgenError(f"plug-in {spec!r}: file {mod_name} not found")
            mspec = importlib.util.spec_from_file_location(f"imgen_plugin_{abs(hash(mod_name))}", mod_name)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except ImgenError:
        raise
    except Exception as e:
        raise ImgenError(f"plug-in {spec!r}: cannot import {mod_name} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ImgenError(f"plug-in {spec!r}: {mod_name} has no callable {attr!r}")
    return factory


def load_plugin(kind: str, spec: str, model_dir: str | None = None) -> Any:
    """The object named by `spec` for `kind`, checked for the methods the kind needs."""
    from imgen_jax.eval import embedders, networks  # noqa: F401  (register the built-ins)

    if kind not in KINDS:
        raise ImgenError(f"unknown plug-in kind {kind!r}; one of {', '.join(KINDS)}")
    target, arg = spec, None
    name, eq, value = spec.partition("=")
    if eq and name in _REGISTRY[kind]:  # NAME=ARG (ARG may hold ':')
        target, arg = name, value
    elif ":" in spec and "=" in spec.rpartition(":")[2]:
        head, _, tail = spec.rpartition(":")
        attr, _, arg = tail.partition("=")
        target = f"{head}:{attr}"
    if ":" not in target:
        factory = _REGISTRY[kind].get(target)
        if factory is None:
            known = ", ".join(registered(kind)) or "none"
            raise ImgenError(f"unknown {kind} {spec!r}; registered: {known}; or give module:factory / file.py:factory")
    else:
        factory = _import_factory(target, spec)
    try:
        obj = factory(model_dir=model_dir, arg=arg)
    except ImgenError:
        raise
    except Exception as e:
        raise ImgenError(f"{kind} {spec!r} failed to load: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    missing = [m for m in KINDS[kind] + ("sample_rate",) if not hasattr(obj, m)]
    if missing:
        raise ImgenError(f"{kind} {spec!r}: the object lacks {', '.join(missing)}")
    if not hasattr(obj, "name") or not isinstance(getattr(obj, "name"), str):
        try:
            obj.name = target.rpartition(":")[2]
        except AttributeError:
            pass
    return obj


__all__ = ["register", "registered", "load_plugin", "KINDS"]
