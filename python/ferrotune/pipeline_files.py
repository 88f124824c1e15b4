"""The two files a pipeline run works from: the pipeline YAML as loaded (:class:`Pipeline`) and
its state, ``OUTPUT/pipeline.json`` (:class:`State`).

Their own module, so that ``ferrotune.pipeline``, which makes them, and ``ferrotune.report``,
which reads them, both import them without importing each other.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["STATE_FILE", "Pipeline", "State"]

STATE_FILE = "pipeline.json"


@dataclass
class Pipeline:
    """A pipeline file, its paths resolved."""

    source: Path
    tokenizer: Path
    model: str
    output: Path
    train: dict[str, Any]
    stages: dict[str, dict[str, dict[str, Any]]]  # stage -> {"prep": {...}, "train": {...}}
    text: str = field(repr=False, default="")


class State:
    """``pipeline.json``: per stage, the fingerprint of its data and of its trained model."""

    def __init__(self, output: Path, *, writer: bool = True) -> None:
        self.path = output / STATE_FILE
        self.writer = writer  # under torchrun, only the main process writes the file
        self.reload()

    def reload(self) -> None:
        self.stages: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            self.stages = json.loads(self.path.read_text())["stages"]

    def get(self, stage: str) -> dict[str, Any]:
        return self.stages.setdefault(stage, {})

    def save(self) -> None:
        if not self.writer:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"stages": self.stages}, indent=1))
        os.replace(tmp, self.path)
