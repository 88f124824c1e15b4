"""``ferrotune bench prep sft``: ShareGPT conversations into ``input_ids`` / ``attention_mask`` /
``labels`` rows (labels: the assistant answers only; conversations over 4096 tokens dropped).

``ferrotune``
    ``ferrotune.data.prep_sft`` with the tokenizer's own chat template.
``ferrotune-cli`` / ``ferrotune-reference``
    The same as ``ferrotune prep sft ... --quiet``, timed end to end (interpreter start-up
    included) / with ``engine="reference"`` (HF tokenizers 0.23): the same tokens as ``ferrotune``.
``ferrotune-trl-template``
    The same with TRL's ``chat_templates/qwen3_training.jinja``, the template ``hf`` must use:
    the identical rendering on both sides, so their tokens and labels must be equal.
``hf``
    What TRL's ``assistant_only_loss`` amounts to: ``load_dataset("json")`` → ``map(fn,
    num_proc=N)`` where ``fn`` turns ShareGPT into messages and calls
    ``tokenizer.apply_chat_template(..., chat_template=<qwen3_training.jinja>,
    return_assistant_tokens_mask=True)`` (the tokenizer's own template has no
    ``{% generation %}`` markers, so HF cannot mask with it) → ``filter`` → ``save_to_disk``.
    ``fn`` drops what ferrotune drops or rejects, under ferrotune's reason names. OpenAI
    ``messages`` records pass as they are.

``ferrotune`` and ``hf`` render different templates (the tokenizer's own Qwen3 template writes
the empty ``<think>`` block only after the last user message, TRL's into every assistant turn),
so their tokens differ on purpose, and near 4096 tokens a conversation may fit one and not the
other.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ferrotune.bench.bare import WHITESPACE
from ferrotune.bench.measure import BenchError
from ferrotune.bench.prep import (
    CLI,
    EXAMPLE_LINES,
    Contender,
    PrepRun,
    Stage,
    agree,
    ferrotune_child,
    not_written,
)

MAX_LENGTH = 4096
BASELINE = "hf"
OWN_TEMPLATE = ("ferrotune", "ferrotune-cli", "ferrotune-reference")
FERROTUNE_OPTIONS = {"max_length": MAX_LENGTH, "overlong": "drop", "skip_bad": True}
# ShareGPT `from` → OpenAI role; `function_call` becomes an assistant message with tool_calls.
ROLES = {"human": "user", "gpt": "assistant", "system": "system", "observation": "tool"}


def trl_template() -> Path:
    """TRL's ``chat_templates/qwen3_training.jinja`` (located; trl is not imported)."""
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("trl is not installed: pip install trl")
    path = Path(spec.submodule_search_locations[0]) / "chat_templates" / "qwen3_training.jinja"
    if not path.is_file():
        raise BenchError(f"this trl has no {path.name}: {path}")
    return path


# --------------------------------------------------------------------------- ferrotune


def ferrotune(**kwargs: Any) -> dict[str, Any]:
    return ferrotune_child("sft", **kwargs)


def ferrotune_trl_template(**kwargs: Any) -> dict[str, Any]:
    return ferrotune_child("sft", template=str(trl_template()), **kwargs)


def from_manifest(manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    """Tokens and label tokens written, and what was not written, why, and where."""
    tokens = manifest["tokens"]
    detail = {"label_tokens": tokens["labels"], **not_written(manifest, out)}
    return {"tokens": tokens["written"], "detail": detail}


# --------------------------------------------------------------------------- hf


class BadRecord(ValueError):
    """A record the HF path cannot turn into messages; ``reason`` uses ferrotune's keys."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def to_messages(example: dict[str, Any]) -> tuple[list[dict[str, Any]], list | None]:
    """A record as OpenAI messages and tools, as a TRL user converts it: OpenAI ``messages``
    as they are; ShareGPT ``conversations`` turn by turn, after its ``system`` field if any."""
    if example.get("messages"):
        return [{k: v for k, v in m.items() if v is not None} for m in example["messages"]], None
    messages: list[dict[str, Any]] = []
    if example.get("system"):
        messages.append({"role": "system", "content": example["system"]})
    for turn in example.get("conversations") or []:
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


def hf_child(corpus: str, tokenizer: str, workers: int, tmp_dir: str) -> dict[str, Any]:
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
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix="hf-sft-") as tmp:
        start = time.perf_counter()
        hf_tokenizer = AutoTokenizer.from_pretrained(tokenizer)

        def prepare(example: dict[str, Any]) -> dict[str, Any]:
            dropped = {"input_ids": [], "attention_mask": [], "labels": []}
            try:
                messages, tools = to_messages(example)
            except BadRecord as e:
                return {**dropped, "drop": e.reason}
            reason = unusable(messages)
            if reason:
                return {**dropped, "drop": reason}
            encoded = hf_tokenizer.apply_chat_template(
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
            mask = encoded["attention_mask"]
            return {"input_ids": ids, "attention_mask": mask, "labels": labels, "drop": ""}

        raw = datasets.load_dataset(
            "json", data_files=corpus, split="train", cache_dir=str(Path(tmp) / "cache")
        )
        mapped = raw.map(
            prepare, num_proc=workers, remove_columns=raw.column_names, features=features
        )
        kept = mapped.filter(lambda drop: not drop, input_columns="drop", num_proc=workers)
        kept = kept.remove_columns("drop")
        kept.save_to_disk(str(Path(tmp) / "saved"))
        seconds = time.perf_counter() - start

        reasons = mapped.data.column("drop")
        skipped = {r: n for r, n in Counter(reasons.to_pylist()).items() if r}
        examples = {
            r: [i + 1 for i in pc.indices_nonzero(pc.equal(reasons, r)).to_pylist()[:EXAMPLE_LINES]]
            for r in skipped
        }
        tokens = pc.sum(pc.list_value_length(kept.data.column("input_ids"))).as_py() or 0
        labels = pc.list_flatten(kept.data.column("labels"))
        label_tokens = pc.sum(pc.not_equal(labels, -100).cast("int64")).as_py() or 0
    return {
        "records": len(raw),
        "items": len(kept),
        "tokens": tokens,
        "seconds": seconds,
        "detail": {
            "label_tokens": label_tokens,
            "not_written": skipped,
            "example_lines": examples,
        },
    }


# --------------------------------------------------------------------------- checks


def check(runs: Sequence[PrepRun], extra: dict[str, Any]) -> bool:
    """Prints whether the contenders wrote the same conversations; False if not.

    Where the counts differ, lists the reasons records were not written, per contender, with a
    few corpus line numbers. ``hf`` renders the template ``ferrotune-trl-template`` renders, and
    ``ferrotune``, ``ferrotune-cli`` and ``ferrotune-reference`` the tokenizer's own, so the token
    and label counts of each group are checked too.
    """
    ok = agree("conversations written", {r.label: r.items for r in runs})
    if not ok:
        explain_difference(runs)
    for what, names in (
        ("same template: tokens", ("ferrotune-trl-template", BASELINE)),
        ("the tokenizer's own template: tokens", OWN_TEMPLATE),
    ):
        same = [r for r in runs if r.contender in names]
        tokens = {r.label: f"{r.tokens:,}, labels {r.detail['label_tokens']:,}" for r in same}
        ok &= agree(what, tokens)
    return ok


def explain_difference(runs: Sequence[PrepRun]) -> None:
    reasons = sorted({reason for r in runs for reason in r.detail["not_written"]})
    for reason in reasons:
        per = {r.label: r.detail["not_written"].get(reason, 0) for r in runs}
        if len(set(per.values())) == 1:
            continue
        listed = ", ".join(f"{name} {n:,}" for name, n in per.items())
        where = "; ".join(
            f"{r.label} e.g. lines {', '.join(map(str, r.detail['example_lines'][reason]))}"
            for r in runs
            if r.detail["example_lines"].get(reason)
        )
        print(f"  not written as {reason}: {listed}" + (f" ({where})" if where else ""))
        if reason == "too_long" and any(r.contender == "ferrotune" for r in runs):
            print(
                "    ferrotune renders the tokenizer's own template, which leaves out the empty "
                "<think> block of earlier assistant turns that qwen3_training.jinja always "
                f"writes: near {MAX_LENGTH} tokens a conversation can fit one and not the other"
            )


STAGE = Stage(
    name="sft",
    subdir="sft",
    pattern="*.jsonl",
    records="conversations (ShareGPT or OpenAI messages .jsonl)",
    items="conversations",
    default_mb=20.0,
    contenders=(
        Contender("ferrotune-cli", CLI, ours=True),
        Contender("ferrotune", "prep_sft:ferrotune", ours=True),
        Contender(
            "ferrotune-reference", "prep_sft:ferrotune", ours=True, options={"engine": "reference"}
        ),
        Contender(
            "ferrotune-trl-template", "prep_sft:ferrotune_trl_template", ours=True, needs=("trl",)
        ),
        Contender("hf", "prep_sft:hf_child", needs=("datasets", "trl")),
    ),
    comparable=(("ferrotune-trl-template", "hf"),),
    check=check,
    example="sft",
    packages=("trl", "jinja2"),
)
