"""The data engine as an Arrow batch transform, for Ray Data, Spark and anything that maps
Arrow tables.

``Transform("sft", tokenizer, **prep_options)`` is a callable: given an Arrow table of input
records (a ``pyarrow.Table``/``RecordBatch`` or anything with ``__arrow_c_stream__``) it runs the
very stage code ``ferrotune prep`` runs, in Rust with the GIL released, and returns the output
rows. The data crosses the boundary through the Arrow C stream interface: no Python-level copy.

Input tables are either the raw records :func:`read_records` makes (``file``, ``line``,
``kind``, ``record``: records split from their files exactly as ``prep`` splits them, so errors
name file and line and the rows can be put back in input order), or any table: for PT its
``text_field`` column, for the conversation stages each row as a JSON object of its non-null
columns.

Every output row carries ``file`` and ``line``, the place of the record it came from. PT rows
are tokenized documents (``input_ids``, EOS appended), not blocks: a block spans documents, so
the writer (``ferrotune.data.ray.write_shards``, ``ferrotune.data.spark.write_shards``) packs
the documents of all batches in input order, and the folder equals one ``prep pt`` run's.

Accounting: ``transform.run(table)`` returns a :class:`TransformResult` (rows, the batch's
manifest with its counts and tokens, its rejects). Called as a function (what
``map_batches``/``mapInArrow`` do), the transform returns the rows plus one *accounting row*
whose ``ferrotune_accounting`` column holds that manifest and those rejects as JSON (every
other column null), so the accounting travels with the data through any engine; the writers
take those rows out and sum them (:func:`sum_manifests`; ``timings`` are then the batches'
seconds summed, and ``elapsed_seconds`` the writer's wall time).

The tokenizer and template load once per process (the first call), not once per batch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from ferrotune import _native
from ferrotune.errors import ConfigError

__all__ = [
    "ACCOUNTING",
    "Transform",
    "TransformResult",
    "read_records",
    "split_accounting",
    "sum_manifests",
]

STAGES = ("pt", "sft", "rm", "dpo", "ppo")
# The column of the accounting row.
ACCOUNTING = "ferrotune_accounting"
# What the engine around the transform decides, not the transform: refused by name.
ENGINE_OPTIONS = ("inputs", "out", "overwrite", "quiet", "num_shards", "shard_index",
                  "shard_size", "input_format")  # fmt: skip
# Loaded stages, per process: a Ray worker or Spark executor loads a tokenizer once.
_LOADED: dict[str, Any] = {}


@dataclass
class TransformResult:
    """One batch's output: ``rows`` (a ``pyarrow.Table``), its ``manifest`` (counts, tokens,
    stage info, options, tokenizer; no inputs or shards) and its ``rejects`` (with
    ``skip_bad``: one dict per bad record, as in ``rejects.jsonl``)."""

    rows: Any
    manifest: dict[str, Any]
    rejects: list[dict[str, Any]]


class Transform:
    """A ``prep`` stage as an Arrow batch transform (see the module docstring).

    ``stage``: ``pt``, ``sft``, ``rm``, ``dpo`` or ``ppo``; ``options``: that stage's ``prep_*``
    keywords (``workers`` defaults to 1: the engine runs one transform per core). Picklable, so
    Ray and Spark ship it to their workers.
    """

    def __init__(self, stage: str, tokenizer: str | os.PathLike[str], **options: Any) -> None:
        if stage not in STAGES:
            raise ConfigError(f"stage: '{stage}' is not one of {', '.join(STAGES)}", option="stage")
        for name in ENGINE_OPTIONS:
            if name in options:
                raise ConfigError(
                    f"{name}: the engine around the transform decides this, not the transform "
                    "(pass it to write_shards, or use `ferrotune prep`)",
                    option=name,
                )
        if "template" in options:
            options["template"] = os.fspath(options["template"])
        self.stage = stage
        self.options = dict(options, tokenizer=os.fspath(tokenizer))
        self._key = stage + json.dumps(self.options, sort_keys=True)
        self._native()  # load now: a bad option fails on the driver, not in every worker

    def _native(self) -> Any:
        loaded = _LOADED.get(self._key)
        if loaded is None:
            loaded = _native.Transform(self.stage, json.dumps(self.options))
            _LOADED[self._key] = loaded
        return loaded

    def __getstate__(self) -> dict[str, Any]:
        return {"stage": self.stage, "options": self.options, "_key": self._key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def run(self, data: Any) -> TransformResult:
        """Runs the stage on one table of records."""
        import pyarrow as pa

        table = data if isinstance(data, pa.Table) else pa.table(data)
        stream, manifest, rejects = self._native().run(table)
        manifest = json.loads(manifest)
        manifest["inputs"] = _records_per_file(table)
        return TransformResult(
            rows=pa.table(stream),
            manifest=manifest,
            rejects=[json.loads(line) for line in rejects],
        )

    def __call__(self, data: Any) -> Any:
        """The rows plus the accounting row (what ``map_batches``/``mapInArrow`` get)."""
        import pyarrow as pa

        result = self.run(data)
        rows = result.rows
        accounting = json.dumps({"manifest": result.manifest, "rejects": result.rejects})
        nulls = [pa.nulls(len(rows), pa.large_string())]
        rows = rows.append_column(pa.field(ACCOUNTING, pa.large_string()), nulls)
        row = {field.name: pa.nulls(1, field.type) for field in rows.schema}
        row[ACCOUNTING] = pa.array([accounting], pa.large_string())
        return pa.concat_tables([rows, pa.table(row, schema=rows.schema)])


def _records_per_file(table: Any) -> list[dict[str, Any]]:
    """The records of each file in a raw-records table, in order of appearance."""
    if not {"file", "kind", "record"} <= set(table.column_names):
        return []
    import pyarrow.compute as pc

    counts = pc.value_counts(table["file"]).to_pylist()  # in order of first appearance
    return [{"path": item["values"], "records": item["counts"]} for item in counts]


def read_records(
    path: str | os.PathLike[str],
    *,
    doc_sep: str = "line",
    text_column: str = "text",
    batch_rows: int = 4096,
) -> Any:
    """The raw records of the files at ``path`` (a file, folder or glob) as a ``pyarrow.Table``
    of ``file``, ``line``, ``kind``, ``record``: split exactly as ``prep`` splits them."""
    import pyarrow as pa

    stream = _native.read_records(
        os.fspath(path), doc_sep=doc_sep, text_column=text_column, batch_rows=batch_rows
    )
    return pa.table(stream)


def split_accounting(table: Any) -> tuple[Any, list[dict[str, Any]]]:
    """A transform's output table → (its data rows, without the accounting column; the
    accounting of every batch in it)."""
    import pyarrow.compute as pc

    column = table[ACCOUNTING]
    is_accounting = pc.is_valid(column)
    accounting = [json.loads(text) for text in pc.filter(column, is_accounting).to_pylist()]
    rows = table.filter(pc.invert(is_accounting)).drop_columns([ACCOUNTING])
    return rows, accounting


# What is summed over batches (or folders); the stage, tokenizer, template and options must
# agree. In ``stage_info`` every count is summed but these, which are settings or ratios.
_NOT_SUMMED = {"block_size", "packing_efficiency", "label_share"}


def _add(total: Any, value: Any) -> Any:
    """``value`` added into ``total``: numbers summed, dicts merged key by key, the rest kept."""
    if isinstance(total, bool) or isinstance(value, bool):
        return total
    if isinstance(total, (int, float)) and isinstance(value, (int, float)):
        return total + value
    if isinstance(total, dict) and isinstance(value, dict):
        merged = dict(total)
        for key, item in value.items():
            if key in _NOT_SUMMED:
                continue
            merged[key] = _add(merged[key], item) if key in merged else item
        return merged
    return total


def sum_manifests(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """One manifest from the manifests of many batches (or folders): counts, tokens, rows, the
    engine's text counts and the stage's counts summed; the stage, tokenizer, template and
    options must be the same in all (a :class:`ConfigError` names the first difference)."""
    if not manifests:
        raise ConfigError("no manifests to sum", option="inputs")
    total = json.loads(json.dumps(manifests[0]))
    for manifest in manifests[1:]:
        for key in ("stage", "tokenizer", "template", "options"):
            if _comparable(key, manifest.get(key)) != _comparable(key, total.get(key)):
                raise ConfigError(
                    f"{key}: {_describe(key, manifest.get(key), total.get(key))}", option=key
                )
        for key in ("counts", "tokens", "stage_info", "timings"):
            total[key] = _add(total.get(key) or {}, manifest.get(key) or {})
        total["engine"]["texts"] = _add(total["engine"]["texts"], manifest["engine"]["texts"])
        total["rows"] = total.get("rows", 0) + manifest.get("rows", 0)
    tokens = total.get("tokens") or {}
    if "label_share" in tokens:
        tokens["label_share"] = tokens.get("labels", 0) / max(tokens.get("written", 0), 1)
    histogram = total.get("stage_info", {}).get("length_histogram")
    if isinstance(histogram, dict):
        ordered = sorted(histogram.items(), key=lambda item: int(item[0].lstrip("<=")))
        total["stage_info"]["length_histogram"] = dict(ordered)
    return total


def _comparable(key: str, value: Any) -> Any:
    """What must agree: the options without those that do not change the rows."""
    if key == "options" and isinstance(value, dict):
        ignored = ("workers", "num_shards", "shard_index", "shard_size", "engine")
        return {k: v for k, v in value.items() if k not in ignored}
    if key == "tokenizer" and isinstance(value, dict):
        return value.get("fingerprint") or value.get("sha256")
    return value


def _describe(key: str, value: Any, first: Any) -> str:
    if isinstance(value, dict) and isinstance(first, dict):
        for name in sorted(set(value) | set(first)):
            one, other = {name: first.get(name)}, {name: value.get(name)}
            if _comparable(key, one) != _comparable(key, other):
                return f"'{name}' is {first.get(name)!r} in one and {value.get(name)!r} in another"
    return f"{first!r} in one and {value!r} in another"
