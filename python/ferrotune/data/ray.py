"""The data engine inside Ray Data.

::

    import ray
    from ferrotune.data import Transform
    from ferrotune.data.ray import read_records, write_shards

    ds = read_records("corpus/")                     # records split as `prep` splits them
    ds = ds.map_batches(Transform("sft", "tokenizer/"), batch_format="pyarrow", concurrency=8)
    write_shards(ds, "data/sft")                     # the folder `ferrotune prep sft` writes

``read_records`` makes one read task per file (the Rust reader, records with their file and
line); ``Transform`` tokenizes in the workers (loading the tokenizer once per worker process);
``write_shards`` streams the rows to the driver in input order (it sets the dataset's
``preserve_order``) and writes one folder with one manifest: the same rows, counts and tokens as
``ferrotune prep`` on the same files, PT blocks included (packed as they arrive).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ferrotune import _native
from ferrotune.data.transform import read_records as _read_file
from ferrotune.data.writer import write_tables

__all__ = ["read_records", "write_shards"]


def read_records(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    doc_sep: str = "line",
    text_column: str = "text",
    batch_rows: int = 4096,
) -> Any:
    """A Ray ``Dataset`` of the raw records (``file``, ``line``, ``kind``, ``record``) of
    ``inputs`` (files, folders, globs, resolved as ``prep`` resolves them), one read task per
    file, in input order."""
    import ray.data

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files = [os.fspath(path) for path in _native.resolve_inputs([os.fspath(i) for i in inputs])]
    options = {"doc_sep": doc_sep, "text_column": text_column, "batch_rows": batch_rows}

    def read(batch: Any) -> Any:
        import pyarrow as pa

        tables = [_read_file(path, **options) for path in batch["path"].to_pylist()]
        return pa.concat_tables(tables)

    paths = ray.data.from_items([{"path": path} for path in files], override_num_blocks=len(files))
    return paths.map_batches(read, batch_size=1, batch_format="pyarrow")


def write_shards(
    ds: Any,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    shard_size: str | int = "500MB",
) -> dict[str, Any]:
    """Writes the output of a ``Transform`` mapped over ``ds`` to the folder ``out`` (what
    ``datasets.load_from_disk``, the trainers and ``ferrotune inspect`` read); returns its
    manifest. Rows stream to this process in input order."""
    ds.context.execution_options.preserve_order = True
    tables = ds.iter_batches(batch_format="pyarrow", batch_size=None)
    return write_tables(tables, out, overwrite=overwrite, shard_size=shard_size)
