"""Bad input: a clear error naming file, line and field, a non-zero exit, no output folder;
with ``skip_bad`` the record goes to ``rejects.jsonl`` and the counts still add up."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ferrotune.cli import main
from ferrotune.data import prep_pt
from ferrotune.errors import (
    ConfigError,
    DataError,
    FerrotuneError,
    InputNotFoundError,
    OutputExistsError,
    TokenizerError,
)

GOOD = '{"text": "a good document"}\n'


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# (file name, content, reason, line, field)
BAD_RECORDS = [
    ("malformed.jsonl", GOOD + '{"text": "unterminated\n', "invalid_json", 2, None),
    ("utf8.txt", b"fine line\nbad \xff\xfe byte\n", "invalid_utf8", 2, None),
    ("utf8.jsonl", GOOD.encode() + b'{"text": "\xc3\x28"}\n', "invalid_utf8", 2, None),
    ("missing.jsonl", GOOD + GOOD + '{"content": "x"}\n', "missing_field", 3, "text"),
    ("wrong_type.jsonl", GOOD + '{"text": ["a", "list"]}\n', "wrong_type", 2, "text"),
    ("not_object.jsonl", GOOD + '"just a string"\n', "wrong_type", 2, None),
    ("array.json", '[\n {"text": "a"},\n {"text": 5}\n]\n', "wrong_type", 3, "text"),
]


@pytest.mark.parametrize(("name", "content", "reason", "line", "field"), BAD_RECORDS)
def test_bad_record_is_an_error_naming_file_line_and_field(
    example_tokenizer, tmp_path, name, content, reason, line, field
):
    source = write(tmp_path / "in" / name, content)
    out = tmp_path / "out"
    with pytest.raises(DataError) as caught:
        prep_pt(example_tokenizer, [source], out)
    error = caught.value
    assert (error.path, error.line, error.reason, error.field) == (str(source), line, reason, field)
    assert f"{source}:line {line}" in str(error)
    if field:
        assert f"field '{field}'" in str(error)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in"], "no staging folder left behind"


@pytest.mark.parametrize(("name", "content", "reason", "line", "field"), BAD_RECORDS)
def test_cli_reports_bad_record_and_exits_non_zero(
    example_tokenizer, tmp_path, capsys, name, content, reason, line, field
):
    source = write(tmp_path / "in" / name, content)
    out = tmp_path / "out"
    args = ["prep", "pt", "--tokenizer", str(example_tokenizer), "--input", str(source)]
    status = main([*args, "--out", str(out)])
    assert status == 1
    message = capsys.readouterr().err
    assert message.startswith("ferrotune: error: ")
    assert f"{source}:line {line}" in message
    assert "--skip-bad" in message
    assert not out.exists()


def test_skip_bad_writes_rejects_and_counts_add_up(example_tokenizer, tmp_path):
    inputs = []
    for name, content, *_ in BAD_RECORDS:
        inputs.append(write(tmp_path / "in" / name, content))
    out = tmp_path / "out"
    manifest = prep_pt(example_tokenizer, inputs, out, skip_bad=True)
    counts = manifest["counts"]
    assert counts["rejected"] == len(BAD_RECORDS)
    assert counts["read"] == counts["written"] + counts["empty"] + counts["rejected"]
    expected_reasons: dict[str, int] = {}
    for *_, reason, _line, _field in BAD_RECORDS:
        expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
    assert counts["rejected_by_reason"] == expected_reasons
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == len(BAD_RECORDS)
    got = {(r["file"], r["line"], r["reason"], r["field"]) for r in rejects}
    want = {
        (str(tmp_path / "in" / name), line, reason, field)
        for name, _, reason, line, field in BAD_RECORDS
    }
    assert got == want
    missing = next(r for r in rejects if r["reason"] == "missing_field")
    assert json.loads(missing["record"]) == {"content": "x"}
    assert manifest["stage_info"]["rejects_file"] == "rejects.jsonl"


def test_empty_documents_are_counted_or_rejected_by_policy(example_tokenizer, tmp_path):
    source = write(
        tmp_path / "in" / "docs.jsonl", GOOD + '{"text": ""}\n{"text": "  \\n "}\n' + GOOD
    )
    manifest = prep_pt(example_tokenizer, [source], tmp_path / "skip")
    counts = {k: v for k, v in manifest["counts"].items() if not k.endswith("_by_reason")}
    assert counts == {
        "read": 4, "written": 2, "empty": 2, "rejected": 0, "dropped": 0, "other_shards": 0,
    }  # fmt: skip
    with pytest.raises(DataError) as caught:
        prep_pt(example_tokenizer, [source], tmp_path / "strict", empty="error")
    assert (caught.value.line, caught.value.reason, caught.value.field) == (2, "empty", "text")
    assert not (tmp_path / "strict").exists()
    manifest = prep_pt(
        example_tokenizer, [source], tmp_path / "strict", empty="error", skip_bad=True
    )
    assert manifest["counts"]["rejected_by_reason"] == {"empty": 2}


def test_input_that_matches_nothing(example_tokenizer, tmp_path):
    for pattern in (tmp_path / "missing.txt", tmp_path / "*.jsonl"):
        with pytest.raises(InputNotFoundError) as caught:
            prep_pt(example_tokenizer, [pattern], tmp_path / "out")
        assert caught.value.path == str(pattern)
        assert str(pattern) in str(caught.value)
    write(tmp_path / "notes.md", "not a corpus")
    with pytest.raises(InputNotFoundError, match="supported extension"):
        prep_pt(example_tokenizer, [tmp_path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tokenizer_missing_or_not_a_tokenizer(tmp_path):
    source = write(tmp_path / "in.txt", "hello\n")
    cases = {
        tmp_path / "nowhere": "no such file or folder",
        write(tmp_path / "empty_dir" / "README", "x").parent: "no tokenizer.json",
        write(tmp_path / "bogus" / "tokenizer.json", '{"hello": 1}'): "not a HuggingFace",
        write(tmp_path / "text" / "tokenizer.json", "garbage"): "not a HuggingFace",
    }
    for path, message in cases.items():
        with pytest.raises(TokenizerError, match=message) as caught:
            prep_pt(path, [source], tmp_path / "out")
        assert caught.value.path == str(path)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"block_size": 0}, "block-size"),
        ({"num_shards": 2, "shard_index": 2}, "shard-index"),
        ({"num_shards": 0}, "num-shards"),
        ({"shard_size": "lots"}, "shard-size"),
        ({"doc_sep": "comma"}, "doc-sep"),
        ({"last_block": "keep"}, "last-block"),
        ({"eos_token": "<not-a-token>"}, None),
    ],
)
def test_impossible_options_are_refused(example_tokenizer, tmp_path, options, option):
    source = write(tmp_path / "in.txt", "hello\n")
    with pytest.raises(FerrotuneError) as caught:
        prep_pt(example_tokenizer, [source], tmp_path / "out", **options)
    if option:
        assert isinstance(caught.value, ConfigError)
        assert caught.value.option == option
        assert f"--{option}" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_block_size_zero_from_the_cli(example_tokenizer, tmp_path, capsys):
    source = write(tmp_path / "in.txt", "hello\n")
    args = ["prep", "pt", "--tokenizer", str(example_tokenizer), "--input", str(source)]
    assert main([*args, "--out", str(tmp_path / "out"), "--block-size", "0"]) == 1
    assert "invalid option --block-size: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused_unless_overwrite(example_tokenizer, tmp_path):
    source = write(tmp_path / "in.txt", "hello world\n")
    out = tmp_path / "out"
    first = prep_pt(example_tokenizer, [source], out, block_size=4)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prep_pt(example_tokenizer, [source], out, block_size=4)
    assert json.loads((out / "manifest.json").read_text())["rows"] == first["rows"]
    second = prep_pt(example_tokenizer, [source], out, block_size=2, overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["rows"] == second["rows"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out"]


def test_overwrite_never_deletes_a_folder_ferrotune_did_not_write(example_tokenizer, tmp_path):
    source = write(tmp_path / "in.txt", "hello\n")
    precious = write(tmp_path / "home" / "thesis.tex", "years of work")
    with pytest.raises(ConfigError, match="not a ferrotune output"):
        prep_pt(example_tokenizer, [source], precious.parent, overwrite=True)
    assert precious.read_text() == "years of work"


def test_eos_required_but_unknown(qwen_tokenizer, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(qwen_tokenizer / "tokenizer.json", bare / "tokenizer.json")
    source = write(tmp_path / "in.txt", "hello\n")
    # A bare tokenizer.json has no config: EOS is guessed from well-known tokens and said so.
    manifest = prep_pt(bare / "tokenizer.json", [source], tmp_path / "out")
    assert manifest["tokenizer"]["eos"]["token"] == "<|endoftext|>"
    assert manifest["tokenizer"]["eos_source"] == "guessed"


def test_a_tokenizer_without_any_eos_needs_no_eos_or_eos_token(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "[END]": 2}, "[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    source = write(tmp_path / "in.txt", "hello hello\n")
    with pytest.raises(ConfigError, match="--no-eos") as caught:
        prep_pt(tmp_path / "tokenizer.json", [source], tmp_path / "out")
    assert caught.value.option == "eos"
    manifest = prep_pt(tmp_path / "tokenizer.json", [source], tmp_path / "out", eos=False)
    assert manifest["tokens"]["documents"] == 2
    manifest = prep_pt(tmp_path / "tokenizer.json", [source], tmp_path / "out2", eos_token="[END]")
    assert manifest["tokenizer"]["eos"] == {"token": "[END]", "id": 2}
    assert manifest["tokens"]["documents"] == 3
