"""The metric registry of `imgen eval`: one file per metric in this folder, found by name.

A metric file builds one `Metric` (name, direction, compute, and when it applies) and passes it to
`register`; every module of this package whose name does not start with "_" is imported when the
package is, so a new file here is a new column of the table, with no change to the runner or the
report. Code elsewhere (a plug-in, a test) can call `register` too.

Two kinds:

- "example": compute(out, ex, ctx) -> float, one value per (system, example), averaged over a row.
  out: the system's output (`imgen_jax.eval.scoring.Clip`: .wav at the model rate, cut / padded to
  the target's length, .at16 resampled to 16 kHz, .mel its mel spectrogram, .at(rate), .memo(key, fn));
  ex: the example (`scoring.Example`: .target and .input Clips, .stem); ctx: the run
  (`scoring.Context`: .task, .sr, .mel_cfg, .plugins {"clap", "classifier", "separator"}, .memo(key, fn)).
  Optional prepare(outs, exs, ctx): called once for a batch of (output, example) pairs before their
  compute() calls, to run a network on the whole batch at once and keep the results in the clips'
  memos (e.g. CLAP embeddings, classifier logits); compute() must give the same value without it.
- "set": compute(system_stats, target_stats) -> float over the pooled per-clip embedding statistics
  (lists of `imgen_jax.eval.fad.GaussianStats`) of a system's outputs and of the targets; one column
  `<name>_<embedder>` per FAD embedder.

Columns come in `order`, then name; `tasks` limits a metric to some tasks, `needs` to runs given
those plug-ins (--clap / --classifier / --cnn14 / --demucs).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Mapping

from imgen_jax.errors import ImgenError

KINDS = ("example", "set")


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric: its column name (the column prefix of a set metric), whether higher is better, how
    it is computed (see the module docstring for each kind's signature) and where it applies."""

    name: str
    higher_is_better: bool
    compute: Callable[..., float]
    kind: str = "example"
    tasks: tuple[str, ...] | None = None  # None: every task
    needs: tuple[str, ...] = ()           # plug-ins that must be given: "clap", "classifier", "separator"
    unit: str = ""                        # shown in the chart titles, e.g. "dB"
    order: int = 100                      # column position (built-ins: 10..70)
    prepare: Callable[..., None] | None = None  # batch hook: prepare(outs, exs, ctx) (example metrics)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ImgenError(f"metric {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ImgenError(f"metric name {self.name!r}: expected letters, digits and underscores")

    def applies(self, task: str, plugins: Mapping[str, Any]) -> bool:
        """Whether this metric is computed for `task` with the given plug-ins (name -> object or None)."""
        return (self.tasks is None or task in self.tasks) and all(plugins.get(p) is not None for p in self.needs)


_REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add a metric (ImgenError if another one has its name); returns it."""
    old = _REGISTRY.get(metric.name)
    if old is not None and old != metric:
        raise ImgenError(f"a metric named {metric.name!r} is already registered")
    _REGISTRY[metric.name] = metric
    return metric


def unregister(name: str) -> None:
    """Remove a metric (no error when absent)."""
    _REGISTRY.pop(name, None)


def registered(kind: str | None = None) -> list[Metric]:
    """The registered metrics (of `kind`), in column order."""
    return sorted((m for m in _REGISTRY.values() if kind in (None, m.kind)), key=lambda m: (m.order, m.name))


def for_run(task: str, plugins: Mapping[str, Any], kind: str) -> list[Metric]:
    """The metrics of `kind` computed in a run of `task` with `plugins`, in column order."""
    return [m for m in registered(kind) if m.applies(task, plugins)]


def lookup(column: str) -> Metric | None:
    """The metric of a table column: an example metric by name, a set metric by its `<name>_` prefix."""
    if column in _REGISTRY:
        return _REGISTRY[column]
    for m in registered("set"):
        if column.startswith(m.name + "_"):
            return m
    return None


def higher_is_better(column: str) -> bool:
    """Direction of a table column (unknown columns: higher is better)."""
    m = lookup(column)
    return True if m is None else m.higher_is_better


def unit(column: str) -> str:
    """Unit of a table column ("" when none or unknown)."""
    m = lookup(column)
    return "" if m is None else m.unit


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_discover()

__all__ = ["Metric", "register", "unregister", "registered", "for_run", "lookup", "higher_is_better", "unit", "KINDS"]
