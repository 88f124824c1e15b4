"""Models from a local HF folder, or new ones from a config (nothing is ever downloaded).

Safe by default: weights load from safetensors only (a pickle ``pytorch_model.bin`` can run code
as it loads; ``allow_pickle_weights`` opts in), and a model whose config asks for its own Python
code (``auto_map``) is refused unless ``trust_remote_code`` is set, as in transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers

from ferrotune.errors import ConfigError

SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PICKLE = ("pytorch_model.bin", "pytorch_model.bin.index.json")
WEIGHTS = SAFETENSORS + PICKLE


def _from_pretrained(
    auto: type, path: Path, spec: str, trust_remote_code: bool, allow_pickle: bool, **kwargs: Any
) -> transformers.PreTrainedModel:
    """``auto.from_pretrained`` on a folder that holds weights, safetensors only unless
    ``allow_pickle``; a load failure is a :class:`ConfigError` naming ``--model``."""
    safetensors = any((path / name).exists() for name in SAFETENSORS)
    if not safetensors and not allow_pickle:
        raise ConfigError(
            f"--model {spec}: its weights are pickle files (pytorch_model.bin), which can run "
            "code as they load; convert them to safetensors (save_pretrained with "
            "safe_serialization=True), or set allow_pickle_weights=true for a file you trust",
            option="model",
        )
    try:
        return auto.from_pretrained(
            path, use_safetensors=safetensors, trust_remote_code=trust_remote_code, **kwargs
        )
    except (OSError, ValueError) as e:
        raise ConfigError(f"--model {spec}: cannot load the model: {e}", option="model") from e


def load_causal_lm(
    spec: str, *, seed: int, trust_remote_code: bool = False, allow_pickle: bool = False
) -> transformers.PreTrainedModel:
    """A causal LM: ``spec`` is a saved model folder, or a config (a ``.json`` file, or a folder
    with only ``config.json``) for a model random-initialised from ``seed``."""
    path = Path(spec)
    if path.is_dir() and any((path / name).exists() for name in WEIGHTS):
        auto = transformers.AutoModelForCausalLM
        return _from_pretrained(auto, path, spec, trust_remote_code, allow_pickle)
    config = _read_config(path, spec)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config)


def load_reward_model(
    spec: str,
    *,
    seed: int,
    pad_id: int,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> transformers.PreTrainedModel:
    """A one-label sequence classifier: from a saved folder (an SFT model: its score head is new,
    initialised from ``seed``) or from a config. ``pad_token_id`` is set, so that transformers'
    own pooling (and TRL's, and pipelines') finds the last real token too."""
    path = Path(spec)
    torch.manual_seed(seed)
    if path.is_dir() and any((path / name).exists() for name in WEIGHTS):
        auto = transformers.AutoModelForSequenceClassification
        model = _from_pretrained(auto, path, spec, trust_remote_code, allow_pickle, num_labels=1)
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


def model_access(config: Any) -> dict[str, bool]:
    """The load functions' opt-ins, from a training config's ``trust_remote_code`` and
    ``allow_pickle_weights`` (both off by default)."""
    return {
        "trust_remote_code": bool(config.trust_remote_code),
        "allow_pickle": bool(config.allow_pickle_weights),
    }
