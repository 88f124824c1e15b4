"""Bad conversation records: a clear error naming file, line and field, or with ``skip_bad`` a
reject with its reason; policies (same-role merge, conversations ending on a user turn) counted.
Empty messages are bad records here only with ``empty="error"`` (by default they are skipped and
counted: tests/data/test_data_as_it_comes.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ferrotune.data import prep_ppo, prep_sft
from ferrotune.errors import ConfigError, DataError

TOKENIZER = Path(__file__).resolve().parents[2] / "examples" / "tokenizer"


def turn(who: str, text: str) -> dict:
    return {"from": who, "value": text}


GOOD = {"conversations": [turn("human", "hi"), turn("gpt", "hello")]}

# (record, reason, field)
BAD = [
    ({"conversations": [turn("human", "hi"), turn("robot", "beep")]}, "unknown_role",
     "conversations[1].from"),
    ({"conversations": [turn("human", "hi"), turn("gpt", "  ")]}, "empty_content",
     "conversations[1]"),
    ({"conversations": [turn("human", "a"), turn("human", "b"), turn("gpt", "c")]},
     "consecutive_roles", "conversations[1]"),
    ({"conversations": [turn("human", "hi"), {"from": "gpt"}]}, "missing_field",
     "conversations[1].value"),
    ({"conversations": [turn("human", "hi"), turn("system", "late"), turn("gpt", "x")]},
     "misplaced_system", "conversations[1]"),
    ({"dialogue": []}, "unknown_layout", None),
]  # fmt: skip


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


@pytest.mark.parametrize(("record", "reason", "field"), BAD)
def test_bad_conversation_names_file_line_and_field(tmp_path, record, reason, field):
    source = write(tmp_path / "in.jsonl", [GOOD, record])
    with pytest.raises(DataError) as caught:
        prep_sft(TOKENIZER, source, tmp_path / "out", template="chatml", empty="error")
    error = caught.value
    assert (error.path, error.line, error.reason, error.field) == (str(source), 2, reason, field)
    assert f"{source}:line 2" in str(error)
    assert not (tmp_path / "out").exists()


def test_skip_bad_rejects_every_bad_conversation_with_its_reason(tmp_path):
    source = write(tmp_path / "in.jsonl", [GOOD] + [record for record, *_ in BAD])
    manifest = prep_sft(
        TOKENIZER, source, tmp_path / "out", template="chatml", skip_bad=True, empty="error"
    )
    counts = manifest["counts"]
    assert counts["written"] == 1 and counts["rejected"] == len(BAD)
    assert counts["rejected_by_reason"] == {reason: 1 for _, reason, _ in BAD}
    rejects = (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()
    assert [json.loads(r)["line"] for r in rejects] == list(range(2, 2 + len(BAD)))


def test_same_role_merge_and_conversations_ending_on_a_user_turn(tmp_path):
    double = {"conversations": [turn("human", "a"), turn("human", "b"), turn("gpt", "c")]}
    open_ended = {"conversations": [turn("human", "a"), turn("gpt", "b"), turn("human", "c")]}
    source = write(tmp_path / "in.jsonl", [double, open_ended])
    manifest = prep_sft(TOKENIZER, source, tmp_path / "sft", template="chatml", same_role="merge")
    counts = manifest["counts"]
    assert (counts["written"], counts["dropped"]) == (1, 1)
    assert counts["dropped_by_reason"] == {"ends_without_answer": 1}
    # For PPO a conversation ending on a user turn is exactly a prompt.
    manifest = prep_ppo(TOKENIZER, source, tmp_path / "ppo", template="chatml", same_role="merge")
    assert manifest["counts"]["written"] == 2


def test_template_raise_exception_is_reported_with_its_message(tmp_path):
    template = tmp_path / "strict.jinja"
    template.write_text(
        "{%- for m in messages %}{%- if m.role == 'system' %}"
        "{{ raise_exception('System role not supported') }}{%- endif %}"
        "{{ m.content }}{%- endfor %}"
    )
    source = write(tmp_path / "in.jsonl", [GOOD, {"conversations": [turn("system", "s"), *GOOD[
        "conversations"]]}])  # fmt: skip
    with pytest.raises(DataError) as caught:
        prep_sft(TOKENIZER, source, tmp_path / "out", template=template)
    error = caught.value
    assert (error.line, error.reason) == (2, "template_error")
    assert "System role not supported" in str(error)
    assert str(template) in str(error)


def test_an_answer_the_template_rewrites_beyond_recognition_is_bad(tmp_path):
    template = tmp_path / "upper.jinja"
    template.write_text(
        "{%- for m in messages %}{{ m.role }}: {{ m.content | upper }}\n{%- endfor %}"
    )
    source = write(tmp_path / "in.jsonl", [GOOD])
    with pytest.raises(DataError) as caught:
        prep_sft(TOKENIZER, source, tmp_path / "out", template=template)
    assert caught.value.reason == "answer_not_found"
    assert caught.value.field == "turn 1"


def test_unknown_options_and_values_are_refused_by_name(tmp_path):
    source = write(tmp_path / "in.jsonl", [GOOD])
    with pytest.raises(ConfigError) as caught:
        prep_sft(TOKENIZER, source, tmp_path / "out", max_lenght=10)
    assert "max_lenght" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        prep_sft(TOKENIZER, source, tmp_path / "out", learn="first")
    assert caught.value.option == "learn"
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(TOKENIZER / "tokenizer.json", bare / "tokenizer.json")
    with pytest.raises(ConfigError, match="no chat template"):
        prep_sft(bare, source, tmp_path / "out")
