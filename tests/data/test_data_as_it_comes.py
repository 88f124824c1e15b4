"""Real data as it comes from the field (issue 13): a UTF-8 byte-order mark or CRLF line ends in
any text input change nothing, and a conversation with nothing to train on (an empty message, no
messages) is skipped and counted by reason by default (``empty="error"`` makes it a bad record),
as PT already does for empty documents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from ferrotune.data import prep_dpo, prep_ppo, prep_pt, prep_rm, prep_sft
from ferrotune.errors import DataError

TOKENIZER = Path(__file__).resolve().parents[2] / "examples" / "tokenizer"
BOM = "\ufeff"


def turn(who: str, text: str) -> dict:
    return {"from": who, "value": text}


GOOD = {"conversations": [turn("human", "hi there"), turn("gpt", "hello, how can I help?")]}
SECOND = {"conversations": [turn("human", "what is 2 + 2?"), turn("gpt", "4")]}
EMPTY_TURN = {"conversations": [turn("human", " "), turn("gpt", "an answer to nothing")]}
NO_TURNS = {"conversations": []}
PAIR = {
    "conversations": [turn("human", "pick one")],
    "chosen": "the good one",
    "rejected": "the bad one",
}
EMPTY_PAIR = {"conversations": [turn("human", "")], "chosen": "a", "rejected": "b"}


def rows(out: Path) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    tables = [pa.ipc.open_stream(str(out / s["file"])).read_all() for s in manifest["shards"]]
    return pa.concat_tables(tables).to_pylist()


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


# ------------------------------------------------------------------ byte-order marks and CRLF


@pytest.mark.parametrize(
    ("name", "render"),
    [
        ("lines.jsonl", jsonl),
        ("lines.json", jsonl),  # a .json file that is JSON Lines
        ("array.json", lambda records: json.dumps(records, indent=2, ensure_ascii=False)),
    ],
)
def test_bom_and_crlf_conversation_files_give_the_clean_files_shards(tmp_path, name, render):
    text = render([GOOD, SECOND])
    clean, messy = tmp_path / "clean", tmp_path / "messy"
    clean.mkdir(), messy.mkdir()
    (clean / name).write_text(text, encoding="utf-8", newline="\n")
    (messy / name).write_text(BOM + text.replace("\n", "\r\n"), encoding="utf-8", newline="")
    a = prep_sft(TOKENIZER, clean / name, tmp_path / "a", template="chatml")
    b = prep_sft(TOKENIZER, messy / name, tmp_path / "b", template="chatml")
    assert a["counts"]["written"] == b["counts"]["written"] == 2
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    assert b["counts"]["rejected"] == 0


@pytest.mark.parametrize("doc_sep", ["line", "blank-line"])
def test_bom_and_crlf_text_files_give_the_clean_files_blocks(tmp_path, doc_sep):
    text = "first document here\n\nsecond one, a little longer\nthird\n"
    clean, messy = tmp_path / "clean.txt", tmp_path / "messy.txt"
    clean.write_text(text, encoding="utf-8", newline="\n")
    messy.write_text(BOM + text.replace("\n", "\r\n"), encoding="utf-8", newline="")
    a = prep_pt(TOKENIZER, clean, tmp_path / "a", block_size=8, doc_sep=doc_sep)
    b = prep_pt(TOKENIZER, messy, tmp_path / "b", block_size=8, doc_sep=doc_sep)
    assert a["tokens"] == b["tokens"] and a["counts"] == b["counts"]
    assert rows(tmp_path / "a") == rows(tmp_path / "b")


def test_a_bom_in_a_jsonl_text_field_file_is_not_a_malformed_record(tmp_path):
    source = tmp_path / "docs.jsonl"
    source.write_text(BOM + jsonl([{"text": "one"}, {"text": "two"}]), encoding="utf-8")
    manifest = prep_pt(TOKENIZER, source, tmp_path / "out", block_size=8)
    assert manifest["counts"]["written"] == 2


# ------------------------------------------------------------------ nothing to train on


def test_an_empty_message_is_skipped_and_counted_by_reason_in_every_conversation_stage(
    tmp_path,
):
    conversations = tmp_path / "conversations.jsonl"
    conversations.write_text(jsonl([GOOD, EMPTY_TURN, NO_TURNS, SECOND]))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(jsonl([PAIR, EMPTY_PAIR]))
    runs = {
        "sft": (prep_sft, conversations, {"empty_content": 1, "empty": 1}),
        "ppo": (prep_ppo, conversations, {"empty_content": 1, "empty": 1}),
        "rm": (prep_rm, pairs, {"empty_content": 1}),
        "dpo": (prep_dpo, pairs, {"empty_content": 1}),
    }
    for stage, (prep, source, reasons) in runs.items():
        counts = prep(TOKENIZER, source, tmp_path / stage, template="chatml")["counts"]
        assert counts["empty_by_reason"] == reasons, stage
        assert counts["empty"] == sum(reasons.values()), stage
        assert counts["rejected"] == 0, stage
        assert counts["read"] == counts["written"] + counts["empty"] + counts["dropped"], stage


def test_empty_error_makes_an_empty_message_a_bad_record_naming_file_line_and_field(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(jsonl([GOOD, EMPTY_TURN]))
    with pytest.raises(DataError) as caught:
        prep_sft(TOKENIZER, source, tmp_path / "out", template="chatml", empty="error")
    error = caught.value
    assert (error.line, error.reason, error.field) == (2, "empty_content", "conversations[0]")
    assert not (tmp_path / "out").exists()
    # With --skip-bad it is a reject, written to rejects.jsonl.
    manifest = prep_sft(
        TOKENIZER, source, tmp_path / "out", template="chatml", empty="error", skip_bad=True
    )
    assert manifest["counts"]["rejected_by_reason"] == {"empty_content": 1}
    assert manifest["counts"]["empty"] == 0


def test_the_cli_summary_says_how_many_were_skipped_and_why(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(jsonl([GOOD, EMPTY_TURN]))
    command = [sys.executable, "-m", "ferrotune", "prep", "sft", "--tokenizer", str(TOKENIZER)]
    command += ["--input", str(source), "--out", str(tmp_path / "out"), "--template", "chatml"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "1 empty (empty_content 1)" in done.stdout
    failed = subprocess.run(
        [*command[:-2], "--out", str(tmp_path / "o2"), "--template", "chatml", "--empty", "error"],
        capture_output=True,
        text=True,
    )
    assert failed.returncode != 0
    assert f"{source}:line 2, field 'conversations[0]': empty user message" in failed.stderr


def test_medicalgpts_sharegpt_file_preps_with_default_options(medicalgpt, qwen_tokenizer, tmp_path):
    """Its line 59 has an empty user message: skipped and counted, the other 999 records written
    or counted by the stage's policy (conversations that end on a user turn are dropped)."""
    source = medicalgpt / "sft" / "sharegpt_zh_1K_format.jsonl"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    counts = prep_sft(qwen_tokenizer, source, tmp_path / "out")["counts"]
    assert counts["read"] == 1000
    assert counts["empty_by_reason"] == {"empty_content": 1}
    assert counts["rejected"] == 0
    assert counts["written"] + counts["dropped"] == 999
    assert counts["dropped_by_reason"] == {"ends_without_answer": 7}
