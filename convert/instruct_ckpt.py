"""The official Instruct-MusicGen checkpoints (ldzhangyx/instruct-MusicGen) <-> imgen_jax adapters.

Layouts read (all through `convert.common.load_torch_checkpoint`, i.e. `torch.load(weights_only=True)`):

- Lightning checkpoint (`finetuned.ckpt`): {'state_dict': {...}, 'hyper_parameters': ..., ...} with the
  `Instructor` under `model.`:
      model.cp_transformer.pos_emb                 [A+1, P, dim]
      model.cp_transformer.gates                   [A]
      model.cp_transformer.merge_linear.{j}.weight [dim, dim]
      model.cp_transformer.layers.{j}.*            the LM's layer start+j (shared module, saved twice)
      model.peft_model.lm.*                        the MusicGen LM (audiocraft LMModel names) with peft's
          `transformer.base_model.model.` prefix and `base_layer` on the LoRA-wrapped cross-attention
          q_proj / v_proj, and the LoRA `cross_attention.{q,v}_proj.lora_{A,B}.default.weight`
          ([r, dim] / [dim, r]). The base LM may be absent (adapters only).
  Lightning also pickles `hyper_parameters` (hydra partials of the optimizer, scheduler and model
  class). `weights_only=True` refuses those globals; we then load the file again, still with
  `weights_only=True`, with every such global bound to an inert placeholder class of ours, so
  nothing named by the file is imported or called (`os`/`sys` globals stay refused by torch, and so
  does a dict or list subclass, which torch only lets fill exact dicts and lists; Lightning stores
  `dict(hparams)`, so its partials and classes are what this has to pass).
- An `Instructor` state dict (the same keys without `model.`).
- The official adapter file of `CPTransformer.save_weights` / `Instructor.save_weights`: a torch
  file of `cp_transformer.state_dict()` minus `layers.*`, i.e. {'pos_emb', 'gates',
  'merge_linear.{j}.weight'}. It holds NO LoRA (the official code never saves it there); imported
  alone it gives LoRA B = 0 (text fusion off, what the official `load_weights` leaves) and a note.

r is read from the LoRA shapes. lora_alpha is taken from the checkpoint where it records one (a `lora_alpha`
entry in its hyper-parameters); the official files do not (hard-coded 64 with r = 32 in `Instructor`), so
otherwise it is the `lora_alpha` argument (`--lora-alpha`), default 64.

The base LM goes through `convert.lm_weights.lm_from_audiocraft` after renaming: peft prefix and
`base_layer` removed; the cross-attention `in_proj_weight` rebuilt from `q_proj`/`k_proj`/`v_proj`
(the official cross-attention computes with those; its `in_proj_weight` is unused), the
self-attention `q_proj`/`k_proj`/`v_proj` dropped (the self-attention computes with `in_proj_weight`).
These dead weights hold other values in checkpoints trained on GPU (float32 copies re-randomised at
construction); that is reported once, as one line of `InstructCheckpoint.notes`, not as an error.
`key_roles` classes every key (frozen MusicGen, LoRA, fusion, fusion alias; used or dead).
`cp_transformer.layers.{j}.*` must equal the LM's layer start+j exactly, else ImgenError.

Export (`export_official_adapters`): our adapters as a torch file of tensors only, in the
`save_weights` layout plus the LoRA under its `Instructor` names
(`peft_model.lm.transformer.base_model.model.layers.{i}.cross_attention.{q,v}_proj.lora_{A,B}.default.weight`):
`Instructor.load_weights(path)` loads the audio fusion (strict=False skips the LoRA keys) and
`Instructor.load_state_dict(torch.load(path), strict=False)` the LoRA. Or layout="lightning":
{'state_dict': {'model.' + Instructor names}} for the Lightning module's load_state_dict(strict=False).
Both record the LoRA alpha (a scalar tensor `lora_alpha` / hyper_parameters['lora_alpha']), which the
official loaders ignore and `read_instruct_checkpoint` uses.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Mapping

import numpy as np

from convert.common import KeyReader, load_torch_checkpoint, strip_prefix
from convert.lm_weights import lm_from_audiocraft
from imgen_jax.errors import ImgenError
from imgen_jax.instruct.fusion import COMPONENT, FusionConfig, save_adapters
from imgen_jax.models.lm import LMConfig
from imgen_jax.modeldir import read_component, read_model_config, write_model_dir

log = logging.getLogger(__name__)

CP = "cp_transformer."
LM = "peft_model.lm."
PEFT_TRANSFORMER = "transformer.base_model.model."
LORA_KEY = PEFT_TRANSFORMER + "layers.{i}.cross_attention.{p}_proj.lora_{m}.default.weight"
OFFICIAL_LORA_ALPHA = 64.0
OFFICIAL_LORA_R = 32
_LORA_RX = re.compile(r"^transformer\.layers\.(\d+)\.cross_attention\.([qv])_proj\.lora_([AB])\.default\.weight$")
_SHARED = (  # cp_transformer.layers.{j}.<key> -> (our name under layers/, transpose?)
    ("norm1.weight", "norm1/scale", False), ("norm1.bias", "norm1/bias", False),
    ("norm2.weight", "norm2/scale", False), ("norm2.bias", "norm2/bias", False),
    ("self_attn.in_proj_weight", "self_attn/in_proj/kernel", True),
    ("self_attn.out_proj.weight", "self_attn/out_proj/kernel", True),
    ("linear1.weight", "linear1/kernel", True), ("linear2.weight", "linear2/kernel", True),
)


@dataclasses.dataclass
class InstructCheckpoint:
    """What an official checkpoint holds, in imgen_jax names.

    fusion / adapters: the adapters' config and flat weights (imgen_jax.instruct.fusion names).
    lm_cfg / lm: the base MusicGen LM (imgen_jax.models.lm names) when the checkpoint has it, else None.
    shared: cp_transformer.layers.* in our layer names stacked over adapter layers (None if absent).
    layout: 'lightning' | 'instructor' | 'save_weights'. notes: things worth telling the user.
    """

    fusion: FusionConfig
    adapters: dict[str, np.ndarray]
    lm_cfg: LMConfig | None
    lm: dict[str, np.ndarray] | None
    shared: dict[str, np.ndarray] | None
    layout: str
    notes: list[str]


# ---- loading --------------------------------------------------------------------------------------
def _inert_class(full_name: str) -> type:
    """A placeholder standing for a pickled global: records what it is given, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.items = args, kwargs, {}

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.items[len(self.items)] = value

    def extend(self, values):
        for v in values:
            self.append(v)

    def __repr__(self):
        return f"<unloaded {full_name}>"

    module, _, name = full_name.rpartition(".")
    return type(name or "Global", (), {
        "__init__": __init__, "__setstate__": __setstate__, "__setitem__": __setitem__, "append": append,
        "extend": extend, "__repr__": __repr__, "__module__": "imgen_inert." + module,
    })


def load_checkpoint_tensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Tensors of a (Lightning) checkpoint, never running code from it.

    First `load_torch_checkpoint` (weights_only). If torch refuses globals (Lightning's pickled
    hyper-parameters), those globals are listed statically and bound to inert placeholders for a
    second weights_only load; the tensors are the same, the non-tensor objects are placeholders.
    """
    path = os.fspath(path)
    try:
        return load_torch_checkpoint(path)
    except ImgenError as e:
        if ": refused:" not in str(e):
            raise
        first_error = e
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        raise first_error from None
    if any(n.split(".")[0] in ("os", "sys", "posix", "nt") for n in names):
        raise first_error
    stand_ins = [(_inert_class(n), n) for n in names]
    with torch.serialization.safe_globals(stand_ins):
        try:
            return load_torch_checkpoint(path)
        except ImgenError:
            raise first_error from None


# ---- state dict -> InstructCheckpoint ----------------------------------------------------------------
def _normalise(sd: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    """Any supported layout -> Instructor-relative names (cp_transformer.*, peft_model.lm.*)."""
    if any(k.startswith("state_dict.") for k in sd):
        sd, layout = strip_prefix(sd, "state_dict."), "lightning"
    else:
        layout = "instructor"
    if any(k.startswith("model.") for k in sd):
        sd = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in sd.items()}
    def bare_cp(k: str) -> bool:
        return k in ("pos_emb", "gates") or k.startswith(("merge_linear.", "layers."))

    if not any(k.startswith(CP) for k in sd) and any(bare_cp(k) and not k.startswith("layers.") for k in sd):
        # save_weights file: cp_transformer.state_dict() minus layers.* (+ our LoRA under Instructor names)
        sd = {(CP + k if bare_cp(k) else k): v for k, v in sd.items()}
        layout = "save_weights"
    return dict(sd), layout


def _count(keys, rx: str) -> int:
    r = re.compile(rx)
    found = {int(m.group(1)) for k in keys if (m := r.match(k))}
    if found and found != set(range(len(found))):
        raise ImgenError(f"non-contiguous indices for {rx}: {sorted(found)}")
    return len(found)


def _lm_part(base: dict[str, np.ndarray], source: str, num_heads: int | None, notes: list[str]):
    """The LM keys (peft/base_layer already removed) -> (LMConfig, flat) via the audiocraft converter."""
    ac = dict(base)
    L = _count(ac, r"transformer\.layers\.(\d+)\.")
    dead_differ: dict[str, list[int]] = {}
    for i in range(L):
        p = f"transformer.layers.{i}."
        # cross-attention: computed with q_proj / k_proj / v_proj (LoRA-wrapped), in_proj unused
        parts = [ac.pop(p + f"cross_attention.{n}_proj.weight", None) for n in "qkv"]
        old = ac.pop(p + "cross_attention.in_proj_weight", None)
        if all(x is not None for x in parts):
            ac[p + "cross_attention.in_proj_weight"] = np.concatenate(parts, axis=0)
            if old is not None and not np.array_equal(old, ac[p + "cross_attention.in_proj_weight"]):
                dead_differ.setdefault("cross_attention.in_proj_weight", []).append(i)
        elif old is not None:
            ac[p + "cross_attention.in_proj_weight"] = old
        # self-attention: computed with in_proj_weight; q_proj / k_proj / v_proj are unused
        views = [ac.pop(p + f"self_attn.{n}_proj.weight", None) for n in "qkv"]
        ip = ac.get(p + "self_attn.in_proj_weight")
        if ip is not None and all(x is not None for x in views) and not np.array_equal(ip, np.concatenate(views, 0)):
            dead_differ.setdefault("self_attn.q/k/v_proj.weight", []).append(i)
    if dead_differ:
        parts = [f"{name} (layers {_ranges(layers)})" for name, layers in dead_differ.items()]
        notes.append("unused weights differ from the ones the official code computes with, as in checkpoints trained "
                     "on GPU (ignored; the self-attention uses in_proj_weight, the cross-attention q/k/v_proj): "
                     + ", ".join(parts))
    cfg, flat = lm_from_audiocraft(ac, source)
    if num_heads is None:
        notes.append(f"number of attention heads not given: assumed dim // 64 = {cfg.num_heads}")
    else:
        try:
            cfg = dataclasses.replace(cfg, num_heads=int(num_heads))
        except ValueError as e:
            raise ImgenError(f"{source}: {e}") from None
    return cfg, flat


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    runs, run = [], []
    for i in indices:
        if run and i != run[-1] + 1:
            runs.append(run)
            run = []
        run.append(i)
    if run:
        runs.append(run)
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


KEY_ROLES = ("musicgen_frozen", "lora", "fusion", "fusion_alias_of_lm_layer")
_DEAD_RX = re.compile(r"(self_attn\.[qkv]_proj\.weight|cross_attention\.in_proj_weight)$")


def key_roles(sd: Mapping[str, np.ndarray]) -> dict[str, tuple[str, bool]]:
    """{key: (role, used)} for every key of an official state dict (any layout; keys as given): role is one of
    KEY_ROLES (the frozen MusicGen, the text-fusion LoRA, the audio fusion's own parameters, the fusion's
    aliases of the LM's layers); used is False for the dead weights (`self_attn.q/k/v_proj.weight`,
    `cross_attention.in_proj_weight`) that no computation reads. ImgenError for a key of none of them."""
    normalised, _ = _normalise({k: k for k in sd})
    roles, unknown = {}, []
    for rel, original in normalised.items():
        if rel.startswith(CP):
            k = rel[len(CP):]
            role = "fusion_alias_of_lm_layer" if k.startswith("layers.") else "fusion"
        elif rel.startswith(LM):
            k = rel[len(LM):].replace(PEFT_TRANSFORMER, "transformer.", 1)
            role = "lora" if _LORA_RX.match(k) else "musicgen_frozen"
        else:
            unknown.append(original)
            continue
        roles[original] = (role, not _DEAD_RX.search(rel))
    if unknown:
        raise ImgenError(f"unexpected keys (not Instruct-MusicGen): {', '.join(sorted(unknown)[:8])}")
    return roles


def recorded_lora_alpha(meta: object) -> float | None:
    """The LoRA alpha a checkpoint records, if any: a `lora_alpha` entry anywhere in its non-tensor objects
    (hyper-parameters, including the arguments of pickled partials, which load as inert placeholders)."""
    seen: set[int] = set()

    def walk(x, depth=0):
        if depth > 12 or id(x) in seen:
            return None
        seen.add(id(x))
        if isinstance(x, Mapping):
            for k, v in x.items():
                if isinstance(k, str) and k.rsplit(".", 1)[-1] == "lora_alpha" and isinstance(v, (int, float)):
                    return float(v)
                found = walk(v, depth + 1)
                if found is not None:
                    return found
        elif isinstance(x, (list, tuple)):
            for v in x:
                found = walk(v, depth + 1)
                if found is not None:
                    return found
        elif hasattr(x, "__dict__") and type(x).__module__.startswith("imgen_inert"):
            return walk(vars(x), depth + 1)
        return None

    return walk(meta)


def instruct_from_state_dict(
    sd: Mapping[str, np.ndarray],
    source: str,
    *,
    lm_cfg: LMConfig | None = None,
    num_heads: int | None = None,
    lora_alpha: float | None = None,
) -> InstructCheckpoint:
    """Official Instruct-MusicGen tensors (any layout of the module docstring) -> InstructCheckpoint.

    lm_cfg: the base LM the adapters go with, when the checkpoint does not carry it (gives the layer
    count for start_layer; otherwise the LoRA layer count, else all layers = adapter layers is
    assumed, as the official model). num_heads: heads of the checkpoint's LM (default dim // 64, as
    every released MusicGen). lora_alpha: default 64 (official).
    """
    sd = dict(sd)
    for k in ("lora_alpha", "model.lora_alpha", "state_dict.lora_alpha", "hyper_parameters.lora_alpha"):
        if k in sd:  # recorded by our export (the official files record none)
            lora_alpha = float(np.asarray(sd.pop(k)).reshape(()))
    sd, layout = _normalise(sd)
    notes: list[str] = []
    unexpected = sorted(k for k in sd if not k.startswith((CP, LM)))
    if unexpected:
        shown = ", ".join(unexpected[:8]) + (f", ... ({len(unexpected)} in all)" if len(unexpected) > 8 else "")
        raise ImgenError(f"{source}: unexpected keys (not Instruct-MusicGen): {shown}")
    cp = strip_prefix(sd, CP)
    if not any(k in cp for k in ("pos_emb", "gates")) and not any(k.startswith("merge_linear.") for k in cp):
        raise ImgenError(
            f"{source}: no Instruct-MusicGen adapters in this checkpoint (no cp_transformer pos_emb / gates / "
            f"merge_linear; first keys: {', '.join(sorted(sd)[:3]) or 'none'})"
        )

    # LM and LoRA
    lm_all = {}
    for k, v in strip_prefix(sd, LM).items():
        k = k.replace(PEFT_TRANSFORMER, "transformer.", 1).replace(".base_layer.", ".")
        lm_all[k] = v
    lora_sd = {k: v for k, v in lm_all.items() if _LORA_RX.match(k)}
    base = {k: v for k, v in lm_all.items() if k not in lora_sd}
    ckpt_lm_cfg, lm_flat = (None, None)
    if base:
        ckpt_lm_cfg, lm_flat = _lm_part(base, source, num_heads, notes)
        if lm_cfg is not None and (lm_cfg.dim, lm_cfg.num_layers) != (ckpt_lm_cfg.dim, ckpt_lm_cfg.num_layers):
            raise ImgenError(
                f"{source}: the checkpoint's LM (width {ckpt_lm_cfg.dim}, {ckpt_lm_cfg.num_layers} layers) is not the "
                f"given base LM (width {lm_cfg.dim}, {lm_cfg.num_layers} layers)"
            )

    # audio fusion
    r = KeyReader(cp, source + f" [{CP[:-1]}]")
    A = _count(cp, r"merge_linear\.(\d+)\.weight$")
    if A == 0:
        A = int(np.asarray(cp["gates"]).reshape(-1).shape[0]) if "gates" in cp else 0
        if A == 0:
            raise ImgenError(f"{source}: missing keys: {CP}merge_linear.0.weight, {CP}gates")
    pos = r.take("pos_emb")
    if pos is not None and (pos.ndim != 3 or pos.shape[0] != A + 1):
        r.misshaped.append(f"pos_emb (expected [{A + 1}, frames, dim], got {list(pos.shape)})")
        pos = None
    known_lm = ckpt_lm_cfg or lm_cfg
    if known_lm is not None:
        D = known_lm.dim
    elif pos is not None:
        D = int(pos.shape[2])
    elif "merge_linear.0.weight" in cp:
        D = int(np.asarray(cp["merge_linear.0.weight"]).shape[0])
    else:
        r.finish()
        raise ImgenError(f"{source}: missing keys: {CP}pos_emb, {CP}merge_linear.0.weight")
    if pos is not None and pos.shape[2] != D:
        r.misshaped.append(f"pos_emb (expected [{A + 1}, frames, {D}], got {list(pos.shape)})")
        pos = None
    merge = [r.take(f"merge_linear.{j}.weight", (D, D)) for j in range(A)]
    gates = r.take("gates", (A,))
    shared_rows: dict[str, list] = {ours: [] for _, ours, _ in _SHARED}
    has_shared = any(k.startswith("layers.") for k in cp)
    if has_shared:
        for j in range(A):
            for theirs, ours, transpose in _SHARED:
                w = r.take(f"layers.{j}.{theirs}")
                shared_rows[ours].append(None if w is None else (w.T if transpose else w))
            r.mark_used([f"layers.{j}.self_attn.{n}_proj.weight" for n in "qkv"])
    r.finish()

    # LoRA
    L_lora = _count(lora_sd, r"transformer\.layers\.(\d+)\.cross_attention\.")
    if ckpt_lm_cfg is not None:
        L = ckpt_lm_cfg.num_layers
    elif lm_cfg is not None:
        L = lm_cfg.num_layers
    elif L_lora:
        L = L_lora
    else:
        L = A
        notes.append(f"no base LM given: assumed the adapters cover all {A} LM layers "
                     "(start_layer 0, as the official model)")
    if L < A:
        raise ImgenError(f"{source}: {A} adapter layers but the LM has only {L} layers")
    alpha = OFFICIAL_LORA_ALPHA if lora_alpha is None else float(lora_alpha)
    if lora_sd:
        key0 = "transformer.layers.0.cross_attention.q_proj.lora_A.default.weight"
        rank = int(lora_sd[key0].shape[0]) if key0 in lora_sd else OFFICIAL_LORA_R
        lr = KeyReader(lora_sd, source + " [LoRA]")
        key = "transformer.layers.{i}.cross_attention.{p}_proj.lora_{m}.default.weight"
        lora = {}
        for p in "qv":
            a = [lr.take(key.format(i=i, p=p, m="A"), (rank, D)) for i in range(L)]
            b = [lr.take(key.format(i=i, p=p, m="B"), (D, rank)) for i in range(L)]
            lora[f"lora_{p}/a"] = None if any(x is None for x in a) else np.stack([x.T for x in a])
            lora[f"lora_{p}/b"] = None if any(x is None for x in b) else np.stack([x.T for x in b])
        lr.finish()
    else:
        rank = OFFICIAL_LORA_R
        notes.append("no LoRA weights in the checkpoint (the official save_weights file does not hold them): "
                     "text fusion is off (LoRA B = 0), as the official load_weights leaves it")
        rng = np.random.default_rng(0)
        bound = 1.0 / np.sqrt(D)
        lora = {}
        for p in "qv":
            lora[f"lora_{p}/a"] = rng.uniform(-bound, bound, (L, D, rank)).astype(np.float32)
            lora[f"lora_{p}/b"] = np.zeros((L, rank, D), np.float32)

    try:
        fusion = FusionConfig(dim=D, num_layers=L, adapter_layers=A, lora_r=rank, lora_alpha=alpha,
                              pos_emb_frames=int(pos.shape[1]))
    except ValueError as e:
        raise ImgenError(f"{source}: {e}") from None
    flat = {
        "merge_linear": np.stack([w.T for w in merge]),
        "pos_emb": pos,
        "gates": np.asarray(gates).reshape(A),
        **lora,
    }
    flat = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in flat.items()}
    shared = {k: np.stack(v).astype(np.float32) for k, v in shared_rows.items()} if has_shared else None
    if shared is not None and lm_flat is not None:
        check_shared_layers(shared, fusion, lm_flat, source)
    return InstructCheckpoint(fusion, flat, ckpt_lm_cfg, lm_flat, shared, layout, notes)


def check_shared_layers(shared: Mapping[str, np.ndarray], fusion: FusionConfig, lm_flat: Mapping[str, np.ndarray],
                        source: str) -> None:
    """cp_transformer.layers.{j} must be the LM's layer start+j (the official module is shared): one
    ImgenError naming every tensor that differs."""
    start = fusion.start_layer
    bad = []
    for name, arr in shared.items():
        ref = np.asarray(lm_flat[f"layers/{name}"])[start:]
        if ref.shape != arr.shape:
            bad.append(f"{name} (shape {list(arr.shape)} vs {list(ref.shape)})")
            continue
        for j in range(arr.shape[0]):
            if not np.array_equal(arr[j], ref[j]):
                diff = float(np.abs(arr[j].astype(np.float64) - ref[j]).max())
                bad.append(f"layers.{j}.{name} (max |diff| {diff:.3g})")
    if bad:
        shown = ", ".join(bad[:8]) + (f", ... ({len(bad)} in all)" if len(bad) > 8 else "")
        raise ImgenError(
            f"{source}: cp_transformer.layers differ from the LM's layers {start}.. they must share: {shown}"
        )


def read_instruct_checkpoint(
    path: str | os.PathLike,
    *,
    lm_cfg: LMConfig | None = None,
    num_heads: int | None = None,
    lora_alpha: float | None = None,
) -> InstructCheckpoint:
    """Read an official checkpoint file (Lightning .ckpt, Instructor state dict or save_weights file)."""
    path = os.fspath(path)
    tensors, meta = load_checkpoint_tensors(path)
    recorded = recorded_lora_alpha(meta)
    alpha = lora_alpha if recorded is None else recorded
    ck = instruct_from_state_dict(tensors, path, lm_cfg=lm_cfg, num_heads=num_heads, lora_alpha=alpha)
    if recorded is not None and lora_alpha is not None and float(lora_alpha) != recorded:
        ck.notes.append(f"the checkpoint records lora_alpha {recorded:g}: used instead of the given {float(lora_alpha):g}")
    return ck


# ---- export ----------------------------------------------------------------------------------------
def adapters_to_official(
    fusion: FusionConfig, flat: Mapping[str, np.ndarray], layout: str = "save_weights"
) -> dict[str, np.ndarray]:
    """Our adapter weights -> official key names and PyTorch layouts (see the module docstring)."""
    if layout not in ("save_weights", "lightning"):
        raise ImgenError(f"unknown official adapter layout {layout!r}; expected 'save_weights' or 'lightning'")
    cp = "" if layout == "save_weights" else "model." + CP
    lm = LM if layout == "save_weights" else "model." + LM
    out: dict[str, np.ndarray] = {}
    if fusion.has_audio:  # the ablation modes "text" / "audio" export only the part they have
        out.update({cp + "pos_emb": flat["pos_emb"], cp + "gates": flat["gates"]})
        for j in range(fusion.adapter_layers):
            out[cp + f"merge_linear.{j}.weight"] = flat["merge_linear"][j].T
    for i in range(fusion.num_layers if fusion.has_lora else 0):
        for p in "qv":
            out[lm + LORA_KEY.format(i=i, p=p, m="A")] = flat[f"lora_{p}/a"][i].T
            out[lm + LORA_KEY.format(i=i, p=p, m="B")] = flat[f"lora_{p}/b"][i].T
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def export_official_adapters(
    path: str | os.PathLike, fusion: FusionConfig, flat: Mapping[str, np.ndarray], layout: str = "save_weights"
) -> str:
    """Write our adapters as an official PyTorch file of tensors only (atomically); returns the path."""
    import torch

    tensors = {k: torch.from_numpy(v) for k, v in adapters_to_official(fusion, flat, layout).items()}
    # lora_alpha is recorded (the official files do not: their alpha is 64); the official loaders ignore it
    if layout == "save_weights":
        obj = dict(tensors, lora_alpha=torch.tensor(float(fusion.lora_alpha)))
    else:
        obj = {"state_dict": tensors, "hyper_parameters": {"lora_alpha": float(fusion.lora_alpha)}}
    from imgen_jax.files import atomic_file

    path = os.path.abspath(os.fspath(path))
    with atomic_file(path, ".pt") as tmp:
        torch.save(obj, tmp)
    return path


# ---- converted model directories ------------------------------------------------------------------------
def _log_notes(ck: InstructCheckpoint, source: str) -> None:
    for n in ck.notes:
        log.warning("%s: %s", source, n)


def convert_instruct(
    ckpt_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    num_heads: int | None = None,
    lora_alpha: float | None = None,
    overwrite: bool = False,
) -> str:
    """An official checkpoint holding the base LM (as finetuned.ckpt) -> a converted directory with the
    `lm` and `adapters` components. For adapter-only files use `add_adapters` on a converted MusicGen."""
    ckpt_path = os.fspath(ckpt_path)
    ck = read_instruct_checkpoint(ckpt_path, num_heads=num_heads, lora_alpha=lora_alpha)
    if ck.lm is None:
        raise ImgenError(
            f"{ckpt_path}: holds no base MusicGen weights; add its adapters to a converted MusicGen directory "
            "instead (convert.instruct_ckpt.add_adapters)"
        )
    _log_notes(ck, ckpt_path)
    return write_model_dir(
        out_dir, "musicgen", {"lm": ck.lm_cfg.to_dict(), COMPONENT: ck.fusion.to_dict()},
        {"lm": ck.lm, COMPONENT: ck.adapters}, source=os.path.abspath(ckpt_path), overwrite=overwrite,
    )


def add_adapters(model_dir: str | os.PathLike, ckpt_path: str | os.PathLike, *, lora_alpha: float | None = None,
                 lm_tolerance: float = 1e-3) -> InstructCheckpoint:
    """Import the adapters of an official checkpoint into an existing converted MusicGen directory.

    When the checkpoint also holds an LM (or the shared cp_transformer layers), it is compared with the
    directory's LM: a relative difference above `lm_tolerance` (max |diff| / max |w| of any tensor:
    another model) is an ImgenError; smaller differences (e.g. fp16 vs fp32 copies) become a note.
    """
    model_dir, ckpt_path = os.fspath(model_dir), os.fspath(ckpt_path)
    meta = read_model_config(model_dir)
    if "lm" not in meta:
        raise ImgenError(f"{model_dir}: no 'lm' component to add adapters to")
    lm_dict, lm_flat = read_component(model_dir, "lm")
    lm_cfg = LMConfig.from_dict(lm_dict, f"{model_dir}/config.json [lm]")
    ck = read_instruct_checkpoint(ckpt_path, lm_cfg=lm_cfg, num_heads=lm_cfg.num_heads, lora_alpha=lora_alpha)
    ck.fusion.check_lm(lm_cfg, ckpt_path)
    pairs = []
    if ck.lm is not None:
        pairs += [(f"lm {k}", v, lm_flat.get(k)) for k, v in ck.lm.items()]
    if ck.shared is not None:
        s = ck.fusion.start_layer
        pairs += [(f"cp_transformer.layers {k}", v, np.asarray(lm_flat[f"layers/{k}"])[s:]) for k, v in ck.shared.items()]
    worst = (0.0, "")
    for name, a, b in pairs:
        if b is None or a.shape != b.shape:
            raise ImgenError(f"{ckpt_path}: its {name} does not match {model_dir}'s LM (shape or name)")
        rel = float(np.abs(a.astype(np.float64) - b).max() / max(float(np.abs(b).max()), 1e-12))
        worst = max(worst, (rel, name))
    if worst[0] > lm_tolerance:
        raise ImgenError(f"{ckpt_path}: its base LM is not {model_dir}'s (relative difference {worst[0]:.3g} in {worst[1]})")
    if worst[0] > 0:
        ck.notes.append(f"the checkpoint's LM differs slightly from {model_dir}'s (max relative {worst[0]:.3g} in {worst[1]})")
    _log_notes(ck, ckpt_path)
    save_adapters(model_dir, ck.fusion, ck.adapters)
    return ck


__all__ = [
    "InstructCheckpoint", "load_checkpoint_tensors", "key_roles", "recorded_lora_alpha", "instruct_from_state_dict", "check_shared_layers",
    "read_instruct_checkpoint", "adapters_to_official", "export_official_adapters", "convert_instruct", "add_adapters",
]
