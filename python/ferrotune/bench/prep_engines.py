"""``ferrotune bench prep --engine ray,spark``: the same prep inside Ray Data and Spark.

Both run as ``engine_child(engine=...)``:

``ferrotune-ray``
    ``ferrotune.data.ray.prep``: ``read_records`` → ``map_batches(Transform)`` with
    ``concurrency`` = workers → ``write_shards``, on a local Ray of ``workers`` CPUs.
``ferrotune-spark``
    ``ferrotune.data.spark``: ``read_records`` (range-partitioned into ``workers``
    partitions) → ``transform`` (``mapInArrow``) → ``write_shards``, on Spark ``local[workers]``.

Seconds run from the job's start to the folder written (the engine already up, as it is on a
cluster); the engine's own start-up is in the details (``engine_startup_seconds``). The folder is
the one ``ferrotune prep`` writes, so the tokens must agree with ``ferrotune``'s, and the ratio
to ``ferrotune`` (prep alone, the same workers) is each engine's overhead.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ferrotune.bench.prep_cli import manifest_figures

# Transform batch: large enough to amortise an engine's per-batch cost, small enough to spread.
BATCH_ROWS = 2048
SPARK_DRIVER_MEMORY = "6g"


def _options(stage: str, template: str | None) -> dict[str, Any]:
    module = importlib.import_module(f"ferrotune.bench.prep_{stage}")
    options = dict(module.FERROTUNE_OPTIONS)
    if template:
        options["template"] = template
    return options


def engine_child(
    stage: str,
    corpus: str,
    tokenizer: str,
    workers: int,
    tmp_dir: str,
    engine: str,
    template: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The stage's prep inside ``engine`` (``ray`` or ``spark``) on this machine's
    ``workers`` cores; ``seconds`` from the job's start to the folder written."""
    started = time.perf_counter()
    session = _start(engine, workers)
    startup = time.perf_counter() - started
    options = _options(stage, template)
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix=f"ferrotune-{engine}-{stage}-") as tmp:
        out = Path(tmp) / "shards"
        start = time.perf_counter()
        if engine == "ray":
            from ferrotune.data.ray import prep

            options.update(concurrency=workers, workers=1)
            manifest = prep(stage, tokenizer, corpus, out, **options)
        else:
            from ferrotune.data.spark import read_records, transform, write_shards
            from ferrotune.data.transform import Transform

            records = read_records(session, corpus, partitions=workers, **_read_options(options))
            batches = transform(records, Transform(stage, tokenizer, **options))
            manifest = write_shards(batches, out)
        seconds = time.perf_counter() - start
        figures = manifest_figures(stage, manifest, out, extra)
    if engine == "ray":
        session.shutdown()
    else:
        session.stop()
    figures["seconds"] = seconds
    figures["detail"]["engine_startup_seconds"] = startup
    return figures


def _start(engine: str, workers: int) -> Any:
    """A local Ray (the ``ray`` module) or Spark session of ``workers`` cores."""
    if engine == "ray":
        import ray

        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        return ray
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = (
        SparkSession.builder.master(f"local[{workers}]")
        .config("spark.ui.enabled", "false")
        # Local mode runs the executors in the driver's JVM: its default 1g stalls in GC on a
        # few hundred MB of records.
        .config("spark.driver.memory", SPARK_DRIVER_MEMORY)
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(BATCH_ROWS))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _read_options(options: dict[str, Any]) -> dict[str, Any]:
    return {
        "doc_sep": options.get("doc_sep", "line"),
        "text_column": options.get("text_field", "text"),
    }
