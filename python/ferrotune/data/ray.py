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
from ferrotune.errors import ConfigError

__all__ = ["prep", "read_records", "write_shards"]


def read_records(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    doc_sep: str = "line",
    text_column: str = "text",
    batch_rows: int = 4096,
) -> Any:
    """A Ray ``Dataset`` of the raw records (``file``, ``line``, ``kind``, ``record``) of
    ``inputs`` (files, folders, globs, resolved as ``prep`` resolves them): one read task per
    file, in input order, cut into blocks of ``batch_rows`` records so that the transform's
    tasks run in parallel even on one file."""
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
    records = paths.map_batches(read, batch_size=1, batch_format="pyarrow")
    return records.repartition(target_num_rows_per_block=batch_rows)


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


def prep(
    stage: str,
    tokenizer: str | os.PathLike[str],
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    address: str = "auto",
    concurrency: int | None = None,
    overwrite: bool = False,
    shard_size: str | int = "500MB",
    **options: Any,
) -> dict[str, Any]:
    """``ferrotune prep STAGE --engine-ray ADDRESS``: the same prep as a Ray Data job, writing
    the same folder. ``address``: ``auto`` (the cluster ``RAY_ADDRESS`` names, else a local
    Ray on this machine's cores) or a cluster address (``ray://host:10001``, ``host:6379``);
    ``concurrency``: transform tasks at once (default: Ray's); ``options``: the stage's
    ``prep_*`` keywords (``workers`` is threads per task, default 1)."""
    import ray

    from ferrotune.data.transform import Transform

    for name, default in (("num_shards", 1), ("shard_index", 0), ("input_format", None)):
        if options.pop(name, default) != default:
            raise ConfigError(
                f"{name}: not with --engine-ray (Ray splits the work; files are read by their "
                "names)",
                option=name,
            )
    options.pop("quiet", None)
    if not ray.is_initialized():
        ray.init(address=None if address == "auto" else address, log_to_driver=False)
    doc_sep, text_column = options.get("doc_sep", "line"), options.get("text_field", "text")
    ds = read_records(inputs, doc_sep=doc_sep, text_column=text_column).map_batches(
        Transform(stage, tokenizer, **options), batch_format="pyarrow", concurrency=concurrency
    )
    return write_shards(ds, out, overwrite=overwrite, shard_size=shard_size)
