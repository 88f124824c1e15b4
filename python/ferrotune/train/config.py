"""Training configurations: ``TrainingArguments`` plus each stage's, from YAML and overrides.

``ferrotune train sft --config run.yaml --model PATH --data OUT learning_rate=2e-5``: the YAML file
gives any field, ``--model``/``--data``/``--output-dir`` and ``key=value`` overrides win over it.
Values are converted by transformers' own ``HfArgumentParser`` from each field's type, so a YAML
file and a command line mean the same thing, and an unknown key is an error naming the nearest one.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from transformers import HfArgumentParser, TrainingArguments

from ferrotune.errors import ConfigError, did_you_mean


@dataclass
class TrainConfig(TrainingArguments):
    """What every stage shares. Defaults differ from transformers' where a small run needs it."""

    model: str = field(
        default="",
        metadata={"help": "a local HF model folder, or a model config (.json) for a new model"},
    )
    data: str = field(default="", metadata={"help": "a folder written by `ferrotune prep`"})
    eval_data: str = field(default="", metadata={"help": "an evaluation folder (optional)"})
    output_dir: str | None = field(default="runs/train", metadata={"help": "checkpoints, model"})
    logging_steps: float = field(default=1, metadata={"help": "log every N optimizer steps"})
    lora_r: int = field(
        default=0, metadata={"help": "LoRA rank through peft; 0 trains every weight"}
    )
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "comma-separated module names, or all-linear"}
    )
    loss_plot: bool = field(default=True, metadata={"help": "write loss.png into output_dir"})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "run a model folder's own Python code (auto_map); off: refused"},
    )
    allow_pickle_weights: bool = field(
        default=False,
        metadata={
            "help": "load pickle weights (pytorch_model.bin), which can run code; off: "
            "safetensors only"
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "ferrotune's collators pick the columns they need"}
    )


@dataclass
class PtConfig(TrainConfig):
    """Pretraining: next-token loss on every non-padding token of the packed blocks."""


@dataclass
class SftConfig(TrainConfig):
    """Supervised fine-tuning: next-token loss on the answer tokens (labels != -100)."""


Config = TypeVar("Config", bound=TrainConfig)


def load_config(
    cls: type[Config], path: str | None, overrides: list[str], **given: str | None
) -> Config:
    """``cls`` from a YAML file, then ``given`` (``--model`` ...), then ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if path:
        values.update(_read_yaml(Path(path)))
    values.update({key: value for key, value in given.items() if value is not None})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value", option=item)
        values[key.strip().replace("-", "_")] = value
    return config_from_values(cls, values)


def config_from_values(cls: type[Config], values: dict[str, Any]) -> Config:
    """``cls`` from settings (YAML values or strings), converted by each field's type."""
    names = {f.name for f in fields(cls) if f.init}
    for key in values:
        if key not in names:
            raise ConfigError(f"unknown setting {key!r}{did_you_mean(key, names)}", option=key)
    check_gpu_options(values)
    parser = HfArgumentParser(cls)
    argv = _to_argv({key: value for key, value in values.items() if key not in SWITCHES})
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parsed = vars(parser.parse_args(argv))
        config = cls(**{**{name: parsed[name] for name in names}, **_switches(values)})
    except SystemExit as e:  # argparse prints its usage and the bad value, then exits
        message = stderr.getvalue().strip().splitlines()[-1].partition("error: ")[2]
        raise ConfigError(message or "bad setting") from e
    except ValueError as e:  # TrainingArguments.__post_init__ on a combination it refuses
        raise ConfigError(str(e)) from e
    if not config.model:
        raise ConfigError("no model: give --model (a model folder or a config)", option="model")
    if not config.data:
        raise ConfigError("no data: give --data (a `ferrotune prep` output folder)", option="data")
    return config


# Settings that need a CUDA GPU, and what to do instead on a machine without one.
GPU_ONLY = {
    "fp16": "fp16 mixed precision needs a CUDA GPU: leave it out (fp32), or bf16=true use_cpu=true",
    "tf32": "TF32 matmuls exist on NVIDIA Ampere or newer GPUs only; leave it out",
    "half_precision_backend": "apex needs a CUDA GPU; leave it out",
}


def check_gpu_options(values: dict[str, Any]) -> None:
    """One plain error for a GPU-only setting on a machine without a GPU, before transformers
    refuses it with a traceback, or silently ignores it."""
    import torch

    if torch.cuda.is_available():
        return
    for key, why in GPU_ONLY.items():
        value = str(values.get(key, "")).lower()
        if value in ("true", "1", "yes", "apex"):
            raise ConfigError(
                f"{key}={values[key]}: this machine has no CUDA GPU. {why}", option=key
            )
    optim = str(values.get("optim", ""))
    if "bnb" in optim or "8bit" in optim or optim.startswith("paged"):
        raise ConfigError(
            f"optim={optim}: bitsandbytes optimizers need a CUDA GPU and this machine has none; "
            "use optim=adamw_torch",
            option="optim",
        )
    truthy = ("true", "1", "yes")
    bf16, use_cpu = (str(values.get(key, "")).lower() for key in ("bf16", "use_cpu"))
    if bf16 in truthy and use_cpu not in truthy:
        raise ConfigError(
            f"bf16={values['bf16']}: this machine has no CUDA GPU; bf16 on the CPU needs "
            "use_cpu=true",
            option="bf16",
        )


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such config file", option="config") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}", option="config") from e
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of settings", option="config")
    return {str(key).replace("-", "_"): value for key, value in values.items()}


# TrainingArguments fields typed ``str`` that also take a bool (``fsdp: true`` is transformers'
# own spelling now, "full_shard" ... the deprecated one): a true/false value is given as a bool.
SWITCHES = ("fsdp",)


def _switches(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key in SWITCHES:
        if key in values:
            value = values[key]
            text = str(value).lower()
            out[key] = text == "true" if text in ("true", "false") else value
    return out


def _to_argv(values: dict[str, Any]) -> list[str]:
    """Settings as the command line ``HfArgumentParser`` converts by each field's type."""
    argv: list[str] = []
    for key, value in values.items():
        items = value if isinstance(value, list | tuple) else [value]
        argv.append(f"--{key}")
        argv.extend(str(item).lower() if isinstance(item, bool) else str(item) for item in items)
    return argv


@dataclass
class RmConfig(TrainConfig):
    """Reward modelling: a one-label sequence classifier on chosen/rejected pairs."""


@dataclass
class DpoConfig(TrainConfig):
    """DPO against a reference model (by default the starting model itself)."""

    beta: float = field(default=0.1, metadata={"help": "strength of the KL constraint"})
    loss_type: str = field(default="sigmoid", metadata={"help": "sigmoid, ipo, hinge or robust"})
    label_smoothing: float = field(default=0.0, metadata={"help": "robust: the label noise rate"})
    sft_weight: float = field(default=0.0, metadata={"help": "weight of an added chosen NLL"})
    reference: str = field(
        default="", metadata={"help": "reference model folder (default: --model itself)"}
    )
    precompute_ref_logps: bool = field(
        default=True,
        metadata={"help": "reference log-probs in one pass, cached beside the shards"},
    )


@dataclass
class PpoConfig(TrainConfig):
    """PPO on `prep ppo` prompts; defaults are TRL's last PPOTrainer's (before 1.13 removed it).

    ``per_device_train_batch_size`` prompts are rolled out per iteration, ``max_steps``
    iterations are run, ``learning_rate`` trains actor and critic.
    """

    reward_model: str = field(default="", metadata={"help": "RM folder (also the critic's start)"})
    reward_fn: str = field(default="", metadata={"help": "module:function, instead of an RM"})
    critic: str = field(default="", metadata={"help": "critic folder (default: reward_model)"})
    reference: str = field(default="", metadata={"help": "reference folder (default: --model)"})
    kl_coef: float = field(default=0.05, metadata={"help": "weight of the per-token KL penalty"})
    kl_estimator: str = field(default="k1", metadata={"help": "k1 or k3"})
    cliprange: float = field(default=0.2, metadata={"help": "policy ratio clip"})
    cliprange_value: float = field(default=0.2, metadata={"help": "value clip"})
    vf_coef: float = field(default=0.1, metadata={"help": "weight of the value loss"})
    entropy_coef: float = field(default=0.0, metadata={"help": "weight of an entropy bonus"})
    gamma: float = field(default=1.0, metadata={"help": "discount"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    ppo_epochs: int = field(default=4, metadata={"help": "passes over each rollout"})
    num_mini_batches: int = field(default=1, metadata={"help": "minibatches per pass"})
    response_length: int = field(default=64, metadata={"help": "max new tokens per answer"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling"})
    missing_eos_penalty: float = field(
        default=1.0, metadata={"help": "taken off the score of an answer that never ended"}
    )
    whiten_rewards: bool = field(default=False, metadata={"help": "whiten per-token rewards"})
