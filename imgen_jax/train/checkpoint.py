"""Checkpoints with orbax's CheckpointManager: the trainable adapter parameters, the optimizer state,
the step, the data iterators' states (JSON) and the config (JSON).

Each save is atomic (orbax writes a temporary directory and renames it when complete; an interrupted
save leaves no step directory) and synchronous (a run killed right after `save` returned has the
checkpoint on disk); the manager keeps the `keep` most recent steps.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from imgen_jax.errors import ImgenError


class Checkpointer:
    """Save / restore training state under `directory` (one sub-directory per step)."""

    def __init__(self, directory: str, keep: int):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=int(keep), create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, data_state: dict, config: dict) -> None:
        state = {"params": params, "opt_state": opt_state, "step": step}
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), config=ocp.args.JsonSave(config),
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


__all__ = ["Checkpointer"]
