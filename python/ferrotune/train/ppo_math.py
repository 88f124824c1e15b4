"""The arithmetic of PPO for language models, plain and testable without a model.

Shapes: (B, T) over response tokens; ``mask`` is 1 on real response tokens and 0 on padding after
them. Padding never contributes: its rewards, values and advantages are 0 and every mean is a
masked mean. The formulas and defaults follow TRL's PPOTrainer before its removal in 1.13
(kl_coef 0.05, cliprange 0.2, cliprange_value 0.2, vf_coef 0.1, gamma 1.0, lam 0.95).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

KL_ESTIMATORS = ("k1", "k3")
Total = Callable[[torch.Tensor], torch.Tensor]


def _local(value: torch.Tensor) -> torch.Tensor:
    return value


def masked_mean(
    values: torch.Tensor, mask: torch.Tensor, count: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (0 when nothing is).

    ``count`` replaces the denominator ``mask.sum()``: under DDP each process divides its sum by
    its share of the global token count (positive), so that the averaged gradients are those of
    one mean over the global batch, whatever the split of tokens between processes.
    """
    denominator = mask.sum().clamp(min=1) if count is None else count
    return (values * mask).sum() / denominator


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, total: Total = _local
) -> torch.Tensor:
    """``values`` scaled to unit variance (and zero mean) over the masked positions; 0 elsewhere.

    The variance is the unbiased one, as TRL's ``masked_whiten``; ``shift_mean=False`` keeps the
    mean (used for rewards, whose sign matters). ``total`` sums a tensor over all processes
    (identity by default), so that DDP whitens over the global batch as one process would.
    """
    count = total(mask.sum())
    mean = total((values * mask).sum()) / count.clamp(min=1)
    centred = values - mean
    variance = total((centred**2 * mask).sum()) / (count - 1).clamp(min=1)
    whitened = centred * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens' log-probs.

    ``k1`` = log p - log q (unbiased, can be negative); ``k3`` = (q/p - 1) - log(q/p)
    (unbiased and never negative; Schulman's "approximating KL divergence").
    """
    if kind == "k1":
        return logp - ref_logp
    if kind == "k3":
        log_ratio = ref_logp - logp
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}: expected one of {', '.join(KL_ESTIMATORS)}")


def token_rewards(
    scores: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float,
    kl_kind: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) rewards: -kl_coef * KL at every response token, plus the (B,) score at the last one.

    Returns the rewards and the per-token KL (masked), for logging.
    """
    kl = kl_estimate(logp, ref_logp, kl_kind) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(dim=1) - 1).clamp(min=0).long()
    has_tokens = mask.sum(dim=1) > 0
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += torch.where(has_tokens, scores.to(rewards.dtype), 0.0)
    return rewards, kl


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens: ``(advantages, returns)``.

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}; the value after
    the last response token is 0 (the episode ends there). Returns = A + V.
    """
    rewards = rewards * mask
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    steps = rewards.shape[1]
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cliprange: float,
    count: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, a masked mean over tokens (``count``: see ``masked_mean``);
    stats: clipfrac, approx_kl, ratio."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask, count)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask, count),
            "approx_kl": 0.5 * masked_mean(log_ratio**2, mask, count),
            "ratio": masked_mean(ratio, mask, count),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    cliprange_value: float,
    count: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5 * max((V - R)^2, (V_clipped - R)^2), masked mean (``count``: see
    ``masked_mean``); and its clipfrac."""
    clipped_values = old_values + torch.clamp(
        values - old_values, -cliprange_value, cliprange_value
    )
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask, count)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask, count)
    return loss, clipfrac
