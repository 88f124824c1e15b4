"""The one output of every benchmark: rows of ours beside a baseline, printed, as CSV and PNG.

A :class:`Row` is one benchmark (an op at a shape, a stage on a corpus), one baseline and one
metric: our figure, the baseline's, their ratio (ours / baseline: every metric here is a time or
a memory, so below 1 means ours is faster or smaller) and ``diff``, how far apart the two
outputs are (a loss, a token count): the check that the speed compares equal work. A baseline
that could not run (not installed, failed) keeps its row, with the reason in ``note``.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.metadata
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

NAN = float("nan")
CSV_COLUMNS = (
    "benchmark",
    "vs",
    "metric",
    "unit",
    "ours",
    "baseline",
    "ratio",
    "diff",
    "note",
    "machine",
)
RATIO_NOTE = "ratio = ours / baseline (time and memory: below 1, ours is faster or smaller)"


@dataclass
class Row:
    """One benchmark, one baseline, one metric."""

    benchmark: str  # e.g. "linear_cross_entropy N=4096 V=151936", "prep pt 50 MB"
    vs: str  # the baseline's name
    metric: str  # e.g. "fwd+bwd", "peak RSS"
    unit: str  # e.g. "ms", "MiB", "s", "MB"
    ours: float
    baseline: float = NAN
    diff: float = NAN  # |ours - baseline| of the outputs both computed; NaN if not comparable
    note: str = ""  # why a figure is missing ("not installed: trl", an error)

    @property
    def ratio(self) -> float:
        if math.isfinite(self.ours) and math.isfinite(self.baseline) and self.baseline > 0:
            return self.ours / self.baseline
        return NAN


# --------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), or what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def version(package: str) -> str:
    """An installed distribution's version, or ``"not installed"``."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> str:
    """CPU, core count and RAM: what a reader needs to compare figures across machines."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu_model()}, {os.cpu_count()} CPUs, {ram:.0f} GiB RAM"


def versions(packages: Sequence[str]) -> str:
    """``"versions: a 1.0, b not installed, ..., python 3.x"``."""
    listed = ", ".join(f"{p} {version(p)}" for p in packages)
    return f"versions: {listed}, python {platform.python_version()}"


# --------------------------------------------------------------------------- printing


def number(value: float) -> str:
    """A figure as a reader scans it: no spurious digits, ``-`` when missing."""
    if not math.isfinite(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_table(rows: Sequence[Row]) -> str:
    """The rows as an aligned text table, with the line that says how to read the ratio."""
    header = ("benchmark", "vs", "metric", "ours", "baseline", "ratio", "diff", "note")
    cells = [
        (
            r.benchmark,
            r.vs,
            f"{r.metric} ({r.unit})",
            number(r.ours),
            number(r.baseline),
            f"{r.ratio:.3g}" if math.isfinite(r.ratio) else "-",
            f"{r.diff:.1e}" if math.isfinite(r.diff) else "-",
            r.note,
        )
        for r in rows
    ]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *cells, strict=True)]
    right = {3, 4, 5, 6}  # numbers

    def line(values: Sequence[str]) -> str:
        parts = [
            f"{v:>{w}}" if i in right else f"{v:<{w}}"
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "-" * len(line(header))
    return "\n".join([RATIO_NOTE, line(header), rule, *(line(c) for c in cells)])


# --------------------------------------------------------------------------- files


def csv_number(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else ""


def write_csv(rows: Sequence[Row], path: Path, where: str) -> None:
    """One line per row, the columns of ``CSV_COLUMNS``; missing figures are empty cells."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            figures = (r.ours, r.baseline, r.ratio)
            writer.writerow(
                [
                    r.benchmark,
                    r.vs,
                    r.metric,
                    r.unit,
                    *map(csv_number, figures),
                    f"{r.diff:.3g}" if math.isfinite(r.diff) else "",
                    r.note,
                    where,
                ]
            )


def write_png(rows: Sequence[Row], path: Path, title: str) -> None:
    """A panel per metric, a pair of bars (ours, baseline) per benchmark and baseline, the ratio
    written beside it; log scale where the figures span more than 30x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys((r.metric, r.unit) for r in rows))
    cols = min(2, len(metrics))
    grid = math.ceil(len(metrics) / cols)
    per_panel = max(sum(1 for r in rows if (r.metric, r.unit) == m) for m in metrics)
    height = 1.2 + 0.55 * per_panel
    fig, axes = plt.subplots(grid, cols, figsize=(7.5 * cols, height * grid), squeeze=False)
    for ax, (metric, unit) in zip(axes.flat, metrics, strict=False):
        panel = [r for r in rows if (r.metric, r.unit) == (metric, unit)]
        ys = range(len(panel))
        ours = [r.ours if math.isfinite(r.ours) else 0.0 for r in panel]
        theirs = [r.baseline if math.isfinite(r.baseline) else 0.0 for r in panel]
        ax.barh([y - 0.2 for y in ys], ours, height=0.4, color="C0", label="ours")
        ax.barh([y + 0.2 for y in ys], theirs, height=0.4, color="C1", label="baseline")
        positive = [v for v in ours + theirs if v > 0] or [1.0]
        if max(positive) / min(positive) > 30:
            ax.set_xscale("log")
        for y, r in zip(ys, panel, strict=True):
            text = f" {r.ratio:.3g}x" if math.isfinite(r.ratio) else f" {r.note or 'no baseline'}"
            at = max((v for v in (r.ours, r.baseline) if v > 0), default=min(positive))
            ax.text(at, y, text, va="center", fontsize=7)
        ax.set_yticks(list(ys), [f"{r.benchmark}\nvs {r.vs}" for r in panel], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{metric} ({unit}), lower is better", fontsize=9)
        ax.margins(x=0.15)  # room for the ratios
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="upper right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(rows: Sequence[Row], out: Path, name: str, title: str, where: str) -> None:
    """Prints the table and writes ``out/<name>.csv`` and ``out/<name>.png``."""
    print(format_table(rows))
    print()
    csv_path, png_path = out / f"{name}.csv", out / f"{name}.png"
    write_csv(rows, csv_path, where)
    print(f"wrote {csv_path}")
    if rows:
        write_png(rows, png_path, title)
        print(f"wrote {png_path}")
