"""Device mesh, multi-host start-up, sharding rules for parameters and batches, global batches.

Mesh axes `data`, `fsdp`, `tensor` (sizes from the config; one may be -1 = the remaining devices).

Parameters (frozen base and trainable adapters alike; the optimizer state follows the adapters):
1. every dimension gets a logical name from the parameter's path (`logical_axes`: `layers` for the
   stacked-layer axis, `heads` / `mlp` / `vocab` / `embed` for the LM's projections);
2. the config's rules map logical names to mesh axes (default: heads, mlp and vocab over `tensor`:
   Megatron-style column / row splits of the attention and MLP projections and of the output heads);
3. FSDP: the largest remaining dimension divisible by the `fsdp` size (never the stacked-layer axis,
   which the layer scan walks) is split over `fsdp`.
A dimension is only split when the mesh axis size divides it; otherwise it stays replicated.

Batches: the leading (batch) dimension over (`data`, `fsdp`). Each host reads its own shard of the
global batch (shard_index = process_index) and `global_batch` assembles the global arrays with
`jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from imgen_jax.errors import ImgenError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# path regex (on "component/param/path") -> logical names of the trailing dims (leading "layers" added
# automatically for stacked layers)
_LOGICAL = (
    (r"^lm/layers/(self_attn/in_proj|cross_attn/q_proj|cross_attn/kv_proj)/kernel$", ("embed", "heads")),
    (r"^lm/layers/(self_attn|cross_attn)/out_proj/kernel$", ("heads", "embed")),
    (r"^lm/layers/linear1/kernel$", ("embed", "mlp")),
    (r"^lm/layers/linear2/kernel$", ("mlp", "embed")),
    (r"^lm/heads$", (None, "embed", "vocab")),
    (r"^lm/emb$", (None, None, "embed")),
    (r"^t5/layers/attn/(q|k|v)/kernel$", ("embed", "heads")),
    (r"^t5/layers/attn/o/kernel$", ("heads", "embed")),
    (r"^t5/layers/ff/(wi|wi_0|wi_1)/kernel$", ("embed", "mlp")),
    (r"^t5/layers/ff/wo/kernel$", ("mlp", "embed")),
)
_STACKED = re.compile(r"^(lm|t5)/layers/|^adapters/(lora_q|lora_v)/|^adapters/(merge_linear|gates)$")


def maybe_initialize_distributed(distributed: bool) -> None:
    """`jax.distributed.initialize()` for multi-host runs (coordinator, process count and id from the
    environment: SLURM, TPU pods, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)."""
    if not distributed:
        return
    try:
        jax.distributed.initialize()
    except Exception as e:  # the environment does not describe a cluster
        raise ImgenError(f"config.mesh.distributed: jax.distributed.initialize() failed ({str(e).splitlines()[0][:160]})") from None


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes with a -1 resolved; ImgenError unless their product is num_devices."""
    vals = [int(sizes[a]) for a in AXES]
    if vals.count(-1) > 1:
        raise ImgenError(f"config.mesh: at most one axis may be -1, got {dict(zip(AXES, vals))}")
    known = int(np.prod([v for v in vals if v != -1]))
    if -1 in vals:
        if num_devices % known:
            raise ImgenError(f"config.mesh: {dict(zip(AXES, vals))} does not divide the {num_devices} devices")
        vals[vals.index(-1)] = num_devices // known
    if int(np.prod(vals)) != num_devices:
        raise ImgenError(f"config.mesh: {dict(zip(AXES, vals))} needs {int(np.prod(vals))} devices, there are {num_devices}")
    return tuple(vals)  # type: ignore[return-value]


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh over `devices` (default: all) with axes (data, fsdp, tensor)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(sizes, len(devices))
    try:
        from jax.experimental import mesh_utils

        arr = mesh_utils.create_device_mesh(shape, devices=devices)
    except Exception:  # e.g. host-emulated devices without a physical topology
        arr = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(arr, AXES)


def logical_axes(name: str, shape: Sequence[int]) -> tuple[str | None, ...]:
    """Logical name of every dimension of the parameter `name` ("component/path") of `shape`."""
    nd = len(shape)
    stacked = bool(_STACKED.search(name)) and nd >= 1
    tail: tuple[str | None, ...] = ()
    for rx, names in _LOGICAL:
        if re.search(rx, name):
            tail = names
            break
    lead = ("layers",) if stacked else ()
    body = nd - len(lead)
    tail = tail[-body:] if body and len(tail) >= body else (None,) * (body - len(tail)) + tail
    if body == 0:
        tail = ()
    return lead + tuple(tail)


def param_spec(name: str, shape: Sequence[int], mesh: Mesh, rules: Sequence[Sequence[Any]]) -> P:
    """PartitionSpec of one parameter (module docstring: logical rules, then FSDP on the largest free dim)."""
    rule = {r[0]: r[1] for r in rules}
    logical = logical_axes(name, shape)
    spec: list[str | None] = [None] * len(shape)
    used: set[str] = set()
    for i, (dim, lname) in enumerate(zip(shape, logical)):
        axis = rule.get(lname) if lname is not None else None
        if axis is not None and axis not in used and mesh.shape[axis] > 1 and dim % mesh.shape[axis] == 0:
            spec[i] = axis
            used.add(axis)
    f = mesh.shape["fsdp"]
    if f > 1 and "fsdp" not in used:
        free = [i for i, (d, l) in enumerate(zip(shape, logical)) if spec[i] is None and l != "layers" and d % f == 0]
        if free:
            spec[max(free, key=lambda i: (shape[i], -i))] = "fsdp"
    return P(*spec)


def _name(prefix: str, path) -> str:
    parts = [prefix] if prefix else []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
    return "/".join(parts)


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[Sequence[Any]], prefix: str = "") -> Any:
    """NamedSharding for every array leaf of `tree` (a pure dict of a module's state), named
    `prefix/path` for the rules."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: NamedSharding(mesh, param_spec(_name(prefix, p), np.shape(x), mesh, rules)), tree
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over (data, fsdp); the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def batch_divisor(mesh: Mesh) -> int:
    return int(mesh.shape["data"] * mesh.shape["fsdp"])


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, global_size: int) -> dict[str, jax.Array]:
    """This host's rows {name: [b, ...]} -> global arrays [global_size, ...] sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    out = {}
    for k, v in local.items():
        v = np.asarray(v)
        out[k] = jax.make_array_from_process_local_data(sharding, v, (global_size,) + v.shape[1:])
    return out


__all__ = [
    "AXES", "maybe_initialize_distributed", "mesh_shape", "make_mesh", "logical_axes", "param_spec",
    "tree_shardings", "replicated", "batch_sharding", "batch_divisor", "global_batch",
]
