"""Checkpoints with orbax's CheckpointManager: the trainable adapter parameters, the optimizer state,
the step, the data iterators' states (JSON) and the config (JSON).

Each save is atomic (orbax writes a temporary directory `STEP.orbax-checkpoint-tmp-*` and renames it to
`STEP` when complete; an interrupted save leaves no step directory, and the leftover temporary
directory is ignored by `latest_step` and deleted when the next run opens the manager) and synchronous
(a run killed right after `save` returned has the checkpoint on disk); the manager keeps the `keep`
most recent steps.

Multi-process runs: every process calls `save` / `restore` (orbax writes each process's shards of the
arrays and synchronises the processes; process 0 writes the JSON items). The data state is
per-process (each host reads its own shard), so `save` gathers every process's data-state dict and the
checkpoint holds their union ({"train_0": ..., "train_1": ...}).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from imgen_jax.errors import ImgenError


def allgather_json(obj: Any) -> list[Any]:
    """[obj of process 0, obj of process 1, ...] for a JSON-able `obj` (every process must call it);
    [obj] in a single-process run."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int32))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(bytes(rows[i, : int(n)]).decode()) for i, n in enumerate(sizes)]


class Checkpointer:
    """Save / restore training state under `directory` (one sub-directory per step)."""

    def __init__(self, directory: str, keep: int):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=int(keep), create=True, enable_async_checkpointing=False,
                                               cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, data_state: dict, config: dict) -> None:
        """Save step `step`; `data_state` is this process's {name: JSON state} (names distinct per process),
        merged with the other processes' (every process must call `save`)."""
        state = {"params": params, "opt_state": opt_state, "step": step}
        merged: dict = {}
        for part in allgather_json(data_state):
            merged.update(part)
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(merged), config=ocp.args.JsonSave(config),
        ), force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, params: Any, opt_state: Any) -> tuple[Any, Any, int, dict, dict]:
        """(params, opt_state, step, data_state, config) of checkpoint `step`; `params` / `opt_state` are
        templates (arrays or jax.ShapeDtypeStruct with shardings) giving structure, dtypes and shardings."""
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            {"params": params, "opt_state": opt_state},
        )
        abstract["step"] = 0
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore(),
            ))
        except (ValueError, KeyError, TypeError) as e:
            raise ImgenError(f"{self.directory}/{step}: checkpoint does not fit this run's model / config "
                             f"({str(e).splitlines()[0][:160]})") from None
        st = out["state"]
        return st["params"], st["opt_state"], int(st["step"]), dict(out["data"]), dict(out["config"])

    def close(self) -> None:
        self.manager.close()


__all__ = ["Checkpointer", "allgather_json"]
