"""Per-token log p(label) and entropy from logits: the primitive DPO sums per sequence and PPO uses.

``token_logprobs(logits, labels)`` reads the logits once, in their own dtype and strides, keeping an
fp32 online log-sum-exp per row (``rows.scan``); nothing of size (N, V) is allocated in the forward.
The backward writes d/dlogits for any per-token upstream gradients of the log-probs and the
entropy in one more pass (``rows.grad``), in the logits' dtype.
"""

from __future__ import annotations

import torch

from ferrotune_kernels import backend, rows
from ferrotune_kernels.labels import (
    as_rows,
    at_label_positions,
    check_shapes,
    check_targets,
    row_targets,
)


class TokenLogprobsFunction(torch.autograd.Function):
    """(B, T, V) logits, (N,) row targets → (N,) log-probs [, (N,) entropies], differentiable."""

    @staticmethod
    def forward(ctx, logits, targets, temperature, ignore_index, want_entropy, which):
        state = rows.scan(
            logits,
            targets,
            None,
            col_start=0,
            temperature=temperature,
            ignore_index=ignore_index,
            entropy=want_entropy,
            backend=which,
        )
        logp, entropy, stats = rows.finish(state, targets, ignore_index)
        ctx.save_for_backward(logits, targets, stats)
        ctx.options = (temperature, ignore_index, which)
        ctx.set_materialize_grads(False)
        return (logp, entropy) if want_entropy else logp

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy=None):
        logits, targets, stats = ctx.saved_tensors
        temperature, ignore_index, which = ctx.options
        grad_logits = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        rows.grad(
            logits,
            targets,
            stats,
            grad_logp,
            grad_entropy,
            grad_logits,
            col_start=0,
            temperature=temperature,
            ignore_index=ignore_index,
            backend=which,
        )
        return grad_logits, None, None, None, None, None


def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    shift: bool = True,
    ignore_index: int = -100,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``log p(label)`` (0 where ignored), and the entropy of each scored position.

    Args:
        logits: (..., T, V) in any float dtype and any strides; read as they are.
        labels: (..., T) vocab ids, ``ignore_index`` where nothing is scored.
        shift: score position ``t`` on ``labels[t + 1]`` (causal LM); results stay aligned with
            ``labels``, so ``out[..., 0]`` is 0.
        temperature: score ``logits / temperature`` (PPO's sampling temperature).
        return_entropy: also return the entropy of the distribution that predicts each label.

    Returns:
        fp32 (fp64 for fp64 logits) tensors shaped like ``labels``.
    """
    check_shapes(logits, labels, "logits")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive; got {temperature}")
    targets = row_targets(labels, shift=shift, ignore_index=ignore_index)
    check_targets(targets, logits.shape[-1], ignore_index)
    out = TokenLogprobsFunction.apply(
        as_rows(logits),
        targets,
        float(temperature),
        ignore_index,
        return_entropy,
        backend.choose(logits),
    )
    if not return_entropy:
        return at_label_positions(out, labels, shift=shift)
    logp, entropy = out
    return (
        at_label_positions(logp, labels, shift=shift),
        at_label_positions(entropy, labels, shift=shift),
    )


def token_logprobs_ref(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    shift: bool = True,
    ignore_index: int = -100,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch: full log-softmax in fp32 (fp64 for fp64), gathered; autograd backward."""
    if shift:
        logits, labels = logits[..., :-1, :], labels[..., 1:]
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    log_probs = torch.log_softmax(logits.to(compute) / temperature, dim=-1)
    scored = labels != ignore_index
    picked = log_probs.gather(-1, torch.where(scored, labels, 0).long().unsqueeze(-1)).squeeze(-1)
    logp = torch.where(scored, picked, 0.0)
    if shift:
        logp = torch.nn.functional.pad(logp, (1, 0))
    if not return_entropy:
        return logp
    probs = log_probs.exp()
    # -sum p log p, where a p = 0 column (a -inf logit) adds 0, with a gradient that stays finite
    finite = torch.where(probs > 0, log_probs, 0.0)
    entropy = torch.where(scored, -(probs * finite).sum(-1), 0.0)
    if shift:
        entropy = torch.nn.functional.pad(entropy, (1, 0))
    return logp, entropy
