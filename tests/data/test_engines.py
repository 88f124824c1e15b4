"""The data engine inside Ray Data (local, 2 workers) and Spark (local[2]): PT, SFT and DPO on
the MedicalGPT samples write the folder ``ferrotune prep`` writes — the same rows in the same
order, the same counts, tokens and inputs — and a bad record's accounting survives the trip
through the engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ferrotune.data import prep_dpo, prep_pt, prep_sft
from ferrotune.data.transform import Transform

from .test_transform import rows_of, same_counts, stage_input, write_messy

PREP = {"pt": prep_pt, "sft": prep_sft, "dpo": prep_dpo}


def rejects_of(folder: Path) -> list[dict]:
    lines = (folder / "rejects.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with two worker CPUs, started once for the module."""
    ray = pytest.importorskip("ray", reason="Ray is a test dependency (pip install '.[test]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def spark():
    """A local[2] Spark session (Debian's OpenJDK), started once for the module."""
    pytest.importorskip("pyspark", reason="PySpark is a test dependency (pip install '.[test]')")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Spark needs a Java runtime (apt-get install openjdk-17-jre-headless)")
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2]")
        .appName("ferrotune-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "400")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(params=["ray", "spark"])
def engine(request) -> Callable[..., dict]:
    """``engine(inputs, transform, out, batch_rows)``: the transform over ``inputs`` inside Ray
    Data (2 workers, batches of ``batch_rows``) or Spark (local[2]), written to ``out``."""
    if request.param == "ray":
        request.getfixturevalue("ray_local")
        from ferrotune.data import ray as engine_api

        def run(inputs, transform, out, batch_rows):
            ds = engine_api.read_records(inputs, batch_rows=batch_rows).map_batches(
                transform, batch_format="pyarrow", concurrency=2
            )
            return engine_api.write_shards(ds, out)

        return run
    session = request.getfixturevalue("spark")
    from ferrotune.data import spark as engine_api

    def run(inputs, transform, out, batch_rows):
        records = engine_api.read_records(session, inputs, batch_rows=batch_rows)
        return engine_api.write_shards(engine_api.transform(records, transform), out)

    return run


@pytest.mark.parametrize("stage", ["pt", "sft", "dpo"])
def test_the_engine_writes_the_folder_of_one_prep_run(
    stage, engine, medicalgpt, qwen_tokenizer, tmp_path
):
    inputs = str(stage_input(medicalgpt, stage))
    options = {"block_size": 256} if stage == "pt" else {}
    local = PREP[stage](qwen_tokenizer, inputs, tmp_path / "local", **options)
    transform = Transform(stage, qwen_tokenizer, **options)
    manifest = engine(inputs, transform, tmp_path / "engine", 400)
    same_counts(manifest, local)
    assert rows_of(tmp_path / "engine").equals(rows_of(tmp_path / "local"))


def test_the_engine_carries_the_accounting_of_bad_records(engine, qwen_tokenizer, tmp_path):
    corpus = tmp_path / "messy.jsonl"
    write_messy(corpus)
    local = prep_sft(qwen_tokenizer, corpus, tmp_path / "local", skip_bad=True)
    transform = Transform("sft", qwen_tokenizer, skip_bad=True)
    manifest = engine(corpus, transform, tmp_path / "engine", 7)
    same_counts(manifest, local)
    assert rejects_of(tmp_path / "engine") == rejects_of(tmp_path / "local")


def test_prep_with_engine_ray_writes_the_folder_of_prep(medicalgpt, qwen_tokenizer, tmp_path):
    """`ferrotune prep dpo ... --engine-ray auto`: the same command, run as a Ray Data job."""
    pytest.importorskip("ray", reason="Ray is a test dependency (pip install '.[test]')")
    data = medicalgpt / "reward" / "dpo_zh_500.jsonl"
    local = prep_dpo(qwen_tokenizer, data, tmp_path / "local")
    command = [sys.executable, "-m", "ferrotune.cli", "prep", "dpo", "--tokenizer"]
    command += [str(qwen_tokenizer), "--input", str(data), "--out", str(tmp_path / "ray")]
    done = subprocess.run([*command, "--engine-ray", "auto"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "500 written" in done.stdout, done.stdout
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    same_counts(manifest, local)
    assert rows_of(tmp_path / "ray").equals(rows_of(tmp_path / "local"))
    inspect = [sys.executable, "-m", "ferrotune.cli", "inspect", str(tmp_path / "ray")]
    shown = subprocess.run(inspect, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "dpo" in shown.stdout
