"""Batches from shard rows: right-padded to the longest row, ready for the model and the loss."""

from __future__ import annotations

from typing import Any

import torch

PADDING = {"input_ids": None, "labels": -100, "attention_mask": 0}


class PadCollator:
    """Pads ``input_ids`` with the tokenizer's pad id, ``labels`` with -100, masks with 0.

    Rows with ``position_ids`` (packed SFT rows, PT blocks) are batched *without* an attention
    mask: transformers then derives one causal block per sequence from where the position ids
    restart, so packed sequences never attend to each other (with sdpa and eager attention too).
    Their padding continues as one more sequence, whose labels are -100.
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(row["input_ids"]) for row in rows)
        packed = "position_ids" in rows[0]
        batch: dict[str, torch.Tensor] = {}
        for name in rows[0]:
            if name == "attention_mask" and packed:
                continue
            values = [torch.as_tensor(row[name]).long() for row in rows]
            if name == "position_ids":
                batch[name] = torch.stack([_continue_positions(v, longest) for v in values])
                continue
            fill = self.pad_id if name == "input_ids" else PADDING.get(name, 0)
            batch[name] = torch.stack(
                [torch.nn.functional.pad(v, (0, longest - len(v)), value=fill) for v in values]
            )
        return batch


def _continue_positions(positions: torch.Tensor, length: int) -> torch.Tensor:
    tail = torch.arange(length - len(positions), dtype=positions.dtype)
    return torch.cat([positions, tail])
