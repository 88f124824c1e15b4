"""Reading a ferrotune output folder as a memory-mapped ``torch`` dataset.

The shards are uncompressed Arrow IPC streams, so ``pyarrow.memory_map`` exposes their buffers
without reading them: a dataset of any size costs only the pages a training run touches.
Each row comes back as a dict of tensors, ready for a collator.
"""

from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from ferrotune.data.manifest import read_manifest
from ferrotune.errors import DataError

__all__ = ["ShardDataset"]


class _Column:
    """Zero-copy NumPy views of one column in one record batch."""

    def __init__(self, array: pa.Array) -> None:
        self.kind: str
        if pa.types.is_fixed_size_list(array.type):
            width = array.type.list_size
            values = array.values.slice(array.offset * width, len(array) * width)
            self.kind = "fixed"
            self.values = values.to_numpy(zero_copy_only=True).reshape(len(array), width)
        elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
            self.kind = "list"
            self.offsets = array.offsets.to_numpy(zero_copy_only=True)
            self.values = array.values.to_numpy(zero_copy_only=True)
        elif pa.types.is_integer(array.type) or pa.types.is_floating(array.type):
            self.kind = "scalar"
            self.values = array.to_numpy(zero_copy_only=True)
        else:
            self.kind = "object"
            self.array = array

    def get(self, row: int) -> Any:
        if self.kind == "fixed":
            return torch.from_numpy(np.array(self.values[row]))
        if self.kind == "list":
            start, end = self.offsets[row], self.offsets[row + 1]
            return torch.from_numpy(np.array(self.values[start:end]))
        if self.kind == "scalar":
            return torch.tensor(self.values[row])
        return self.array[row].as_py()


class ShardDataset(Dataset):
    """The rows of a ``ferrotune prep`` output folder, memory-mapped.

    ``columns`` picks a subset (default: all). Items are dicts of 1-D tensors in the shards'
    own dtypes (int32 ids, int8 masks): cast in the collator, where a batch is contiguous.
    """

    def __init__(self, path: str | os.PathLike[str], columns: list[str] | None = None) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self._batches: list[dict[str, _Column]] = []
        self._starts: list[int] = []
        self._maps: list[pa.MemoryMappedFile] = []
        total = 0
        for shard in self.manifest["shards"]:
            source = pa.memory_map(str(self.path / shard["file"]), "r")
            self._maps.append(source)
            reader = pa.ipc.open_stream(source)
            names = columns or reader.schema.names
            missing = [name for name in names if name not in reader.schema.names]
            if missing:
                raise DataError(
                    f"{self.path}: no column {missing[0]!r} (columns: {reader.schema.names})",
                    path=str(self.path),
                    field=missing[0],
                )
            for batch in reader:
                if batch.num_rows == 0:
                    continue
                self._starts.append(total)
                self._batches.append({name: _Column(batch.column(name)) for name in names})
                total += batch.num_rows
        self._length = total
        self.columns = list(columns or (self._batches[0].keys() if self._batches else []))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} rows")
        batch = bisect.bisect_right(self._starts, index) - 1
        row = index - self._starts[batch]
        return {name: column.get(row) for name, column in self._batches[batch].items()}
