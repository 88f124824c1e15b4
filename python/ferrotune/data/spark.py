"""The data engine inside Spark (PySpark's ``mapInArrow``).

::

    from pyspark.sql import SparkSession
    from ferrotune.data import Transform
    from ferrotune.data.spark import read_records, transform, write_shards

    builder = SparkSession.builder.master("local[8]").config("spark.driver.memory", "8g")
    spark = builder.getOrCreate()
    records = read_records(spark, "corpus/")      # one partition per file, split as prep splits
    batches = transform(records, Transform("sft", "tokenizer/"))
    write_shards(batches, "data/sft")             # the folder `ferrotune prep sft` writes

``read_records`` reads each file with the Rust reader (records as ``prep`` splits them, with
file and line) and range-partitions them in input order. ``transform`` runs the transform in the
executors (the tokenizer loads once per Python worker) through ``mapInArrow``. Each input batch
becomes one row holding the transform's output table as Arrow IPC bytes, so the rows reach the
driver as Arrow, never as Python objects, and in partition order: ``write_shards`` iterates them
with ``toLocalIterator`` (one partition in memory at a time) and writes the same folder as
``ferrotune prep`` on the same files.

In local mode the executors live in the driver's JVM, so give it memory (``spark.driver.memory``,
set before the session starts): at Spark's default 1g a few hundred MB of records stall in GC.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from ferrotune import _native
from ferrotune.data.transform import Transform
from ferrotune.data.transform import read_records as _read_file
from ferrotune.data.writer import write_tables

__all__ = ["BATCHES_SCHEMA", "RECORDS_SCHEMA", "read_records", "transform", "write_shards"]

# Raw records as Spark types (Spark has no unsigned integers or large binaries), with the file's
# place among the inputs, which orders the files as `prep` reads them.
RECORDS_SCHEMA = "file string, line long, kind string, record binary, file_index int"
# One row per transformed batch: its output table as an Arrow IPC stream.
BATCHES_SCHEMA = "ipc binary"


class _ReadFiles:
    """``mapInArrow`` function: a batch of paths → the raw records of those files."""

    def __init__(self, files: list[str], options: dict[str, Any]) -> None:
        self.index = {path: i for i, path in enumerate(files)}
        self.options = options

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        schema = pa.schema(
            [("file", pa.string()), ("line", pa.int64()), ("kind", pa.string()),
             ("record", pa.binary())]
        )  # fmt: skip
        for batch in batches:
            for path in batch.column("path").to_pylist():
                table = _read_file(path, **self.options).cast(schema)
                index = pa.array([self.index[path]] * len(table), pa.int32())
                yield from table.append_column("file_index", index).to_batches()


class _Transformed:
    """``mapInArrow`` function: each input batch → one row with the transform's output (rows
    and the accounting row) as Arrow IPC bytes."""

    def __init__(self, transform: Transform) -> None:
        self.transform = transform

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        for batch in batches:
            table = self.transform(pa.Table.from_batches([batch]))
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            yield pa.RecordBatch.from_pydict({"ipc": [sink.getvalue().to_pybytes()]})


def read_records(
    spark: Any,
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    doc_sep: str = "line",
    text_column: str = "text",
    batch_rows: int = 4096,
    partitions: int | None = None,
) -> Any:
    """A DataFrame of the raw records (``file``, ``line``, ``kind``, ``record``, ``file_index``)
    of ``inputs`` (files, folders, globs, resolved as ``prep`` resolves them), range-partitioned
    into ``partitions`` (default: Spark's default parallelism) in input order: partition k holds
    the records after those of partition k - 1, sorted, so the partitions run in parallel and
    ``write_shards`` still receives the rows in input order."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files = [os.fspath(path) for path in _native.resolve_inputs([os.fspath(i) for i in inputs])]
    rdd = spark.sparkContext.parallelize([(path,) for path in files], len(files))
    paths = spark.createDataFrame(rdd, "path string")
    options = {"doc_sep": doc_sep, "text_column": text_column, "batch_rows": batch_rows}
    records = paths.mapInArrow(_ReadFiles(files, options), RECORDS_SCHEMA)
    count = partitions or spark.sparkContext.defaultParallelism
    ordered = records.repartitionByRange(count, "file_index", "line")
    return ordered.sortWithinPartitions("file_index", "line")


def transform(df: Any, transform: Transform) -> Any:
    """``transform`` over every Arrow batch of ``df`` in the executors: a DataFrame of
    ``BATCHES_SCHEMA``, one row per batch, for :func:`write_shards`."""
    return df.mapInArrow(_Transformed(transform), BATCHES_SCHEMA)


def write_shards(
    batches: Any,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    shard_size: str | int = "500MB",
) -> dict[str, Any]:
    """Writes the output of :func:`transform` to the folder ``out``; returns its manifest."""
    import pyarrow as pa

    tables = (pa.ipc.open_stream(row["ipc"]).read_all() for row in batches.toLocalIterator())
    return write_tables(tables, out, overwrite=overwrite, shard_size=shard_size)
