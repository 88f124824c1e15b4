"""DPO: chosen and rejected in one forward, per-sequence log-probs from the hidden states through
``linear_token_logprobs`` (no logits), the reference's log-probs precomputed once and cached
beside the shards (or from a frozen reference model), TRL's losses and metrics."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ferrotune.train.base import FerrotuneTrainer
from ferrotune.train.losses import dpo_loss
from ferrotune.train.model_io import head_output
from ferrotune_kernels import linear_token_logprobs


class DpoCollator:
    """DPO rows → 2B sequences (chosen first), right-padded; labels -100 over prompt and padding."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids, labels = [], []
        for side in ("chosen", "rejected"):
            ids += [torch.as_tensor(r[f"{side}_input_ids"]).long() for r in rows]
            labels += [torch.as_tensor(r[f"{side}_labels"]).long() for r in rows]
        longest = max(len(s) for s in ids)
        pad = torch.nn.functional.pad
        batch = {
            "input_ids": torch.stack(
                [pad(s, (0, longest - len(s)), value=self.pad_id) for s in ids]
            ),
            "attention_mask": torch.stack(
                [pad(torch.ones_like(s), (0, longest - len(s))) for s in ids]
            ),
            "labels": torch.stack([pad(s, (0, longest - len(s)), value=-100) for s in labels]),
        }
        if "ref_logps" in rows[0]:
            ref = torch.stack([torch.as_tensor(r["ref_logps"]) for r in rows])  # (B, 2)
            batch["ref_logps"] = torch.cat([ref[:, 0], ref[:, 1]])
        return batch


def sequence_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(2B,) summed log-probs of the completion tokens, and (2B,) their counts; the log-probs
    made in the lm_head's call (``model_io``)."""
    labels = batch["labels"]

    def logps(hidden, weight, bias):
        return linear_token_logprobs(hidden, weight, labels, bias=bias)

    return head_output(model, logps, batch).sum(dim=-1), (labels[:, 1:] != -100).sum(dim=-1)


class DpoTrainer(FerrotuneTrainer):
    """``Trainer`` for DPO; ``ref_model`` is only used when the reference is not precomputed."""

    loss_is_scaled_for_ga = False  # a mean over the micro-batch's pairs: Trainer divides by GA

    def __init__(self, *args, ref_model: torch.nn.Module | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model = ref_model.eval().requires_grad_(False)
            # Sharded like the policy under FSDP2; DDP has nothing to do for a frozen model.
            self.ref_model = (
                self.accelerator.prepare(ref_model)
                if self.is_fsdp_enabled
                else ref_model.to(self.args.device)
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        logps, tokens = sequence_logps(model, inputs)
        if "ref_logps" in inputs:
            ref = inputs["ref_logps"].to(logps)
        else:
            with torch.no_grad():
                ref, _ = sequence_logps(self.ref_model, inputs)
        chosen, rejected = logps.chunk(2)
        ref_chosen, ref_rejected = ref.chunk(2)
        chosen_tokens, rejected_tokens = tokens.chunk(2)
        losses = dpo_loss(
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            args.beta,
            args.loss_type,
            label_smoothing=args.label_smoothing,
            chosen_tokens=chosen_tokens,
            rejected_tokens=rejected_tokens,
        )
        loss = losses.mean()
        if args.sft_weight:  # mean NLL over every chosen completion token of the batch
            loss = loss + args.sft_weight * (-chosen.sum() / chosen_tokens.sum().clamp(min=1))
        chosen_rewards = args.beta * (chosen - ref_chosen).detach()
        rejected_rewards = args.beta * (rejected - ref_rejected).detach()
        self.record("rewards/chosen", chosen_rewards.mean())
        self.record("rewards/rejected", rejected_rewards.mean())
        self.record("rewards/accuracies", (chosen_rewards > rejected_rewards).float().mean())
        self.record("rewards/margins", (chosen_rewards - rejected_rewards).mean())
        self.record("logps/chosen", chosen.detach().mean())
        self.record("logps/rejected", rejected.detach().mean())
        return (loss, {"loss": loss, "logps": logps.detach()}) if return_outputs else loss


class WithReferenceLogps(torch.utils.data.Dataset):
    """DPO rows with their reference log-probs (chosen, rejected) added as ``ref_logps``."""

    def __init__(self, rows: torch.utils.data.Dataset, logps: torch.Tensor) -> None:
        self.rows = rows
        self.logps = logps

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.rows[index], "ref_logps": self.logps[index]}


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter's bytes: the cache key's model half."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


@torch.no_grad()
def reference_logps(
    reference: torch.nn.Module,
    rows: torch.utils.data.Dataset,
    manifest: dict,
    cache_dir: Path,
    *,
    pad_id: int,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """(N, 2) reference log-probs of every pair, computed in one pass and cached.

    The cache file sits beside the shards (``ref-logps-KEY.pt``), keyed by the reference's weights
    and the shards' sha256, so a second run on the same data and reference reads it back. Under
    DDP each process scores every ``world``-th pair and the parts are gathered: the pass costs
    1/world of the time, and the main process alone writes the file.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    rank, world = state.process_index, state.num_processes
    data_key = json.dumps([s["sha256"] for s in manifest["shards"]])
    key = hashlib.blake2b(
        (model_fingerprint(reference) + data_key).encode(), digest_size=12
    ).hexdigest()
    path = cache_dir / f"ref-logps-{key}.pt"
    cached = path.is_file()
    if world > 1:  # compute together unless every process sees the file
        cached = all(gather_object([cached]))
    if cached:
        return torch.load(path)
    reference = reference.to(device).eval()
    collate = DpoCollator(pad_id)
    mine = list(range(rank, len(rows), world))
    out = [torch.zeros(0, 2)]
    for start in range(0, len(mine), batch_size):
        batch = collate([rows[i] for i in mine[start : start + batch_size]])
        batch = {name: value.to(device) for name, value in batch.items()}
        logps, _ = sequence_logps(reference, batch)
        chosen, rejected = logps.float().cpu().chunk(2)
        out.append(torch.stack([chosen, rejected], dim=1))
    logps = torch.cat(out)
    if world > 1:
        parts, logps = gather_object([logps]), torch.zeros(len(rows), 2)
        for part_rank, part in enumerate(parts):
            logps[part_rank::world] = part
    if state.is_main_process:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(logps, tmp)
        os.replace(tmp, path)  # atomic: a killed run leaves no half-written cache
    state.wait_for_everyone()
    return logps
