"""Models from a local HF folder, or new ones from a config (nothing is ever downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

from ferrotune.errors import ConfigError

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def load_causal_lm(spec: str, *, seed: int) -> transformers.PreTrainedModel:
    """A causal LM: ``spec`` is a saved model folder, or a config (a ``.json`` file, or a folder
    with only ``config.json``) for a model random-initialised from ``seed``."""
    path = Path(spec)
    if path.is_dir() and any((path / name).exists() for name in WEIGHTS):
        try:
            return transformers.AutoModelForCausalLM.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise ConfigError(f"--model {spec}: cannot load the model: {e}", option="model") from e
    config = _read_config(path, spec)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config)


def load_reward_model(spec: str, *, seed: int, pad_id: int) -> transformers.PreTrainedModel:
    """A one-label sequence classifier: from a saved folder (an SFT model: its score head is new,
    initialised from ``seed``) or from a config. ``pad_token_id`` is set, so that transformers'
    own pooling (and TRL's, and pipelines') finds the last real token too."""
    path = Path(spec)
    torch.manual_seed(seed)
    if path.is_dir() and any((path / name).exists() for name in WEIGHTS):
        try:
            model = transformers.AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1
            )
        except (OSError, ValueError) as e:
            raise ConfigError(f"--model {spec}: cannot load the model: {e}", option="model") from e
    else:
        config = _read_config(path, spec)
        config.num_labels = 1
        model = transformers.AutoModelForSequenceClassification.from_config(config)
    model.config.pad_token_id = pad_id
    return model


def _read_config(path: Path, spec: str) -> transformers.PretrainedConfig:
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(
            f"--model {spec}: not a model folder (config.json and weights) nor a model config",
            option="model",
        )
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
        model_type = values.pop("model_type")
        return transformers.AutoConfig.for_model(model_type, **values)
    except (json.JSONDecodeError, KeyError, ValueError) as e:
        raise ConfigError(
            f"--model {spec}: {file} is not a transformers model config ({e})", option="model"
        ) from e
