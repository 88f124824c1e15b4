"""The PPO loop: with a rule that rewards one kind of text, a tiny actor's mean score rises while
the KL stays bounded; reference and reward models never change; the critic's value loss falls;
the CLI runs on prompts that ``ferrotune prep ppo`` made from MedicalGPT."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ferrotune.cli import main
from ferrotune.data import prep_ppo
from ferrotune.data.manifest import read_manifest
from ferrotune.data.shards import ShardDataset
from ferrotune.errors import ConfigError
from ferrotune.train.config import PpoConfig
from ferrotune.train.ppo import PpoRun
from ferrotune.train.rewards import reference_overlap

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "examples" / "model" / "config.json"
RULE = '''
def cjk_share(queries, responses, references):
    """The share of an answer's characters that are CJK ideographs."""
    return [sum("\\u4e00" <= c <= "\\u9fff" for c in r) / max(len(r), 1) for r in responses]
'''


@pytest.fixture
def prompts(tmp_path) -> Path:
    questions = ["what is rain", "why is the sky blue", "how do plants grow", "a story",
                 "what is a fever", "where do rivers go", "who writes", "what is tea"]  # fmt: skip
    lines = [json.dumps({"conversations": [{"from": "human", "value": q}]}) for q in questions]
    (tmp_path / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    prep_ppo(REPO / "examples" / "tokenizer", tmp_path / "prompts.jsonl", tmp_path / "ppo")
    return tmp_path / "ppo"


@pytest.fixture
def rule(tmp_path, monkeypatch) -> str:
    (tmp_path / "ppo_rule.py").write_text(RULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "ppo_rule:cjk_share"


def config(tmp_path, data, **settings) -> PpoConfig:
    base = {"output_dir": str(tmp_path / "out"), "model": str(MODEL), "data": str(data),
            "use_cpu": True, "report_to": "none", "save_strategy": "no",
            "per_device_train_batch_size": 8, "response_length": 8, "temperature": 1.0,
            "missing_eos_penalty": 0.0, "learning_rate": 3e-3, "seed": 3}  # fmt: skip
    return PpoConfig(**{**base, **settings})


def test_the_loop_learns_a_rule_reward(tmp_path, prompts, rule, capsys):
    settings = {"reward_fn": rule, "max_steps": 30, "per_device_train_batch_size": 64,
                "learning_rate": 1e-2}  # fmt: skip
    run = PpoRun(
        config(tmp_path, prompts, **settings), ShardDataset(prompts), read_manifest(prompts)
    )
    reference = {k: v.clone() for k, v in run.reference.state_dict().items()}
    run.train()
    scores = [row["score"] for row in run.history]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > first + 0.15, scores
    assert max(row["kl"] for row in run.history) < 15.0  # bounded by the KL penalty (0.05)
    for name, value in run.reference.state_dict().items():
        assert torch.equal(value, reference[name]), name
    assert all(p.grad is None for p in run.reference.parameters())
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and (out / "critic" / "config.json").is_file()
    assert (out / "ppo.png").is_file() and len(
        json.loads((out / "ppo_history.json").read_text())
    ) == 30


def test_reward_model_is_frozen_and_the_critic_learns(tmp_path, prompts):
    run = PpoRun(config(tmp_path, prompts, reward_model=str(MODEL), max_steps=12, ppo_epochs=2),
                 ShardDataset(prompts), read_manifest(prompts))  # fmt: skip
    frozen = {k: v.clone() for k, v in run.reward_model.state_dict().items()}
    run.train()
    for name, value in run.reward_model.state_dict().items():
        assert torch.equal(value, frozen[name]), name
    assert all(p.grad is None for p in run.reward_model.parameters())
    value_losses = [row["loss/value"] for row in run.history]
    assert sum(value_losses[-3:]) < sum(value_losses[:3]), value_losses


def test_resume_repeats_the_unbroken_run(tmp_path, prompts, rule):
    """Stopped after step 2 and resumed from its checkpoint, a run logs the unbroken run's
    steps 3-4 and ends with its weights: optimizers, RNGs and prompt order come back."""
    settings = {"reward_fn": rule, "max_steps": 4, "save_strategy": "steps", "save_steps": 2,
                "per_device_train_batch_size": 3, "ppo_epochs": 2,
                "num_mini_batches": 2}  # fmt: skip
    data, manifest = ShardDataset(prompts), read_manifest(prompts)
    whole = PpoRun(config(tmp_path, prompts, output_dir=str(tmp_path / "whole"), **settings),
                   data, manifest).train()  # fmt: skip
    checkpoint = whole / "checkpoint-2"
    again = PpoRun(config(tmp_path, prompts, output_dir=str(tmp_path / "again"),
                          resume_from_checkpoint=str(checkpoint), **settings),
                   data, manifest).train()  # fmt: skip
    assert_same_run(whole, again, rel=1e-6, abs=1e-9, weights_rel=0.0)
    with pytest.raises(ConfigError, match="not a PPO checkpoint"):
        PpoRun(config(tmp_path, prompts, resume_from_checkpoint=str(tmp_path), **settings),
               data, manifest)  # fmt: skip


def assert_same_run(whole: Path, again: Path, *, rel: float, abs: float, weights_rel: float):
    """The resumed run ``again`` logged the unbroken run's four steps and ends with its actor
    and critic weights (``weights_rel`` 0: bit for bit)."""
    from safetensors.torch import load_file

    first = json.loads((whole / "ppo_history.json").read_text())
    second = json.loads((again / "ppo_history.json").read_text())
    assert [row["step"] for row in second] == [1, 2, 3, 4]
    for row, want in zip(second, first, strict=True):
        assert row == pytest.approx(want, rel=rel, abs=abs), (row, want)
    for name in ("model.safetensors", "critic/model.safetensors"):
        one, two = load_file(whole / name), load_file(again / name)
        assert sorted(one) == sorted(two), name
        for key in one:
            torch.testing.assert_close(
                two[key], one[key], rtol=weights_rel, atol=1e-7 if weights_rel else 0.0, msg=key
            )


def stopping_model(folder: Path) -> Path:
    """A tiny actor whose greedy answers differ and end at different lengths (EOS's embedding
    copies a token it often picks): so two processes see different token counts."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = {**json.loads(MODEL.read_text()), "initializer_range": 0.2}
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**settings))
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight
        embedding[0] = embedding[1580] * 1.05
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("sharding", ["ddp", "fsdp2"])
def test_two_processes_train_as_one(tmp_path, prompts, rule, torchrun, sharding, kernel_spy):
    """torchrun with 2 processes x 4 prompts gives the metrics of one process with 8: rollouts
    are split, whitening and means are global, DDP averages the gradients (or FSDP2 shards
    actor, critic and reference and reduce-scatters them). Near-greedy sampling (top_p 1e-6)
    makes the rollouts independent of how the RNG streams are split."""
    actor = stopping_model(tmp_path / "actor")
    args = ["train", "ppo", "--model", str(actor), "--data", str(prompts), "max_steps=3",
            "save_strategy=no", "use_cpu=true", f"reward_fn={rule}", "top_p=1e-6",
            "response_length=6", "ppo_epochs=2", "learning_rate=3e-3",
            "report_to=none"]  # fmt: skip
    assert (
        main([*args, "--output-dir", str(tmp_path / "one"), "per_device_train_batch_size=8"]) == 0
    )
    sharded = []
    if sharding == "fsdp2":
        fsdp = REPO / "examples" / "sharding" / "fsdp2.json"
        sharded = ["fsdp=true", f"fsdp_config={fsdp}"]
    torchrun([*args, "--output-dir", str(tmp_path / "two"), "per_device_train_batch_size=4",
              *sharded], pythonpath=[str(tmp_path), kernel_spy.pythonpath])  # fmt: skip
    calls = kernel_spy.calls()  # actor and reference log-probs, in the head's call
    assert calls and all(c["in_head"] and not c["dtensor"] for c in calls), calls
    assert all(c["sharded_root"] == (sharding == "fsdp2") for c in calls), calls
    one = json.loads((tmp_path / "one" / "ppo_history.json").read_text())
    two = json.loads((tmp_path / "two" / "ppo_history.json").read_text())
    assert [row["step"] for row in two] == [1, 2, 3]
    assert any(row["response_length"] < 6 for row in one), one  # some answers ended early
    for row, want in zip(two, one, strict=True):
        assert row == pytest.approx(want, rel=1e-4, abs=1e-6), (row, want)


def test_resume_under_fsdp2_repeats_the_unbroken_run(tmp_path, prompts, rule, torchrun):
    """Two FSDP2 processes: the checkpoint holds the gathered actor, critic and optimizer
    states; resumed from it, steps 3-4 and the final weights are the unbroken run's."""
    fsdp = REPO / "examples" / "sharding" / "fsdp2.json"
    args = ["train", "ppo", "--model", str(MODEL), "--data", str(prompts), "max_steps=4",
            "save_strategy=steps", "save_steps=2", "use_cpu=true", f"reward_fn={rule}",
            "response_length=6", "ppo_epochs=2", "num_mini_batches=2", "learning_rate=3e-3",
            "per_device_train_batch_size=2", "report_to=none", "fsdp=true",
            f"fsdp_config={fsdp}"]  # fmt: skip
    whole, again = tmp_path / "whole", tmp_path / "again"
    torchrun([*args, "--output-dir", str(whole)], pythonpath=[str(tmp_path)])
    checkpoint = whole / "checkpoint-2"
    torchrun([*args, "--output-dir", str(again), f"resume_from_checkpoint={checkpoint}"],
             pythonpath=[str(tmp_path)])  # fmt: skip
    assert_same_run(whole, again, rel=1e-5, abs=1e-7, weights_rel=1e-5)


def test_deepspeed_is_refused_plainly(tmp_path, prompts, rule):
    settings = config(tmp_path, prompts, reward_fn=rule)
    settings.deepspeed = str(REPO / "examples" / "sharding" / "zero3.json")  # needs deepspeed
    with pytest.raises(ConfigError, match="PPO under DeepSpeed is not supported yet"):
        PpoRun(settings, ShardDataset(prompts), read_manifest(prompts))


def test_reference_overlap_reward():
    scores = reference_overlap(["q"] * 3, ["abc", "xyz", "abc"], ["abcd", "abc", None])
    assert scores[0] == pytest.approx(2 * 1.0 * 0.75 / 1.75)
    assert scores[1:] == [0.0, 0.0]


def test_cli_runs_ppo_on_medicalgpt_prompts(qwen_tokenizer, medicalgpt, tiny_config, tmp_path):
    lines = (medicalgpt / "sft" / "medical_sft_1K_format.jsonl").read_text().splitlines()[:4]
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n")
    prep_ppo(qwen_tokenizer, tmp_path / "q.jsonl", tmp_path / "ppo", max_prompt_length=64)
    code = main(["train", "ppo", "--model", str(tiny_config), "--data",
                 str(tmp_path / "ppo"), "--output-dir", str(tmp_path / "out"), "max_steps=2",
                 "per_device_train_batch_size=2", "response_length=6", "use_cpu=true",
                 "reward_fn=ferrotune.train.rewards:reference_overlap",
                 "report_to=tensorboard"])  # fmt: skip
    assert code == 0
    history = json.loads((tmp_path / "out" / "ppo_history.json").read_text())
    assert [row["step"] for row in history] == [1, 2]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "out" / "runs")).Reload()
    for name in ("score", "kl", "loss/policy", "loss/value", "policy/entropy"):
        logged = events.Scalars(name)
        assert [e.step for e in logged] == [1, 2], name
        assert [e.value for e in logged] == pytest.approx([row[name] for row in history]), name


def test_cli_chain_pt_sft_rm_ppo_on_medicalgpt(qwen_tokenizer, medicalgpt, tiny_config,
                                               tmp_path):  # fmt: skip
    """Each stage's saved model is the next one's input: PT → SFT → RM → PPO (actor and
    reference from SFT, reward model and critic from RM), all from the command line."""
    from ferrotune.data import prep_pt, prep_rm, prep_sft

    data = medicalgpt
    text = sorted((data / "pretrain").glob("*.txt"))[0].read_text(encoding="utf-8")[:3000]
    (tmp_path / "pt.txt").write_text(text, encoding="utf-8")
    prep_pt(qwen_tokenizer, [tmp_path / "pt.txt"], tmp_path / "pt-data", block_size=96)
    for name, folder, count in [("sft", "sft", 4), ("pairs", "reward", 4)]:
        source = sorted((data / folder).glob("*.jsonl"))[-1 if folder == "sft" else 0]
        lines = source.read_text(encoding="utf-8").splitlines()[:count]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prep_sft(qwen_tokenizer, tmp_path / "sft.jsonl", tmp_path / "sft-data", max_length=128)
    prep_rm(qwen_tokenizer, tmp_path / "pairs.jsonl", tmp_path / "rm-data", max_length=128)
    prep_ppo(qwen_tokenizer, tmp_path / "sft.jsonl", tmp_path / "ppo-data", max_prompt_length=64)
    quiet = ["max_steps=2", "per_device_train_batch_size=2", "use_cpu=true", "disable_tqdm=true",
             "save_strategy=no"]  # fmt: skip
    model = str(tiny_config)
    for stage, source in [("pt", model), ("sft", "pt"), ("rm", "sft")]:
        source = source if source == model else str(tmp_path / source)
        assert main(["train", stage, "--model", source, "--data", str(tmp_path / f"{stage}-data"),
                     "--output-dir", str(tmp_path / stage), *quiet]) == 0  # fmt: skip
    assert main(["train", "ppo", "--model", str(tmp_path / "sft"), "--data",
                 str(tmp_path / "ppo-data"), "--output-dir", str(tmp_path / "ppo"),
                 f"reward_model={tmp_path / 'rm'}", "response_length=4", *quiet]) == 0  # fmt: skip
    history = json.loads((tmp_path / "ppo" / "ppo_history.json").read_text())
    assert len(history) == 2 and all(math.isfinite(row["score"]) for row in history)
    assert (tmp_path / "ppo" / "critic" / "model.safetensors").is_file()
