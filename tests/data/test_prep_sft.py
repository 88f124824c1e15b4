"""``prep sft`` on every record of the MedicalGPT SFT files with the real Qwen tokenizer, against
independent references: transformers' ``return_assistant_tokens_mask`` where the template has
``{% generation %}`` blocks, and a plain-Python walk of the rendering otherwise."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import transformers

from ferrotune.data import prep_sft

NO_LIMIT = 1 << 20
ROLES = {"human": "user", "gpt": "assistant", "system": "system", "observation": "tool"}


def reference_conversations(files: list[Path]) -> list[tuple[list[dict], list[dict] | None]]:
    """Each ShareGPT record as (messages, tools), written here independently of the engine;
    records the engine leaves out (ending without an answer, an empty turn) are left out."""
    out = []
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            messages = []
            for turn in record["conversations"]:
                if turn["from"] == "function_call":
                    call = {"type": "function", "function": json.loads(turn["value"])}
                    messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
                else:
                    messages.append({"role": ROLES[turn["from"]], "content": turn["value"]})
            if messages[-1]["role"] != "assistant":
                continue
            if any(not m["content"].strip() and "tool_calls" not in m for m in messages):
                continue
            tools = None
            if record.get("tools"):
                tools = [{"type": "function", "function": t} for t in json.loads(record["tools"])]
            out.append((messages, tools))
    return out


def read_rows(out: Path) -> list[dict[str, list[int]]]:
    manifest = json.loads((out / "manifest.json").read_text())
    tables = [pa.ipc.open_stream(str(out / s["file"])).read_all() for s in manifest["shards"]]
    return pa.concat_tables(tables).to_pylist()


@pytest.fixture(scope="module")
def sft_files(medicalgpt: Path) -> list[Path]:
    return sorted((medicalgpt / "sft").glob("*.jsonl"))


@pytest.fixture(scope="module")
def hf_qwen(qwen_tokenizer):
    return transformers.AutoTokenizer.from_pretrained(qwen_tokenizer)


def trl_template(name: str) -> Path:
    spec = importlib.util.find_spec("trl")
    assert spec is not None and spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]) / "chat_templates" / name


def test_generation_block_masks_equal_transformers(qwen_tokenizer, hf_qwen, sft_files, tmp_path):
    template = trl_template("qwen3_training.jinja")
    manifest = prep_sft(
        qwen_tokenizer,
        sft_files,
        tmp_path / "sft",
        template=template,
        max_length=NO_LIMIT,
        skip_bad=True,
    )
    assert manifest["template"]["generation_blocks"] is True
    rows = read_rows(tmp_path / "sft")
    conversations = reference_conversations(sft_files)
    assert len(rows) == len(conversations) == manifest["counts"]["written"]
    source = template.read_text()
    for row, (messages, tools) in zip(rows, conversations, strict=True):
        hf = hf_qwen.apply_chat_template(
            messages,
            tools=tools,
            chat_template=source,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        assert row["input_ids"] == hf["input_ids"]
        expected = [
            t if m else -100 for t, m in zip(hf["input_ids"], hf["assistant_masks"], strict=True)
        ]
        assert row["labels"] == expected
        assert row["attention_mask"] == [1] * len(row["input_ids"])


def reference_labels(text: str, offsets: list[tuple[int, int]], ids: list[int]) -> list[int]:
    """Plain-Python answer spans of a ChatML rendering: after each assistant header (and the
    empty think block Qwen3 writes before a final answer) through the ``<|im_end|>`` that
    closes the turn."""
    header, think, end = "<|im_start|>assistant\n", "<think>\n\n</think>\n\n", "<|im_end|>"
    spans, cursor = [], 0
    while (at := text.find(header, cursor)) >= 0:
        start = at + len(header)
        if text.startswith(think, start):
            start += len(think)
        stop = text.index(end, start) + len(end)
        spans.append((start, stop))
        cursor = stop
    labels = []
    for token, (start, end) in zip(ids, offsets, strict=True):
        end = max(end, start + 1)
        inside = any(start < stop and begin < end for begin, stop in spans)
        labels.append(token if inside else -100)
    return labels


def test_located_answer_masks_equal_a_plain_python_reference(
    qwen_tokenizer, hf_qwen, sft_files, tmp_path
):
    manifest = prep_sft(
        qwen_tokenizer, sft_files, tmp_path / "sft", max_length=NO_LIMIT, skip_bad=True
    )
    assert manifest["template"]["name"] == "tokenizer_config.json"
    assert manifest["template"]["generation_blocks"] is False
    rows = read_rows(tmp_path / "sft")
    conversations = reference_conversations(sft_files)
    assert len(rows) == len(conversations)
    for row, (messages, tools) in zip(rows, conversations, strict=True):
        text = hf_qwen.apply_chat_template(messages, tools=tools, tokenize=False)
        encoded = hf_qwen(text, add_special_tokens=False, return_offsets_mapping=True)
        assert row["input_ids"] == encoded["input_ids"]
        expected = reference_labels(text, encoded["offset_mapping"], encoded["input_ids"])
        assert row["labels"] == expected
    counts = manifest["counts"]
    assert (
        counts["read"]
        == counts["written"] + counts["empty"] + counts["rejected"] + counts["dropped"]
    )
    assert counts["dropped_by_reason"] == {"ends_without_answer": 7}


def test_packed_rows_unpack_into_the_unpacked_examples(qwen_tokenizer, sft_files, tmp_path):
    files = sft_files[:1]
    plain = prep_sft(qwen_tokenizer, files, tmp_path / "plain", max_length=1024)
    packed = prep_sft(qwen_tokenizer, files, tmp_path / "packed", max_length=1024, pack=True)
    examples = sorted(
        (tuple(r["input_ids"]), tuple(r["labels"])) for r in read_rows(tmp_path / "plain")
    )
    unpacked = []
    for row in read_rows(tmp_path / "packed"):
        assert len(row["input_ids"]) <= 1024
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        for a, b in itertools.pairwise(starts):
            assert row["position_ids"][a:b] == list(range(b - a))
            unpacked.append((tuple(row["input_ids"][a:b]), tuple(row["labels"][a:b])))
    assert sorted(unpacked) == examples
    assert packed["rows"] < plain["rows"]
    efficiency = packed["stage_info"]["packing_efficiency"]
    assert efficiency == pytest.approx(plain["tokens"]["written"] / (packed["rows"] * 1024))
    assert efficiency > 0.9


def test_identical_bytes_for_any_worker_count(qwen_tokenizer, sft_files, tmp_path):
    digests = []
    for workers in (1, 2):
        manifest = prep_sft(
            qwen_tokenizer,
            sft_files,
            tmp_path / f"w{workers}",
            workers=workers,
            pack=True,
            skip_bad=True,
        )
        digests.append([s["sha256"] for s in manifest["shards"]])
    assert digests[0] == digests[1]


def test_truncate_or_drop_overlong_conversations(qwen_tokenizer, sft_files, tmp_path):
    files = sft_files[:1]
    dropped = prep_sft(qwen_tokenizer, files, tmp_path / "drop", max_length=256, overlong="drop")
    cut = prep_sft(qwen_tokenizer, files, tmp_path / "cut", max_length=256)
    too_long = dropped["counts"]["dropped_by_reason"].get("too_long", 0)
    assert too_long > 0
    assert cut["stage_info"]["truncated"] == too_long - cut["counts"]["dropped_by_reason"].get(
        "no_learned_tokens", 0
    )
    assert max(len(r["input_ids"]) for r in read_rows(tmp_path / "cut")) == 256
    assert np.all([len(r["input_ids"]) <= 256 for r in read_rows(tmp_path / "drop")])


REASONING = [
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n2+2 is 4."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "<think>\nAdd again.\n</think>\n\n3+3 is 6."},
    ],
    [
        {"role": "system", "content": "Think first."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "<think>\nHistory.\n</think>\n\nIt has been since 987."},
    ],
]


def test_every_turn_is_learned_when_the_template_drops_earlier_reasoning(
    qwen_tokenizer, hf_qwen, tmp_path
):
    """Qwen3's template renders the reasoning of the last answer only: earlier answers lose
    their <think> block, so neither prefixes nor substituted contents match the rendering."""
    source = tmp_path / "reasoning.jsonl"
    source.write_text("".join(json.dumps({"messages": m}) + "\n" for m in REASONING))
    prep_sft(qwen_tokenizer, source, tmp_path / "sft", max_length=NO_LIMIT)
    rows = read_rows(tmp_path / "sft")
    for row, messages in zip(rows, REASONING, strict=True):
        text = hf_qwen.apply_chat_template(messages, tokenize=False)
        assert text.count("<think>\n") == 1, "only the last answer keeps its reasoning"
        encoded = hf_qwen(text, add_special_tokens=False, return_offsets_mapping=True)
        assert row["input_ids"] == encoded["input_ids"]
        expected = reference_labels(text, encoded["offset_mapping"], encoded["input_ids"])
        assert row["labels"] == expected
    last = prep_sft(qwen_tokenizer, source, tmp_path / "last", max_length=NO_LIMIT, learn="last")
    assert last["tokens"]["labels"] < sum(sum(t != -100 for t in row["labels"]) for row in rows)


@pytest.mark.parametrize("name", ["chatml", "qwen", "llama3", "vicuna", "alpaca"])
def test_builtin_templates_render_and_mask_as_transformers(example_tokenizer, name, tmp_path):
    from ferrotune.data import builtin_templates

    source = builtin_templates()[name]
    hf = transformers.AutoTokenizer.from_pretrained(example_tokenizer)
    conversations = [REASONING[1][:3], [m for m in REASONING[1] if m["role"] != "system"]]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations))
    prep_sft(example_tokenizer, path, tmp_path / "sft", template=name, max_length=NO_LIMIT)
    for row, messages in zip(read_rows(tmp_path / "sft"), conversations, strict=True):
        encoded = hf.apply_chat_template(
            messages, chat_template=source, tokenize=True, return_dict=True,
            return_assistant_tokens_mask=True,
        )  # fmt: skip
        assert row["input_ids"] == encoded["input_ids"]
        mask = encoded["assistant_masks"]
        assert row["labels"] == [
            t if m else -100 for t, m in zip(row["input_ids"], mask, strict=True)
        ]
        assert any(mask)
