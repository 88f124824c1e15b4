"""RM: a sequence classifier with one label scores each answer at its last real token; the loss is
Bradley-Terry, -log sigmoid(r_chosen - r_rejected - margin), as TRL's RewardTrainer has it."""

from __future__ import annotations

from typing import Any

import torch

from ferrotune.train.base import FerrotuneTrainer
from ferrotune.train.losses import reward_loss
from ferrotune.train.model_io import head_output, last_real


class PairCollator:
    """RM rows → one batch of 2B sequences, chosen first, right-padded (``pad_id``, mask 0)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = [torch.as_tensor(r["input_ids_chosen"]).long() for r in rows] + [
            torch.as_tensor(r["input_ids_rejected"]).long() for r in rows
        ]
        longest = max(len(s) for s in sequences)
        batch = {
            "input_ids": torch.stack(
                [
                    torch.nn.functional.pad(s, (0, longest - len(s)), value=self.pad_id)
                    for s in sequences
                ]
            ),
            "attention_mask": torch.stack(
                [
                    torch.nn.functional.pad(torch.ones_like(s), (0, longest - len(s)))
                    for s in sequences
                ]
            ),
        }
        if "margin" in rows[0]:
            batch["margin"] = torch.tensor([float(r["margin"]) for r in rows])
        return batch


def sequence_rewards(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """(2B,) scores at each sequence's last real token, in fp32: the score head's output at
    every position, taken in the model's forward (``model_io``), then picked by the mask."""
    scores = head_output(model, None, batch).squeeze(-1)
    return last_real(scores, batch["attention_mask"]).float()


class RewardTrainer(FerrotuneTrainer):
    """``Trainer`` for RM: loss, accuracy, margin and reward range, logged as TRL names them."""

    loss_is_scaled_for_ga = False  # a mean over the micro-batch's pairs: Trainer divides by GA

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rewards = sequence_rewards(model, inputs)
        chosen, rejected = rewards.chunk(2)
        loss = reward_loss(chosen, rejected, inputs.get("margin", 0.0)).mean()
        self.record("accuracy", (chosen > rejected).float().mean())
        self.record("margin", (chosen - rejected).mean())
        self.record("mean_reward", rewards.mean())
        return (loss, {"loss": loss, "rewards": rewards}) if return_outputs else loss
