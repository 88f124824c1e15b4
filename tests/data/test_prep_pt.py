"""``prep pt`` against independent references on real data.

References: Python ``tokenizers`` and ``transformers`` for the ids, a plain-Python version of the
packing rules written here (stream → slices, not the engine's loop) for the blocks, and
``datasets`` / ``pyarrow`` for reading the output.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest
import tokenizers
import transformers

from ferrotune.data import ShardDataset, prep_pt

COLUMNS = ("input_ids", "attention_mask", "labels", "position_ids")


def read_columns(out: Path) -> dict[str, np.ndarray]:
    """All rows of an output folder as 2-D arrays, read with plain pyarrow."""
    manifest = json.loads((out / "manifest.json").read_text())
    tables = [pa.ipc.open_stream(str(out / s["file"])).read_all() for s in manifest["shards"]]
    table = pa.concat_tables(tables)
    columns = {}
    for name in COLUMNS:
        column = table.column(name).combine_chunks()
        width = column.type.list_size
        columns[name] = column.flatten().to_numpy().reshape(-1, width)
    return columns


def text_documents(files: list[Path]) -> list[str]:
    """Documents of .txt files, one per line, empty ones left out: the engine's rules."""
    docs = []
    for path in files:
        for line in path.read_text(encoding="utf-8").split("\n"):
            line = line.removesuffix("\r")
            if line.strip():
                docs.append(line)
    return docs


def reference_blocks(
    docs: list[list[int]], block_size: int, last_block: str, pad_id: int
) -> dict[str, np.ndarray]:
    """The packing rules, written independently: one token stream with a flag where each
    document starts, cut into slices; a position counts tokens since the last document start or
    block start."""
    stream = [token for doc in docs for token in doc]
    starts = [i == 0 for doc in docs for i in range(len(doc))]
    full, tail = divmod(len(stream), block_size)
    rows = {name: [] for name in COLUMNS}
    n_rows = full + (1 if tail and last_block == "pad" else 0)
    for r in range(n_rows):
        ids = stream[r * block_size : (r + 1) * block_size]
        flags = starts[r * block_size : (r + 1) * block_size]
        positions, position = [], 0
        for i, flag in enumerate(flags):
            position = 0 if (flag or i == 0) else position + 1
            positions.append(position)
        real = len(ids)
        padding = block_size - real
        rows["input_ids"].append(ids + [pad_id] * padding)
        rows["attention_mask"].append([1] * real + [0] * padding)
        rows["labels"].append(ids + [-100] * padding)
        rows["position_ids"].append(positions + list(range(padding)))
    return {
        name: np.array(value, dtype=np.int64).reshape(-1, block_size)
        for name, value in rows.items()
    }


def test_ids_equal_python_tokenizers_and_transformers(qwen_tokenizer, pretrain_files, tmp_path):
    out = tmp_path / "pt"
    manifest = prep_pt(qwen_tokenizer, pretrain_files, out, block_size=4096)
    columns = read_columns(out)
    ours = columns["input_ids"][columns["attention_mask"] == 1].tolist()

    docs = text_documents(pretrain_files)
    hf = transformers.AutoTokenizer.from_pretrained(qwen_tokenizer)
    eos = hf.eos_token_id
    assert manifest["tokenizer"]["eos"]["id"] == eos == hf.convert_tokens_to_ids("<|im_end|>")
    with_transformers = [t for ids in hf(docs)["input_ids"] for t in [*ids, eos]]
    raw = tokenizers.Tokenizer.from_file(str(qwen_tokenizer / "tokenizer.json"))
    with_tokenizers = [t for enc in raw.encode_batch(docs) for t in [*enc.ids, eos]]

    assert with_transformers == with_tokenizers
    assert ours == with_tokenizers
    assert manifest["tokens"]["documents"] == len(ours)
    assert manifest["counts"]["written"] == len(docs)


@pytest.mark.parametrize(
    ("block_size", "last_block"), [(333, "pad"), (1024, "drop"), (7, "pad"), (1, "drop")]
)
def test_blocks_equal_a_plain_python_reference(
    example_tokenizer, pretrain_files, tmp_path, block_size, last_block
):
    files = pretrain_files[:1] if block_size < 8 else pretrain_files
    out = tmp_path / "pt"
    manifest = prep_pt(example_tokenizer, files, out, block_size=block_size, last_block=last_block)
    raw = tokenizers.Tokenizer.from_file(str(example_tokenizer / "tokenizer.json"))
    eos = raw.token_to_id("<|endoftext|>")
    docs = [[*enc.ids, eos] for enc in raw.encode_batch(text_documents(files))]
    expected = reference_blocks(docs, block_size, last_block, pad_id=eos)
    ours = read_columns(out)
    for name in COLUMNS:
        np.testing.assert_array_equal(ours[name], expected[name], err_msg=name)

    total = sum(len(d) for d in docs)
    tokens = manifest["tokens"]
    assert tokens["documents"] == total
    assert tokens["written"] + tokens["dropped"] == total
    assert manifest["rows"] == len(expected["input_ids"])
    last = manifest["stage_info"]["last_block"]
    tail = total % block_size
    if tail == 0:
        assert last == {"outcome": "none"}
    elif last_block == "pad":
        assert last == {"outcome": "padded", "tokens": tail, "padding": block_size - tail}
    else:
        assert last == {"outcome": "dropped", "tokens": tail}


def test_load_from_disk_round_trip(example_tokenizer, tmp_path):
    out = tmp_path / "pt"
    manifest = prep_pt(example_tokenizer, [Path("examples/pt")], out, block_size=64)
    expected = read_columns(out)

    ds = datasets.load_from_disk(str(out))
    assert ds.column_names == list(COLUMNS)
    assert len(ds) == manifest["rows"]
    for name in COLUMNS:
        np.testing.assert_array_equal(np.array(ds[name]), expected[name])
    torch_batch = ds.with_format("torch")[:5]
    assert tuple(torch_batch["input_ids"].shape) == (5, 64)

    shard = datasets.Dataset.from_file(str(out / manifest["shards"][0]["file"]))
    assert len(shard) == manifest["shards"][0]["rows"]

    rows = ShardDataset(out)
    assert len(rows) == manifest["rows"]
    for index in (0, len(rows) // 2, -1):
        item = rows[index]
        for name in COLUMNS:
            np.testing.assert_array_equal(item[name].numpy(), expected[name][index])


def test_shard_dataset_is_memory_mapped(example_tokenizer, tmp_path):
    out = tmp_path / "pt"
    prep_pt(example_tokenizer, [Path("examples/pt")] * 1, out, block_size=16)
    size = sum(p.stat().st_size for p in out.glob("*.arrow"))
    before = pa.total_allocated_bytes()
    rows = ShardDataset(out)
    _ = [rows[i] for i in range(0, len(rows), 7)]
    assert pa.total_allocated_bytes() - before < size // 10


def test_identical_bytes_for_any_worker_count(qwen_tokenizer, pretrain_files, tmp_path):
    manifests = {}
    for workers in (1, 2, 3):
        out = tmp_path / f"w{workers}"
        manifests[workers] = prep_pt(
            qwen_tokenizer,
            pretrain_files,
            out,
            block_size=512,
            workers=workers,
            shard_size="1MB",
        )
    contents = {
        workers: [(tmp_path / f"w{workers}" / s["file"]).read_bytes() for s in m["shards"]]
        for workers, m in manifests.items()
    }
    assert len(contents[1]) > 1, "several shards, so rollover is covered too"
    assert contents[1] == contents[2] == contents[3]

    def stable(manifest: dict) -> dict:
        manifest = dict(manifest, elapsed_seconds=None, timings=None)
        manifest["options"] = dict(manifest["options"], workers=None)
        return manifest

    assert stable(manifests[1]) == stable(manifests[2]) == stable(manifests[3])


def test_manifest_records_inputs_tokenizer_and_counts(qwen_tokenizer, pretrain_files, tmp_path):
    import hashlib

    manifest = prep_pt(qwen_tokenizer, pretrain_files, tmp_path / "pt", block_size=1024)
    assert manifest["stage"] == "pt"
    for entry, path in zip(manifest["inputs"], pretrain_files, strict=True):
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["bytes"] == path.stat().st_size
        assert entry["records"] == len(path.read_text(encoding="utf-8").split("\n")) - 1
    tokenizer_json = (qwen_tokenizer / "tokenizer.json").read_bytes()
    assert manifest["tokenizer"]["sha256"] == hashlib.sha256(tokenizer_json).hexdigest()
    assert manifest["tokenizer"]["pad"]["token"] == "<|endoftext|>"
    counts = manifest["counts"]
    assert counts["read"] == sum(e["records"] for e in manifest["inputs"])
    assert counts["read"] == counts["written"] + counts["empty"] + counts["rejected"]
    assert counts["empty"] == counts["read"] - len(text_documents(pretrain_files))
    for shard in manifest["shards"]:
        data = (tmp_path / "pt" / shard["file"]).read_bytes()
        assert shard["bytes"] == len(data)
        assert shard["sha256"] == hashlib.sha256(data).hexdigest()
