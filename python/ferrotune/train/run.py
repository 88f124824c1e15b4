"""``ferrotune train STAGE``: load the model and the prepped shards, train, save in HF format."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import transformers

from ferrotune.data.manifest import read_manifest, same_tokenizer
from ferrotune.data.shards import ShardDataset
from ferrotune.errors import ConfigError
from ferrotune.train.base import FerrotuneTrainer
from ferrotune.train.causal_lm import CausalLMTrainer, check_plain_lm_head
from ferrotune.train.collate import PadCollator
from ferrotune.train.config import (
    DpoConfig,
    PpoConfig,
    PtConfig,
    RmConfig,
    SftConfig,
    TrainConfig,
)
from ferrotune.train.dpo import DpoCollator, DpoTrainer, WithReferenceLogps, reference_logps
from ferrotune.train.models import load_causal_lm, load_reward_model, model_access
from ferrotune.train.plots import LossPlot
from ferrotune.train.reward import PairCollator, RewardTrainer

# One config class per stage of ferrotune.stages.STAGES, in that order (a test checks it).
CONFIGS: dict[str, type[TrainConfig]] = {
    "pt": PtConfig,
    "sft": SftConfig,
    "rm": RmConfig,
    "dpo": DpoConfig,
    "ppo": PpoConfig,
}
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


def check_tokenizer(model: str, manifest: dict) -> None:
    """A model folder that ships a tokenizer must ship the one the data was prepped with: other
    ids would train silently on the wrong tokens. Compared by the fingerprint the manifest
    records (what decides the ids), so a checkpoint whose ``tokenizer.json`` ``save_pretrained``
    re-serialised is accepted; an older manifest has only the file's sha256."""
    file = Path(model) / "tokenizer.json"
    if not file.is_file():
        return
    recorded = manifest["tokenizer"]
    if not same_tokenizer(recorded, file):
        raise ConfigError(
            f"--model {model} has another tokenizer than the data, which was prepped with "
            f"{recorded['path']}: prep the data again with --tokenizer {model}",
            option="model",
        )


def train(stage: str, config: TrainConfig) -> Path:
    """Train ``stage`` as ``config`` says; returns the folder the final model is saved in."""
    if stage not in CONFIGS:
        raise ConfigError(f"unknown stage {stage!r}: expected one of {', '.join(CONFIGS)}")
    transformers.set_seed(config.seed)
    train_data, manifest = shards_of(config.data, stage)
    check_tokenizer(config.model, manifest)
    eval_data, eval_manifest = (
        shards_of(config.eval_data, stage) if config.eval_data else (None, None)
    )
    pad = manifest["tokenizer"].get("pad") or manifest["tokenizer"].get("eos") or {"id": 0}
    if stage == "ppo":
        from ferrotune.train.ppo import train_ppo

        out = train_ppo(config, train_data, manifest)
        _copy_tokenizer(manifest, out)
        return out
    common = {"args": config, "eval_dataset": eval_data, "callbacks": [LossPlot()]}
    trainer: FerrotuneTrainer
    if stage == "rm":
        model = load_reward_model(
            config.model, seed=config.seed, pad_id=pad["id"], **model_access(config)
        )
        _check_vocabulary(model.get_input_embeddings(), manifest, config)
        trainer = RewardTrainer(
            model=_prepared(model, config, "SEQ_CLS"),
            train_dataset=train_data,
            data_collator=PairCollator(pad["id"]),
            **common,
        )
    else:
        model = load_causal_lm(config.model, seed=config.seed, **model_access(config))
        check_plain_lm_head(model)
        _check_vocabulary(model.get_output_embeddings(), manifest, config)
        if stage == "dpo":
            trainer = _dpo_trainer(
                _prepared(model, config),
                config,
                (train_data, manifest),
                (eval_data, eval_manifest),
                pad["id"],
                common,
            )
        else:
            trainer = CausalLMTrainer(
                model=_prepared(model, config),
                train_dataset=train_data,
                data_collator=PadCollator(pad["id"]),
                **common,
            )
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint or None)
    out = Path(config.output_dir)
    if config.lora_r > 0:
        _save_merged(trainer, out)
    elif trainer.is_fsdp_enabled:
        # Gathered whatever the checkpoints' state_dict_type: the final model is a plain
        # transformers folder (Trainer would save nothing but shards under SHARDED_STATE_DICT).
        trainer._save(str(out), state_dict=trainer.accelerator.get_state_dict(trainer.model))
    else:
        trainer.save_model(str(out))
    trainer.save_state()  # trainer_state.json: the log history, beside the model
    if trainer.is_world_process_zero():
        _copy_tokenizer(manifest, out)
    return out


def _dpo_trainer(model, config, train, evaluation, pad_id, common) -> DpoTrainer:
    """The reference is ``config.reference`` or a frozen copy of the starting model; its
    log-probs are precomputed for the training and the evaluation pairs alike."""
    reference = load_causal_lm(
        config.reference or config.model, seed=config.seed, **model_access(config)
    )
    if not config.precompute_ref_logps:
        return DpoTrainer(
            model=model,
            train_dataset=train[0],
            data_collator=DpoCollator(pad_id),
            ref_model=reference,
            **common,
        )

    def with_reference(rows, manifest, folder: str, reference) -> WithReferenceLogps:
        cache = Path(folder)
        if not os.access(cache, os.W_OK):
            cache = Path(config.output_dir)
            cache.mkdir(parents=True, exist_ok=True)
        logps = reference_logps(
            reference,
            rows,
            manifest,
            cache,
            pad_id=pad_id,
            batch_size=config.per_device_eval_batch_size,
            device=config.device,
        )
        return WithReferenceLogps(rows, logps)

    datasets = {"train_dataset": with_reference(*train, config.data, reference)}
    if evaluation[0] is not None:
        datasets["eval_dataset"] = with_reference(*evaluation, config.eval_data, reference)
    del reference  # the precomputed log-probs stand for it: its memory goes back
    return DpoTrainer(model=model, data_collator=DpoCollator(pad_id), **{**common, **datasets})


def _prepared(model, config: TrainConfig, task: str = "CAUSAL_LM"):
    """With LoRA adapters through peft when ``lora_r > 0``; the model as it is otherwise."""
    if config.lora_r <= 0:
        return model
    if config.fsdp or config.deepspeed:
        raise ConfigError(
            "lora_r > 0 with fsdp or deepspeed is not supported yet: the merged save needs the "
            "whole model on one process; train LoRA with DDP, or every weight sharded",
            option="lora_r",
        )
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
        task_type=task,
    )
    return peft.get_peft_model(model, lora)


def _save_merged(trainer: FerrotuneTrainer, out: Path) -> None:
    """LoRA: the adapter in ``out/adapter``, and the merged model in ``out`` itself, so that the
    next stage (and any tool) loads a plain transformers model."""
    trainer.save_model(str(out / "adapter"))
    if trainer.is_world_process_zero():
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        merged.save_pretrained(str(out))


def _check_vocabulary(embedding, manifest: dict, config: TrainConfig) -> None:
    vocab = manifest["tokenizer"]["vocab_size"]
    rows = embedding.weight.shape[0]
    if rows < vocab:
        raise ConfigError(
            f"--model {config.model} has {rows} embedding rows but the data's tokenizer has "
            f"{vocab} tokens: the data was prepped for another model",
            option="model",
        )


def _copy_tokenizer(manifest: dict, out: Path) -> None:
    """The data's tokenizer beside the model, so the next stage and other tools load both."""
    source = Path(manifest["tokenizer"]["path"])
    folder = source if source.is_dir() else source.parent
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            shutil.copy2(folder / name, out / name)
