"""The evaluation table: one row per system, one column per metric; text, CSV, JSON and a bar chart.

A row is {"system": str, "n": examples averaged, "skipped": examples left out (unreadable output),
<metric>: mean over those n (FAD: over the pooled set), ...} and, when statistics were computed
(imgen_jax.eval.stats), <metric>_lo / <metric>_hi: the 95% bootstrap interval. The paired tests of
the model rows against the baseline rows are a list of dicts (TEST_FIELDS), written to tests.csv and
to table.json's "tests". Values that are not finite are written as empty CSV cells / JSON null.
Directions and units come from the metric registry (imgen_jax.eval.metrics).
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


TEST_FIELDS = ("model", "baseline", "metric", "test", "n", "model_value", "baseline_value", "diff", "diff_lo",
               "diff_hi", "statistic", "p", "p_holm")


def _num(v) -> str:
    return "-" if _finite(v) is None else f"{v:.4g}"


def _has_ci(rows: Sequence[dict], metrics: Sequence[str]) -> bool:
    return any(f"{m}_lo" in r for r in rows for m in metrics)


def _text_table(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def format_table(rows: Sequence[dict], metrics: Sequence[str]) -> str:
    """Fixed-width text table (arrows give each metric's better direction); a cell with an interval
    reads `mean [lo, hi]`."""
    head = ["system", "n", "skipped"] + [f"{m} {'↑' if higher_is_better(m) else '↓'}" for m in metrics]
    body = []
    for r in rows:
        cells = [str(r["system"]), str(r["n"]), str(r["skipped"])]
        for m in metrics:
            cell = _num(r.get(m))
            if f"{m}_lo" in r and cell != "-":
                cell += f" [{_num(r[f'{m}_lo'])}, {_num(r[f'{m}_hi'])}]"
            cells.append(cell)
        body.append(cells)
    return _text_table(head, body)


def format_tests(tests: Sequence[dict]) -> str:
    """The paired tests as a fixed-width text table: model vs baseline, metric, mean difference
    model - baseline with its interval, p (Wilcoxon / paired bootstrap) and Holm-adjusted p."""
    head = ["model vs baseline", "metric", "diff [95% CI]", "p", "p_holm", "test", "n"]
    body = [[f"{t['model']} vs {t['baseline']}", t["metric"],
             f"{_num(t['diff'])} [{_num(t['diff_lo'])}, {_num(t['diff_hi'])}]", _num(t["p"]), _num(t["p_holm"]),
             t["test"], str(t["n"])] for t in tests]
    return _text_table(head, body)


def csv_columns(rows: Sequence[dict], metrics: Sequence[str]) -> list[str]:
    """The table.csv header: system, n, skipped, then each metric (followed by <metric>_lo, <metric>_hi
    when the rows carry intervals)."""
    cols = ["system", "n", "skipped"]
    for m in metrics:
        cols += [m, f"{m}_lo", f"{m}_hi"] if _has_ci(rows, metrics) else [m]
    return cols


def _csv_cell(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "" if v is None else str(v)
    return "" if _finite(v) is None else (str(v) if isinstance(v, int) else repr(float(v)))


def _write_rows(path: str, header: Sequence[str], records: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in records:
        w.writerow([_csv_cell(r.get(k)) for k in header])
    _atomic_text(path, buf.getvalue())
    return path


def write_csv(path: str, rows: Sequence[dict], metrics: Sequence[str]) -> str:
    """table.csv: one line per system (columns: `csv_columns`)."""
    return _write_rows(path, csv_columns(rows, metrics), rows)


def write_tests_csv(path: str, tests: Sequence[dict]) -> str:
    """tests.csv: one line per (model, baseline, metric) paired test (columns: TEST_FIELDS)."""
    return _write_rows(path, TEST_FIELDS, tests)


def _json_value(v):
    return _finite(v) if isinstance(v, float) else v


def write_json(path: str, rows: Sequence[dict], metrics: Sequence[str], info: dict,
               tests: Sequence[dict] | None = None) -> str:
    """table.json: `info`, the metrics and their directions, the rows (with intervals) and the paired tests."""
    doc = dict(info)
    doc["metrics"] = list(metrics)
    doc["higher_is_better"] = {m: higher_is_better(m) for m in metrics}
    doc["rows"] = [{k: _json_value(v) for k, v in r.items()} for r in rows]
    if tests is not None:
        doc["tests"] = [{k: _json_value(t.get(k)) for k in TEST_FIELDS} for t in tests]
    _atomic_text(path, json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def write_bar_chart(path: str, rows: Sequence[dict], metrics: Sequence[str], title: str = "") -> str:
    """One panel per metric, one bar per system (with its value and, when the rows carry intervals,
    the 95% interval as an error bar), saved atomically as PNG."""
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
        heights = [0.0 if v is None else v for v in vals]
        err = None
        if any(f"{m}_lo" in r for r in rows):
            lo = [_finite(r.get(f"{m}_lo")) for r in rows]
            hi = [_finite(r.get(f"{m}_hi")) for r in rows]
            err = [[0.0 if v is None or a is None else max(0.0, v - a) for v, a in zip(vals, lo)],
                   [0.0 if v is None or b is None else max(0.0, b - v) for v, b in zip(vals, hi)]]
        bars = ax.bar(names, heights, color=colors, yerr=err, capsize=4 if err else 0)
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


__all__ = ["format_table", "format_tests", "csv_columns", "write_csv", "write_tests_csv", "write_json",
           "write_bar_chart", "higher_is_better", "TEST_FIELDS"]
