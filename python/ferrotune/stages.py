"""The training stages, in pipeline order: the one list every part of ferrotune reads.

``prep``, ``train``, ``pipeline`` and the report each name these stages; they take the names
from here, a module that imports nothing, so that the command line builds its parsers without
loading the trainers (``ferrotune.train.run.CONFIGS`` maps the same names to their configs).
"""

from __future__ import annotations

__all__ = ["CHAT_STAGES", "STAGES"]

STAGES = ("pt", "sft", "rm", "dpo", "ppo")
# The stages whose data are conversations or preference pairs (rendered with a chat template).
CHAT_STAGES = STAGES[1:]
