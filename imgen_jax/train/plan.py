"""`imgen plan`: per-chip TPU memory and a roofline estimate of the training step and the edit decode,
from the TPU compiler, on a machine with no TPU, no weights and no data.

    imgen plan --config=configs/slakh.py --topology=v5e:2x4 [--config.FIELD=VALUE ...]

What it does:
1. The base model comes from presets (`config.model.base_size`: LM `LMConfig.preset(size)`, EnCodec 32 kHz =
   `EncodecConfig()`, T5 = t5-base = `T5Config()`), or from the configs in `config.model.base_dir`/config.json
   when `base_size` is empty; its weights are never read. Every array is a `jax.ShapeDtypeStruct`.
2. `jax.experimental.topologies.get_topology_desc(topology)` gives the abstract devices of the TPU slice
   (libtpu, the `tpu` extra); the mesh, the sharding rules and the jitted step are the training code's own
   (`mesh.make_mesh`, `step.step_shardings`, `step.make_steps`), lowered and compiled for those devices.
3. The edit decode program (`imgen_jax.generate._decode_program`, the first window of an edit: `pos_emb_frames
   - 1` frames, 10 s for the official adapters, CFG, top-k) is compiled the same way for each decode batch, with
   the LM weights split over a `tensor` mesh axis of up to 8 chips.

What it prints, per program: the compiler's per-chip memory (`compiled.memory_analysis()`: arguments,
temporaries, outputs, minus what outputs alias, against the chip's HBM) and three roofline terms:
- compute = matmul FLOPs / peak bf16 FLOP/s,
- memory = HBM bytes / HBM bandwidth,
- collectives = ICI bytes of the all-gather, reduce-scatter, all-reduce and all-to-all ops / ICI bandwidth.
XLA's `cost_analysis()` counts the body of a while loop (every `lax.scan`: the layers, the micro-batches;
the decode loop) once, not once per iteration, so its totals are printed only for reference. The terms come
from walking the compiled HLO (`compiled.as_text()`) instead: each computation's count is multiplied by the
trip counts of the loops it runs in (read from each loop's condition; the decode loop's bound is a runtime
value, so it is given the number of decoded steps). FLOPs are those of the dot and convolution ops (the
MXU work); HBM bytes are the operand and result bytes of every top-level op (a fused slice of a stacked
weight counts its slice, an in-place update its update); collective bytes are ring-algorithm bytes per chip
(all-gather: result - operand; reduce-scatter: operand - result; all-reduce: 2 (n-1)/n operand; all-to-all:
(n-1)/n operand), the operand bytes are printed beside them. The HLO FLOPs are checked against a hand count
of the LM and fusion matmuls (`hand_count_flops`); the MFU uses the hand count (model FLOPs, no
rematerialisation, no EnCodec / T5).

The roofline step time is max(compute, memory, collectives) - perfect overlap - and everything printed is
the compiler's memory and a roofline estimate, never a measured speed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from imgen_jax.errors import ImgenError

GIB = 1024**3


# ---- chips -----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Chip:
    """Per-chip figures of a TPU generation (Google Cloud's TPU system-architecture pages)."""

    name: str
    hbm_bytes: float      # HBM capacity
    peak_flops: float     # peak bf16 FLOP/s
    hbm_bw: float         # HBM bandwidth, bytes/s
    ici_bw: float         # inter-chip interconnect bandwidth, bytes/s, one way (the bidirectional figure / 2)


# The one table of chip figures. v5e: 197 TFLOP/s bf16, 16 GiB HBM at 819 GB/s, ICI 1,600 Gbit/s
# (400 GB/s bidirectional). v5p: 459 TFLOP/s bf16, 95 GiB HBM at 2,765 GB/s, ICI 4,800 Gbit/s (1,200 GB/s
# bidirectional).
CHIPS: dict[str, Chip] = {
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12, 819e9, 200e9),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12, 2765e9, 600e9),
}


def parse_topology(topology: str) -> tuple[str, tuple[int, ...]]:
    """"v5e:2x4" -> ("v5e", (2, 4)); ImgenError naming the expected form."""
    m = re.fullmatch(r"(v\d+[a-z]*):(\d+(?:x\d+){1,2})", topology.strip())
    if m is None or m.group(1) not in CHIPS:
        raise ImgenError(f"--topology: {topology!r} is not CHIP:AxB[xC] with CHIP one of {', '.join(CHIPS)} "
                         "(e.g. v5e:2x4, v5p:2x2x1)")
    return m.group(1), tuple(int(d) for d in m.group(2).split("x"))


def tpu_devices(topology: str) -> tuple[Chip, list]:
    """(chip figures, the abstract TPU devices of `topology`) from libtpu, without a TPU."""
    kind, dims = parse_topology(topology)
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise ImgenError("imgen plan needs libtpu (the TPU compiler): pip install 'imgen_jax[tpu]'") from None
    # libtpu takes a machine-wide lock file by default; compiling needs no exclusive TPU access
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    kw = {}
    if int(np.prod(dims)) == 1:
        kw["chips_per_host_bounds"] = (1, 1, 1)
    try:
        desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kw)
    except Exception as e:  # libtpu refuses unknown shapes
        raise ImgenError(f"--topology: libtpu does not know {topology!r} ({str(e).splitlines()[0][:160]})") from None
    return CHIPS[kind], list(desc.devices)


# ---- the abstract base model -----------------------------------------------------------------------
BASE_SIZES = ("small", "medium", "large")


@dataclasses.dataclass
class AbstractBase:
    """The frozen base as `step.BaseModels` wants it, every weight a ShapeDtypeStruct."""

    base: Any  # step.BaseModels
    t5_cfg: Any
    source: str


def _cast(tree: Any, dtype) -> Any:
    """ShapeDtypeStructs of floating leaves cast to `dtype` (what `weights.load_into(dtype=...)` does)."""
    if dtype is None:
        return tree
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def base_configs(config: ml_collections.ConfigDict):
    """(LMConfig, EncodecConfig, T5Config, source) of the base the config trains on: the presets of
    `model.base_size`, else the configs in `model.base_dir`/config.json (no weights are read)."""
    from imgen_jax.models.encodec import EncodecConfig
    from imgen_jax.models.lm import LMConfig
    from imgen_jax.models.t5 import T5Config

    size = str(config.model.get("base_size", "") or "")
    if size:
        if size not in BASE_SIZES:
            raise ImgenError(f"config.model.base_size: {size!r} is not one of {BASE_SIZES} (or '' = read model.base_dir)")
        return LMConfig.preset(size), EncodecConfig(), T5Config(), f"preset musicgen-{size} + EnCodec 32 kHz + t5-base"
    from imgen_jax.modeldir import CONFIG_NAME, read_model_config

    base_dir = str(config.model.base_dir or "")
    if not base_dir or not os.path.isfile(os.path.join(base_dir, CONFIG_NAME)):
        raise ImgenError(f"config.model.base_size: not set, and config.model.base_dir ({base_dir or 'empty'}) has no "
                         f"{CONFIG_NAME}; set --config.model.base_size=small|medium|large")
    meta = read_model_config(base_dir)
    missing = [c for c in ("lm", "encodec", "t5") if c not in meta]
    if missing:
        raise ImgenError(f"config.model.base_dir: {base_dir}: no {', '.join(missing)} component(s) in {CONFIG_NAME}")
    src = os.path.join(base_dir, CONFIG_NAME)
    return (LMConfig.from_dict(meta["lm"], f"{src} [lm]"), EncodecConfig.from_dict(meta["encodec"], f"{src} [encodec]"),
            T5Config.from_dict(meta["t5"], f"{src} [t5]"), f"configs of {base_dir}")


def abstract_base(config: ml_collections.ConfigDict) -> AbstractBase:
    """`step.BaseModels` of abstract weights with the dtypes `step.load_base` gives them."""
    from imgen_jax.models.encodec import abstract_encodec
    from imgen_jax.models.lm import abstract_lm
    from imgen_jax.models.t5 import t5_abstract
    from imgen_jax.train.step import BaseModels

    lm_cfg, ec_cfg, t5_cfg, source = base_configs(config)
    bf16 = config.model.frozen_dtype == "bfloat16"
    dtype, pdt = (jnp.bfloat16, jnp.bfloat16) if bf16 else (jnp.float32, None)
    lm_def, lm_s = nnx.split(abstract_lm(lm_cfg, dtype))
    ec_def, ec_s = nnx.split(abstract_encodec(ec_cfg))
    t5_def, t5_s = nnx.split(t5_abstract(t5_cfg, dtype=dtype, param_dtype=pdt or jnp.float32))
    frozen = {"lm": _cast(nnx.to_pure_dict(lm_s), pdt), "encodec": nnx.to_pure_dict(ec_s), "t5": nnx.to_pure_dict(t5_s)}
    base = BaseModels(lm_def, ec_def, t5_def, frozen, None, lm_cfg, ec_cfg, "")
    return AbstractBase(base, t5_cfg, source)


def abstract_adapters(fcfg) -> tuple[Any, dict]:
    """(adapters graphdef, their parameters as ShapeDtypeStructs): `step.init_params` without the arrays."""
    from imgen_jax.instruct.fusion import init_adapters

    ad_def, ad_s = nnx.split(nnx.eval_shape(lambda: init_adapters(fcfg)))
    return ad_def, nnx.to_pure_dict(ad_s)


# ---- parameter counts ------------------------------------------------------------------------------
FUSION_PARAMS = ("merge_linear", "pos_emb", "gates")  # audio fusion; the rest of the adapters is LoRA


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def count_params(shapes: dict[str, dict[str, Sequence[int]]]) -> dict[str, int]:
    """{component: {flat name: shape}} (lm, t5, encodec, adapters) -> counts: lm, t5, encodec, fusion, lora,
    frozen, trainable, total."""
    out = {k: sum(_size(s) for s in shapes.get(k, {}).values()) for k in ("lm", "t5", "encodec")}
    ad = shapes.get("adapters", {})
    out["fusion"] = sum(_size(s) for n, s in ad.items() if n.split("/")[0] in FUSION_PARAMS)
    out["lora"] = sum(_size(s) for n, s in ad.items() if n.split("/")[0] not in FUSION_PARAMS)
    out["frozen"] = out["lm"] + out["t5"] + out["encodec"]
    out["trainable"] = out["fusion"] + out["lora"]
    out["total"] = out["frozen"] + out["trainable"]
    return out


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"path/to/leaf": shape} of a nested dict of arrays or ShapeDtypeStructs."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(np.shape(v)) for path, v in flat}


def format_counts(c: dict[str, int]) -> list[str]:
    """The parameter-count lines of `imgen plan` / `imgen info`."""

    def m(n: int) -> str:
        return f"{n / 1e6:,.1f}M"

    lines = [f"  frozen:    LM {m(c['lm'])}, T5 {m(c['t5'])}, EnCodec {m(c['encodec'])} (total {m(c['frozen'])})"]
    if c["trainable"]:
        share_lm = c["trainable"] / c["lm"] if c["lm"] else float("nan")
        lines += [
            f"  trainable: audio fusion {m(c['fusion'])}, LoRA {m(c['lora'])} (total {m(c['trainable'])})",
            f"  trainable share: {100 * share_lm:.1f}% of the LM, {100 * c['trainable'] / c['total']:.1f}% of all "
            f"{m(c['total'])} parameters",
        ]
    return lines


def model_dir_counts(model_dir: str) -> dict[str, int]:
    """Parameter counts of a converted model directory, from its safetensors headers (no weight is read)."""
    from safetensors import safe_open

    from imgen_jax.modeldir import read_model_config

    meta = read_model_config(model_dir)
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for comp in ("lm", "t5", "encodec", "adapters"):
        path = os.path.join(model_dir, f"{comp}.safetensors")
        if comp in meta and os.path.isfile(path):
            with safe_open(path, framework="numpy") as f:
                shapes[comp] = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    return count_params(shapes)


# ---- the compiled HLO: FLOPs, HBM bytes and collectives with loop trip counts -------------------------
_DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4, "s64": 8, "u64": 8,
    "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1,
    "f8e4m3fnuz": 1, "f8e5m2fnuz": 1,
}
_SHAPE_RE = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")
# collective-permute too: XLA decomposes an all-gather feeding a matmul into a loop of permutes (windowed einsum)
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional", "call",
               "after-all", "partition-id", "replica-id", "add-dependency", "opt-barrier"}


def _shapes(type_str: str, hbm_only: bool = False) -> list[tuple[str, tuple[int, ...]]]:
    """[(dtype, dims)] of the arrays in an HLO type; with hbm_only, only those in memory space 0 (HBM): a
    layout's S(n), n > 0, places an array in on-chip memory."""
    out = []
    for d, dims, layout in _SHAPE_RE.findall(type_str):
        if d not in _DTYPE_BYTES:
            continue
        if hbm_only and re.search(r"S\([1-9]\d*\)", layout or ""):
            continue
        out.append((d, tuple(int(x) for x in dims.split(",") if x)))
    return out


def _nbytes(type_str: str, hbm_only: bool = False) -> float:
    return float(sum(_DTYPE_BYTES[d] * _size(s) for d, s in _shapes(type_str, hbm_only)))


@dataclasses.dataclass
class _Instr:
    name: str
    type: str
    opcode: str
    args: str            # the text between the opcode's parentheses
    operands: list[str]  # the %names in args
    attrs: str           # everything after the parentheses
    root: bool

    def int_value(self) -> int | None:
        """The value of a scalar integer constant (None for anything else)."""
        if self.opcode != "constant" or not re.fullmatch(r"[su](8|16|32|64)\[\]", self.type.split("{")[0]):
            return None
        m = re.fullmatch(r"\s*(-?\d+)\s*", self.args)
        return int(m.group(1)) if m else None


def _balanced(s: str, i: int) -> int:
    """Index just past the bracket group that opens at s[i]."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = []
    for j in range(i, len(s)):
        c = s[j]
        if c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return j + 1
    return len(s)


_INSTR_RE = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*")


def _parse_instr(line: str) -> _Instr | None:
    m = _INSTR_RE.match(line)
    if m is None:
        return None
    rest = line[m.end():]
    end = _balanced(rest, 0) if rest.startswith("(") else (rest.find(" ") if " " in rest else len(rest))
    type_str, rest = rest[:end], rest[end:].lstrip()
    om = re.match(r"([\w\-]+)\(", rest)
    if om is None:
        return None
    close = _balanced(rest, om.end() - 1)
    args = rest[om.end():close - 1]
    return _Instr(m.group(2), type_str, om.group(1), args, re.findall(r"%([\w.\-]+)", args), rest[close:],
                  bool(m.group(1)))


def parse_hlo(text: str) -> tuple[dict[str, list[_Instr]], str, list[str]]:
    """Optimised HLO text -> ({computation: instructions}, entry name, computation names in text order)."""
    comps: dict[str, list[_Instr]] = {}
    order: list[str] = []
    entry, cur = "", None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace() and line.rstrip().endswith("{"):
            head = line.split("(", 1)[0].split()
            if not head or head[0] in ("HloModule",):
                continue
            cur = head[-1].lstrip("%")
            if head[0] == "ENTRY":
                entry = cur
            comps[cur] = []
            order.append(cur)
        elif line.startswith("}"):
            cur = None
        elif cur is not None:
            ins = _parse_instr(line)
            if ins is not None:
                comps[cur].append(ins)
    return comps, entry, order


def _callees(ins: _Instr) -> list[tuple[str, str]]:
    """[(role, computation)] that an instruction calls."""
    out = []
    for key in ("calls", "to_apply", "body", "condition", "true_computation", "false_computation"):
        for m in re.finditer(rf"\b{key}=%([\w.\-]+)", ins.attrs):
            out.append((key, m.group(1)))
    m = re.search(r"branch_computations=\{([^}]*)\}", ins.attrs)
    if m:
        out += [("branch", n) for n in re.findall(r"%([\w.\-]+)", m.group(1))]
    return out


def _resolve_int(by_name: dict[str, _Instr], name: str | None, depth: int = 0) -> int | None:
    """The value of a scalar integer constant, through copies / bitcasts / converts."""
    i = by_name.get(name or "")
    while i is not None and i.opcode in ("copy", "bitcast", "convert") and i.operands and depth < 8:
        i, depth = by_name.get(i.operands[0]), depth + 1
    return i.int_value() if i is not None else None


def _trip_count(comps: dict[str, list[_Instr]], caller: list[_Instr], loop: _Instr) -> int | None:
    """Iterations of a while loop: its known_trip_count, else from the `counter < N` (or <=, or N > counter)
    compare of its condition, the counter's initial value in the loop's init tuple and its increment in the
    body (XLA's windowed einsums step by 2); None when the bound is not a constant (a runtime trip count)."""
    m = re.search(r'known_trip_count"?\s*:\s*\{\s*"?n"?\s*:\s*"?(\d+)', loop.attrs)
    if m:
        return int(m.group(1))
    roles = dict((r, c) for r, c in _callees(loop))
    seen, todo, instrs = set(), [roles.get("condition")], []
    while todo:  # the compare may sit in a fusion that the condition calls
        c = todo.pop()
        if c is None or c in seen or c not in comps:
            continue
        seen.add(c)
        instrs += comps[c]
        todo += [n for i in comps[c] for _, n in _callees(i)]
    by_name = {i.name: i for i in instrs}
    for i in instrs:
        if i.opcode != "compare" or len(i.operands) != 2:
            continue
        d = re.search(r"direction=(\w+)", i.attrs)
        direction = d.group(1) if d else ""
        a, b = i.operands
        if _resolve_int(by_name, b) is not None and direction in ("LT", "LE", "NE"):
            bound, counter = _resolve_int(by_name, b), by_name.get(a)
        elif _resolve_int(by_name, a) is not None and direction in ("GT", "GE", "NE"):
            bound, counter = _resolve_int(by_name, a), by_name.get(b)
            direction = {"GT": "LT", "GE": "LE"}.get(direction, direction)
        else:
            continue
        init, step = 0, 1
        idx = re.search(r"index=(\d+)", counter.attrs) if counter is not None and counter.opcode == "get-tuple-element" \
            else None
        if idx:
            k = int(idx.group(1))
            by_caller = {j.name: j for j in caller}
            tup = by_caller.get(loop.operands[0]) if loop.operands else None
            if tup is not None and tup.opcode == "tuple" and k < len(tup.operands):
                init = _resolve_int(by_caller, tup.operands[k]) or 0
            body = comps.get(roles.get("body", ""), [])
            by_body = {j.name: j for j in body}
            root = next((j for j in body if j.root), None)
            nxt = by_body.get(root.operands[k]) if root is not None and root.opcode == "tuple" and k < len(root.operands) \
                else None
            if nxt is not None and nxt.opcode == "add" and len(nxt.operands) == 2:
                inc = [_resolve_int(by_body, o) for o in nxt.operands]
                step = next((v for v in inc if v), 1)
        span = bound - init + (1 if direction == "LE" else 0)
        return max(-(-span // max(step, 1)), 0)
    return None


@dataclasses.dataclass
class HloCost:
    """What one run of a compiled program does on one chip (module docstring)."""

    flops: float = 0.0             # dot / convolution FLOPs, loop bodies times their trip counts
    hbm_bytes: float = 0.0         # operand + result bytes of the top-level ops, loops scaled
    ici_bytes: float = 0.0         # ring-algorithm bytes of the collectives, loops scaled
    collective_operand_bytes: float = 0.0
    collectives: dict = dataclasses.field(default_factory=dict)  # op -> [count per run, ring bytes]
    flops_once: float = 0.0        # the same FLOPs with every loop body counted once (as cost_analysis does)
    hbm_bytes_once: float = 0.0    # the same bytes with every loop body counted once
    loops: list = dataclasses.field(default_factory=list)        # trip count of every while loop (None: runtime)


def _dot_flops(ins: _Instr, types: dict[str, str]) -> float:
    """2 x result elements x contracted elements of a dot or a convolution."""
    out = _shapes(ins.type)
    if not out or not ins.operands:
        return 0.0
    n_out = _size(out[0][1])
    if ins.opcode == "dot":
        lhs = _shapes(types.get(ins.operands[0], ""))
        m = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", ins.attrs)
        if not lhs or m is None:
            return 0.0
        return 2.0 * n_out * _size([lhs[0][1][int(d)] for d in m.group(1).split(",") if d])
    return _conv_flops(ins, types)


def _window(attrs: str) -> dict[str, list]:
    """The `window={size=.. stride=.. pad=.. lhs_dilate=.. rhs_dilate=..}` of a convolution, per spatial dim."""
    m = re.search(r"window=\{([^}]*)\}", attrs)
    out: dict[str, list] = {}
    for item in (m.group(1).split() if m else []):
        key, _, val = item.partition("=")
        parts = val.split("x")
        out[key] = [tuple(int(v) for v in p.split("_")) for p in parts] if key == "pad" else \
            [int(v) for v in parts if v.lstrip("-").isdigit()]
    return out


def _valid_taps(in_size: int, out_size: int, win: int, stride: int, pad_lo: int, lhs_dil: int, rhs_dil: int) -> int:
    """(output position, kernel tap) pairs of one spatial dim that read a real (not padding) input element."""
    o = np.arange(out_size)[:, None] * stride
    k = np.arange(win)[None, :] * rhs_dil
    pos = o + k - pad_lo
    valid = (pos >= 0) & (pos <= (in_size - 1) * lhs_dil) & (pos % lhs_dil == 0)
    return int(valid.sum())


def _conv_flops(ins: _Instr, types: dict[str, str]) -> float:
    """2 x (output elements / output spatial size) x kernel input features x the valid (output, tap) pairs of
    every spatial dim: XLA expresses batched contractions as convolutions whose padded windows mostly read
    padding, and those taps do no work."""
    m = re.search(r"dim_labels=([^_\s,]+)_([^-\s,]+)->([^\s,]+)", ins.attrs)
    out = _shapes(ins.type)
    lhs = _shapes(types.get(ins.operands[0], "")) if ins.operands else []
    rhs = _shapes(types.get(ins.operands[1], "")) if len(ins.operands) > 1 else []
    if m is None or not (out and lhs and rhs):
        return 0.0
    ll, rl, ol = m.group(1), m.group(2), m.group(3).rstrip(",")
    lshape, rshape, oshape = lhs[0][1], rhs[0][1], out[0][1]
    if len(ll) != len(lshape) or len(rl) != len(rshape) or len(ol) != len(oshape) or "i" not in rl:
        return 0.0
    w = _window(ins.attrs)
    dims = sorted(int(c) for c in rl if c.isdigit())
    taps, out_spatial = 1, 1
    for n, d in enumerate(dims):
        size = w.get("size", [])
        win = size[n] if n < len(size) else rshape[rl.index(str(d))]
        get = lambda key, default: (w.get(key) or [default] * len(dims))[n] if n < len(w.get(key) or [default] * len(dims)) else default
        pad = get("pad", (0, 0))
        o_size = oshape[ol.index(str(d))]
        taps *= _valid_taps(lshape[ll.index(str(d))], o_size, win, get("stride", 1), pad[0], get("lhs_dilate", 1),
                            get("rhs_dilate", 1))
        out_spatial *= o_size
    return 2.0 * (_size(oshape) / max(out_spatial, 1)) * rshape[rl.index("i")] * taps


def _group_size(ins: _Instr, default: int) -> int:
    """Devices in each replica group of a collective."""
    a = ins.attrs
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", a)
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=\{\{([0-9,]*)\}", a)
    if m:
        return max(len([x for x in m.group(1).split(",") if x]), 1)
    m = re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", a)
    if m:
        sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", m.group(1))}
        names = re.findall(r"'([^']+)'", m.group(2))
        if names:
            return int(np.prod([sizes.get(n, 1) for n in names]))
    return default


_SLICES = ("dynamic-slice", "slice", "gather")


def _param_read(comps: dict[str, list[_Instr]], comp: str, index: int, full: float, depth: int = 0) -> float:
    """Bytes that fused computation `comp` reads of its parameter `index` (an operand of `full` bytes):
    the slices it takes, nothing for an in-place update's buffer, `full` for any other use."""
    body = comps.get(comp, [])
    param = next((i for i in body if i.opcode == "parameter" and i.args.strip() == str(index)), None)
    if param is None or depth > 8:
        return full
    total = 0.0
    for u in body:
        if param.name not in u.operands:
            continue
        if u.opcode in _SLICES and u.operands[0] == param.name:
            total += _nbytes(u.type)
        elif u.opcode == "dynamic-update-slice" and u.operands[0] == param.name:
            continue
        elif u.opcode == "fusion":
            callee = next((c for r, c in _callees(u) if r == "calls"), "")
            total += sum(_param_read(comps, callee, j, full, depth + 1) for j, o in enumerate(u.operands)
                         if o == param.name)
        else:
            return full
    return min(total, full)


def _written(comps: dict[str, list[_Instr]], comp: str, full: float) -> float:
    """Bytes that fused computation `comp` writes of its result (`full` bytes in HBM): only the updates when
    its root is an in-place dynamic-update-slice (or a tuple holding some)."""
    body = comps.get(comp, [])
    root = next((i for i in body if i.root), None)
    if root is None:
        return full
    by_name = {i.name: i for i in body}
    parts = [by_name.get(o) for o in root.operands] if root.opcode == "tuple" else [root]
    if not any(p is not None and p.opcode == "dynamic-update-slice" for p in parts):
        return full
    types = {i.name: i.type for i in body}
    out = sum(_nbytes(types.get(p.operands[1], "")) if p.opcode == "dynamic-update-slice" else _nbytes(p.type)
              for p in parts if p is not None)
    return min(out, full)


def _traffic(ins: _Instr, types: dict[str, str], comps: dict[str, list[_Instr]]) -> float:
    """HBM bytes of one top-level op: its operands and result that live in HBM, counting only what a (fused)
    slice reads of its operand and only the update that an in-place dynamic-update-slice writes."""
    out_b = _nbytes(ins.type, hbm_only=True)
    operand_b = [_nbytes(types.get(o, ""), hbm_only=True) for o in ins.operands]
    if ins.opcode in _SLICES:
        return out_b + (min(_nbytes(ins.type), operand_b[0]) if operand_b else 0.0) + sum(operand_b[1:])
    if ins.opcode == "dynamic-update-slice":
        upd = _nbytes(types.get(ins.operands[1], "")) if len(ins.operands) > 1 else 0.0
        return (upd if out_b else 0.0) + sum(operand_b[1:])
    if ins.opcode == "fusion":
        callee = next((c for r, c in _callees(ins) if r == "calls"), "")
        operand_b = [_param_read(comps, callee, j, b) if b else 0.0 for j, b in enumerate(operand_b)]
        out_b = _written(comps, callee, out_b) if out_b else 0.0
    return out_b + sum(operand_b)


def analyse_hlo(text: str, default_trip: int | None = None, num_partitions: int = 1) -> HloCost:
    """FLOPs, HBM bytes and collective bytes per chip of one run of a compiled program (`compiled.as_text()`).

    Every computation counts as often as it runs: the product of the trip counts of the loops around it.
    A loop whose trip count is a runtime value counts `default_trip` iterations (1 when None)."""
    comps, entry, order = parse_hlo(text)
    mult = {c: 0.0 for c in comps}   # runs per program run
    once = {c: 0.0 for c in comps}   # 1 when reachable (loop bodies once)
    fused: set[str] = set()          # fusion bodies and reducers: their bytes belong to the calling op
    if entry in mult:
        mult[entry] = once[entry] = 1.0
    cost = HloCost()
    for cname in reversed(order):  # HLO text lists callees before their callers: walk from the entry down
        instrs = comps[cname]
        for ins in instrs:
            calls = _callees(ins)
            if not calls:
                continue
            factor = 1.0
            if ins.opcode == "while" and mult[cname] > 0:
                trip = _trip_count(comps, instrs, ins)
                cost.loops.append(trip)
                factor = float(trip if trip is not None else (default_trip or 1))
            for role, callee in calls:
                if callee not in mult:
                    continue
                mult[callee] += mult[cname] * (factor if role in ("body", "condition") else 1.0)
                once[callee] = max(once[callee], once[cname])
                if (ins.opcode == "fusion" and role == "calls") or role == "to_apply":
                    fused.add(callee)
    channels: dict[str, tuple[float, str, float, float]] = {}
    for cname, instrs in comps.items():
        k, k1 = mult[cname], once[cname]
        if k == 0 and k1 == 0:
            continue
        types = {i.name: i.type for i in instrs}
        for ins in instrs:
            if ins.opcode in ("dot", "convolution"):
                f = _dot_flops(ins, types)
                cost.flops += k * f
                cost.flops_once += k1 * f
            op = ins.opcode.removesuffix("-start")
            if op in COLLECTIVES:
                in_b = sum(_nbytes(types.get(o, "")) for o in ins.operands)
                out_b = _nbytes(ins.type)
                if ins.opcode.endswith("-start") and out_b >= in_b:
                    out_b -= in_b  # the start op's result is the (operand, result) pair
                n = _group_size(ins, num_partitions)
                ring = {"all-gather": max(out_b - in_b, 0.0), "reduce-scatter": max(in_b - out_b, 0.0),
                        "all-reduce": 2.0 * in_b * (n - 1) / max(n, 1), "collective-permute": in_b,
                        }.get(op, in_b * (n - 1) / max(n, 1))
                # TPU async collectives appear as several clones (start / body / done) sharing a channel id
                ch = re.search(r"channel_id=(\d+)", ins.attrs)
                key = f"channel {ch.group(1)}" if ch else f"{cname}/{ins.name}"
                if key not in channels or k > channels[key][0]:
                    channels[key] = (k, op, ring, in_b)
            if cname not in fused and ins.opcode not in _NO_TRAFFIC:
                t = _traffic(ins, types, comps)
                cost.hbm_bytes += k * t
                cost.hbm_bytes_once += k1 * t
    for k, op, ring, in_b in channels.values():
        cnt, tot = cost.collectives.get(op, (0.0, 0.0))
        cost.collectives[op] = (cnt + k, tot + k * ring)
        cost.ici_bytes += k * ring
        cost.collective_operand_bytes += k * in_b
    return cost


# ---- hand count ------------------------------------------------------------------------------------
def hand_count_flops(lm_cfg, fcfg, clips: int, frames: int, text_len: int) -> dict[str, float]:
    """Matmul FLOPs of the LM and the audio fusion in one training step of `clips` clips of `frames` frames
    (no rematerialisation; EnCodec and T5 not counted), by the 6ND-style rule: forward 2 x MACs; backward
    1 x forward for a matmul with a frozen weight (the input gradient only), 2 x for one with a trainable
    weight (input and weight gradients) and for the attention products (both operands carry gradients);
    none for the text keys / values of the frozen kv projection (no gradient reaches the text).
    {"forward", "backward", "total"}; also the parts "lm" and "fusion" (forward + backward)."""
    D, F, L, H = lm_cfg.dim, lm_cfg.ffn_dim, lm_cfg.num_layers, lm_cfg.num_heads
    K, card, r, A = lm_cfg.num_codebooks, lm_cfg.card, fcfg.lora_r, fcfg.adapter_layers
    S = frames + 1                     # pattern steps of the teacher-forced sequence (T + 1)
    Tc = frames + 1                    # condition frames with the special frame appended
    Lt = text_len
    # per clip, forward FLOPs by kind: (frozen-weight matmuls, trainable-weight matmuls, attention products)
    lm_frozen = L * S * 2 * (3 * D * D + D * D + D * D + D * D + 2 * D * F)   # in/out proj, cross q/out, MLP
    lm_frozen += sum(2 * max(frames - d, 0) * D * card for d in lm_cfg.delays)  # output heads of the valid frames
    lm_text_kv = L * Lt * 2 * (2 * D * D)                                      # no backward
    lm_train = L * (S * 2 * 2 * D * r + Lt * 2 * 2 * D * r)                    # LoRA q (S rows) and v (text rows)
    lm_attn = L * (2 * 2 * S * S * D + 2 * 2 * S * Tc * D + 2 * 2 * S * Lt * D)  # self, prefix, cross
    fu_frozen = A * Tc * 2 * (3 * D * D + D * D + 2 * D * F)
    fu_train = A * Tc * 2 * D * D                                              # merge_linear
    fu_attn = A * 2 * 2 * Tc * Tc * D
    fwd_lm = lm_frozen + lm_text_kv + lm_train + lm_attn
    fwd_fu = fu_frozen + fu_train + fu_attn
    bwd_lm = lm_frozen + 2 * (lm_train + lm_attn)
    bwd_fu = fu_frozen + 2 * (fu_train + fu_attn)
    del H
    out = {"forward": clips * (fwd_lm + fwd_fu), "backward": clips * (bwd_lm + bwd_fu),
           "lm": clips * (fwd_lm + bwd_lm), "fusion": clips * (fwd_fu + bwd_fu)}
    out["total"] = out["forward"] + out["backward"]
    return {k: float(v) for k, v in out.items()}


# ---- compiling for the topology ----------------------------------------------------------------------
@dataclasses.dataclass
class ProgramPlan:
    """The compiler's figures for one program on one chip, and the roofline built on them."""

    name: str
    mesh: dict
    memory: dict          # arguments, temporaries, outputs, aliased, code, total (bytes per chip)
    cost: HloCost
    xla_cost: dict        # compiled.cost_analysis() (loop bodies once), for reference
    compute_s: float
    memory_s: float
    collectives_s: float
    compile_s: float
    extra: dict = dataclasses.field(default_factory=dict)
    error: str = ""       # the compiler's refusal when the program does not fit HBM

    @property
    def fits(self) -> bool:
        return not self.error

    @property
    def step_s(self) -> float:
        return max(self.compute_s, self.memory_s, self.collectives_s)

    @property
    def bound(self) -> str:
        terms = {"compute": self.compute_s, "memory": self.memory_s, "collectives": self.collectives_s}
        return max(terms, key=terms.get)


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    out = {"arguments": int(m.argument_size_in_bytes), "temporaries": int(m.temp_size_in_bytes),
           "outputs": int(m.output_size_in_bytes), "aliased": int(m.alias_size_in_bytes),
           "code": int(m.generated_code_size_in_bytes)}
    out["total"] = out["arguments"] + out["temporaries"] + out["outputs"] - out["aliased"]
    return out


def _xla_cost(compiled) -> dict:
    c = compiled.cost_analysis()
    if isinstance(c, (list, tuple)):
        c = c[0] if c else {}
    return {k: float(c.get(k, 0.0)) for k in ("flops", "bytes accessed")}


def _compile(lower):
    """(compiled, None), or (None, the compiler's one-line message) when the program does not fit HBM."""
    try:
        return lower(), None
    except Exception as e:  # XlaRuntimeError RESOURCE_EXHAUSTED: the TPU compiler refuses what exceeds HBM
        msg = " ".join(str(e).split())
        if "RESOURCE_EXHAUSTED" in msg or "out of memory" in msg.lower():
            return None, msg[:400]
        raise


def _unfit(name: str, msg: str, mesh_sizes: dict, compile_s: float) -> ProgramPlan:
    """The plan of a program the compiler refused: its memory need as the compiler states it."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    m = re.search(r"([\d.]+)\s*([KMGT])i?B?\b", msg.split("RESOURCE_EXHAUSTED")[-1])
    need = float(m.group(1)) * units[m.group(2)] if m else float("nan")
    return ProgramPlan(name, mesh_sizes, {"total": need}, HloCost(), {}, 0.0, 0.0, 0.0, compile_s, {}, msg)


def _plan_of(name: str, compiled, chip: Chip, mesh_sizes: dict, n_devices: int, compile_s: float,
             default_trip: int | None = None) -> ProgramPlan:
    text = compiled.as_text()
    cost = analyse_hlo(text, default_trip=default_trip, num_partitions=n_devices)
    return ProgramPlan(name, mesh_sizes, _memory(compiled), cost, _xla_cost(compiled),
                       cost.flops / chip.peak_flops, cost.hbm_bytes / chip.hbm_bw, cost.ici_bytes / chip.ici_bw,
                       compile_s, {"hlo": text})


def frames_per_clip(config: ml_collections.ConfigDict, ec_cfg) -> tuple[int, int]:
    """(audio samples, code frames) of one training clip; ImgenError when the rates disagree."""
    from imgen_jax.train.data import num_samples

    if int(config.data.sample_rate) != ec_cfg.sampling_rate:
        raise ImgenError(f"config.data.sample_rate: {config.data.sample_rate} Hz, but the base model's EnCodec runs "
                         f"at {ec_cfg.sampling_rate} Hz")
    n = num_samples(config)
    return n, ec_cfg.num_frames(n)


def plan_train(config: ml_collections.ConfigDict, chip: Chip, devices: list, ab: AbstractBase) -> ProgramPlan:
    """Lower and compile the real train step (`step.make_steps`) for `devices` from abstract arrays."""
    import time

    from imgen_jax.train import mesh as meshlib
    from imgen_jax.train.step import fusion_config, make_optimizer, make_steps, step_options, step_shardings

    base = ab.base
    fcfg = fusion_config(config, base.lm_cfg)
    samples, frames = frames_per_clip(config, base.encodec_cfg)
    if frames + 1 > fcfg.pos_emb_frames:
        raise ImgenError(f"config.data.clip_seconds: {config.data.clip_seconds} s is {frames} frames; the adapters' "
                         f"positional table (model.pos_emb_frames = {fcfg.pos_emb_frames}) covers "
                         f"{fcfg.pos_emb_frames - 1}: set --config.model.pos_emb_frames={frames + 1} (new adapters)")
    mesh = meshlib.make_mesh({a: config.mesh[a] for a in meshlib.AXES}, devices)
    B, accum = int(config.train.batch_size), int(config.train.get("grad_accum", 1))
    div = meshlib.batch_divisor(mesh)
    if B % accum or (B // accum) % div:
        raise ImgenError(f"config.train.batch_size: {B} in {accum} micro-batches (train.grad_accum) does not split "
                         f"over the batch axes (data x fsdp = {div})")
    rules = [tuple(r) for r in config.mesh.rules]
    ad_def, params = abstract_adapters(fcfg)
    optimizer, schedule = make_optimizer(config.train)
    shardings = step_shardings(mesh, rules, ad_def, params, base, optimizer, bool(config.mesh.get("fsdp_frozen", True)))
    steps = make_steps(base, ad_def, optimizer, schedule, step_options(config), shardings)
    L = int(config.data.text_max_length)
    batch = {"input": jax.ShapeDtypeStruct((B, samples), jnp.float32),
             "target": jax.ShapeDtypeStruct((B, samples), jnp.float32),
             "text_ids": jax.ShapeDtypeStruct((B, L), jnp.int32), "text_mask": jax.ShapeDtypeStruct((B, L), jnp.int32)}
    opt_state = jax.eval_shape(optimizer.init, params)
    t0 = time.perf_counter()
    compiled, err = _compile(
        lambda: steps.train.lower(params, opt_state, base.frozen, batch, jax.ShapeDtypeStruct((), jnp.int32)).compile())
    sizes = dict(zip(meshlib.AXES, (int(mesh.shape[a]) for a in meshlib.AXES)))
    if err:
        p = _unfit("train step", err, sizes, time.perf_counter() - t0)
    else:
        p = _plan_of("train step", compiled, chip, sizes, len(devices), time.perf_counter() - t0)
    hand = hand_count_flops(base.lm_cfg, fcfg, B, frames, L)
    p.extra.update(clips=B, grad_accum=accum, frames=frames, hand=hand, fcfg=fcfg,
                   remat=str(config.model.get("remat", "none")), unroll=bool(config.model.get("unroll_layers", False)),
                   frozen_dtype=str(config.model.frozen_dtype),
                   fsdp_frozen=bool(config.mesh.get("fsdp_frozen", True)))
    return p


def decode_mesh_size(num_heads: int, n_devices: int, limit: int = 8) -> int:
    """Chips of the decode program's `tensor` axis: the largest power of two <= min(n_devices, limit)
    that divides the head count."""
    t = 1
    while t * 2 <= min(n_devices, limit) and num_heads % (t * 2) == 0:
        t *= 2
    return t


def _fusion_shardings(fusion, heads, rep, abstract):
    """The abstract decode fusion with its audio prefix q/k/v split over heads, everything else replicated."""
    out = jax.tree.map(lambda x: abstract(x, rep), fusion)
    if fusion.q is not None:
        out = dataclasses.replace(out, q=abstract(fusion.q, heads), k=abstract(fusion.k, heads), v=abstract(fusion.v, heads))
    return out


def plan_decode(config: ml_collections.ConfigDict, chip: Chip, devices: list, ab: AbstractBase, batch: int,
                chips: int | None = None) -> ProgramPlan:
    """Compile the edit decode program (`generate._decode_program`) of the first edit window (pos_emb_frames - 1
    frames, no audio prompt, the edit defaults (`SamplingConfig.for_edit`: CFG 3.0, top-k 100), the adapters as
    the fusion plug-in, as `edit.Editor` runs it) for `batch`
    clips, the LM weights split over a tensor axis of `chips` devices (default `decode_mesh_size`)."""
    import time

    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from imgen_jax.generate import SamplingConfig, _Extras, _run_compiled, _window_args
    from imgen_jax.instruct import decode_fusion
    from imgen_jax.models.lm import abstract_lm
    from imgen_jax.train import mesh as meshlib
    from imgen_jax.train.step import fusion_config

    base = ab.base
    lcfg = base.lm_cfg
    fcfg = fusion_config(config, lcfg)
    t = chips or decode_mesh_size(lcfg.num_heads, len(devices))
    mesh = Mesh(np.asarray(devices[:t], dtype=object).reshape(1, 1, t), meshlib.AXES)
    lm_abs = abstract_lm(lcfg, jnp.bfloat16 if config.model.frozen_dtype == "bfloat16" else jnp.float32)
    n = fcfg.pos_emb_frames - 1  # one edit window: the adapters' positional table
    ad_def, ad_params = abstract_adapters(fcfg)
    cond = jax.ShapeDtypeStruct((batch, lcfg.num_codebooks, n), jnp.int32)

    def fusion_of(lm_state, ad_state, c):
        return decode_fusion(nnx.merge(base.lm_def, lm_state), nnx.merge(ad_def, ad_state), c, num_frames=n)

    fusion = jax.eval_shape(fusion_of, base.frozen["lm"], ad_params, cond)
    sampling = SamplingConfig.for_edit(num_frames=n)  # what the editor decodes: CFG 3.0, top-k 100
    L = int(config.data.text_max_length)
    memory = np.zeros((batch, L, lcfg.dim), np.float32)
    args, static, S = _window_args(lm_abs, memory, None, sampling, n, None, jax.random.PRNGKey(0),
                                   _Extras(fusion, False), False, False)
    rules = [tuple(r) for r in config.mesh.rules]
    state = base.frozen["lm"]
    rep = NamedSharding(mesh, P())
    heads = NamedSharding(mesh, P(None, None, None, "tensor")) if lcfg.num_heads % t == 0 else rep

    def abstract(x, sharding):
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    mem_dtype = jnp.bfloat16 if config.model.frozen_dtype == "bfloat16" else jnp.float32
    abs_args = (
        args[0],
        jax.tree.map(abstract, state, meshlib.tree_shardings(state, meshlib.logical_specs(base.lm_def, state, "lm"), mesh, rules)),
        jax.ShapeDtypeStruct(memory.shape, mem_dtype, sharding=rep),
        None,
        *(jax.tree.map(lambda x: abstract(x, rep), a) for a in args[4:8]),
        _fusion_shardings(fusion, heads, rep, abstract),
        abstract(args[9], rep),
    )
    t0 = time.perf_counter()
    compiled, err = _compile(lambda: _run_compiled(abs_args, static, lower_only=True))
    steps = S - static.prompt_steps - 1  # iterations of the decode loop (prefill and the last pick outside)
    name, sizes = f"edit decode, batch {batch}", {"data": 1, "fsdp": 1, "tensor": t}
    if err:
        p = _unfit(name, err, sizes, time.perf_counter() - t0)
    else:
        p = _plan_of(name, compiled, chip, sizes, t, time.perf_counter() - t0, default_trip=steps)
    p.extra.update(batch=batch, frames=n, steps=S, seconds=n / base.encodec_cfg.frame_rate, chips=t, loop_steps=steps)
    return p


# ---- the report --------------------------------------------------------------------------------------
def _gib(b: float) -> str:
    return f"{b / GIB:.2f} GiB"


def _ms(s: float) -> str:
    return f"{1e3 * s:,.1f} ms" if s >= 1e-3 or s == 0 else f"{1e6 * s:,.1f} us"


def _flop(f: float) -> str:
    return f"{f / 1e12:,.3f} TFLOP" if f >= 1e11 else f"{f / 1e9:,.3f} GFLOP"


def _gb(b: float) -> str:
    return f"{b / 1e9:,.2f} GB" if b >= 1e8 else f"{b / 1e6:,.2f} MB"


def format_program(p: ProgramPlan, chip: Chip) -> list[str]:
    """The lines of one compiled program: the compiler's memory, the per-chip work and the roofline terms."""
    m, c = p.memory, p.cost
    mesh = " x ".join(f"{k}={v}" for k, v in p.mesh.items())
    head = f"{p.name} (compiled in {p.compile_s:.0f} s; mesh {mesh})"
    if not p.fits:
        return [head, f"  DOES NOT FIT: the TPU compiler needs {_gib(m['total'])} per chip of {_gib(chip.hbm_bytes)} HBM "
                      f"({p.error})"]
    lines = [head,
             f"  compiler memory per chip: arguments {_gib(m['arguments'])} + temporaries {_gib(m['temporaries'])} "
             f"+ outputs {_gib(m['outputs'])} - aliased {_gib(m['aliased'])} = {_gib(m['total'])} of "
             f"{_gib(chip.hbm_bytes)} HBM ({100 * m['total'] / chip.hbm_bytes:.0f}%, headroom "
             f"{100 * (1 - m['total'] / chip.hbm_bytes):.0f}%; code {m['code'] / 2**20:.1f} MiB)"]
    trips = sorted({t for t in c.loops if t is not None})
    runtime = sum(1 for t in c.loops if t is None)
    lines.append(f"  while loops: {len(c.loops)}, trip counts {trips}"
                 + (f"; {runtime} with a runtime bound, counted as {p.extra.get('loop_steps')} decoding steps"
                    if runtime else ""))
    coll = ", ".join(f"{op} x{cnt:,.0f} {_gb(tot)}" for op, (cnt, tot) in sorted(c.collectives.items()))
    lines += [
        f"  per-chip work of one run, each loop body times its trip count (XLA's cost_analysis, which counts each "
        f"body once: {_flop(p.xla_cost.get('flops', 0))}, {_gb(p.xla_cost.get('bytes accessed', 0))}):",
        f"    matmul FLOPs {_flop(c.flops)} (bodies once: {_flop(c.flops_once)}); HBM bytes {_gb(c.hbm_bytes)} "
        f"(bodies once: {_gb(c.hbm_bytes_once)})",
        f"    collectives: {_gb(c.ici_bytes)} ring bytes ({_gb(c.collective_operand_bytes)} operand "
        f"bytes){': ' + coll if coll else ''}",
        f"  roofline terms: compute {_ms(p.compute_s)} (FLOPs / {chip.peak_flops / 1e12:.0f} TFLOP/s), memory "
        f"{_ms(p.memory_s)} (HBM bytes / {chip.hbm_bw / 1e9:.0f} GB/s), collectives {_ms(p.collectives_s)} "
        f"(ring bytes / {chip.ici_bw / 1e9:.0f} GB/s) -> {_ms(p.step_s)}, {p.bound}-bound",
    ]
    return lines


def format_report(config: ml_collections.ConfigDict, topology: str, chip: Chip, n_devices: int, ab: AbstractBase,
                  train: ProgramPlan, decodes: Sequence[ProgramPlan]) -> str:
    """The `imgen plan` report; its last line is `peak_gib_per_chip: X` (the train step, the compiler's figure)."""
    x = train.extra
    fcfg = x["fcfg"]
    _, params = abstract_adapters(fcfg)
    counts = count_params({k: _flat_shapes(v) for k, v in ab.base.frozen.items()} | {"adapters": _flat_shapes(params)})
    lines = [
        f"imgen plan: {topology} = {n_devices} x {chip.name} ({_gib(chip.hbm_bytes)} HBM, "
        f"{chip.peak_flops / 1e12:.0f} TFLOP/s bf16, HBM {chip.hbm_bw / 1e9:.0f} GB/s, ICI {chip.ici_bw / 1e9:.0f} GB/s "
        f"one way); base: {ab.source}",
        "memory: the TPU compiler's (compiled.memory_analysis()); times: a roofline estimate from the compiled "
        "program, not a measured speed",
        "parameters:",
        *format_counts(counts),
        f"training: {x['clips']} clips of {float(config.data.clip_seconds):g} s ({x['frames']} frames) per update in "
        f"{x['grad_accum']} micro-batch(es); frozen weights {x['frozen_dtype']}"
        f"{'' if x['fsdp_frozen'] else ' (not split over fsdp)'}, adapters and AdamW float32; remat {x['remat']}"
        f"{'; layers unrolled' if x['unroll'] else ''}; "
        f"fusion on {fcfg.adapter_layers} layers, LoRA r {fcfg.lora_r}",
        *format_program(train, chip),
    ]
    hand = x["hand"]
    if train.fits:
        ratio = train.cost.flops * n_devices / hand["total"] if hand["total"] else float("nan")
        lines.append(
            f"  hand count, LM + fusion matmuls without remat: {hand['total'] / 1e12 / n_devices:.3f} TFLOP per chip "
            f"(LM {hand['lm'] / 1e12 / n_devices:.3f}, fusion {hand['fusion'] / 1e12 / n_devices:.3f}); compiled / "
            f"hand = {ratio:.2f} (the rest: EnCodec, T5{', rematerialisation' if x['remat'] != 'none' else ''}); "
            "the compute term uses the compiled count")
        clips_s = x["clips"] / train.step_s if train.step_s > 0 else float("inf")
        mfu = hand["total"] / (train.step_s * chip.peak_flops * n_devices) if train.step_s > 0 else 0.0
        coll = train.collectives_s / train.compute_s if train.compute_s else float("inf")
        hbm = train.memory_s / train.compute_s if train.compute_s else float("inf")
        lines.append(f"  roofline estimate: {_ms(train.step_s)} per update, {clips_s:,.1f} clips/s, MFU {100 * mfu:.0f}% "
                     f"(hand-count FLOPs over the roofline time at peak: an upper bound); collectives / compute "
                     f"{100 * coll:.0f}%, "
                     f"HBM / compute {100 * hbm:.0f}%")
    for d in decodes:
        lines += format_program(d, chip)
        e = d.extra
        if d.fits:
            lines.append(f"  roofline estimate: one {e['seconds']:g} s edit window ({e['frames']} frames, {e['steps']} "
                         f"pattern steps) of {e['batch']} clip(s) with CFG in {d.step_s:.2f} s, "
                         f"{_ms(d.step_s / max(e['steps'], 1))} per step, on {e['chips']} chip(s)")
    lines.append(f"peak_gib_per_chip: {train.memory['total'] / GIB:.2f}")
    return "\n".join(lines)


def plan(config: ml_collections.ConfigDict, topology: str, decode_batches: Sequence[int] = (1, 8)) -> str:
    """The whole `imgen plan` report (module docstring); its last line is `peak_gib_per_chip: X` (train step)."""
    from imgen_jax.train.config import DTYPES, REMAT

    for field, ok, want in (("model.remat", config.model.get("remat", "none") in REMAT, REMAT),
                            ("model.frozen_dtype", config.model.frozen_dtype in DTYPES, DTYPES),
                            ("train.grad_accum", int(config.train.get("grad_accum", 1)) >= 1, ">= 1")):
        if not ok:
            sec, key = field.split(".")
            raise ImgenError(f"config.{field}: {config[sec].get(key)!r} must be {want}")
    chip, devices = tpu_devices(topology)
    ab = abstract_base(config)
    train = plan_train(config, chip, devices, ab)
    decodes = [plan_decode(config, chip, devices, ab, b) for b in decode_batches]
    return format_report(config, topology, chip, len(devices), ab, train, decodes)


__all__ = [
    "CHIPS", "Chip", "parse_topology", "tpu_devices", "base_configs", "abstract_base", "count_params",
    "format_counts", "model_dir_counts", "analyse_hlo", "HloCost", "hand_count_flops", "plan_train", "plan_decode",
    "decode_mesh_size", "format_report", "plan",
]
