"""RM and DPO: the losses against their definitions and the init oracles, then against TRL 1.16's
own trainers on the same model and batch, and the CLI on MedicalGPT preference pairs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import transformers

from ferrotune.cli import main
from ferrotune.data import prep_dpo, prep_rm
from ferrotune.train.dpo import sequence_logps
from ferrotune.train.losses import dpo_loss, reward_loss
from ferrotune.train.reward import PairCollator, sequence_rewards

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = REPO / "examples" / "tokenizer"
SMALL = {
    "vocab_size": 2048,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "pad_token_id": 0,
}


def pairs(n: int = 4, seed: int = 0) -> list[dict[str, list[int]]]:
    gen = torch.Generator().manual_seed(seed)

    def ids(length: int) -> list[int]:
        return torch.randint(3, 2048, (length,), generator=gen).tolist()

    return [
        {"prompt_ids": ids(5 + i), "chosen_ids": ids(4 + 2 * i), "rejected_ids": ids(7 - i)}
        for i in range(n)
    ]


@pytest.mark.parametrize("kind", ["sigmoid", "ipo", "hinge", "robust"])
def test_dpo_loss_at_initialisation(kind):
    logps = torch.tensor([-12.5, -40.0, -3.25])
    other = torch.tensor([-20.0, -7.5, -9.0])
    tokens = torch.tensor([5, 9, 2])
    losses = dpo_loss(
        logps, other, logps, other, 0.1, kind, label_smoothing=0.2,
        chosen_tokens=tokens, rejected_tokens=tokens,
    )  # fmt: skip
    expected = {"sigmoid": math.log(2), "ipo": 25.0, "hinge": 1.0, "robust": math.log(2)}[kind]
    torch.testing.assert_close(losses, torch.full((3,), expected))


def test_dpo_loss_definitions():
    gen = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=gen, dtype=torch.float64) * 5 for _ in range(4))
    tc, tr = torch.tensor([3, 1, 4, 1, 5, 9]), torch.tensor([2, 6, 5, 3, 5, 8])
    delta = (pc - rc) - (pr - rr)

    def sigma(x):
        return 1 / (1 + torch.exp(-x))

    eps = 0.1
    expected = {
        "sigmoid": -torch.log(sigma(0.5 * delta)),
        "hinge": torch.clamp(1 - 0.5 * delta, min=0),
        "robust": (
            -(1 - eps) * torch.log(sigma(0.5 * delta)) + eps * torch.log(sigma(-0.5 * delta))
        )
        / (1 - 2 * eps),
        "ipo": ((pc - rc) / tc - (pr - rr) / tr - 1 / (2 * 0.5)) ** 2,
    }
    for kind, value in expected.items():
        got = dpo_loss(pc, pr, rc, rr, 0.5, kind, label_smoothing=eps, chosen_tokens=tc,
                       rejected_tokens=tr)  # fmt: skip
        torch.testing.assert_close(got, value, msg=kind)
    with pytest.raises(ValueError, match="unknown DPO loss"):
        dpo_loss(pc, pr, rc, rr, 0.5, "kto")


def make_model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.Qwen2Config(**SMALL, num_labels=1)
    if kind == "rm":
        return transformers.AutoModelForSequenceClassification.from_config(config)
    return transformers.AutoModelForCausalLM.from_config(config)


def test_reward_loss_and_accuracy_equal_trls_reward_trainer(tmp_path):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    model = make_model("rm")
    rows = [{"chosen_ids": p["prompt_ids"] + p["chosen_ids"],
             "rejected_ids": p["prompt_ids"] + p["rejected_ids"], "margin": 0.25 * i}
            for i, p in enumerate(pairs())]  # fmt: skip
    config = RewardConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[])
    text = Dataset.from_list([{"chosen": "yes", "rejected": "no"}] * 2)
    tokenizer = transformers.AutoTokenizer.from_pretrained(TOKENIZER)
    trl = RewardTrainer(model=model, args=config, train_dataset=text, processing_class=tokenizer)
    batch = DataCollatorForPreference(pad_token_id=0)(rows)
    trl_loss = trl.compute_loss(model, dict(batch))
    ours_batch = PairCollator(0)(
        [{"input_ids_chosen": r["chosen_ids"], "input_ids_rejected": r["rejected_ids"],
          "margin": r["margin"]} for r in rows]
    )  # fmt: skip
    rewards = sequence_rewards(model, ours_batch)
    chosen, rejected = rewards.chunk(2)
    ours = reward_loss(chosen, rejected, ours_batch["margin"]).mean()
    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-5)
    accuracy = (chosen > rejected).float().mean().item()
    assert accuracy == pytest.approx(trl._metrics["train"]["accuracy"][-1])


@pytest.mark.parametrize(
    "kind, trl_types, extra",
    [
        ("sigmoid", ["sigmoid"], {}),
        ("ipo", ["ipo"], {}),
        ("hinge", ["hinge"], {}),
        ("robust", ["robust"], {"label_smoothing": 0.2}),
        ("sigmoid", ["sigmoid", "sft"], {"loss_weights": [1.0, 0.5]}),
    ],
)
def test_dpo_losses_equal_trls_dpo_trainer(tmp_path, kind, trl_types, extra):
    """TRL's DPOTrainer computes its loss on a batch whose reference log-probs are given; ours,
    from the same model and batch, equals it for each loss type (and the SFT term)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    model = make_model("dpo")
    config = DPOConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], beta=0.1,
        loss_type=trl_types, precompute_ref_log_probs=True, **extra,
    )  # fmt: skip
    text = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}] * 2)
    tokenizer = transformers.AutoTokenizer.from_pretrained(TOKENIZER)
    trl = DPOTrainer(model=model, args=config, train_dataset=text, processing_class=tokenizer)
    batch = DataCollatorForPreference(pad_token_id=0)(pairs())
    ref = torch.tensor([-70.0, -50.5, -90.25, -60.0, -80.0, -75.5, -45.0, -66.0])
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref.chunk(2)
    trl_loss = trl._compute_loss(model, dict(batch), return_outputs=False)

    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    ours_batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                  "labels": labels}  # fmt: skip
    logps, tokens = sequence_logps(model, ours_batch)
    (chosen, rejected), (ct, rt) = logps.chunk(2), tokens.chunk(2)
    losses = dpo_loss(
        chosen, rejected, *ref.chunk(2), 0.1, kind, label_smoothing=extra.get("label_smoothing", 0),
        chosen_tokens=ct, rejected_tokens=rt,
    )  # fmt: skip
    ours = losses.mean()
    if "sft" in trl_types:
        ours = ours + 0.5 * (-chosen.sum() / ct.sum())
    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-5)


TINY_QWEN = {**SMALL, "model_type": "qwen2", "vocab_size": 151936, "pad_token_id": None}


@pytest.fixture(scope="module")
def medical_pairs(qwen_tokenizer, medicalgpt, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pairs")
    lines = (medicalgpt / "reward" / "dpo_zh_500.jsonl").read_text().splitlines()[:8]
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    prep_rm(qwen_tokenizer, root / "pairs.jsonl", root / "rm", max_length=192)
    prep_dpo(qwen_tokenizer, root / "pairs.jsonl", root / "dpo", max_length=192)
    (root / "tiny.json").write_text(json.dumps(TINY_QWEN))
    return {"rm": root / "rm", "dpo": root / "dpo", "model": root / "tiny.json"}


ARGS = ["per_device_train_batch_size=4", "learning_rate=1e-2", "use_cpu=true",
        "disable_tqdm=true", "save_strategy=no", "logging_steps=1"]  # fmt: skip


@pytest.mark.parametrize("stage", ["rm", "dpo"])
def test_cli_trains_on_medicalgpt_pairs(medical_pairs, tmp_path, stage):
    out = tmp_path / stage
    argv = ["train", stage, "--model", str(medical_pairs["model"]), "--data",
            str(medical_pairs[stage]), "--output-dir", str(out), "max_steps=8", *ARGS]  # fmt: skip
    assert main(argv) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [row["loss"] for row in state["log_history"] if "loss" in row]
    assert len(losses) == 8 and losses[-1] < losses[0], losses
    assert (out / "model.safetensors").is_file()
    if stage == "rm":
        model = transformers.AutoModelForSequenceClassification.from_pretrained(out)
        assert model.config.num_labels == 1 and model.config.pad_token_id == 151643
    else:
        assert losses[0] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference at step 1
        assert list(medical_pairs["dpo"].glob("ref-logps-*.pt"))  # cached beside the shards
        transformers.AutoModelForCausalLM.from_pretrained(out)
