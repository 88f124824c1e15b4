"""Writes the tables a :class:`~ferrotune.data.transform.Transform` returned — in input order,
from Ray Data, Spark or a plain loop — into one ``prep`` output folder.

The folder is what ``ferrotune prep`` writes for the same input: shards (PT documents packed
into blocks here, in the order they arrive), ``rejects.jsonl`` in input order, and one manifest
with the batches' accounting summed, the inputs listed with their sha256, and the shards with
theirs. It is staged and appears atomically (the Rust ``FolderWriter``), so a killed job leaves
no half-written folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ferrotune import _native
from ferrotune.data.transform import split_accounting, sum_manifests
from ferrotune.errors import DataError

__all__ = ["open_folder", "write_tables"]

# The columns a transform adds to the shard columns.
PLACE = ["file", "line"]


def write_tables(
    tables: Iterable[Any],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    shard_size: str | int = "500MB",
) -> dict[str, Any]:
    """Writes transform output ``tables`` (data rows and accounting rows, in input order) to
    ``out``; returns the manifest. Rows must arrive in input order (file, then line): a row out
    of order is a :class:`DataError`, since the folder would not be the one ``prep`` writes."""
    started = time.perf_counter()
    accounting: list[dict[str, Any]] = []
    waiting: list[Any] = []  # rows that came before the first accounting told the stage
    writer = None
    order = _Order()
    for table in tables:
        rows, found = split_accounting(table)
        accounting.extend(found)
        if rows.num_rows:
            order.check(rows)
            waiting.append(rows.drop_columns(PLACE))
        if writer is None and accounting:
            writer = open_folder(accounting[0]["manifest"], out, overwrite, str(shard_size))
        if writer is not None:
            for pending in waiting:
                writer.write(pending)
            waiting.clear()
    if writer is None:
        raise DataError(f"{out}: no batch reached the writer (an empty dataset?)", path=str(out))
    manifest = sum_manifests([entry["manifest"] for entry in accounting])
    rejects = [reject for entry in accounting for reject in entry["rejects"]]
    if rejects:
        lines = "".join(json.dumps(reject, ensure_ascii=False) + "\n" for reject in rejects)
        writer.write_file("rejects.jsonl", lines.encode())
    manifest["stage_info"]["rejects_file"] = "rejects.jsonl" if rejects else None
    manifest["inputs"] = _inputs(accounting)
    manifest["elapsed_seconds"] = time.perf_counter() - started
    text = writer.finish(
        json.dumps(manifest), description=f"ferrotune {manifest['stage']} data (see manifest.json)"
    )
    return json.loads(text)


def open_folder(
    manifest: dict[str, Any], out: Any, overwrite: bool, shard_size: str, pack: bool = True
) -> Any:
    """The Rust ``FolderWriter`` for a folder like ``manifest``'s: for PT with ``pack``, one
    that packs documents into its blocks; else one that writes rows as they come."""
    options = manifest["options"]
    if manifest["stage"] == "pt" and pack:
        return _native.FolderWriter(
            os.fspath(out),
            overwrite=overwrite,
            shard_size=shard_size,
            block_size=options["block_size"],
            last_block=options["last_block"],
            pad_id=options["pad_id"],
        )
    return _native.FolderWriter(os.fspath(out), overwrite=overwrite, shard_size=shard_size)


class _Order:
    """Checks that rows arrive in input order: lines rising within a file, a file never
    coming back once another began."""

    def __init__(self) -> None:
        self.file: str | None = None
        self.line = 0
        self.done: set[str] = set()

    def check(self, rows: Any) -> None:
        """Vectorised: one step per run of rows from one file, not per row."""
        import numpy as np
        import pyarrow.compute as pc

        if rows.num_rows == 0:
            return
        encoded = pc.dictionary_encode(rows["file"]).combine_chunks()
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        names = encoded.dictionary.to_pylist()
        lines = rows["line"].to_numpy().astype(np.int64)
        ends = np.append(np.flatnonzero(np.diff(codes)) + 1, len(codes))
        start = 0
        for end in ends:
            file, segment = names[codes[start]], lines[start:end]
            if file != self.file:
                if file in self.done:
                    self._refuse(file, int(segment[0]))
                if self.file is not None:
                    self.done.add(self.file)
                self.file, self.line = file, 0
            steps = np.diff(np.concatenate([[self.line], segment]))
            if (steps <= 0).any():
                self._refuse(file, int(segment[int(np.argmax(steps <= 0))]))
            self.line = int(segment[-1])
            start = end

    @staticmethod
    def _refuse(file: str, line: int) -> None:
        raise DataError(
            f"{file}:{line}: rows arrived out of input order (keep the engine's order: Ray's "
            "preserve_order, one Spark partition per file)",
            path=file,
            line=line,
        )


def _inputs(accounting: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each input file with its records (summed over batches), size and sha256, as ``prep``'s
    manifest lists them; files the driver cannot read have no sha256."""
    records: dict[str, int] = {}
    for entry in accounting:
        for item in entry["manifest"].get("inputs") or []:
            records[item["path"]] = records.get(item["path"], 0) + item["records"]
    entries = []
    for path, count in records.items():
        file = Path(path)
        entry: dict[str, Any] = {
            "path": path,
            "format": file.suffix.lstrip(".").lower() or None,
            "bytes": None,
            "sha256": None,
            "records": count,
        }
        if file.is_file():
            digest = hashlib.sha256()
            with file.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            entry.update(bytes=file.stat().st_size, sha256=digest.hexdigest())
        entries.append(entry)
    return entries
