"""Hostile inputs (issue 13, point 3): each ends in a clear error naming the file (and line and
field where there is one) or, with ``--skip-bad``, a counted reject; memory stays bounded and no
output folder is left half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ferrotune.data import prep_pt, prep_sft, render_chat_template
from ferrotune.errors import DataError, InputNotFoundError, TemplateError

TOKENIZER = Path(__file__).resolve().parents[2] / "examples" / "tokenizer"
GIB = 1 << 30


# Runs the command line, then prints the process's peak RSS. /proc's VmHWM counts from exec on:
# the rusage of a child forked from this (large) test process would count its pages too.
PEAK_AFTER = """
import atexit, sys
from ferrotune.cli import main
def peak():
    status = open("/proc/self/status").read()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))
    sys.stderr.write(f"\\npeak-kib {kib}\\n")
atexit.register(peak)
sys.exit(main(sys.argv[1:]))
"""


def prep_cli(stage: str, source: Path, out: Path, *extra: str) -> tuple[int, str, float]:
    """``ferrotune prep STAGE`` in a child process: its exit status, stderr and peak RSS (MiB)."""
    command = [sys.executable, "-c", PEAK_AFTER, "prep", stage, "--tokenizer", str(TOKENIZER)]
    command += ["--input", str(source), "--out", str(out), *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    stderr, _, peak = done.stderr.rpartition("\npeak-kib ")
    return done.returncode, stderr, int(peak) / 1024


def prep_pt_cli(source: Path, out: Path, *extra: str) -> tuple[int, str, float]:
    return prep_cli("pt", source, out, "--block-size", "8", *extra)


def test_a_2_gib_line_is_rejected_by_its_size_without_being_held_in_memory(tmp_path):
    """A sparse file: 2 GiB of NUL bytes without a newline, then one good line."""
    source = tmp_path / "huge.txt"
    with source.open("wb") as f:
        f.truncate(2 * GIB)
        f.seek(2 * GIB)
        f.write(b"\na good line after it\n")
    status, stderr, peak_mib = prep_pt_cli(source, tmp_path / "out", "--skip-bad", "--quiet")
    assert status == 0, stderr
    counts = json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]
    assert counts["rejected_by_reason"] == {"too_large": 1}
    assert counts["written"] == 1
    reject = json.loads((tmp_path / "out" / "rejects.jsonl").read_text())
    assert reject["line"] == 1 and str(2 * GIB) in reject["message"]
    # Bounded by the 64 MiB a record may be (its buffer grows by doubling), not by the line.
    assert peak_mib < 512, f"peak RSS {peak_mib:.0f} MiB for a 2 GiB line"
    status, stderr, _ = prep_pt_cli(source, tmp_path / "fails")
    assert status != 0
    assert f"{source}:line 1:" in stderr and "larger than the 64 MiB" in stderr
    assert not (tmp_path / "fails").exists()


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_100_mb_json_record_is_rejected_by_its_size(tmp_path, suffix):
    """One conversation of 100 MB (over the 64 MiB a record may be) between two good ones, as
    a JSON Lines line and as an element of a top-level array: a counted reject, the others
    written, memory bounded by the record limit."""
    good = json.dumps({"conversations": [{"from": "human", "value": "hi"},
                                         {"from": "gpt", "value": "hello"}]})  # fmt: skip
    huge_answer = "x" * (100 << 20)
    huge = json.dumps({"conversations": [{"from": "human", "value": "hi"},
                                         {"from": "gpt", "value": huge_answer}]})  # fmt: skip
    del huge_answer
    source = tmp_path / f"huge{suffix}"
    records = [good, huge, good]
    source.write_text(("[" + ",\n".join(records) + "]") if suffix == ".json" else
                      "\n".join(records) + "\n")  # fmt: skip
    del huge, records
    out = tmp_path / "out"
    status, stderr, peak_mib = prep_cli("sft", source, out, "--skip-bad", "--quiet")
    assert status == 0, stderr
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["rejected_by_reason"] == {"too_large": 1} and counts["written"] == 2
    reject = json.loads((out / "rejects.jsonl").read_text())
    assert reject["line"] == 2 and "larger than the 64 MiB" in reject["message"]
    assert peak_mib < 512, f"peak RSS {peak_mib:.0f} MiB for a 100 MB record"
    status, stderr, _ = prep_cli("sft", source, tmp_path / "fails")
    assert status != 0 and f"{source}:line 2:" in stderr
    assert not (tmp_path / "fails").exists()


def test_json_nested_100000_deep_is_a_bad_record_naming_its_line(tmp_path):
    source = tmp_path / "deep.jsonl"
    source.write_text('{"text": "ok"}\n{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(DataError) as caught:
        prep_pt(TOKENIZER, source, tmp_path / "out", block_size=8)
    assert (caught.value.line, caught.value.reason) == (2, "invalid_json")
    assert "recursion limit" in str(caught.value)
    assert not (tmp_path / "out").exists()
    array = tmp_path / "deep.json"
    array.write_text('[{"text": "ok"},\n' + "[" * 100_000 + "]" * 100_000 + "]")
    manifest = prep_pt(TOKENIZER, array, tmp_path / "skipped", block_size=8, skip_bad=True)
    assert manifest["counts"]["rejected_by_reason"] == {"invalid_json": 1}


def test_nul_bytes_are_text_in_a_text_file_and_malformed_in_json(tmp_path):
    """A NUL is valid UTF-8: HF tokenizers encode it as any byte, and so do we. Raw inside a
    JSON string it is a control character JSON forbids."""
    text = tmp_path / "nul.txt"
    text.write_bytes(b"before \x00 after\n")
    assert prep_pt(TOKENIZER, text, tmp_path / "a", block_size=8)["counts"]["written"] == 1
    lines = tmp_path / "nul.jsonl"
    lines.write_bytes(b'{"text": "ok"}\n{"text": "a \x00 b"}\n')
    with pytest.raises(DataError) as caught:
        prep_pt(TOKENIZER, lines, tmp_path / "b", block_size=8)
    assert (caught.value.line, caught.value.reason) == (2, "invalid_json")


def test_a_file_that_is_not_utf8_names_the_line(tmp_path):
    source = tmp_path / "latin1.txt"
    source.write_bytes("fine\ncaf\u00e9 in latin-1\n".encode("latin-1"))
    with pytest.raises(DataError) as caught:
        prep_pt(TOKENIZER, source, tmp_path / "out", block_size=8)
    assert (caught.value.line, caught.value.reason) == (2, "invalid_utf8")


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_parquet_file_is_a_clear_error(tmp_path, damage):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": [f"document {i}" for i in range(2000)]}), good)
    data = good.read_bytes()
    broken = tmp_path / f"{damage}.parquet"
    if damage == "truncated":
        broken.write_bytes(data[: len(data) // 2])
    else:
        broken.write_bytes(data[:4] + bytes(len(data) - 12) + data[-8:])
    with pytest.raises(DataError) as caught:
        prep_pt(TOKENIZER, broken, tmp_path / "out", block_size=8)
    assert str(broken) in str(caught.value) and "Parquet" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_symlink_loop_in_an_input_folder_is_read_once(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("one document\n")
    (folder / "self").symlink_to(folder, target_is_directory=True)
    manifest = prep_pt(TOKENIZER, folder, tmp_path / "out", block_size=8)
    assert manifest["counts"]["read"] == 1
    assert len(manifest["inputs"]) == 1


def test_a_fifo_or_a_folder_named_like_a_file_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    for source in (fifo, folder):
        with pytest.raises((InputNotFoundError, DataError)) as caught:
            prep_pt(TOKENIZER, source, tmp_path / "out", block_size=8)
        assert source.name in str(caught.value)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
         "ran out of fuel"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion limit"),
        ("{% for m in messages recursive %}{{ loop([m]) }}{% endfor %}", "recursion limit"),
        ("{{ 'x' * 1000000000 }}", "too large"),
        ("{% for i in range(1000000000) %}{% endfor %}", "too many elements"),
    ],
)  # fmt: skip
def test_a_template_that_never_ends_is_stopped_with_an_error(source, message):
    with pytest.raises(TemplateError, match=message):
        render_chat_template(source, [{"role": "user", "content": "hi"}])


def test_a_looping_template_in_prep_is_a_bad_record_not_a_hang(tmp_path):
    template = tmp_path / "loop.jinja"
    template.write_text(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    )
    source = tmp_path / "in.jsonl"
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    source.write_text(json.dumps({"conversations": turns}) + "\n")
    with pytest.raises(DataError) as caught:
        prep_sft(TOKENIZER, source, tmp_path / "out", template=template)
    assert (caught.value.line, caught.value.reason) == (1, "template_error")
    assert "fuel" in str(caught.value)
