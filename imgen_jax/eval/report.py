"""The evaluation table: one row per system, one column per metric; text, CSV, JSON and a bar chart.

A row is {"system": str, "n": examples averaged, "skipped": examples left out (unreadable output),
<metric>: mean over those n (FAD: over the pooled set), ...}. Values that are not finite are
written as empty CSV cells / JSON null. Directions and units come from the metric registry
(imgen_jax.eval.metrics).
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Sequence

from imgen_jax.eval import metrics as registry
from imgen_jax.files import atomic_file


def higher_is_better(metric: str) -> bool:
    """Direction of a metric column, from the metric registry (imgen_jax.eval.metrics; set metrics by their
    `<name>_` prefix, e.g. `fad_*`: lower is better; unknown columns: higher is better)."""
    return registry.higher_is_better(metric)


def _finite(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _atomic_text(path: str, text: str) -> None:
    with atomic_file(path) as tmp:
        with open(tmp, "w", newline="") as f:
            f.write(text)


def format_table(rows: Sequence[dict], metrics: Sequence[str]) -> str:
    """Fixed-width text table (arrows give each metric's better direction)."""
    head = ["system", "n", "skipped"] + [f"{m} {'↑' if higher_is_better(m) else '↓'}" for m in metrics]
    body = []
    for r in rows:
        cells = [str(r["system"]), str(r["n"]), str(r["skipped"])]
        for m in metrics:
            v = r.get(m)
            cells.append("-" if _finite(v) is None else f"{v:.4g}")
        body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def write_csv(path: str, rows: Sequence[dict], metrics: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["system", "n", "skipped", *metrics])
    for r in rows:
        w.writerow([r["system"], r["n"], r["skipped"], *("" if _finite(r.get(m)) is None else repr(float(r[m])) for m in metrics)])
    _atomic_text(path, buf.getvalue())
    return path


def write_json(path: str, rows: Sequence[dict], metrics: Sequence[str], info: dict) -> str:
    doc = dict(info)
    doc["metrics"] = list(metrics)
    doc["higher_is_better"] = {m: higher_is_better(m) for m in metrics}
    doc["rows"] = [{k: (_finite(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    _atomic_text(path, json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def write_bar_chart(path: str, rows: Sequence[dict], metrics: Sequence[str], title: str = "") -> str:
    """One panel per metric, one bar per system (with its value), saved atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(metrics))
    cols = min(n, 3)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    names = [r["system"] for r in rows]
    colors = [f"C{i}" for i in range(len(rows))]
    for k, m in enumerate(metrics):
        ax = axes[k // cols][k % cols]
        vals = [_finite(r.get(m)) for r in rows]
        bars = ax.bar(names, [0.0 if v is None else v for v in vals], color=colors)
        for b, v in zip(bars, vals):
            ax.annotate("n/a" if v is None else f"{v:.3g}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8)
        unit = f" ({registry.unit(m)})" if registry.unit(m) else ""
        ax.set_title(f"{m}{unit} {'↑' if higher_is_better(m) else '↓'}")
        ax.tick_params(axis="x", labelrotation=20)
    for k in range(len(metrics), nrows * cols):
        axes[k // cols][k % cols].axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_file(path, ".png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path


__all__ = ["format_table", "write_csv", "write_json", "write_bar_chart", "higher_is_better"]
