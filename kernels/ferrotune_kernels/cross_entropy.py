"""Shifted cross-entropy from logits: what transformers' ``ForCausalLMLoss`` computes, fused.

``ForCausalLMLoss`` upcasts the logits to fp32 (a second (N, V) copy for bf16 models), runs
``log_softmax`` (a third, kept for the backward) and then its gradient (a fourth). Here the loss is
``-sum(log p(label)) / count`` over ``token_logprobs``: one read of the logits in their own dtype,
an fp32 state of a few numbers per token, and one gradient tensor in the logits' dtype.
"""

from __future__ import annotations

import torch

from ferrotune_kernels.labels import reduce_nll
from ferrotune_kernels.token_logprobs import token_logprobs, token_logprobs_ref


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    shift: bool = True,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Causal-LM cross-entropy of (..., T, V) logits against (..., T) labels.

    ``reduction="mean"`` divides the summed loss by ``num_items_in_batch`` when given (what
    ``Trainer`` passes under gradient accumulation), else by the number of scored tokens; with no
    token scored the loss is 0 and its gradient zero. ``"sum"`` sums; ``"none"`` gives per-token
    losses shaped and aligned like ``labels`` (0 where ignored).
    """
    logp = token_logprobs(logits, labels, shift=shift, ignore_index=ignore_index)
    return reduce_nll(
        -logp,
        labels,
        shift=shift,
        ignore_index=ignore_index,
        reduction=reduction,
        num_items_in_batch=num_items_in_batch,
    )


def cross_entropy_ref(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    shift: bool = True,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Plain PyTorch: ``token_logprobs_ref`` reduced the same way."""
    logp = token_logprobs_ref(logits, labels, shift=shift, ignore_index=ignore_index)
    return reduce_nll(
        -logp,
        labels,
        shift=shift,
        ignore_index=ignore_index,
        reduction=reduction,
        num_items_in_batch=num_items_in_batch,
    )
