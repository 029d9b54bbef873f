"""Metrics to stdout, `metrics.jsonl` (one JSON object per record) and TensorBoard (tensorboardX).

Only process 0 writes. On resume the JSONL file is cut back to the records of the steps the restored
checkpoint covers, so a resumed run's file equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os

import jax

from imgen_jax.files import atomic_file


class MetricsLogger:
    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.writer = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(logdir=os.path.join(workdir, "tb"))

    def truncate_after(self, step: int) -> None:
        """Drop the records of steps > `step` (atomically rewriting metrics.jsonl)."""
        if not self.enabled or not os.path.isfile(self.path):
            return
        keep = []
        with open(self.path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
                if int(rec.get("step", -1)) <= step:
                    keep.append(json.dumps(rec, sort_keys=True))
        with atomic_file(self.path, ".jsonl") as tmp:
            with open(tmp, "w") as f:
                f.write("".join(k + "\n" for k in keep))

    def log(self, step: int, kind: str, metrics: dict, echo: bool = True, printer=print) -> None:
        """One record {"step", "kind", **metrics} (floats as written by Python: exact for float32)."""
        if not self.enabled:
            return
        rec = {"step": int(step), "kind": kind, **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
        for k, v in metrics.items():
            v = float(v)
            if math.isfinite(v):
                self.writer.add_scalar(f"{kind}/{k}", v, step)
        if echo:
            body = " ".join(f"{k} {float(v):.4g}" for k, v in metrics.items())
            printer(f"step {step} {kind}: {body}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


__all__ = ["MetricsLogger"]
