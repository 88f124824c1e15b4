"""The batch transform (``ferrotune.data.Transform``) and the folder writer, without an engine:
batches cut from the real MedicalGPT files give the rows, counts and tokens of one ``prep`` run,
the accounting adds up over batches holding bad records, and what cannot be promised is refused.

Ray Data and Spark run the same transform and writer (tests/data/test_engines.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pytest

from ferrotune.data import prep_dpo, prep_pt, prep_sft
from ferrotune.data.transform import Transform, read_records, split_accounting, sum_manifests
from ferrotune.data.writer import write_tables
from ferrotune.errors import ConfigError, DataError

PREP = {"pt": prep_pt, "sft": prep_sft, "dpo": prep_dpo}


def stage_input(medicalgpt: Path, stage: str) -> Path:
    return medicalgpt / {"pt": "pretrain", "sft": "sft", "dpo": "reward"}[stage]


def rows_of(folder: Path) -> pa.Table:
    return datasets.load_from_disk(str(folder)).data.table


def same_counts(ours: dict, theirs: dict) -> None:
    """Counts, tokens, rows, stage info, options and inputs as one prep run's."""
    assert ours["counts"] == theirs["counts"]
    assert ours["tokens"] == pytest.approx(theirs["tokens"])
    assert ours["rows"] == theirs["rows"]
    assert ours["stage_info"] == theirs["stage_info"]
    ignored = ("workers", "shard_size")
    assert {k: v for k, v in ours["options"].items() if k not in ignored} == {
        k: v for k, v in theirs["options"].items() if k not in ignored
    }
    assert [(i["path"], i["records"], i["sha256"]) for i in ours["inputs"]] == [
        (i["path"], i["records"], i["sha256"]) for i in theirs["inputs"]
    ]
    assert ours["engine"]["texts"] == theirs["engine"]["texts"]


def transformed(transform: Transform, records: pa.Table, rows: int) -> list[pa.Table]:
    """The transform's output over ``records`` cut into batches of ``rows``."""
    return [transform(pa.Table.from_batches([b])) for b in records.to_batches(max_chunksize=rows)]


@pytest.mark.parametrize("stage", ["pt", "sft", "dpo"])
def test_batches_of_the_medicalgpt_files_write_the_folder_of_one_prep_run(
    stage, medicalgpt, qwen_tokenizer, tmp_path
):
    inputs = str(stage_input(medicalgpt, stage))
    options = {"block_size": 256} if stage == "pt" else {}
    local = PREP[stage](qwen_tokenizer, inputs, tmp_path / "local", **options)
    records = pa.concat_tables(
        read_records(path) for path in sorted(Path(inputs).iterdir()) if path.suffix != ".md"
    )
    assert len(records) == local["counts"]["read"]
    tables = transformed(Transform(stage, qwen_tokenizer, **options), records, 333)
    manifest = write_tables(tables, tmp_path / "engine")
    same_counts(manifest, local)
    assert rows_of(tmp_path / "engine").equals(rows_of(tmp_path / "local"))
    on_disk = json.loads((tmp_path / "engine" / "manifest.json").read_text())
    assert on_disk["shards"] == manifest["shards"] and len(on_disk["shards"]) >= 1
    if stage == "pt":  # same blocks in the same batches: the very bytes of prep's shards
        assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in local["shards"]]


def test_each_row_says_which_record_it_came_from(medicalgpt, qwen_tokenizer):
    records = read_records(medicalgpt / "reward" / "dpo_zh_500.jsonl")
    result = Transform("dpo", qwen_tokenizer).run(records.slice(10, 5))
    assert result.rows["line"].to_pylist() == [11, 12, 13, 14, 15]
    assert set(result.rows["file"].to_pylist()) == {str(medicalgpt / "reward" / "dpo_zh_500.jsonl")}
    assert result.manifest["counts"]["read"] == 5
    assert result.manifest["inputs"] == [{"path": records["file"][0].as_py(), "records": 5}]


def write_messy(path: Path) -> None:
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
    lines = []
    for i in range(60):
        if i % 7 == 3:
            lines.append('{"conversations": [')  # truncated JSON
        elif i % 11 == 5:
            lines.append(json.dumps({"conversations": [{"from": "human", "value": ""}]}))
        elif i % 13 == 4:
            lines.append(json.dumps({"conversations": [{"from": "human", "value": "q"}]}))
        else:
            lines.append(json.dumps(good | {"id": i}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_the_accounting_adds_up_over_batches_holding_bad_records(qwen_tokenizer, tmp_path):
    corpus = tmp_path / "messy.jsonl"
    write_messy(corpus)
    local = prep_sft(qwen_tokenizer, corpus, tmp_path / "local", skip_bad=True)
    assert local["counts"]["rejected"] and local["counts"]["empty"] and local["counts"]["dropped"]
    transform = Transform("sft", qwen_tokenizer, skip_bad=True)
    tables = transformed(transform, read_records(corpus), 8)
    per_batch = [entry["manifest"]["counts"] for t in tables for entry in split_accounting(t)[1]]
    assert len(per_batch) == 8
    for counts in per_batch:
        assert counts["read"] == (
            counts["written"] + counts["empty"] + counts["rejected"] + counts["dropped"]
        )
    manifest = write_tables(tables, tmp_path / "engine")
    same_counts(manifest, local)
    local_rejects = (tmp_path / "local" / "rejects.jsonl").read_text(encoding="utf-8")
    engine_rejects = (tmp_path / "engine" / "rejects.jsonl").read_text(encoding="utf-8")
    assert [json.loads(x) for x in engine_rejects.splitlines()] == [
        json.loads(x) for x in local_rejects.splitlines()
    ]
    assert rows_of(tmp_path / "engine").equals(rows_of(tmp_path / "local"))


def test_without_skip_bad_a_bad_record_stops_the_batch_naming_file_and_line(
    qwen_tokenizer, tmp_path
):
    corpus = tmp_path / "messy.jsonl"
    write_messy(corpus)
    with pytest.raises(DataError) as error:
        Transform("sft", qwen_tokenizer).run(read_records(corpus))
    assert error.value.line == 4 and error.value.path == str(corpus)


def test_any_table_works_as_input_pt_its_text_column_chat_its_rows(
    qwen_tokenizer, example_tokenizer, tmp_path
):
    texts = ["first document", "second, longer document " * 20, "", "third"]
    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    prep_pt(example_tokenizer, corpus, tmp_path / "pt", block_size=32)
    result = Transform("pt", example_tokenizer, block_size=32).run(pa.table({"text": texts}))
    assert result.manifest["counts"]["written"] == 3 and result.manifest["counts"]["empty"] == 1
    documents = result.rows["input_ids"].to_pylist()
    packed = [i for row in rows_of(tmp_path / "pt")["input_ids"].to_pylist() for i in row]
    assert packed[: sum(map(len, documents))] == [i for d in documents for i in d]

    records = [
        {"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}
        for i in range(5)
    ]
    jsonl = tmp_path / "chat.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    prep_sft(qwen_tokenizer, jsonl, tmp_path / "sft")
    result = Transform("sft", qwen_tokenizer).run(pa.Table.from_pylist(records))
    local = rows_of(tmp_path / "sft")
    assert result.rows.drop_columns(["file", "line"]).equals(local)


def test_what_the_transform_cannot_promise_is_refused_by_name(qwen_tokenizer):
    with pytest.raises(ConfigError, match="out") as error:
        Transform("sft", qwen_tokenizer, out="somewhere")
    assert error.value.option == "out"
    with pytest.raises(ConfigError, match="pack"):
        Transform("sft", qwen_tokenizer, pack=True)
    with pytest.raises(ConfigError, match="stage"):
        Transform("kto", qwen_tokenizer)
    with pytest.raises(ConfigError, match=r"blocksize"):
        Transform("pt", qwen_tokenizer, blocksize=3)


def test_manifests_of_different_options_do_not_sum(medicalgpt, qwen_tokenizer):
    records = read_records(medicalgpt / "reward" / "dpo_zh_500.jsonl").slice(0, 4)
    one = Transform("dpo", qwen_tokenizer).run(records).manifest
    other = Transform("dpo", qwen_tokenizer, max_length=512).run(records).manifest
    with pytest.raises(ConfigError, match="'max_length' is 2048 in one and 512 in another"):
        sum_manifests([one, other])


def test_rows_out_of_input_order_are_refused(medicalgpt, qwen_tokenizer, tmp_path):
    records = read_records(medicalgpt / "reward" / "dpo_zh_500.jsonl").slice(0, 40)
    tables = transformed(Transform("dpo", qwen_tokenizer), records, 10)
    with pytest.raises(DataError, match="out of input order"):
        write_tables([tables[1], tables[0], *tables[2:]], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == [], "no staging folder left behind"
