"""``ferrotune bench prep dpo``: preference records into the token ids a DPO trainer consumes.

``ferrotune``
    ``ferrotune.data.prep_dpo`` (max length and max prompt length 4096, overlong dropped): Rust
    renders the tokenizer's own template for prompt, prompt + chosen and prompt + rejected and
    splits off the common prefix as the prompt.
``ferrotune-cli`` / ``ferrotune-reference``
    The same as ``ferrotune prep dpo ... --quiet``, timed end to end (interpreter start-up
    included) / with ``engine="reference"`` (HF tokenizers 0.23).
``trl``
    What a TRL user runs: ``load_dataset("json")`` → ``map(to_preference, num_proc=N)`` into
    TRL's conversational preference format → ``trl.DPOTrainer(...)`` with
    ``DPOConfig(max_length=4096, dataset_num_proc=N)``, whose ``__init__`` tokenizes the dataset
    (``_prepare_dataset``). The policy and reference are two random 1-layer Qwen2 models built
    outside the timing.

All render the same template, so pair counts and token totals must agree, and on a sample (the
first 50 pairs and up to 20 distinct tool-call pairs) TRL's ``prompt_ids`` / ``chosen_ids`` /
``rejected_ids`` must equal ferrotune's ``prompt_input_ids`` and the answer parts of
``chosen_input_ids`` / ``rejected_input_ids``, token for token (compared by row position: the
record's while neither contender left one out).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ferrotune.bench.prep import (
    CLI,
    Contender,
    PrepRun,
    Stage,
    agree,
    ferrotune_child,
    not_written,
)
from ferrotune.bench.prep_sft import MAX_LENGTH, to_messages

BASELINE = "trl"
OURS = ("ferrotune", "ferrotune-cli", "ferrotune-reference")
CHECK_PAIRS = 50  # the first pairs compared token for token
TOOL_PAIRS = 20  # at most this many distinct tool-call pairs compared as well
ID_COLUMNS = ("prompt", "chosen", "rejected")
FERROTUNE_OPTIONS = {
    "max_length": MAX_LENGTH,
    "max_prompt_length": MAX_LENGTH,
    "overlong": "drop",
    "skip_bad": True,
}


def sample_rows(corpus: Path) -> dict[str, Any]:
    """The corpus rows compared token for token, as every child's ``sample`` argument: the
    first ``CHECK_PAIRS``, and the first ``TOOL_PAIRS`` distinct records with tools or tool
    calls (MedicalGPT's first 500 have none)."""
    rows: list[int] = []
    seen: set[str] = set()
    with corpus.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i < CHECK_PAIRS:
                rows.append(i)
            elif len(seen) >= TOOL_PAIRS:
                break
            elif line not in seen and ('"tools"' in line or '"function_call"' in line):
                seen.add(line)
                rows.append(i)
    return {"sample": rows}


# --------------------------------------------------------------------------- ferrotune


def ferrotune(**kwargs: Any) -> dict[str, Any]:
    return ferrotune_child("dpo", **kwargs)


def from_manifest(manifest: dict[str, Any], out: Path, sample: Sequence[int]) -> dict[str, Any]:
    """The figures, and the sample rows' ids read back from the shards (``pyarrow.ipc``)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    columns = [f"{name}_input_ids" for name in ID_COLUMNS]
    tables = []
    for shard in manifest["shards"]:
        with pa.OSFile(str(out / shard["file"])) as f:
            tables.append(ipc.open_stream(f).read_all().select(columns))
    ids = pa.concat_tables(tables)
    wanted = [i for i in sample if i < ids.num_rows]
    picked = ids.take(wanted).to_pydict() if wanted else {c: [] for c in columns}
    rows = {}
    for k, i in enumerate(wanted):
        prompt, chosen, rejected = (picked[c][k] for c in columns)
        rows[i] = [prompt, chosen[len(prompt) :], rejected[len(prompt) :]]
    split = {name: manifest["tokens"][name] for name in ID_COLUMNS}
    detail = {"tokens": split, "sample": rows, **not_written(manifest, out)}
    return {"tokens": sum(split.values()), "detail": detail}


# --------------------------------------------------------------------------- trl


def to_preference(example: dict[str, Any]) -> dict[str, Any]:
    """A MedicalGPT preference record in TRL's conversational preference format: the
    conversation is the prompt (``prep_sft``'s ShareGPT conversion), chosen and rejected one
    assistant message each, ``tools`` OpenAI tool schemas or None."""
    prompt, tools = to_messages(example)
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


def trl_child(
    corpus: str, tokenizer: str, workers: int, tmp_dir: str, sample: Sequence[int]
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
        {name: datasets.List(datasets.Json()) for name in ID_COLUMNS} | {"tools": datasets.Json()}
    )
    phases = {"prepare_dataset": 0.0}

    class DPOTrainer(trl.DPOTrainer):
        """TRL's trainer, also timing its dataset preparation (behaviour unchanged)."""

        def _prepare_dataset(self, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return super()._prepare_dataset(*args, **kwargs)
            finally:
                phases["prepare_dataset"] += time.perf_counter() - start

    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix="trl-dpo-") as tmp:
        start = time.perf_counter()
        hf_tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        phases["tokenizer"] = time.perf_counter() - start

        # Not timed: the policy and the reference model (given, as a from_config model has no
        # path for DPOTrainer to load its reference from).
        start = time.perf_counter()
        model, ref_model = tiny_model(len(hf_tokenizer)), tiny_model(len(hf_tokenizer))
        phases["models_not_timed"] = time.perf_counter() - start

        start = time.perf_counter()
        raw = datasets.load_dataset(
            "json", data_files=corpus, split="train", cache_dir=str(Path(tmp) / "cache")
        )
        converted = raw.map(
            to_preference, num_proc=workers, remove_columns=raw.column_names, features=features
        )
        phases["load_convert"] = time.perf_counter() - start

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
            processing_class=hf_tokenizer,
        )
        phases["trainer_init"] = time.perf_counter() - start

        dataset = trainer.train_dataset
        split = {
            name: pc.sum(pc.list_value_length(dataset.data.column(f"{name}_ids"))).as_py() or 0
            for name in ID_COLUMNS
        }
        wanted = [i for i in sample if i < len(dataset)]
        picked = dataset.select(wanted).select_columns([f"{n}_ids" for n in ID_COLUMNS])
        rows = {
            i: [row[f"{n}_ids"] for n in ID_COLUMNS] for i, row in zip(wanted, picked, strict=True)
        }
        pairs, records = len(dataset), len(raw)
    left_out = records - pairs
    return {
        "records": records,
        "items": pairs,
        "tokens": sum(split.values()),
        "seconds": phases["tokenizer"] + phases["load_convert"] + phases["trainer_init"],
        "detail": {
            "tokens": split,
            "sample": rows,
            "not_written": {"prompt_fills_max_length": left_out} if left_out else {},
            "phases": phases,
        },
    }


# --------------------------------------------------------------------------- checks


def check(runs: Sequence[PrepRun], extra: dict[str, Any]) -> bool:
    """Prints whether the contenders kept the same pairs with the same token counts and the
    same sample ids, and where trl's seconds went; False on any disagreement."""
    for r in runs:
        if "phases" in r.detail:
            p = r.detail["phases"]
            print(
                f"{r.label} seconds = tokenizer {p['tokenizer']:.2f} + load_dataset and "
                f"conversion map {p['load_convert']:.2f} + DPOTrainer(...) {p['trainer_init']:.2f} "
                f"(of which _prepare_dataset {p['prepare_dataset']:.2f}); "
                f"model creation, not timed: {p['models_not_timed']:.2f}"
            )
    ok = agree("pairs", {r.label: r.items for r in runs})
    if not ok:
        for r in runs:
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(r.detail["not_written"].items()))
            print(f"  {r.label} did not write: {reasons or 'nothing left out'}")
    tokens = {
        r.label: ", ".join(f"{n} {r.detail['tokens'][n]:,}" for n in ID_COLUMNS) for r in runs
    }
    ok &= agree("tokens", tokens)
    return check_sample(runs, extra["sample"]) and ok


def check_sample(runs: Sequence[PrepRun], rows: Sequence[int]) -> bool:
    """Compares TRL's ids with each ferrotune contender's on the sample rows; prints one line
    per group of rows when all agree, a warning per contender that does not."""
    base = next((r for r in runs if r.contender == BASELINE), None)
    ours = [r for r in runs if r.contender in OURS]
    if base is None or not ours:
        return True
    if any(r.records - r.items for r in (*ours, base)):
        print(
            "note: a contender did not write every record, so the sample compares row positions "
            "that may hold different records past the first one left out"
        )
    # JSON turned the row numbers into strings on the way back from the children.
    theirs = {int(k): v for k, v in base.detail["sample"].items()}
    ok = True
    first = [i for i in rows if i < CHECK_PAIRS]
    for label, group in (
        (f"first {len(first)} pairs", first),
        ("distinct tool-call pairs", [i for i in rows if i >= CHECK_PAIRS]),
    ):
        if not group:
            continue
        span = f"rows {group[0]}-{group[-1]}" if len(group) > 1 else f"row {group[0]}"
        agreeing = []
        for run in ours:
            mine = {int(k): v for k, v in run.detail["sample"].items()}
            compared = [i for i in group if i in mine and i in theirs]
            differ = [i for i in compared if mine[i] != theirs[i]]
            if len(compared) < len(group):
                ok = False
                print(
                    f"WARNING: {label} ({run.label}): only {len(compared)} of {len(group)} rows "
                    "written by both"
                )
            if differ:
                ok = False
                where = f"{span}, {run.label}"
                print(f"WARNING: {label} ({where}): {len(differ)} of {len(compared)} differ")
                describe_difference(differ[0], mine[differ[0]], theirs[differ[0]])
            elif compared:
                agreeing.append((run.label, len(compared)))
        if agreeing:
            counts = sorted({n for _, n in agreeing})
            print(
                f"{label} ({span}): trl prompt_ids / chosen_ids / rejected_ids == ferrotune "
                f"prompt_input_ids / chosen_input_ids[len(prompt):] / "
                f"rejected_input_ids[len(prompt):], all {'/'.join(map(str, counts))} "
                f"({', '.join(name for name, _ in agreeing)})"
            )
    return ok


def describe_difference(row: int, ours: Sequence[list[int]], theirs: Sequence[list[int]]) -> None:
    for name, a, b in zip(ID_COLUMNS, ours, theirs, strict=True):
        if a == b:
            continue
        pairs = enumerate(zip(a, b, strict=False))  # up to the shorter one
        at = next((k for k, (x, y) in pairs if x != y), min(len(a), len(b)))
        print(
            f"  row {row} {name}: ferrotune {len(a)} ids, trl {len(b)}, first difference at "
            f"{at}: ferrotune {a[at : at + 8]}, trl {b[at : at + 8]}"
        )


STAGE = Stage(
    name="dpo",
    subdir="reward",
    pattern="*.jsonl",
    records="preference pairs (MedicalGPT layout .jsonl)",
    items="pairs",
    default_mb=20.0,
    contenders=(
        Contender("ferrotune-cli", CLI, ours=True),
        Contender("ferrotune", "prep_dpo:ferrotune", ours=True),
        Contender(
            "ferrotune-reference", "prep_dpo:ferrotune", ours=True, options={"engine": "reference"}
        ),
        Contender("trl", "prep_dpo:trl_child", needs=("datasets", "trl")),
    ),
    comparable=tuple((ours, BASELINE) for ours in OURS),
    check=check,
    example="pairs",
    packages=("trl", "torch"),
    child_kwargs=sample_rows,
)
