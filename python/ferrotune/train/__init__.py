"""The trainers: PT and SFT on transformers' ``Trainer``, the loss through ferrotune's kernels.

``train(stage, config)`` runs one stage; ``load_config`` builds its config from YAML and
overrides; ``causal_lm_loss`` is the loss alone, testable without a trainer.

Each name is imported on first use (they need torch and transformers), so that importing
``ferrotune.train.command``, the ``ferrotune train`` parser, loads neither.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferrotune.train.base import NonFiniteLossError
    from ferrotune.train.causal_lm import CausalLMTrainer, causal_lm_loss
    from ferrotune.train.config import PtConfig, SftConfig, TrainConfig, load_config
    from ferrotune.train.run import train

# Each public name (`__all__`) and the module that defines it.
_HOMES = {
    "CausalLMTrainer": "ferrotune.train.causal_lm",
    "NonFiniteLossError": "ferrotune.train.base",
    "PtConfig": "ferrotune.train.config",
    "SftConfig": "ferrotune.train.config",
    "TrainConfig": "ferrotune.train.config",
    "causal_lm_loss": "ferrotune.train.causal_lm",
    "load_config": "ferrotune.train.config",
    "train": "ferrotune.train.run",
}

__all__ = [
    "CausalLMTrainer",
    "NonFiniteLossError",
    "PtConfig",
    "SftConfig",
    "TrainConfig",
    "causal_lm_loss",
    "load_config",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'ferrotune.train' has no attribute {name!r}")
