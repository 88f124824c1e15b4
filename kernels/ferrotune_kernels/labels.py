"""How labels line up with rows of logits, and how per-token losses are reduced.

Causal LMs score position ``t`` on the label at ``t + 1``. Like transformers' ``ForCausalLMLoss``,
the ops shift the *labels*, never the logits: row ``(b, t)`` is scored on ``labels[b, t + 1]`` and
the last row of each sequence on nothing (``ignore_index``). No shifted copy of the logits is made.

Per-token results come back aligned with the labels (``out[b, t]`` is about ``labels[b, t]``, so
``out[:, 0]`` is 0 when shifting): a mask built for the labels, such as a completion mask, applies
to them as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def as_rows(logits: torch.Tensor) -> torch.Tensor:
    """A (B, T, V) view of ``(..., T, V)`` logits (a copy only for >3-D inputs that cannot view)."""
    if logits.dim() == 2:
        return logits.unsqueeze(0)
    if logits.dim() == 3:
        return logits
    if logits.dim() < 2:
        raise ValueError(f"logits must be (..., T, V); got shape {tuple(logits.shape)}")
    return logits.reshape(-1, *logits.shape[-2:])


def check_shapes(scores: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    """``scores`` is (..., X) for labels (...), with at least one sequence dimension."""
    if labels.dim() < 1 or tuple(scores.shape[:-1]) != tuple(labels.shape):
        raise ValueError(
            f"{what} of shape {tuple(scores.shape)} do not match labels of shape "
            f"{tuple(labels.shape)}: expected {what} (..., T, X) for labels (..., T)"
        )


def row_targets(labels: torch.Tensor, *, shift: bool, ignore_index: int) -> torch.Tensor:
    """(N,) int64 contiguous: the vocab id each row is scored on, ``ignore_index`` for none."""
    labels = labels.long()
    if shift:
        labels = F.pad(labels[..., 1:], (0, 1), value=ignore_index)
    return labels.reshape(-1).contiguous()


def check_targets(targets: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """A label outside ``[0, V)`` is an error, as in ``F.cross_entropy`` (not silent garbage)."""
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        value = int(targets[bad][0])
        raise ValueError(
            f"label {value} is outside the vocabulary [0, {vocab}) and is not ignore_index "
            f"({ignore_index})"
        )


def at_label_positions(per_row: torch.Tensor, labels: torch.Tensor, *, shift: bool) -> torch.Tensor:
    """Per-row values (N,) laid out like ``labels`` (shifted: row (b, t) to label (b, t + 1))."""
    seqs = per_row.reshape(-1, labels.shape[-1])
    if shift:
        seqs = F.pad(seqs[:, :-1], (1, 0))
    return seqs.reshape(labels.shape)


def nll_denominator(
    scored: int | torch.Tensor,
    *,
    reduction: str,
    num_items_in_batch: int | torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """What ``ForCausalLMLoss`` divides the summed loss by (1 for ``sum``), never below 1.

    ``mean`` divides by ``num_items_in_batch`` when given (the token count over every
    micro-batch and rank, as ``Trainer`` passes it under gradient accumulation), else by this
    batch's ``scored`` token count. A batch with nothing to score gives 0, not 0/0 = nan.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")
    if num_items_in_batch is not None and reduction != "mean":
        raise ValueError(f"num_items_in_batch applies to reduction='mean', not {reduction!r}")
    if reduction == "sum":
        return torch.ones((), device=device)
    count = scored if num_items_in_batch is None else num_items_in_batch
    return torch.as_tensor(count, device=device).clamp(min=1)


def reduce_nll(
    nll: torch.Tensor,
    labels: torch.Tensor,
    *,
    shift: bool,
    ignore_index: int,
    reduction: str,
    num_items_in_batch: int | torch.Tensor | None,
) -> torch.Tensor:
    """``ForCausalLMLoss``'s reduction of per-token losses (0 at ignored positions):
    ``none`` as they are, else their sum over ``nll_denominator``."""
    scored = (labels[..., 1:] if shift else labels) != ignore_index
    denominator = nll_denominator(
        scored.sum(), reduction=reduction, num_items_in_batch=num_items_in_batch, device=nll.device
    )
    if reduction == "none":
        return nll
    return nll.sum() / denominator.to(nll.dtype)
