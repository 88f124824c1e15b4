"""The trainers: PT and SFT on transformers' ``Trainer``, the loss through ferrotune's kernels.

``train(stage, config)`` runs one stage; ``load_config`` builds its config from YAML and
overrides; ``causal_lm_loss`` is the loss alone, testable without a trainer.
"""

from ferrotune.train.base import NonFiniteLossError
from ferrotune.train.causal_lm import CausalLMTrainer, causal_lm_loss
from ferrotune.train.config import PtConfig, SftConfig, TrainConfig, load_config
from ferrotune.train.run import train

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
