"""Every input shape ``prep pt`` reads gives the same documents, and input can be split between
independent runs with ``num_shards``/``shard_index``."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ferrotune.data import prep_pt

DOCS = ["Rivers carry silt to the sea.", "面包需要时间发酵。", "Snow melts in spring.\nThen rain."]


def stream(out: Path) -> list[int]:
    """The real tokens of an output, in order."""
    manifest = json.loads((out / "manifest.json").read_text())
    tokens = []
    for shard in manifest["shards"]:
        table = pa.ipc.open_stream(str(out / shard["file"])).read_all()
        for ids, mask in zip(
            table.column("input_ids").to_pylist(),
            table.column("attention_mask").to_pylist(),
            strict=True,
        ):
            tokens.extend(t for t, m in zip(ids, mask, strict=True) if m)
    return tokens


@pytest.fixture
def reference(example_tokenizer, tmp_path) -> list[int]:
    source = tmp_path / "ref.jsonl"
    source.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    prep_pt(example_tokenizer, [source], tmp_path / "ref", block_size=8)
    return stream(tmp_path / "ref")


def test_json_array_parquet_and_paragraph_text_give_the_same_documents(
    example_tokenizer, tmp_path, reference
):
    as_array = tmp_path / "docs.json"
    as_array.write_text(json.dumps([{"body": d, "id": i} for i, d in enumerate(DOCS)], indent=2))
    out = tmp_path / "json"
    prep_pt(example_tokenizer, [as_array], out, block_size=8, text_field="body")
    assert stream(out) == reference

    as_parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "text": DOCS}), as_parquet, row_group_size=2)
    out = tmp_path / "parquet"
    manifest = prep_pt(example_tokenizer, [as_parquet], out, block_size=8)
    assert stream(out) == reference
    assert manifest["inputs"][0]["format"] == "parquet"

    as_text = tmp_path / "docs.txt"
    as_text.write_text("\n\n".join(DOCS) + "\n", encoding="utf-8")
    out = tmp_path / "paragraphs"
    manifest = prep_pt(example_tokenizer, [as_text], out, block_size=8, doc_sep="blank-line")
    assert stream(out) == reference
    assert manifest["counts"]["read"] == 3


def test_parquet_errors_name_the_column(example_tokenizer, tmp_path):
    from ferrotune.errors import DataError

    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": DOCS}), path)
    with pytest.raises(DataError, match=r"field 'text': no such column.*content"):
        prep_pt(example_tokenizer, [path], tmp_path / "out")
    pq.write_table(pa.table({"text": [1, 2, 3]}), path)
    with pytest.raises(DataError, match="expected a string column"):
        prep_pt(example_tokenizer, [path], tmp_path / "out")
    pq.write_table(pa.table({"text": ["a", None, "b"]}), path)
    with pytest.raises(DataError) as caught:
        prep_pt(example_tokenizer, [path], tmp_path / "out")
    assert (caught.value.line, caught.value.reason) == (2, "missing_field")
    assert "row 2" in str(caught.value)


def test_folders_and_globs_read_sorted_files_once(example_tokenizer, tmp_path, reference):
    folder = tmp_path / "corpus"
    (folder / "b").mkdir(parents=True)
    (folder / "a.jsonl").write_text(json.dumps({"text": DOCS[0]}) + "\n")
    (folder / "b" / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[1:]))
    (folder / "README.md").write_text("not data")
    out = tmp_path / "out"
    manifest = prep_pt(example_tokenizer, [f"{folder}/*.jsonl", folder], out, block_size=8)
    assert [Path(i["path"]).name for i in manifest["inputs"]] == ["a.jsonl", "c.jsonl"]
    assert stream(out) == reference


@pytest.mark.parametrize("num_shards", [2, 3])
def test_num_shards_split_the_records_between_runs(example_tokenizer, tmp_path, num_shards):
    corpus = Path("examples/pt")
    full = prep_pt(example_tokenizer, [corpus], tmp_path / "full", block_size=64)
    parts = [
        prep_pt(
            example_tokenizer,
            [corpus],
            tmp_path / f"part{i}",
            block_size=64,
            num_shards=num_shards,
            shard_index=i,
        )
        for i in range(num_shards)
    ]
    total_records = sum(i["records"] for i in full["inputs"])
    for part in parts:
        assert part["counts"]["read"] + part["counts"]["other_shards"] == total_records
        counts = part["counts"]
        assert counts["read"] == counts["written"] + counts["empty"] + counts["rejected"]
    for key in ("read", "written", "empty"):
        assert sum(p["counts"][key] for p in parts) == full["counts"][key]
    assert sum(p["tokens"]["documents"] for p in parts) == full["tokens"]["documents"]
    shares = [p["counts"]["read"] for p in parts]
    assert max(shares) - min(shares) <= 1, "record k goes to run k mod N: an even split"
