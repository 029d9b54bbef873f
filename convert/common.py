"""Safe loading of PyTorch checkpoints into flat numpy dicts, and key bookkeeping for converters.

Pickled checkpoints are opened with `torch.load(..., weights_only=True)`: only tensors and
plain containers are rebuilt, so a file that would run code when unpickled is refused.
"""

from __future__ import annotations

import json
import os
import pickle
from typing import Iterable, Mapping

import numpy as np
from tqdm.auto import tqdm

from imgen_jax.errors import ImgenError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".th")


def _to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.detach().cpu().numpy()


def _flatten(obj, prefix: str, out: dict, meta: dict) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out, meta)
    else:
        meta[prefix] = obj


def load_torch_checkpoint(path: str | os.PathLike, desc: str | None = None,
                          safe_globals: Iterable = ()) -> tuple[dict[str, np.ndarray], dict]:
    """Load a .bin/.pt/.ckpt (pickle, weights only) or .safetensors file.

    `safe_globals` extends the weights-only unpickler's allow-list (torch.serialization.safe_globals:
    objects, or (stand-in, "module.Name") pairs so that a class the pickle names is rebuilt as the
    stand-in, never imported).

    Returns (tensors, other): tensors is {dotted key: float32/int numpy array}; nested dicts
    are flattened with '.' (so audiocraft's {'best_state': {...}} gives 'best_state.<key>');
    other holds the non-tensor leaves (strings, numbers) under their dotted keys.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImgenError(f"{path}: checkpoint file not found")
    if os.path.getsize(path) == 0:
        raise ImgenError(f"{path}: checkpoint file is empty")
    name = os.path.basename(path)
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                keys = list(f.keys())
                tensors = {k: _to_numpy(f.get_tensor(k)) for k in tqdm(keys, desc=desc or name, unit="tensor", leave=False)}
        except ImgenError:
            raise
        except Exception as e:
            raise ImgenError(f"{path}: not a readable safetensors file (truncated or damaged: {str(e).splitlines()[0][:100]})") from None
        return tensors, {}
    import torch

    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((l for l in first if "Unsupported" in l or "GLOBAL" in l), first[0] if first else "")
        raise ImgenError(
            f"{path}: refused: the file holds pickled objects other than tensors, which could run code when "
            f"loaded ({detail.strip()[:160]})"
        ) from None
    except Exception as e:
        raise ImgenError(
            f"{path}: not a readable PyTorch checkpoint (truncated or damaged?): {type(e).__name__}: "
            f"{str(e).strip().splitlines()[0][:120] if str(e).strip() else ''}"
        ) from None
    raw: dict = {}
    meta: dict = {}
    _flatten(obj, "", raw, meta)
    total = sum(t.numel() * t.element_size() for t in raw.values())
    tensors = {}
    with tqdm(total=total, desc=desc or name, unit="B", unit_scale=True, leave=False) as bar:
        for k, t in raw.items():
            tensors[k] = _to_numpy(t)
            bar.update(t.numel() * t.element_size())
    return tensors, meta


def load_hf_weights(model_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """All weights of a Hugging Face snapshot directory (single or sharded, safetensors or .bin)."""
    model_dir = os.fspath(model_dir)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = os.path.join(model_dir, index_name)
        if os.path.isfile(index):
            try:
                with open(index) as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
            except (OSError, KeyError, json.JSONDecodeError) as e:
                raise ImgenError(f"{index}: unreadable shard index ({e})") from None
            out: dict[str, np.ndarray] = {}
            for i, shard in enumerate(shards):
                t, _ = load_torch_checkpoint(os.path.join(model_dir, shard), desc=f"shard {i + 1}/{len(shards)}")
                out.update(t)
            return out
    for single in ("model.safetensors", "pytorch_model.bin"):
        p = os.path.join(model_dir, single)
        if os.path.isfile(p):
            return load_torch_checkpoint(p)[0]
    raise ImgenError(f"{model_dir}: no model.safetensors or pytorch_model.bin (or sharded index) found")


def read_json(path: str | os.PathLike) -> dict:
    """A JSON file as a dict, with a one-line error when missing or malformed."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError:
        raise ImgenError(f"{path}: file not found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ImgenError(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(d, dict):
        raise ImgenError(f"{path}: expected a JSON object")
    return d


class KeyReader:
    """Takes tensors out of a state dict by name and reports every problem at once.

    `take(key, shape)` returns the array (or None when missing/mis-shaped, recording it);
    `finish()` raises one ImgenError listing missing, mis-shaped and unused keys. Keys that
    match `ignore` prefixes/suffixes (buffers such as EMA statistics) are never reported.
    """

    def __init__(self, sd: Mapping[str, np.ndarray], source: str, ignore: Iterable[str] = ()):
        self.sd = sd
        self.source = source
        self.ignore = tuple(ignore)
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.misshaped: list[str] = []

    def has(self, key: str) -> bool:
        return key in self.sd

    def take(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        if key not in self.sd:
            self.missing.append(key)
            return None
        self.used.add(key)
        arr = self.sd[key]
        if shape is not None and tuple(arr.shape) != tuple(shape):
            self.misshaped.append(f"{key} (expected {list(shape)}, got {list(arr.shape)})")
            return None
        return arr

    def mark_used(self, keys: Iterable[str]) -> None:
        self.used.update(k for k in keys if k in self.sd)

    def finish(self, check_unused: bool = True) -> None:
        unused = []
        if check_unused:
            unused = sorted(
                k for k in self.sd
                if k not in self.used and not any(k.startswith(p) or k.endswith(p) for p in self.ignore)
            )
        problems = []
        for label, items in (("missing keys", self.missing), ("mis-shaped", self.misshaped), ("unexpected keys", unused)):
            if items:
                shown = ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")
                problems.append(f"{label}: {shown}")
        if problems:
            raise ImgenError(f"{self.source}: " + "; ".join(problems))


def fold_batch_norm(r: KeyReader, prefix: str, dim: int, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) [dim] float64 of the inference batch norm `prefix` (weight, bias, running_mean,
    running_var taken from `r`): scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale.
    None when a piece is missing or mis-shaped (recorded in `r`)."""
    g, b, m, v = (r.take(f"{prefix}.{p}", (dim,)) for p in ("weight", "bias", "running_mean", "running_var"))
    if any(t is None for t in (g, b, m, v)):
        return None
    s = g.astype(np.float64) / np.sqrt(v.astype(np.float64) + eps)
    return s, b.astype(np.float64) - m.astype(np.float64) * s


def strip_prefix(sd: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The entries of `sd` under `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def fold_weight_norm(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Replace weight-norm pairs by the effective weight w = g * v / ||v|| (norm over all dims but 0).

    Handles both layouts: `X.weight_g`/`X.weight_v` (torch.nn.utils.weight_norm) and
    `X.parametrizations.weight.original0`/`original1` (torch.nn.utils.parametrizations).
    """
    out = dict(sd)
    pairs = []
    for k in sd:
        if k.endswith(".weight_g"):
            pairs.append((k, k[: -len("_g")] + "_v", k[: -len(".weight_g")] + ".weight"))
        elif k.endswith(".parametrizations.weight.original0"):
            base = k[: -len(".parametrizations.weight.original0")]
            pairs.append((k, base + ".parametrizations.weight.original1", base + ".weight"))
    for g_key, v_key, w_key in pairs:
        if v_key not in sd:
            continue
        g = sd[g_key].astype(np.float64)
        v = sd[v_key].astype(np.float64)
        norm = np.sqrt((v ** 2).sum(axis=tuple(range(1, v.ndim)), keepdims=True))
        out[w_key] = (g * v / norm).astype(np.float32)
        del out[g_key], out[v_key]
    return out
