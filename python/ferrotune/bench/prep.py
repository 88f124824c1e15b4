"""``ferrotune bench prep [pt|sft|dpo ...]``: data preparation against the paths users run today.

Each stage (``prep_pt``, ``prep_sft``, ``prep_dpo``: their contenders and checks) runs on its
corpora, each one's source records repeated line by line to ``--size-mb`` MB (or taken once, at
their natural size) and cached in the output folder, with one tokenizer, at each ``--workers``
count. Each contender runs alone in a fresh process (:func:`ferrotune.bench.measure.run_child`,
or the ``ferrotune`` command itself): its peak memory is the resident set of it and all its
descendants (the ``num_proc`` workers of ``datasets``) sampled every 50 ms; ``wall`` is the whole
process. Its ``seconds`` (see :data:`TIME_NOTE`): for ``ferrotune-cli`` the command's wall time,
interpreter start-up included; for the Python API the manifest's ``elapsed_seconds`` (tokenizer
load to the last write); for the others the work timed in the child, imports left out.

Data and tokenizer: :mod:`ferrotune.bench.corpora`; the ``ferrotune prep`` command and the fixed
costs: :mod:`ferrotune.bench.prep_cli`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ferrotune.bench import envs, measure, table
from ferrotune.bench.corpora import (
    corpora,
    corpus_file,
    find_tokenizer,
)
from ferrotune.bench.measure import MB, BenchError
from ferrotune.bench.prep_cli import cli_run, manifest_figures, prep_cost, version_cost
from ferrotune.bench.prep_spec import Contender, PrepRun, Settings, Stage

__all__ = ["Contender", "PrepRun", "Settings", "Stage"]  # the stage modules' and the command's

STAGES = ("pt", "sft", "dpo")
QUICK_MB = 0.2
EXAMPLE_LINES = 5  # corpus line numbers kept per reason a record was not written
CLI = "cli"  # a Contender.child: the `ferrotune prep STAGE` command itself
ENGINE_PAIR = ("ferrotune", "ferrotune-reference")  # also compared with each other
NOT_RUN = ("not installed", "not set up", "not applicable")  # notes that are no failure
FIXED_COST_REPEATS = 3  # runs of each fixed-cost command, median (1 with --quick)
TIME_NOTE = """\
time (s): ours / the baseline's seconds. ferrotune-cli: the `ferrotune prep` command's whole wall
time, interpreter start-up included; ferrotune, ferrotune-*: prep_<stage>'s elapsed_seconds
(tokenizer load to the last write); the bare engines (tokenizers-1.0, encode_batch_fast,
tiktoken): load + encode (tokenizer.json, reading the corpus, encoding: what a user's script
pays); datasets, hf, trl: tokenizer load to the last write. time vs encode only (s): ours against
a bare engine's encode calls alone, nothing loaded or read (ours still includes its load)."""


def stage(name: str) -> Stage:
    return importlib.import_module(f"ferrotune.bench.prep_{name}").STAGE


# --------------------------------------------------------------------------- contenders


def ferrotune_child(
    stage: str,
    corpus: str,
    tokenizer: str,
    workers: int,
    tmp_dir: str,
    template: str | None = None,
    engine: str = "auto",
    **extra: Any,
) -> dict[str, Any]:
    """``ferrotune.data.prep_<stage>`` with the stage's options and ``engine``."""
    import ferrotune.data

    module = importlib.import_module(f"ferrotune.bench.prep_{stage}")
    options = dict(module.FERROTUNE_OPTIONS, engine=engine)
    if template:
        options["template"] = template
    prep = getattr(ferrotune.data, f"prep_{stage}")
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix=f"ferrotune-{stage}-") as tmp:
        out = Path(tmp) / "shards"
        manifest = prep(tokenizer, corpus, out, workers=workers, quiet=True, **options)
        return manifest_figures(stage, manifest, out, extra)


def not_written(manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    """Records ferrotune did not write, by reason, and a few corpus lines of its rejects."""
    counts = manifest["counts"]
    reasons = {**counts.get("dropped_by_reason", {}), **counts["rejected_by_reason"]}
    empty = counts.get("empty_by_reason") or {"empty": counts["empty"]}  # older manifests
    reasons |= {reason: n for reason, n in empty.items() if n}
    examples: dict[str, list[int]] = {}
    rejects = out / "rejects.jsonl"
    if rejects.is_file():
        with rejects.open(encoding="utf-8") as f:
            for line in f:
                reject = json.loads(line)
                lines = examples.setdefault(reject["reason"], [])
                if len(lines) < EXAMPLE_LINES:
                    lines.append(reject["line"])
    return {"not_written": reasons, "example_lines": examples}


def run_contender(
    st: Stage,
    contender: Contender,
    corpus: Path,
    tokenizer: Path,
    workers: int,
    out: Path,
    extra: dict[str, Any],
    setup_envs: bool = False,
) -> PrepRun:
    """One contender in its own process; a missing package or environment, or a failure, is
    recorded. ``extra``: the stage's ``child_kwargs`` for this corpus."""
    run = PrepRun(st.name, contender.name, corpus.stat().st_size / MB, workers)
    python = sys.executable if contender.child.startswith("bare:") else None
    if contender.env:  # its packages are checked by running it there
        python, run.error = envs.python(out, contender.env, setup_envs)
        if python is None:
            return run
    missing = [m for m in contender.needs if not contender.env and not measure.installed(m)]
    if missing:
        run.error = f"not installed: {', '.join(missing)}"
        return run
    print(
        f"  running {st.name} {contender.name} (workers {workers}) on {corpus.name} ...",
        file=sys.stderr,
        flush=True,
    )
    kwargs = {"corpus": str(corpus), "tokenizer": str(tokenizer), "workers": workers}
    kwargs.update(tmp_dir=str(out), **extra, **contender.options)
    try:
        if contender.child == CLI:
            raw = cli_run(st, corpus, tokenizer, workers, out, extra, contender.options)
        else:
            env = measure.child_env(workers)
            raw = measure.run_child(contender.child, kwargs, env, python=python)
    except BenchError as e:
        print(f"ferrotune bench: {contender.name} failed: {e}", file=sys.stderr)
        run.error = "failed: " + (str(e).strip().splitlines() or ["?"])[-1][:160]
        return run
    if "skip" in raw:  # the engine cannot do this tokenizer: says why
        run.error = raw["skip"]
        return run
    for name in ("records", "items", "tokens"):
        setattr(run, name, int(raw[name]))
    run.seconds, run.wall_seconds = float(raw["seconds"]), raw["wall"]
    run.peak_rss_mb, run.detail = raw["peak"] / MB, raw.get("detail", {})
    return run


# --------------------------------------------------------------------------- report


def agree(what: str, values: dict[str, Any]) -> bool:
    """Prints ``<what> agree: v`` or ``WARNING: <what> differ: a v, b w`` for the contenders'
    ``values``; whether they agree (trivially with fewer than two)."""
    shown = {name: f"{v:,}" if isinstance(v, int) else str(v) for name, v in values.items()}
    if len(set(values.values())) > 1:
        print(f"WARNING: {what} differ: {'; '.join(f'{k} {v}' for k, v in shown.items())}")
        return False
    if len(values) > 1:
        print(f"{what} agree: {next(iter(shown.values()))}")
    return True


def print_runs(st: Stage, runs: Sequence[PrepRun]) -> None:
    """Every contender's own figures, the ones the ratios come from, and what encoded."""
    header = (
        f"{'contender':<22} {'w':>2} {'corpus MB':>9} {'records':>9} {st.items:>13} "
        f"{'tokens':>12} {'seconds':>8} {'encode s':>8} {'wall s':>7} {st.items + '/s':>15} "
        f"{'M tok/s':>8} {'peak RSS MB':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in runs:
        if r.error:
            print(f"{r.contender:<22} {r.workers:>2} {r.corpus_mb:>9.1f} {r.error}")
            continue
        encode = r.detail.get("encode_seconds")
        print(
            f"{r.contender:<22} {r.workers:>2} {r.corpus_mb:>9.1f} {r.records:>9,} "
            f"{r.items:>13,} {r.tokens:>12,} {r.seconds:>8.2f} "
            f"{'-' if encode is None else f'{encode:.2f}':>8} {r.wall_seconds:>7.2f} "
            f"{r.rate:>15,.1f} {r.tokens / r.seconds / 1e6:>8.2f} {r.peak_rss_mb:>11.0f}"
        )
    engines: dict[str, str] = {}
    for r in runs:
        if "version" in r.detail:
            engines.setdefault(r.contender, r.detail["version"])
        elif "engine" in r.detail:
            texts = ", ".join(f"{k} {v:,}" for k, v in r.detail["engine"]["texts"].items())
            engines.setdefault(r.contender, f"--engine {r.detail['engine']['requested']} ({texts})")
    if engines:
        print("encoded by: " + "; ".join(f"{name} {what}" for name, what in engines.items()))


def rows(st: Stage, runs: Sequence[PrepRun], label: str) -> list[table.Row]:
    """Each of ours against each baseline (and ferrotune against ferrotune-reference) at the
    same workers on one corpus: seconds (and, against a bare engine, seconds against its encode
    calls alone) and peak RSS, with the difference of the tokens where both write the same."""
    out = []
    ours_names = {c.name for c in (*st.contenders, *ENGINE_CONTENDERS.values()) if c.ours}
    for workers in dict.fromkeys(r.workers for r in runs):
        at = [r for r in runs if r.workers == workers]
        by_name = {r.contender: r for r in at}
        baselines = [r for r in at if r.contender not in ours_names]
        for ours in (r for r in at if r.contender in ours_names):
            benchmark = f"{label}, {workers} worker{'s' * (workers != 1)}"
            if ours.contender != "ferrotune":
                benchmark += f" ({ours.contender})"
            against = list(baselines)
            if ours.contender == ENGINE_PAIR[0] and ENGINE_PAIR[1] in by_name:
                against.append(by_name[ENGINE_PAIR[1]])
            inside = ours.contender in {c.name for c in ENGINE_CONTENDERS.values()}
            if inside and "ferrotune" in by_name:  # an engine's overhead: against prep alone
                against = [by_name["ferrotune"]]
            if not against:
                against = [PrepRun(st.name, "-", ours.corpus_mb, error="baselines not run")]
            for base in against:
                same = (ours.contender, base.contender) in st.comparable
                same |= (ours.contender, base.contender) == ENGINE_PAIR
                same |= inside and base.contender == "ferrotune"
                note = ours.error or base.error
                diff = abs(ours.tokens - base.tokens) if same and not note else math.nan
                metrics = [("time", "s", ours.seconds, base.seconds)]
                if "encode_seconds" in base.detail:
                    encode = base.detail["encode_seconds"]
                    metrics.append(("time vs encode only", "s", ours.seconds, encode))
                metrics.append(("peak RSS", "MB", ours.peak_rss_mb, base.peak_rss_mb))
                for metric, unit, mine, theirs in metrics:
                    out.append(
                        table.Row(benchmark, base.contender, metric, unit, mine, theirs, diff, note)
                    )
    return out


# Ours inside the engines (ferrotune.bench.prep_engines), each measured against `ferrotune`.
ENGINE_CONTENDERS = {
    engine: Contender(
        f"ferrotune-{engine}",
        "prep_engines:engine_child",
        ours=True,
        needs=(module,),
        options={"engine": engine},
    )
    for engine, module in (("ray", "ray"), ("spark", "pyspark"))
}


def chosen_contenders(st: Stage, settings: Settings) -> list[Contender]:
    """The stage's contenders for ``--only`` and ``--engine``: ``local`` runs them all; each of
    ``ray``/``spark`` adds ours inside that engine (and ``ferrotune``, its measure)."""
    local = "local" in settings.engine
    chosen = [c for c in st.contenders if local or c.name == "ferrotune"]
    for name in settings.engine:
        if name in ENGINE_CONTENDERS:
            inside = ENGINE_CONTENDERS[name]
            chosen.append(replace(inside, options={**inside.options, "stage": st.name}))
    return [c for c in chosen if not settings.only or c.name in settings.only]


def size_label(size: float | None, corpus: Path) -> str:
    return f"{size:g}" if size is not None else f"{corpus.stat().st_size / MB:.1f}"


def run(settings: Settings, out: Path) -> int:
    """Runs the stages, prints the tables and checks, writes ``out/prep_<stages>.{csv,png}``.

    Exit status: 2 if contenders disagree (counts, tokens, sample ids), 1 if one failed, else 0.
    Missing data or tokenizer raise :class:`BenchError` before anything runs.
    """
    tokenizer = find_tokenizer(settings.tokenizer)
    stages, found = [], {}
    for name in settings.stages or STAGES:
        st = stage(name)
        try:
            found[name] = corpora(st, settings)
        except BenchError as e:
            if settings.stages:
                raise
            print(f"skipping {name}: {e}")
            continue
        stages.append(st)
    if not stages:
        raise BenchError("no data for any stage: pass --input PATH")
    workers = list(settings.workers or [os.cpu_count() or 1])
    where = table.machine()
    print(f"machine: {where}, workers {', '.join(map(str, workers))}; tokenizer {tokenizer}")
    packages = {"ferrotune", "tokenizers", "transformers", "datasets"}
    print(table.versions(sorted(packages.union(*(st.packages for st in stages)))))
    out.mkdir(parents=True, exist_ok=True)
    selected = [(st, chosen_contenders(st, settings)) for st in stages]
    timing_cli = any(c.child == CLI for _, chosen in selected for c in chosen)
    repeats = 1 if settings.quick else FIXED_COST_REPEATS
    all_rows = version_cost(max(workers), repeats) if timing_cli else []
    agreed, failed = True, False
    for st, chosen in selected:
        for k, corpus in enumerate(found[st.name]):
            about = corpus.about or ", ".join(map(str, corpus.files))
            print(f"\nprep {st.name} on {corpus.name}: {about}")
            default = None if corpus.natural else st.default_mb
            sizes = settings.size_mb or [QUICK_MB if settings.quick else default]
            for i, size in enumerate(sizes):
                path = corpus_file(st, corpus, size, out)
                if timing_cli and k == 0 and i == 0:
                    all_rows += prep_cost(st, path, tokenizer, max(workers), out, repeats)
                extra = st.child_kwargs(path)
                runs = [
                    run_contender(st, c, path, tokenizer, w, out, extra, settings.setup_envs)
                    for w in workers
                    for c in chosen
                    if c.ours or i == 0 or settings.baselines_all_sizes
                ]
                if len(workers) > 1:
                    for r in runs:
                        r.label = f"{r.contender} ({r.workers}w)"
                print_runs(st, runs)
                agreed &= st.check([r for r in runs if not r.error], extra)
                failed |= any(r.error and not r.error.startswith(NOT_RUN) for r in runs)
                label = f"prep {st.name} {corpus.name} {size_label(size, path)} MB"
                all_rows += rows(st, runs, label)
    print()
    print(TIME_NOTE)
    name = "prep_" + "_".join(st.name for st in stages)
    title = f"ferrotune bench prep {' '.join(st.name for st in stages)}: {where}"
    table.report(all_rows, out, name, title, where)
    return 1 if failed else 0 if agreed else 2
