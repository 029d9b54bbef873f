"""Converted model directories: `config.json` + one safetensors file per component.

Layout written by the converters (`imgen convert`) and read by the runtime, no torch needed:

    DIR/config.json          {"format": "imgen_jax/1", "kind": "musicgen" | "t5" | "encodec",
                              "source": "...", "lm": {...}, "encodec": {...}, "t5": {...},
                              "adapters": {...}}
    DIR/lm.safetensors       MusicGen LM (incl. the text `output_proj` as `text_proj/*`)
    DIR/encodec.safetensors  EnCodec compression model
    DIR/t5.safetensors       T5 encoder
    DIR/adapters.safetensors Instruct-MusicGen adapters (imgen_jax.instruct.fusion), next to the LM they fit
    DIR/spiece.model         sentencepiece model of the T5 tokenizer, when the source had one

A directory is written into a temporary sibling and renamed into place at the end, so an
interrupted conversion never leaves a half-written model directory.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Callable, Mapping, TypeVar

import numpy as np

from imgen_jax.errors import ImgenError
from imgen_jax.weights import read_safetensors, save_safetensors

FORMAT = "imgen_jax/1"
CONFIG_NAME = "config.json"
COMPONENTS = ("lm", "encodec", "t5", "adapters")
TOKENIZER_NAME = "spiece.model"


def write_model_dir(
    out_dir: str | os.PathLike,
    kind: str,
    configs: Mapping[str, dict],
    weights: Mapping[str, Mapping[str, np.ndarray]],
    source: str,
    tokenizer_model: str | None = None,
    overwrite: bool = False,
) -> str:
    """Write a converted model directory atomically and return its path.

    configs/weights: {component: config dict} / {component: {name: array}} for components in COMPONENTS.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not overwrite:
        if not os.path.isdir(out_dir) or os.listdir(out_dir):
            raise ImgenError(f"{out_dir}: output exists and is not an empty directory (pass --overwrite to replace it)")
    parent = os.path.dirname(out_dir)
    if not os.path.isdir(parent):
        raise ImgenError(f"{parent}: parent directory of the output does not exist")
    if not os.access(parent, os.W_OK):
        raise ImgenError(f"{parent}: directory is not writable")
    from imgen_jax.files import atomic_dir

    with atomic_dir(out_dir) as tmp:
        meta = {"format": FORMAT, "kind": kind, "source": source}
        for name in COMPONENTS:
            if name in weights:
                meta[name] = dict(configs[name])
                save_safetensors(os.path.join(tmp, f"{name}.safetensors"), weights[name])
        if tokenizer_model is not None:
            shutil.copyfile(tokenizer_model, os.path.join(tmp, TOKENIZER_NAME))
        with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
    return out_dir


def read_model_config(model_dir: str | os.PathLike) -> dict:
    """The parsed `config.json` of a converted directory, checked for the imgen_jax format."""
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise ImgenError(f"{model_dir}: model directory not found")
    path = os.path.join(model_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        raise ImgenError(f"{model_dir}: no {CONFIG_NAME}; convert the PyTorch model first with `imgen convert`")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ImgenError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ImgenError(
            f"{path}: field 'format' is {meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r} "
            "(is this an unconverted PyTorch/Hugging Face directory? run `imgen convert`)"
        )
    return meta


def read_component(model_dir: str | os.PathLike, component: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(config dict, flat weights) of one component of a converted directory."""
    meta = read_model_config(model_dir)
    if component not in meta:
        raise ImgenError(f"{model_dir}: no '{component}' component in {CONFIG_NAME} (kind {meta.get('kind')!r})")
    return meta[component], read_safetensors(os.path.join(os.fspath(model_dir), f"{component}.safetensors"))


C = TypeVar("C")


def load_component(model_dir: str | os.PathLike, component: str, config_from_dict: Callable[[dict, str], C],
                   abstract: Callable[[C], object], param_dtype=None):
    """(config, module) of one component: its config parsed by `config_from_dict(d, source)`, a module
    with abstract parameters from `abstract(config)`, filled from `<component>.safetensors` with every
    name and shape checked (`param_dtype` casts floating weights, e.g. bfloat16 for inference)."""
    from imgen_jax.weights import load_into

    model_dir = os.fspath(model_dir)
    cfg_dict, flat = read_component(model_dir, component)
    cfg = config_from_dict(cfg_dict, f"{os.path.join(model_dir, CONFIG_NAME)} [{component}]")
    module = abstract(cfg)
    load_into(module, flat, os.path.join(model_dir, f"{component}.safetensors"), dtype=param_dtype)
    return cfg, module
