"""``ferrotune inspect`` on real prep outputs: its numbers are the manifest's, its learned text
is exactly the assistant answers, and its length histogram matches lengths counted separately
(with ``datasets``, the way a user would load the folder)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import datasets
import pyarrow as pa
import pytest
from tokenizers import Tokenizer

from ferrotune import inspect
from ferrotune.data import prep_pt, prep_sft
from ferrotune.errors import ConfigError, DataError, TokenizerError

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = REPO / "examples" / "tokenizer"

CONVERSATIONS = [
    [("human", "What is 2+2?"), ("gpt", "2+2 is 4.")],
    [
        ("system", "You are terse."),
        ("human", "Name a colour."),
        ("gpt", "Blue."),
        ("human", "另一个颜色？"),
        ("gpt", "红色。"),
    ],
    [("human", "Say hi to the crew"), ("gpt", "Hi there, crew!")],
]
ANSWERS = [text for conversation in CONVERSATIONS for role, text in conversation if role == "gpt"]
USER_TEXTS = [text for conv in CONVERSATIONS for role, text in conv if role != "gpt"]
LEARNED = re.compile(r"\[\[(.*?)\]\]", re.S)
BUCKET = re.compile(r"^\s+<=([\d,]+) (█*) +([\d,]+)$", re.M)


def write_sharegpt(path: Path, conversations: list[list[tuple[str, str]]]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for conversation in conversations:
            turns = [{"from": role, "value": text} for role, text in conversation]
            handle.write(json.dumps({"conversations": turns}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def pt_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inspect") / "pt"
    prep_pt(TOKENIZER, [REPO / "examples" / "pt"], out, block_size=64)
    return out


@pytest.fixture(scope="module")
def sft_source(tmp_path_factory) -> Path:
    return write_sharegpt(tmp_path_factory.mktemp("inspect") / "chat.jsonl", CONVERSATIONS)


@pytest.fixture(scope="module")
def sft_out(sft_source: Path) -> Path:
    out = sft_source.parent / "sft"
    prep_sft(TOKENIZER, [sft_source], out, template="chatml")
    return out


@pytest.fixture(scope="module")
def packed_out(sft_source: Path) -> Path:
    out = sft_source.parent / "packed"
    prep_sft(TOKENIZER, [sft_source], out, template="chatml", pack=True, max_length=64)
    return out


@pytest.fixture(autouse=True)
def _no_color_override(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)


def inspect_output(capsys, *argv: str) -> str:
    """Runs ``ferrotune inspect ARGV`` through a parser built as cli.py builds it."""
    parser = argparse.ArgumentParser()
    inspect.add_parser(parser.add_subparsers())
    args = parser.parse_args(["inspect", *argv])
    assert args.run(args) == 0
    return capsys.readouterr().out


def rows_of(output: str) -> dict[int, str]:
    """Row index → the text printed for it (header line dropped)."""
    parts = re.split(r"^── row ([\d,]+) of [\d,]+ ──\n", output, flags=re.M)
    return {
        int(index.replace(",", "")): text
        for index, text in zip(parts[1::2], parts[2::2], strict=True)
    }


def histogram(output: str) -> dict[int, int]:
    return {
        int(bound.replace(",", "")): int(n.replace(",", ""))
        for bound, _, n in BUCKET.findall(output)
    }


def reference_histogram(out: Path) -> dict[int, int]:
    """Rows per power-of-two bucket of real (attended) tokens, counted in plain Python."""
    counts: dict[int, int] = {}
    for mask in datasets.load_from_disk(str(out))["attention_mask"]:
        real = sum(1 for m in mask if m)
        bound = 1 << max(real - 1, 0).bit_length()
        counts[bound] = counts.get(bound, 0) + 1
    return counts


def test_pt_summary_numbers_are_the_manifests(capsys, pt_out):
    manifest = json.loads((pt_out / "manifest.json").read_text())
    output = inspect_output(capsys, str(pt_out), "--n", "0")
    counts, tokens = manifest["counts"], manifest["tokens"]
    assert f"pt, {manifest['rows']:,} rows in 1 shard(s)" in output
    for entry in manifest["inputs"]:
        assert f"{entry['path']} ({entry['records']:,} records)" in output
    eos = manifest["tokenizer"]["eos"]
    assert (
        f"vocab {manifest['tokenizer']['vocab_size']:,}, eos {eos['token']} = {eos['id']}" in output
    )
    assert (
        f"{counts['read']:,} read = {counts['written']:,} written + {counts['empty']:,} empty "
        f"+ {counts['rejected']:,} rejected + {counts['dropped']:,} dropped"
    ) in output
    assert counts["read"] == counts["written"] + counts["empty"] + counts["rejected"]
    [line] = [line for line in output.splitlines() if line.startswith("  tokens ")]
    assert line.startswith(
        f"  tokens     {tokens['written']:,} (documents {tokens['documents']:,})"
    )
    assert line.endswith(f", learned {tokens['labels']:,} (100.0%), padding {tokens['padding']:,}")
    assert "template" not in output
    assert "── row" not in output


def test_sft_summary_numbers_are_the_manifests(capsys, sft_out, packed_out):
    manifest = json.loads((sft_out / "manifest.json").read_text())
    output = inspect_output(capsys, str(sft_out), "--n", "0")
    tokens = manifest["tokens"]
    assert f"sft, {manifest['rows']:,} rows" in output
    assert "template   chatml" in output
    assert f"learned {tokens['labels']:,} ({100 * tokens['label_share']:.1f}%)" in output
    assert "packing" not in output
    packed = json.loads((packed_out / "manifest.json").read_text())
    output = inspect_output(capsys, str(packed_out), "--n", "0")
    efficiency = packed["stage_info"]["packing_efficiency"]
    assert f"packing    {100 * efficiency:.1f}% of row capacity used" in output


@pytest.mark.parametrize("folder", ["pt_out", "sft_out", "packed_out"])
def test_histogram_counts_every_row_once(capsys, request, folder):
    out = request.getfixturevalue(folder)
    output = inspect_output(capsys, str(out), "--n", "0")
    buckets = histogram(output)
    assert sum(buckets.values()) == json.loads((out / "manifest.json").read_text())["rows"]
    assert {b: n for b, n in buckets.items() if n} == reference_histogram(out)


def test_bracket_mode_learns_exactly_the_answers(capsys, sft_out):
    output = inspect_output(capsys, str(sft_out), "--color", "never")
    rows = rows_of(output)
    assert sorted(rows) == [0, 1, 2]
    learned = [span for index in sorted(rows) for span in LEARNED.findall(rows[index])]
    assert learned == [f"{answer}<|im_end|>" for answer in ANSWERS]
    outside = LEARNED.sub("", "".join(rows.values()))
    for text in USER_TEXTS:
        assert text in outside
    assert "<|im_start|>assistant\n[[2+2 is 4.<|im_end|>]]" in rows[0]
    assert "\x1b" not in output


def test_default_off_a_terminal_is_bracket_mode(capsys, sft_out):
    assert inspect_output(capsys, str(sft_out), "--n", "1") == inspect_output(
        capsys, str(sft_out), "--n", "1", "--color", "never"
    )


def test_color_mode_paints_learned_green_and_masked_dim(capsys, sft_out):
    output = inspect_output(capsys, str(sft_out), "--color", "always", "--n", "1")
    assert "\x1b[32m2+2 is 4.<|im_end|>\x1b[0m" in output
    assert "\x1b[2m<|im_start|>user\nWhat is 2+2?<|im_end|>" in output
    assert "[[" not in output


def test_pt_rows_mark_document_starts_and_padding(capsys, pt_out):
    table = datasets.load_from_disk(str(pt_out))
    last = len(table) - 1
    output = inspect_output(capsys, str(pt_out), "--index", "-1", "--index", "2", "--index", "0")
    rows = rows_of(output)
    assert list(rows) == [last, 2, 0]
    padding = json.loads((pt_out / "manifest.json").read_text())["stage_info"]["last_block"]
    assert rows[last].rstrip().endswith(f"]]<pad ×{padding['padding']}>")
    for index, text in rows.items():
        positions, mask = table[index]["position_ids"], table[index]["attention_mask"]
        starts = sum(1 for i in range(1, len(positions)) if positions[i] == 0 and mask[i])
        assert text.count(" ¦ ") == starts
        body = text.split("\n", 1)[1].strip("\n")
        outside = LEARNED.sub("", body).replace(" ¦ ", "")
        assert outside in ("", f"<pad ×{padding['padding']}>"), "everything real is learned"


def test_packed_rows_decode_each_conversation(capsys, packed_out):
    output = inspect_output(capsys, str(packed_out), "--n", "9")
    text = "".join(rows_of(output).values())
    assert sorted(LEARNED.findall(text)) == sorted(f"{a}<|im_end|>" for a in ANSWERS)
    assert text.count(" ¦ ") == 3 - len(rows_of(output))


def test_decoded_text_is_the_tokenizers_own(capsys, sft_out):
    """Runs decoded one by one give back the text decoding the whole row gives."""
    tokenizer = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    ids = datasets.load_from_disk(str(sft_out))[1]["input_ids"]
    whole = tokenizer.decode(ids, skip_special_tokens=False)
    row = rows_of(inspect_output(capsys, str(sft_out), "--index", "1"))[1]
    body = row.split("\n", 1)[1]
    assert body.replace("[[", "").replace("]]", "") == whole + "\n"


def test_index_out_of_range_is_a_config_error(capsys, sft_out):
    for bad in ("3", "-4"):
        with pytest.raises(ConfigError, match=r"--index .*3 rows \(0\.\.2\)") as caught:
            inspect_output(capsys, str(sft_out), "--index", bad)
        assert caught.value.option == "index"
    with pytest.raises(ConfigError) as caught:
        inspect_output(capsys, str(sft_out), "--n", "-1")
    assert caught.value.option == "n"
    assert capsys.readouterr().out == "", "nothing is printed before the error"


def test_more_rows_asked_than_there_are_shows_them_all(capsys, sft_out):
    assert sorted(rows_of(inspect_output(capsys, str(sft_out), "--n", "50"))) == [0, 1, 2]


def test_not_an_output_folder(capsys, tmp_path):
    with pytest.raises(DataError, match=r"no manifest\.json"):
        inspect_output(capsys, str(tmp_path))


def test_relative_tokenizer_path_elsewhere_names_the_way_out(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    source = write_sharegpt(tmp_path / "chat.jsonl", CONVERSATIONS[:1])
    prep_sft("examples/tokenizer", [source], tmp_path / "sft", template="chatml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TokenizerError, match="pass --tokenizer"):
        inspect_output(capsys, "sft")
    output = inspect_output(capsys, "sft", "--tokenizer", str(TOKENIZER), "--color", "never")
    assert "[[2+2 is 4.<|im_end|>]]" in output


def test_a_resaved_tokenizer_decodes_quietly_but_a_changed_one_is_warned_about(
    capsys, sft_out, tmp_path
):
    """The warning compares the manifest's fingerprint, not the file's bytes: the tokenizer
    spelled as an older writer would (merges as strings, keys sorted) is the same one."""
    tokenizer = json.loads((TOKENIZER / "tokenizer.json").read_text(encoding="utf-8"))
    model = tokenizer["model"]
    model["merges"] = [" ".join(pair) for pair in model["merges"]]
    resaved = tmp_path / "resaved.json"
    resaved.write_text(json.dumps(tokenizer, sort_keys=True), encoding="utf-8")
    assert resaved.read_bytes() != (TOKENIZER / "tokenizer.json").read_bytes()
    inspect_output(capsys, str(sft_out), "--tokenizer", str(resaved), "--color", "never")
    assert "warning" not in capsys.readouterr().err
    vocab = model["vocab"]
    a, b = (next(token for token, i in vocab.items() if i == id_) for id_ in (300, 301))
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two entries trade ids
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(tokenizer), encoding="utf-8")
    parser = argparse.ArgumentParser()
    inspect.add_parser(parser.add_subparsers())
    args = parser.parse_args(["inspect", str(sft_out), "--tokenizer", str(changed)])
    assert args.run(args) == 0
    assert (
        f"ferrotune: warning: {changed} is not the tokenizer.json the folder was prepared with "
        "(fingerprint differs)" in capsys.readouterr().err
    )


def test_control_characters_in_data_are_escaped(capsys, tmp_path):
    source = write_sharegpt(
        tmp_path / "chat.jsonl", [[("human", "red \x1b[31m alert\r"), ("gpt", "ok")]]
    )
    prep_sft(TOKENIZER, [source], tmp_path / "sft", template="chatml")
    output = inspect_output(capsys, str(tmp_path / "sft"), "--color", "never")
    assert "red \\x1b[31m alert\\r" in output
    assert "\x1b" not in output and "\r" not in output


def test_columns_are_read_by_name_for_any_stage(capsys, tmp_path):
    """A DPO-shaped folder (no prep dpo yet): each ``*input_ids`` column decoded with its own
    mask and labels, the histogram over the longest sequence of each row."""
    tokenizer = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    prompt = tokenizer.encode("Question: sky colour?\n").ids
    chosen, rejected = tokenizer.encode("Blue.").ids, tokenizer.encode("Green, I think.").ids
    columns = {
        "prompt_input_ids": [prompt],
        "prompt_attention_mask": [[1] * len(prompt)],
        "chosen_input_ids": [prompt + chosen],
        "chosen_attention_mask": [[1] * len(prompt + chosen)],
        "chosen_labels": [[-100] * len(prompt) + chosen],
        "rejected_input_ids": [prompt + rejected + [0, 0]],
        "rejected_attention_mask": [[1] * len(prompt + rejected) + [0, 0]],
        "rejected_labels": [[-100] * len(prompt) + rejected + [-100, -100]],
    }
    table = pa.table(columns)
    out = tmp_path / "dpo"
    out.mkdir()
    shard = out / "data-00000-of-00001.arrow"
    with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    longest = len(prompt + rejected)
    manifest = {
        "stage": "dpo",
        "rows": 1,
        "inputs": [{"path": "pairs.jsonl", "records": 1}],
        "tokenizer": {"path": str(TOKENIZER / "tokenizer.json"), "vocab_size": 2048, "eos": None},
        "template": None,
        "counts": {"read": 1, "written": 1, "empty": 0, "rejected": 0, "dropped": 0},
        "tokens": {"written": 2 * len(prompt) + len(prompt + chosen + rejected)},
        "columns": [{"name": name} for name in columns],
        "shards": [{"file": "data-00000-of-00001.arrow", "rows": 1}],
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    output = inspect_output(capsys, str(out), "--color", "never")
    assert "dpo, 1 rows" in output and "no eos" in output
    assert "(the longest of its sequences)" in output
    assert histogram(output) == {1 << (longest - 1).bit_length(): 1}
    row = rows_of(output)[0]
    assert "prompt_input_ids: " in row and "[[" not in row.split("chosen_input_ids")[0]
    assert LEARNED.findall(row) == ["Blue.", "Green, I think."]
    assert "Green, I think.]]<pad ×2>" in row
