"""``ferrotune train STAGE``: load the model and the prepped shards, train, save in HF format."""

from __future__ import annotations

import shutil
from pathlib import Path

import transformers

from ferrotune.data.shards import ShardDataset, read_manifest
from ferrotune.errors import ConfigError
from ferrotune.train.causal_lm import CausalLMTrainer, check_plain_lm_head
from ferrotune.train.collate import PadCollator
from ferrotune.train.config import PtConfig, SftConfig, TrainConfig
from ferrotune.train.models import load_causal_lm
from ferrotune.train.plots import LossPlot

CONFIGS: dict[str, type[TrainConfig]] = {"pt": PtConfig, "sft": SftConfig}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def shards_of(path: str, stage: str) -> tuple[ShardDataset, dict]:
    """The shards of a ``ferrotune prep STAGE`` folder, refusing another stage's."""
    if not (Path(path) / "manifest.json").is_file():
        raise ConfigError(f"--data {path}: not a folder written by `ferrotune prep`", option="data")
    manifest = read_manifest(path)
    if manifest.get("stage") != stage:
        raise ConfigError(
            f"--data {path}: prepped for {manifest.get('stage')!r}, not {stage!r} "
            f"(run `ferrotune prep {stage}`)",
            option="data",
        )
    return ShardDataset(path), manifest


def train(stage: str, config: TrainConfig) -> Path:
    """Train ``stage`` as ``config`` says; returns the folder the final model is saved in."""
    if stage not in CONFIGS:
        raise ConfigError(f"unknown stage {stage!r}: expected one of {', '.join(CONFIGS)}")
    transformers.set_seed(config.seed)
    train_data, manifest = shards_of(config.data, stage)
    eval_data = shards_of(config.eval_data, stage)[0] if config.eval_data else None
    model = load_causal_lm(config.model, seed=config.seed)
    check_plain_lm_head(model)
    _check_vocabulary(model, manifest, config)
    if config.lora_r > 0:
        model = _with_lora(model, config)
    pad = manifest["tokenizer"].get("pad") or manifest["tokenizer"].get("eos") or {"id": 0}
    trainer = CausalLMTrainer(
        model=model,
        args=config,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=PadCollator(pad["id"]),
        callbacks=[LossPlot()],
    )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint or None)
    out = Path(config.output_dir)
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        _copy_tokenizer(manifest, out)
    return out


def _check_vocabulary(model, manifest: dict, config: TrainConfig) -> None:
    vocab = manifest["tokenizer"]["vocab_size"]
    rows = model.get_output_embeddings().weight.shape[0]
    if rows < vocab:
        raise ConfigError(
            f"--model {config.model} has {rows} output rows but the data's tokenizer has {vocab} "
            "tokens: the data was prepped for another model",
            option="model",
        )


def _with_lora(model, config: TrainConfig):
    try:
        import peft
    except ImportError as e:
        raise ConfigError("lora_r > 0 needs peft: pip install peft", option="lora_r") from e
    targets = config.lora_target_modules
    lora = peft.LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets if targets == "all-linear" else targets.split(","),
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, lora)


def _copy_tokenizer(manifest: dict, out: Path) -> None:
    """The data's tokenizer beside the model, so the next stage and other tools load both."""
    source = Path(manifest["tokenizer"]["path"])
    folder = source if source.is_dir() else source.parent
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            shutil.copy2(folder / name, out / name)
