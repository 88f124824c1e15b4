"""``ferrotune merge``: the ``--num-shards N`` runs of one split, merged, are the folder of one run
(rows back in input order, PT blocks packed again: the same shard bytes), on the real MedicalGPT
files; independent folders concatenate; folders that differ are refused, naming the difference.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ferrotune.data import prep_dpo, prep_pt, prep_sft
from ferrotune.data.merge import merge
from ferrotune.errors import ConfigError

from .test_transform import rows_of, stage_input, write_messy

PREP = {"pt": prep_pt, "sft": prep_sft, "dpo": prep_dpo}


def same_as_one_run(merged: dict, whole: dict) -> None:
    assert merged["counts"] == whole["counts"]
    assert merged["tokens"] == pytest.approx(whole["tokens"])
    assert merged["rows"] == whole["rows"]
    assert merged["inputs"] == whole["inputs"]
    assert {k: v for k, v in merged["stage_info"].items()} == whole["stage_info"]
    assert merged["options"] == {**whole["options"], "workers": merged["options"]["workers"]}


@pytest.mark.parametrize("stage", ["pt", "sft", "dpo"])
def test_the_shard_runs_of_one_split_merge_into_the_folder_of_one_run(
    stage, medicalgpt, qwen_tokenizer, tmp_path
):
    inputs = str(stage_input(medicalgpt, stage))
    options = {"block_size": 256} if stage == "pt" else {}
    whole = PREP[stage](qwen_tokenizer, inputs, tmp_path / "whole", **options)
    parts = []
    for index in (2, 0, 1):  # any order on the command line
        part = tmp_path / f"part{index}"
        PREP[stage](qwen_tokenizer, inputs, part, num_shards=3, shard_index=index, **options)
        assert (part / "places.arrow").is_file()
        parts.append(part)
    merged = merge(parts, tmp_path / "merged")
    same_as_one_run(merged, whole)
    assert merged["merge"]["mode"] == "shard_runs"
    assert rows_of(tmp_path / "merged").equals(rows_of(tmp_path / "whole"))
    if stage == "pt":  # one run's blocks in one run's batches: the very bytes
        assert [s["sha256"] for s in merged["shards"]] == [s["sha256"] for s in whole["shards"]]


def test_merged_shard_runs_keep_every_reject_in_input_order(qwen_tokenizer, tmp_path):
    corpus = tmp_path / "messy.jsonl"
    write_messy(corpus)
    whole = prep_sft(qwen_tokenizer, corpus, tmp_path / "whole", skip_bad=True)
    parts = [tmp_path / f"part{i}" for i in range(2)]
    for i, part in enumerate(parts):
        prep_sft(qwen_tokenizer, corpus, part, skip_bad=True, num_shards=2, shard_index=i)
    merged = merge(parts, tmp_path / "merged")
    same_as_one_run(merged, whole)
    text = (tmp_path / "merged" / "rejects.jsonl").read_text(encoding="utf-8")
    assert text == (tmp_path / "whole" / "rejects.jsonl").read_text(encoding="utf-8")


def test_independent_folders_concatenate_and_their_counts_add_up(
    medicalgpt, qwen_tokenizer, tmp_path
):
    files = sorted((medicalgpt / "reward").glob("*.jsonl"))
    one = prep_dpo(qwen_tokenizer, files[0], tmp_path / "one")
    two = prep_dpo(qwen_tokenizer, files[1], tmp_path / "two")
    merged = merge([tmp_path / "one", tmp_path / "two"], tmp_path / "merged")
    assert merged["merge"]["mode"] == "concatenated"
    assert merged["rows"] == one["rows"] + two["rows"]
    assert merged["counts"]["read"] == one["counts"]["read"] + two["counts"]["read"]
    assert [i["path"] for i in merged["inputs"]] == [str(files[0]), str(files[1])]
    rows = rows_of(tmp_path / "merged")
    import pyarrow as pa

    assert rows.equals(pa.concat_tables([rows_of(tmp_path / "one"), rows_of(tmp_path / "two")]))


def test_folders_that_differ_are_refused_naming_the_difference(
    medicalgpt, qwen_tokenizer, example_tokenizer, tmp_path
):
    data = medicalgpt / "reward" / "dpo_zh_500.jsonl"
    prep_dpo(qwen_tokenizer, data, tmp_path / "a")
    prep_dpo(qwen_tokenizer, data, tmp_path / "b", max_length=512)
    prep_dpo(example_tokenizer, data, tmp_path / "c", template="chatml")
    prep_sft(qwen_tokenizer, medicalgpt / "sft", tmp_path / "d")
    cases = [
        ("b", "'max_length' is 2048 in one and 512 in another"),
        ("c", "tokenizer"),
        ("d", "stage"),
    ]
    for other, message in cases:
        with pytest.raises(ConfigError, match=message):
            merge([tmp_path / "a", tmp_path / other], tmp_path / "out")
    for i in (0, 2):
        prep_dpo(qwen_tokenizer, data, tmp_path / f"s{i}", num_shards=3, shard_index=i)
    with pytest.raises(ConfigError, match=r"missing \[1\]"):
        merge([tmp_path / "s0", tmp_path / "s2"], tmp_path / "out")
    with pytest.raises(ConfigError, match="splits of"):
        merge([tmp_path / "a", tmp_path / "s0"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_merge_command(medicalgpt, qwen_tokenizer, tmp_path):
    data = medicalgpt / "reward" / "dpo_zh_500.jsonl"
    for i in range(2):
        prep_dpo(qwen_tokenizer, data, tmp_path / f"s{i}", num_shards=2, shard_index=i)
    command = [sys.executable, "-m", "ferrotune.cli", "merge", str(tmp_path / "s0")]
    command += [str(tmp_path / "s1"), "--out", str(tmp_path / "merged")]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "shard runs of one split" in done.stdout
    assert "500 written" in done.stdout
    manifest = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert manifest["counts"]["other_shards"] == 0 and manifest["rows"] == 500
