"""Reading the ``manifest.json`` of a ``ferrotune prep`` output folder.

Its own module, importing nothing but the standard library and the extension module (for the
tokenizer's fingerprint), so that what only reads a manifest (``ferrotune inspect``, the
pipeline's reuse check, the report, the trainers' tokenizer check) loads neither torch nor
pyarrow.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ferrotune import _native
from ferrotune.errors import DataError

__all__ = ["read_manifest", "same_tokenizer"]


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``manifest.json`` of an output folder; a clear error if the folder is not one."""
    manifest_path = Path(path) / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(f"{path}: not a ferrotune output folder (no manifest.json)", path=str(path))
    with manifest_path.open(encoding="utf-8") as handle:
        return json.load(handle)


def same_tokenizer(recorded: dict[str, Any], path: str | os.PathLike[str]) -> bool:
    """Whether the tokenizer at ``path`` (a ``tokenizer.json`` or a model folder) gives the ids
    of the one a manifest's ``tokenizer`` entry records.

    Compared by fingerprint (vocabulary, merges, added tokens, normaliser, pre-tokeniser,
    post-processor, decoder and the model's options), not by the file's bytes: every checkpoint
    re-saves ``tokenizer.json`` (other key order and layout, merges as pairs) with the ids
    unchanged. The fingerprint is computed by the same Rust function prep used
    (``_native.tokenizer_fingerprint``). Manifests written before it was recorded fall back to the
    file's sha256.
    """
    file = Path(path)
    if file.is_dir():
        file = file / "tokenizer.json"
    if recorded.get("fingerprint"):
        return _native.tokenizer_fingerprint(file) == recorded["fingerprint"]
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == recorded.get("sha256")
