"""Device mesh, multi-host start-up, sharding rules for parameters and batches, global batches.

Mesh axes `data`, `fsdp`, `tensor` (sizes from the config; one may be -1 = the remaining devices).

Parameters (frozen base and trainable adapters alike; the optimizer state follows the adapters):
1. every dimension has a logical name, carried by the parameter itself (NNX variable metadata set where
   it is created, imgen_jax.axes; `logical_specs` reads them back, and a parameter without names is an
   error, never a silent plain FSDP): `layers` for the stacked-layer axis, `heads` / `mlp` / `vocab` /
   `embed` for the projections; `fused_heads` for the fused q/k/v and k/v projections, whose column split
   would cut across heads, so no default rule maps it;
2. the config's rules map logical names to mesh axes (default: heads, mlp and vocab over `tensor`:
   Megatron-style column / row splits of the attention and MLP projections and of the output heads);
3. FSDP: the largest remaining dimension divisible by the `fsdp` size (never the stacked-layer axis,
   which the layer scan walks) is split over `fsdp`.
A dimension is only split when the mesh axis size divides it; otherwise it stays replicated.

Batches: the leading (batch) dimension over (`data`, `fsdp`). Each host reads its own shard of the
global batch (shard_index = process_index) and `global_batch` assembles the global arrays with
`jax.make_array_from_process_local_data`. Inside the train step the activations between the frozen
encoders and the LM and every micro-batch are constrained to the same batch split (`step.make_steps`).
"""

from __future__ import annotations

import os
import re
import sys
import threading
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx, traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from imgen_jax.axes import LAYERS
from imgen_jax.errors import ImgenError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

_ENV = {"coordinator": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}


def distributed_settings(mesh_cfg: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The arguments of `jax.distributed.initialize` for the config's `mesh` section.

    coordinator / num_processes / process_id: the config field when set (`mesh.coordinator` != "",
    `mesh.num_processes` > 0, `mesh.process_id` >= 0), else the environment variable
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, else None (JAX's cluster
    auto-detection: SLURM, Open MPI, TPU pods). The timeouts come from `mesh.init_timeout` and
    `mesh.heartbeat_timeout` (seconds). ImgenError naming the field (or variable) when a value is wrong."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    src: dict[str, str] = {}
    unset = {"coordinator": "", "num_processes": 0, "process_id": -1}
    for key, var in _ENV.items():
        val = mesh_cfg.get(key, unset[key])
        where = f"config.mesh.{key}"
        if val == unset[key] or val is None:
            val, where = environ.get(var) or None, var
        if val is not None and key != "coordinator":
            try:
                val = int(val)
            except (TypeError, ValueError):
                raise ImgenError(f"{where}: {val!r} is not an integer") from None
        out[key], src[key] = val, where
        if key == "coordinator" and val is not None and not re.fullmatch(r"\[?[\w.:-]+\]?:\d+", str(val)):
            raise ImgenError(f"{where}: {val!r} is not HOST:PORT (e.g. 10.0.0.1:1234, process 0's address)")
    n, i = out["num_processes"], out["process_id"]
    if n is not None and n < 1:
        raise ImgenError(f"{src['num_processes']}: {n} must be >= 1")
    if i is not None and n is not None and not 0 <= i < n:
        raise ImgenError(f"{src['process_id']}: {i} must be in 0..{n - 1} (num_processes = {n})")
    for key in ("init_timeout", "heartbeat_timeout"):
        val = mesh_cfg.get(key, 300 if key == "init_timeout" else 100)
        if int(val) < 1:
            raise ImgenError(f"config.mesh.{key}: {val} must be >= 1 (seconds)")
        out[key] = int(val)
    return out


def maybe_initialize_distributed(mesh_cfg: Mapping[str, Any]) -> None:
    """`jax.distributed.initialize()` for multi-host runs when `mesh.distributed` is True (settings:
    `distributed_settings`); must run before anything touches a JAX device. Nothing when False or when
    the distributed system is already up.

    Failure modes, all bounded in time: a process that cannot reach the coordinator within
    `mesh.init_timeout` seconds aborts; once running, a process that stops sending heartbeats (killed,
    machine lost) is declared dead after `mesh.heartbeat_timeout` seconds and JAX then terminates every
    other process (exit status 134, stderr: "Terminating process because the JAX distributed service
    detected fatal errors. This most likely indicates that another task died"); a process that dies
    holding the coordinator (process 0) ends the others at once. Restart the whole job (every
    process) to resume from the last complete checkpoint. A finishing process waits at most
    `mesh.heartbeat_timeout` seconds for the others at shutdown."""
    if not mesh_cfg.get("distributed", False) or jax.distributed.is_initialized():
        return
    s = distributed_settings(mesh_cfg)
    if s["coordinator"] is not None and s["num_processes"] is not None and s["process_id"] is not None:
        print(f"jax.distributed: process {s['process_id']} of {s['num_processes']}, coordinator {s['coordinator']} "
              f"(waiting up to {s['init_timeout']} s for every process)", file=sys.stderr, flush=True)
    try:
        jax.distributed.initialize(
            coordinator_address=s["coordinator"], num_processes=s["num_processes"], process_id=s["process_id"],
            initialization_timeout=s["init_timeout"], heartbeat_timeout_seconds=s["heartbeat_timeout"],
            shutdown_timeout_seconds=s["heartbeat_timeout"],
        )
    except Exception as e:  # e.g. the environment does not describe a cluster, or JAX was already in use
        raise ImgenError(
            f"config.mesh.distributed: jax.distributed.initialize() failed ({str(e).splitlines()[0][:160]}); set "
            "config.mesh.coordinator / num_processes / process_id or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / "
            "JAX_PROCESS_ID"
        ) from None


def wait_for_all_processes(name: str, timeout_s: int) -> None:
    """Block until every process has reached this point (the barrier `name`), at most `timeout_s` seconds;
    ImgenError naming `name` after that, or when a process was lost on the way. Nothing in a
    single-process run.

    The barrier is the coordination service's, not a device collective: on CPU the first gloo collective
    of a set of devices fails when a peer arrives more than 30 s later (gloo context set-up; the timeout is
    not configurable through JAX), which a process that compiles a step while another found it in the
    persistent compilation cache easily does; this barrier has no such limit. It is JAX's public
    `jax.experimental.multihost_utils.live_devices` (a context manager whose exit waits for every live
    process: JAX documents it as under development), run in a thread so that `timeout_s` bounds the wait.
    Processes started without `jax.distributed` fall back to the device barrier (`sync_global_devices`)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    if not jax.distributed.is_initialized():
        multihost_utils.sync_global_devices(name)
        return
    devices = jax.devices()
    out: dict[str, Any] = {}

    def barrier() -> None:
        try:
            with multihost_utils.live_devices(devices) as live:
                out["live"] = list(live)
        except Exception as e:  # a process failed while the others waited
            out["error"] = e

    thread = threading.Thread(target=barrier, name=f"barrier {name}", daemon=True)
    thread.start()
    thread.join(int(timeout_s))
    if thread.is_alive():
        raise ImgenError(f"barrier {name}: not every process arrived within {int(timeout_s)} s (config.mesh.init_timeout)")
    if "error" in out or len(out.get("live", ())) != len(devices):
        why = f"{type(out['error']).__name__}: {out['error']}" if "error" in out else "processes were lost"
        raise ImgenError(f"barrier {name}: {why[:200]}")


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


def logical_specs(graphdef: Any, tree: Any, where: str) -> Any:
    """The logical axis names of every parameter of a module, read from its variable metadata
    (`out_sharding`, set where the parameter is created: imgen_jax.axes).

    graphdef: the module's graphdef (nnx.split); tree: its state as a pure dict (nnx.to_pure_dict; arrays
    or ShapeDtypeStructs). Returns a dict of the same structure whose leaves are PartitionSpecs of logical
    names, one per dimension. ValueError naming `where/path` for a variable without names, or with a
    different count of names than dimensions: no parameter silently falls back to plain FSDP."""
    state = nnx.state(nnx.merge(graphdef, tree))
    out = {}
    for path, var in nnx.to_flat_state(state):
        shape = tuple(np.shape(var.get_value()))
        names = var.get_metadata().get("out_sharding")
        name = param_name(path, where)
        if names is None or (not names and shape):
            raise ValueError(f"{name} {list(shape)}: no logical axis names in its metadata (create it with "
                             "imgen_jax.axes.param / metadata, and stacked layers under transform_metadata=STACKED)")
        if len(names) != len(shape):
            raise ValueError(f"{name} {list(shape)}: {len(names)} logical axis names {tuple(names)} for {len(shape)} dimensions")
        out[tuple(path)] = P(*names)
    return traverse_util.unflatten_dict(out)


def param_spec(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Sequence[Sequence[Any]],
               fsdp: bool = True) -> P:
    """PartitionSpec of one parameter of `shape` whose dimensions have the logical names `logical` (module
    docstring: logical rules, then FSDP on the largest free dim unless `fsdp` is False)."""
    if len(logical) != len(shape):
        raise ValueError(f"logical axes {tuple(logical)} do not fit a parameter of shape {tuple(shape)}")
    rule = {r[0]: r[1] for r in rules}
    spec: list[str | None] = [None] * len(shape)
    used: set[str] = set()
    for i, (dim, lname) in enumerate(zip(shape, logical)):
        axis = rule.get(lname) if lname is not None else None
        if axis is not None and axis not in used and mesh.shape[axis] > 1 and dim % mesh.shape[axis] == 0:
            spec[i] = axis
            used.add(axis)
    f = mesh.shape["fsdp"]
    if fsdp and f > 1 and "fsdp" not in used:
        free = [i for i, (d, l) in enumerate(zip(shape, logical)) if spec[i] is None and l != LAYERS and d % f == 0]
        if free:
            spec[max(free, key=lambda i: (shape[i], -i))] = "fsdp"
    return P(*spec)


def param_name(path: Sequence[Any], prefix: str = "") -> str:
    """"prefix/a/b/0" of a pytree key path (or a tuple of keys), as parameters are named in messages and
    in the summary's shardings."""
    parts = [prefix] if prefix else []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))))
    return "/".join(parts)


def tree_shardings(tree: Any, logical: Any, mesh: Mesh, rules: Sequence[Sequence[Any]], fsdp: bool = True) -> Any:
    """NamedSharding for every array leaf of `tree` (a pure dict of a module's state) from the logical names
    in `logical` (the matching tree of `logical_specs`); `fsdp` False: no FSDP split (the logical rules only)."""
    return jax.tree.map(lambda names, x: NamedSharding(mesh, param_spec(tuple(names), np.shape(x), mesh, rules, fsdp)),
                        logical, tree)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put_global(tree: Any, shardings: Any) -> Any:
    """Place a tree of values that every process holds identically (numpy or single-device arrays: the
    frozen weights read from the same files, adapters initialised from the same seed) onto `shardings`
    (a matching tree of NamedShardings). Each process copies only the shards of its own devices, from
    host memory: no cross-process comparison or gather (which `jax.device_put` does for every leaf in a
    multi-process run) and no per-shape slicing programs to compile."""

    def put(x, sharding):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)


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
    "AXES", "distributed_settings", "maybe_initialize_distributed", "wait_for_all_processes", "mesh_shape",
    "make_mesh", "logical_specs", "param_spec", "param_name",
    "tree_shardings", "put_global", "replicated", "batch_sharding", "batch_divisor", "global_batch",
]
