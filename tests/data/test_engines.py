"""The data engine inside Ray Data (local, 2 workers): PT, SFT and DPO on the MedicalGPT samples
write the folder ``ferrotune prep`` writes — the same rows in the same order, the same counts,
tokens and inputs — and a bad record's accounting survives the trip through the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferrotune.data import prep_dpo, prep_pt, prep_sft
from ferrotune.data.transform import Transform

from .test_transform import rows_of, same_counts, stage_input, write_messy

ray = pytest.importorskip("ray", reason="Ray is a test dependency (pip install '.[test]')")
PREP = {"pt": prep_pt, "sft": prep_sft, "dpo": prep_dpo}


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with two worker CPUs, started once for the module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("stage", ["pt", "sft", "dpo"])
def test_ray_data_writes_the_folder_of_one_prep_run(
    stage, ray_local, medicalgpt, qwen_tokenizer, tmp_path
):
    from ferrotune.data.ray import read_records, write_shards

    inputs = str(stage_input(medicalgpt, stage))
    options = {"block_size": 256} if stage == "pt" else {}
    local = PREP[stage](qwen_tokenizer, inputs, tmp_path / "local", **options)
    ds = read_records(inputs, batch_rows=500).map_batches(
        Transform(stage, qwen_tokenizer, **options),
        batch_format="pyarrow",
        batch_size=400,
        concurrency=2,
    )
    manifest = write_shards(ds, tmp_path / "ray")
    same_counts(manifest, local)
    assert rows_of(tmp_path / "ray").equals(rows_of(tmp_path / "local"))


def test_ray_data_carries_the_accounting_of_bad_records(ray_local, qwen_tokenizer, tmp_path):
    from ferrotune.data.ray import read_records, write_shards

    corpus = tmp_path / "messy.jsonl"
    write_messy(corpus)
    local = prep_sft(qwen_tokenizer, corpus, tmp_path / "local", skip_bad=True)
    ds = read_records(corpus).map_batches(
        Transform("sft", qwen_tokenizer, skip_bad=True),
        batch_format="pyarrow",
        batch_size=9,
        concurrency=2,
    )
    manifest = write_shards(ds, tmp_path / "ray")
    same_counts(manifest, local)

    def rejects(folder: Path) -> list[dict]:
        lines = (folder / "rejects.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]

    assert rejects(tmp_path / "ray") == rejects(tmp_path / "local")
