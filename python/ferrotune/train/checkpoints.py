"""Which ``checkpoint-N`` folders a run may resume from.

``Trainer`` and the PPO trainer write a checkpoint's files in place, one after another; a run
killed in the middle leaves a folder with some of them. Each writes one file last, and only
then is the checkpoint whole: ``trainer_state.json`` for ``Trainer`` (after the weights,
optimizer, scheduler and RNG states), ``ppo_state.pt`` for PPO (written atomically, after every
process's RNG state). A folder whose last file is missing or unreadable is not a checkpoint.
No torch here: the pipeline asks before it imports a trainer.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["PPO_STATE", "TRAINER_STATE", "complete_checkpoints", "is_complete"]

TRAINER_STATE = "trainer_state.json"
PPO_STATE = "ppo_state.pt"


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a whole checkpoint (its last-written file is there and whole)."""
    if (folder / PPO_STATE).is_file():
        return True  # replaced atomically: there means whole
    try:
        json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def complete_checkpoints(output_dir: str | Path | None) -> list[tuple[int, Path]]:
    """``(step, folder)`` of each whole ``checkpoint-STEP`` in ``output_dir``, oldest first."""
    if not output_dir or not Path(output_dir).is_dir():
        return []
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and is_complete(path):
            found.append((int(step), path))
    return sorted(found)
