"""Per-token log-probs and cross-entropy straight from hidden states and the lm_head weight.

The logits ``hidden @ weight.T`` are made one vocabulary slice at a time, ``(M, C)`` with ``C``
chosen so that one slice fits a memory budget; the full (N, V) logits never exist.

- Only the rows that are scored (label not ignored) go through the lm_head: prompt tokens of SFT
  and DPO cost nothing.
- Forward: each slice's logits are folded into the fp32 online log-sum-exp of ``rows.scan``.
- Backward: each slice's logits are made again, overwritten in place by their gradient
  (``rows.grad``), then ``grad_weight[slice] = g.T @ hidden`` in one matmul over every token, so
  the weight gradient is accumulated in fp32 inside that matmul and rounded once, with no fp32
  (V, H) buffer; ``grad_hidden += g @ weight[slice]`` accumulates in an fp32 (M, H) buffer.

A mean or summed loss with fp32 weights (CPU training, fp32 master weights) takes a cheaper road,
``LinearCrossEntropyFunction``: whole rows of logits for a chunk of tokens, the gradients formed in
the forward and accumulated in the fp32 weight gradient itself, three matmuls instead of four.

Slicing the vocabulary rather than the tokens costs one more lm_head matmul (the forward's logits
are made again in the backward: about 41 instead of 31 TFLOP at N = 8192, H = 4096, V = 151936)
and buys a weight gradient accumulated in fp32 without 2.5 GB of fp32 (V, H) accumulator, and a
backward that serves any per-token upstream gradient (DPO's and PPO's, not only a mean loss).
"""

from __future__ import annotations

import torch

from ferrotune_kernels import backend, rows
from ferrotune_kernels.cross_entropy import cross_entropy_ref
from ferrotune_kernels.labels import (
    at_label_positions,
    check_shapes,
    check_targets,
    nll_denominator,
    reduce_nll,
    row_targets,
)
from ferrotune_kernels.token_logprobs import token_logprobs_ref

# Bytes of logits per vocabulary slice. On a GPU 512 MiB keeps the matmuls large (N = 8192 tokens
# give slices of 32768 columns in bf16) while staying well inside the "1 GiB beyond inputs and
# gradients" budget; on the CPU the PyTorch twin adds fp32 temporaries of its own, so less.
CUDA_SLICE_BYTES = 512 << 20
CPU_SLICE_BYTES = 64 << 20


def slice_columns(rows_: int, vocab: int, dtype: torch.dtype, device: torch.device) -> int:
    """Vocabulary columns per slice: the budget's worth, a multiple of 128 (whole GEMM tiles)."""
    budget = CUDA_SLICE_BYTES if device.type == "cuda" else CPU_SLICE_BYTES
    element = torch.empty((), dtype=dtype).element_size()
    columns = budget // max(1, rows_ * element)
    return min(vocab, max(128, columns // 128 * 128))


def token_chunk_rows(vocab: int, dtype: torch.dtype, device: torch.device) -> int:
    """Tokens per chunk when whole rows of logits are made (the eager-gradient loss)."""
    budget = CUDA_SLICE_BYTES if device.type == "cuda" else CPU_SLICE_BYTES
    element = torch.empty((), dtype=dtype).element_size()
    return max(16, budget // (vocab * element))


def _slice_logits(hidden, weight, bias, start, stop):
    """(M, C) logits of vocab ids ``start .. stop`` in the weight's dtype."""
    if bias is None:
        return hidden @ weight[start:stop].T
    return torch.addmm(bias[start:stop], hidden, weight[start:stop].T)


def _add_matmul(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` with ``acc`` fp32 and the product accumulated in fp32 before it is added."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    elif a.is_cuda:
        acc += torch.mm(a, b, out_dtype=acc.dtype)
    else:  # bf16/fp16 on the CPU: no out_dtype there; the product is rounded once, then added
        acc += (a @ b).to(acc.dtype)


def _autocast(hidden, weight, bias):
    """Under ``torch.autocast`` the lm_head runs in the autocast dtype, as ``F.linear`` would.

    Mixed precision (``Trainer(bf16=True)``) keeps fp32 weights and makes bf16 hidden states; the
    casts are differentiable, so the fp32 master weight still receives its gradient.
    """
    device = hidden.device.type
    if not torch.is_autocast_enabled(device):
        return hidden, weight, bias
    dtype = torch.get_autocast_dtype(device)
    return hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


class LinearCrossEntropyFunction(torch.autograd.Function):
    """A mean or summed loss whose gradients are formed in the forward, one token chunk at a time.

    Used for fp32 (and fp64) weights, CPU training and fp32 masters: the weight gradient then
    accumulates across token chunks in its own fp32, so nothing is made twice, three lm_head
    matmuls instead of four. The backward only scales the gradients by ``d loss``.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, denominator, options):
        ignore_index, which, chunk = options
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        total = torch.zeros((), dtype=weight.dtype, device=weight.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        grad_bias = torch.zeros_like(bias) if need_bias else None
        minus_one = torch.full((hidden.shape[0],), -1.0, dtype=weight.dtype, device=weight.device)
        for start in range(0, hidden.shape[0], chunk):
            stop = min(start + chunk, hidden.shape[0])
            part, labels = hidden[start:stop], targets[start:stop]
            logits = _slice_logits(part, weight, bias, 0, weight.shape[0])  # (R, V)
            view = logits.unsqueeze(0)
            one_pass = {"col_start": 0, "temperature": 1.0, "ignore_index": ignore_index}
            state = rows.scan(view, labels, None, entropy=False, backend=which, **one_pass)
            logp, _, stats = rows.finish(state, labels, ignore_index)
            total -= logp.sum()
            if not (need_hidden or need_weight or need_bias):
                continue
            # d(-log p)/dlogits, written over the logits
            rows.grad(
                view, labels, stats, minus_one[start:stop], None, view, backend=which, **one_pass
            )
            if need_hidden:
                torch.mm(logits, weight, out=grad_hidden[start:stop])
            if need_weight:
                grad_weight.addmm_(logits.T, part)
            if need_bias:
                grad_bias += logits.sum(dim=0)
        ctx.grads = (grad_hidden, grad_weight, grad_bias)
        ctx.save_for_backward(denominator)
        return total / denominator

    @staticmethod
    def backward(ctx, grad_loss):
        (denominator,) = ctx.saved_tensors
        scale = grad_loss / denominator
        grads = tuple(None if g is None else g * scale for g in ctx.grads)
        return (*grads, None, None, None)


class LinearTokenLogprobsFunction(torch.autograd.Function):
    """(M, H) scored rows, (V, H) weight, (V,) bias, (M,) targets → (M,) log-probs [, entropy]."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, options):
        temperature, ignore_index, want_entropy, which, columns = options
        state = None
        for start in range(0, weight.shape[0], columns):
            stop = min(start + columns, weight.shape[0])
            logits = _slice_logits(hidden, weight, bias, start, stop)  # (M, C)
            state = rows.scan(
                logits.unsqueeze(0),
                targets,
                state,
                col_start=start,
                temperature=temperature,
                ignore_index=ignore_index,
                entropy=want_entropy,
                backend=which,
            )
        logp, entropy, stats = rows.finish(state, targets, ignore_index)
        ctx.save_for_backward(hidden, weight, bias, targets, stats)
        ctx.options = options
        ctx.set_materialize_grads(False)
        return (logp, entropy) if want_entropy else logp

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy=None):
        hidden, weight, bias, targets, stats = ctx.saved_tensors
        temperature, ignore_index, _, which, columns = ctx.options
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = None
        if need_hidden:  # fp32 (M, H): the sum over vocabulary slices
            grad_hidden = torch.zeros(hidden.shape, dtype=stats.dtype, device=hidden.device)
        grad_weight = torch.empty_like(weight) if need_weight else None
        grad_bias = torch.empty_like(bias) if need_bias else None
        for start in range(0, weight.shape[0], columns):
            stop = min(start + columns, weight.shape[0])
            g = _slice_logits(hidden, weight, bias, start, stop)  # (M, C), becomes its gradient
            rows.grad(
                g.unsqueeze(0),
                targets,
                stats,
                grad_logp,
                grad_entropy,
                g.unsqueeze(0),
                col_start=start,
                temperature=temperature,
                ignore_index=ignore_index,
                backend=which,
            )
            if need_weight:
                torch.mm(g.T, hidden, out=grad_weight[start:stop])
            if need_hidden:
                _add_matmul(grad_hidden, g, weight[start:stop])
            if need_bias:
                grad_bias[start:stop] = g.sum(dim=0, dtype=stats.dtype)
        if need_hidden:
            grad_hidden = grad_hidden.to(hidden.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None


def _scored_rows(hidden, weight, bias, labels, shift, ignore_index):
    """Checked inputs and the scored hidden rows: ``(rows, weight, bias, targets, scored)``.

    ``targets`` (N,) are every row's shifted labels; ``scored`` (M,) the indices of those not
    ignored; ``rows`` (M, H) their hidden states, the only ones that go through the lm_head.
    """
    check_shapes(hidden, labels, "hidden states")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} does not match hidden size {hidden.shape[-1]}: "
            "expected (V, H)"
        )
    hidden, weight, bias = _autocast(hidden, weight, bias)
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden is {hidden.dtype} but weight is {weight.dtype}: cast one")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias of shape {tuple(bias.shape)} does not match V = {weight.shape[0]}")
    targets = row_targets(labels, shift=shift, ignore_index=ignore_index)
    check_targets(targets, weight.shape[0], ignore_index)
    scored = (targets != ignore_index).nonzero().squeeze(1)
    rows_ = hidden.reshape(-1, hidden.shape[-1]).index_select(0, scored)
    return rows_, weight, bias, targets, scored


def linear_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    shift: bool = True,
    ignore_index: int = -100,
    temperature: float = 1.0,
    return_entropy: bool = False,
    vocab_slice: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``token_logprobs(hidden @ weight.T + bias, labels, ...)`` without the full logits.

    Args:
        hidden: (..., T, H) final hidden states (after the model's last norm).
        weight: (V, H) lm_head weight (tied embeddings: pass the embedding matrix; gradients from
            both uses add up as autograd does for any shared parameter).
        labels: (..., T) vocab ids, ``ignore_index`` where nothing is scored.
        vocab_slice: vocabulary columns per step (default: a memory budget's worth).

    Returns:
        fp32 per-token log-probs [and entropies] shaped and aligned like ``labels``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive; got {temperature}")
    rows_, weight, bias, targets, scored = _scored_rows(
        hidden, weight, bias, labels, shift, ignore_index
    )
    columns = vocab_slice or slice_columns(
        scored.numel(), weight.shape[0], weight.dtype, weight.device
    )
    options = (float(temperature), ignore_index, return_entropy, backend.choose(hidden), columns)
    out = LinearTokenLogprobsFunction.apply(
        rows_, weight, bias, targets.index_select(0, scored), options
    )
    outputs = out if return_entropy else (out,)
    placed = []
    for values in outputs:
        full = values.new_zeros(targets.shape[0]).index_copy(0, scored, values)
        placed.append(at_label_positions(full, labels, shift=shift))
    return tuple(placed) if return_entropy else placed[0]


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    shift: bool = True,
    ignore_index: int = -100,
    num_items_in_batch: int | torch.Tensor | None = None,
    reduction: str = "mean",
    vocab_slice: int | None = None,
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T + bias, labels, ...)`` without the full logits.

    With fp32 weights and a mean or summed loss, the gradients are formed during the forward
    (``LinearCrossEntropyFunction``); otherwise (bf16 weights, ``reduction="none"``, or an explicit
    ``vocab_slice``) this is ``linear_token_logprobs`` reduced.
    """
    eager = reduction != "none" and vocab_slice is None
    if eager and _autocast(hidden, weight, bias)[1].dtype in (torch.float32, torch.float64):
        rows_, weight, bias, targets, scored = _scored_rows(
            hidden, weight, bias, labels, shift, ignore_index
        )
        denominator = nll_denominator(
            scored.numel(),
            reduction=reduction,
            num_items_in_batch=num_items_in_batch,
            device=weight.device,
        ).to(weight.dtype)
        chunk = token_chunk_rows(weight.shape[0], weight.dtype, weight.device)
        options = (ignore_index, backend.choose(hidden), chunk)
        return LinearCrossEntropyFunction.apply(
            rows_, weight, bias, targets.index_select(0, scored), denominator, options
        )
    logp = linear_token_logprobs(
        hidden,
        weight,
        labels,
        bias=bias,
        shift=shift,
        ignore_index=ignore_index,
        vocab_slice=vocab_slice,
    )
    return reduce_nll(
        -logp,
        labels,
        shift=shift,
        ignore_index=ignore_index,
        reduction=reduction,
        num_items_in_batch=num_items_in_batch,
    )


def linear_token_logprobs_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    **options,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch: the full logits, then ``token_logprobs_ref``."""
    logits = torch.nn.functional.linear(hidden, weight, bias)
    return token_logprobs_ref(logits, labels, **options)


def linear_cross_entropy_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    **options,
) -> torch.Tensor:
    """Plain PyTorch: the full logits, then ``cross_entropy_ref``."""
    return cross_entropy_ref(torch.nn.functional.linear(hidden, weight, bias), labels, **options)
