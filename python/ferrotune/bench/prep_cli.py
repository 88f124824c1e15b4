"""The ``ferrotune prep`` command as ``ferrotune bench prep`` runs it: its command line, one
measured run end to end, and the fixed costs every run pays (``--version``; a one-record prep).
"""

from __future__ import annotations

import importlib
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from ferrotune.bench import measure, table
from ferrotune.bench.bare import is_document
from ferrotune.bench.measure import MB, BenchError
from ferrotune.bench.prep_spec import Stage


def manifest_figures(
    stage: str, manifest: dict[str, Any], out: Path, extra: dict[str, Any]
) -> dict[str, Any]:
    """Records read, rows written and ``elapsed_seconds`` of a ferrotune manifest, with the
    stage module's ``from_manifest`` tokens and details (DPO: the sample ids, read from the
    shards in ``out``) and the engine that encoded its texts."""
    module = importlib.import_module(f"ferrotune.bench.prep_{stage}")
    counts = manifest["counts"]
    figures = {"records": counts["read"], "items": counts["written"]}
    figures["seconds"] = manifest["elapsed_seconds"]
    figures |= module.from_manifest(manifest, out, **extra)
    engine = manifest.get("engine") or {}
    detail = figures.setdefault("detail", {})
    detail["engine"] = {"requested": engine.get("requested"), "texts": engine.get("texts", {})}
    detail["elapsed_seconds"] = manifest["elapsed_seconds"]
    return figures


def ferrotune_command() -> list[str]:
    """The ``ferrotune`` console script, as a user runs it: the one beside this interpreter
    (its virtual environment's), else the one on ``PATH``."""
    beside = Path(sys.executable).with_name("ferrotune")  # not resolved: the venv's bin/
    found = str(beside) if beside.is_file() else shutil.which("ferrotune")
    if not found:
        raise BenchError(f"no `ferrotune` command beside {sys.executable} nor on PATH")
    return [found]


def cli_flags(options: dict[str, Any]) -> list[str]:
    """``prep_*`` keyword options as ``ferrotune prep`` flags: ``block_size=1024`` →
    ``--block-size 1024``, ``skip_bad=True`` → ``--skip-bad``."""
    flags: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False and value is not None:
            flags += [flag, str(value)]
    return flags


def prep_command(
    st: Stage, corpus: Path, tokenizer: Path, workers: int, out: Path, options: dict[str, Any]
) -> list[str]:
    module = importlib.import_module(f"ferrotune.bench.prep_{st.name}")
    flags = cli_flags({**module.FERROTUNE_OPTIONS, **options})
    return [
        *ferrotune_command(),
        *("prep", st.name, "--tokenizer", str(tokenizer), "--input", str(corpus)),
        *("--out", str(out), "--workers", str(workers), "--quiet", *flags),
    ]


def cli_run(
    st: Stage,
    corpus: Path,
    tokenizer: Path,
    workers: int,
    out: Path,
    extra: dict[str, Any],
    options: dict[str, Any],
) -> dict[str, Any]:
    """``ferrotune prep STAGE ... --quiet`` end to end: ``seconds`` is its wall time, start-up,
    imports and the tokenizer load included; the figures come from the manifest it wrote."""
    with tempfile.TemporaryDirectory(dir=out, prefix=f"ferrotune-cli-{st.name}-") as tmp:
        shards = Path(tmp) / "shards"
        cmd = prep_command(st, corpus, tokenizer, workers, shards, options)
        wall, peak, _ = measure.run_measured(cmd, measure.child_env(workers))
        manifest = json.loads((shards / "manifest.json").read_text(encoding="utf-8"))
        figures = manifest_figures(st.name, manifest, shards, extra)
    return {**figures, "seconds": wall, "wall": wall, "peak": peak}


def measure_command(cmd: list[str], workers: int, repeats: int) -> tuple[float, float]:
    """(median wall seconds, largest peak RSS MB) of ``repeats`` runs of ``cmd``."""
    runs = [measure.run_measured(cmd, measure.child_env(workers)) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs) / MB


def first_record(st: Stage, corpus: Path, folder: Path) -> Path:
    """``folder/<stage>-one-record<suffix>``: the corpus's first non-empty line alone."""
    with corpus.open(encoding="utf-8", newline="\n") as f:
        line = next((line for line in f if is_document(line)), "")
    path = folder / f"{st.name}-one-record{corpus.suffix}"
    path.write_text(line if line.endswith("\n") else line + "\n", encoding="utf-8")
    return path


def fixed_cost_rows(label: str, seconds: float, peak_mb: float) -> list[table.Row]:
    note = "fixed cost, no baseline"
    return [
        table.Row(f"fixed cost: {label}", "-", "time", "s", seconds, note=note),
        table.Row(f"fixed cost: {label}", "-", "peak RSS", "MB", peak_mb, note=note),
    ]


def version_cost(workers: int, repeats: int) -> list[table.Row]:
    """``ferrotune --version``: interpreter start-up and the CLI's imports."""
    seconds, peak = measure_command([*ferrotune_command(), "--version"], workers, repeats)
    print(f"fixed cost: ferrotune --version {seconds:.3f} s, peak RSS {peak:.0f} MB")
    return fixed_cost_rows("ferrotune --version", seconds, peak)


def prep_cost(
    st: Stage, corpus: Path, tokenizer: Path, workers: int, out: Path, repeats: int
) -> list[table.Row]:
    """``ferrotune prep STAGE`` on one record, each engine: start-up + tokenizer load +
    write, the cost every run pays whatever its size."""
    rows, said = [], []
    for engine in ("auto", "reference"):
        with tempfile.TemporaryDirectory(dir=out, prefix=f"ferrotune-cli-{st.name}-") as tmp:
            one = first_record(st, corpus, Path(tmp))
            cmd = prep_command(st, one, tokenizer, workers, Path(tmp) / "shards", {})
            cmd += ["--overwrite", "--engine", engine]
            seconds, peak = measure_command(cmd, workers, repeats)
        label = f"ferrotune prep {st.name} --engine {engine}, 1 record"
        rows += fixed_cost_rows(label, seconds, peak)
        said.append(f"--engine {engine} {seconds:.2f} s, {peak:.0f} MB")
    print(
        f"fixed cost: ferrotune prep {st.name} on one record (start-up, tokenizer load, write; "
        f"median of {repeats}): {'; '.join(said)}"
    )
    return rows
