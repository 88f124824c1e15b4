"""Reading the ``manifest.json`` of a ``ferrotune prep`` output folder.

Its own module, importing nothing but the standard library, so that what only reads a manifest
(``ferrotune inspect``, the pipeline's reuse check, the report) loads neither torch nor pyarrow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ferrotune.errors import DataError

__all__ = ["read_manifest"]


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``manifest.json`` of an output folder; a clear error if the folder is not one."""
    manifest_path = Path(path) / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(f"{path}: not a ferrotune output folder (no manifest.json)", path=str(path))
    with manifest_path.open(encoding="utf-8") as handle:
        return json.load(handle)
