"""The preference losses, plain and named: testable without a model.

Sequence log-probs are sums over completion tokens. ``dpo_loss`` follows TRL 1.16's DPOTrainer
term for term (including IPO's per-token normalisation, which TRL's authors confirmed with IPO's);
at initialisation (policy = reference) the sigmoid loss is ln 2 and IPO's is (1 / (2 beta))^2,
25 at beta = 0.1: the oracles the tests use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    kind: str = "sigmoid",
    *,
    label_smoothing: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair DPO losses from (B,) sequence log-probs of the policy and the reference.

    With delta = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected):
    ``sigmoid`` -log sigmoid(beta*delta); ``hinge`` relu(1 - beta*delta); ``robust`` the
    label-smoothed sigmoid, unbiased for a noise rate ``label_smoothing``; ``ipo``
    (delta/len - 1/(2 beta))^2 on per-token log-ratios (``chosen_tokens``, ``rejected_tokens``:
    the completion lengths).
    """
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if kind == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if kind == "hinge":
        return torch.relu(1 - beta * delta)
    if kind == "robust":
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"robust needs 0 <= label_smoothing < 0.5; got {label_smoothing}")
        clean = -(1 - label_smoothing) * F.logsigmoid(beta * delta)
        flipped = -label_smoothing * F.logsigmoid(-beta * delta)
        return (clean - flipped) / (1 - 2 * label_smoothing)
    if kind == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("ipo needs the completion lengths (chosen_tokens, rejected_tokens)")
        per_token = chosen_ratio / chosen_tokens.clamp(
            min=1
        ) - rejected_ratio / rejected_tokens.clamp(min=1)
        return (per_token - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown DPO loss {kind!r}: expected one of {', '.join(DPO_LOSSES)}")


def reward_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """Bradley-Terry: -log sigmoid(r_chosen - r_rejected - margin), per pair."""
    return -F.logsigmoid(chosen - rejected - margin)
