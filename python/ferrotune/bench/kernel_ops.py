"""What ``ferrotune bench kernels`` runs in its child processes: each contender's way of
computing the four ops, the seeded inputs they share, and :func:`measure_case`, which measures one
case (the names and the plan are in :mod:`ferrotune.bench.kernels`, which imports no torch).

Ops: ``cross_entropy`` (causal-LM loss from (B, T, V) logits), ``linear_cross_entropy`` (the same
from (B, T, H) hidden states and the (V, H) lm_head weight), ``token_logprobs`` (per-token
log p(label) and entropy from logits; backward with random per-token upstream gradients for
both, as PPO / GRPO have them) and ``linear_token_logprobs`` (the same from hidden states).

Contenders: ``ferrotune`` (``ferrotune_kernels``: Triton on CUDA tensors, the chunked PyTorch
path on CPU tensors); ``hf``, the eager path users run today (``logits = hidden @ weight.T``,
then transformers' ``ForCausalLMLoss``, or ``log_softmax(logits[:, :-1].float() / T)``
gathered, entropy ``-(p * logp).sum(-1)``); ``trl`` (``selective_log_softmax_and_entropy`` on
logits; for the linear ops the chunked lm head behind ``fused_lm_head=True``); ``liger``
(``LigerCrossEntropyLoss`` / ``LigerFusedLinearCrossEntropyLoss``, CUDA only).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import torch
import torch.nn.functional as F

from ferrotune.bench import measure
from ferrotune.bench.cases import Case, Result
from ferrotune.bench.measure import MIB, BenchError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
IGNORE = -100
SEED = 0
LOGIT_STD = 2.0  # logits of the random inputs have about this spread, like a trained LM head's
TRL_CHUNK = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE

Inputs = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- the contenders


def shifted_to_labels(values: torch.Tensor) -> torch.Tensor:
    """(B, T - 1) values about labels[:, 1:] → (B, T) aligned with labels (0 at t = 0)."""
    return F.pad(values, (1, 0))


def eager_logits(x: Inputs) -> torch.Tensor:
    return x["logits"] if "logits" in x else x["hidden"] @ x["weight"].T  # (B, T, V)


def eager_token_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain way: fp32 log-softmax of the shifted logits, gathered; entropy from it."""
    target = labels[:, 1:]
    scored = target != IGNORE
    logp_all = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)  # (B, T-1, V)
    logp = logp_all.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return (
        shifted_to_labels(torch.where(scored, logp, 0.0)),
        shifted_to_labels(torch.where(scored, entropy, 0.0)),
    )


def trl_token_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    from trl.trainer import utils as trl_utils

    target = labels[:, 1:]
    scored = target != IGNORE
    logits = logits[:, :-1]
    index = target.clamp(min=0)
    if hasattr(trl_utils, "selective_log_softmax_and_entropy"):
        logp, entropy = trl_utils.selective_log_softmax_and_entropy(
            logits, index, temperature=temperature, row_mask=scored
        )
    else:  # older TRL: the two helpers its trainers call
        logits = logits / temperature
        logp = trl_utils.selective_log_softmax(logits, index)
        entropy = trl_utils.entropy_from_logits(logits)
    return (
        shifted_to_labels(torch.where(scored, logp, 0.0)),
        shifted_to_labels(torch.where(scored, entropy, 0.0)),
    )


def trl_chunked(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, temperature: float, entropy
) -> Any:
    """TRL's ``fused_lm_head=True`` path (``trl.trainer.utils``): shifted, chunked lm head."""
    from trl.kernels import ChunkedLogProbFunction

    states, target = hidden[:, :-1], labels[:, 1:]
    mask = target != IGNORE
    compact = hidden.is_cuda  # TRL scores only the valid rows on Triton devices
    if compact:
        rows, ids = states[mask], target[mask]
    else:
        rows, ids = states.reshape(-1, states.shape[-1]), target.clamp(min=0).reshape(-1)
    outputs = ("entropy",) if entropy else ()
    logp, ent, *_ = ChunkedLogProbFunction.apply(
        rows, weight, None, ids, temperature, TRL_CHUNK, None, 1.0, outputs
    )

    def place(v: torch.Tensor) -> torch.Tensor:
        if compact:
            return v.new_zeros(mask.shape).masked_scatter(mask, v)
        return v.view(mask.shape).masked_fill(~mask, 0)

    if not entropy:
        return -place(logp).sum() / mask.sum().clamp(min=1)
    return shifted_to_labels(place(logp)), shifted_to_labels(place(ent))


def liger_loss(x: Inputs) -> torch.Tensor:
    from liger_kernel.transformers import LigerCrossEntropyLoss, LigerFusedLinearCrossEntropyLoss

    target = F.pad(x["labels"], (0, 1), value=IGNORE)[:, 1:].reshape(-1)  # as ForCausalLMLoss
    if "logits" in x:  # Liger writes the gradient into the logits during the forward
        loss = LigerCrossEntropyLoss(ignore_index=IGNORE)(
            x["logits"].view(target.numel(), -1), target
        )
    else:
        hidden = x["hidden"].view(target.numel(), -1)
        loss = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE)(x["weight"], hidden, target)
    return loss[0] if isinstance(loss, tuple) else loss


def contender_fn(op: str, contender: str, temperature: float) -> Callable[[Inputs], Any]:
    """``fn(inputs)`` → a scalar loss, or (log p, entropy) aligned with the labels."""
    token = op.endswith("token_logprobs")
    if contender == "ferrotune":
        import ferrotune_kernels as fk

        kw = {"temperature": temperature, "return_entropy": True} if token else {}
        if op.startswith("linear"):
            fused = fk.linear_token_logprobs if token else fk.linear_cross_entropy
            return lambda x: fused(x["hidden"], x["weight"], x["labels"], **kw)
        fused = fk.token_logprobs if token else fk.cross_entropy
        return lambda x: fused(x["logits"], x["labels"], **kw)
    if contender == "hf":
        if token:
            return lambda x: eager_token_logprobs(eager_logits(x), x["labels"], temperature)
        from transformers.loss.loss_utils import ForCausalLMLoss

        def hf_loss(x: Inputs) -> torch.Tensor:
            logits = eager_logits(x)
            return ForCausalLMLoss(logits, x["labels"], logits.shape[-1])

        return hf_loss
    if contender == "trl":
        if op.startswith("linear"):
            t = temperature if token else 1.0  # the losses are at temperature 1, as HF's
            return lambda x: trl_chunked(x["hidden"], x["weight"], x["labels"], t, token)
        return lambda x: trl_token_logprobs(x["logits"], x["labels"], temperature)
    return liger_loss


# --------------------------------------------------------------------------- inputs and runs


def make_inputs(case: Case) -> Inputs:
    """Seeded inputs: labels, logits or hidden + weight, and per-token upstream gradients."""
    seq = min(case.seq_len, case.n)
    if case.n % seq:
        raise BenchError(f"N = {case.n} is not a multiple of --seq-len {seq}")
    shape = (case.n // seq, seq)  # (B, T)
    dev, dtype = torch.device(case.device), DTYPES[case.dtype]
    gen = torch.Generator(dev).manual_seed(SEED)
    labels = torch.randint(0, case.vocab, shape, generator=gen, device=dev)
    if case.ignored > 0:
        labels[torch.rand(shape, generator=gen, device=dev) < case.ignored] = IGNORE
    x: Inputs = {"labels": labels}
    if case.op.startswith("linear"):
        hidden = torch.randn(*shape, case.hidden, generator=gen, device=dev, dtype=dtype)
        weight = torch.randn(case.vocab, case.hidden, generator=gen, device=dev, dtype=dtype)
        weight.mul_(LOGIT_STD / case.hidden**0.5)
        x["hidden"], x["weight"] = hidden.requires_grad_(), weight.requires_grad_()
    else:
        logits = torch.randn(*shape, case.vocab, generator=gen, device=dev, dtype=dtype)
        x["logits"] = logits.mul_(LOGIT_STD).requires_grad_()
    if case.op.endswith("token_logprobs"):
        x["grad_logp"] = torch.randn(shape, generator=gen, device=dev)
        x["grad_entropy"] = torch.randn(shape, generator=gen, device=dev)
    return x


def leaves(x: Inputs) -> dict[str, torch.Tensor]:
    """The inputs that get gradients, by name."""
    return {k: v for k, v in x.items() if v.requires_grad}


def backward(out: Any, x: Inputs) -> None:
    """The backward of a loss, or of (log p, entropy) with the per-token upstream gradients."""
    grads = (x["grad_logp"], x["grad_entropy"]) if isinstance(out, tuple) else None
    torch.autograd.backward(out, grads)


def forward_backward(fn: Callable[[Inputs], Any], x: Inputs) -> Any:
    for t in leaves(x).values():
        t.grad = None
    out = fn(x)
    backward(out, x)
    return out


def summary(out: Any, labels: torch.Tensor) -> list[float]:
    """[loss], or [mean log p, mean entropy] over the scored label positions."""
    if not isinstance(out, tuple):
        return [float(out)]
    scored = labels != IGNORE
    scored[:, 0] = False
    return [float(v[scored].double().mean()) for v in out]


@torch.no_grad()
def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in fp64, a few rows at a time (no fp64 copy of a 2.5 GB gradient)."""
    width = a.shape[-1] if a.dim() else 1
    rows_a, rows_b = a.reshape(-1, width), b.reshape(-1, width)
    return max(
        float((p.double() - q.double()).abs().max())
        for p, q in zip(rows_a.split(256), rows_b.split(256), strict=True)
    )


def compare_with_hf(case: Case, x: Inputs, ours: Any) -> dict[str, float]:
    """Max |ours - hf| of the outputs and every input gradient (``ours`` from the last run,
    whose gradients are still on the inputs)."""
    our_grads = {k: t.grad for k, t in leaves(x).items()}
    theirs = forward_backward(contender_fn(case.op, "hf", case.temperature), x)
    diffs: dict[str, float] = {}
    if isinstance(ours, tuple):
        diffs["logp"], diffs["entropy"] = (
            max_diff(a, b) for a, b in zip(ours, theirs, strict=True)
        )
    else:
        diffs["loss"] = max_diff(ours.detach(), theirs.detach())
    for k, t in leaves(x).items():
        diffs[f"grad_{k}"] = max_diff(our_grads[k], t.grad)
        diffs[f"max|grad_{k}|"] = float(t.grad.abs().max())
    return diffs


# --------------------------------------------------------------------------- one case


def timed_step(fn: Any, x: Inputs, device: str) -> tuple[Any, float, float]:
    """(output, forward ms, backward ms) of one forward+backward; forward with autograd
    recording, as in training."""
    for t in leaves(x).values():
        t.grad = None
    out, fwd = measure.timed(lambda: fn(x), device)
    _, bwd = measure.timed(lambda: backward(out, x), device)
    return out, fwd, bwd


def measure_case(**fields: Any) -> dict[str, Any]:
    """Measures one case in this process (the child's entry point); returns a ``Result`` dict."""
    case = Case(**fields)
    fn = contender_fn(case.op, case.contender, case.temperature)
    small = replace(case, n=min(case.n, 64), vocab=min(case.vocab, 1024), seq_len=32)
    forward_backward(fn, make_inputs(small))  # imports and first-call set-up
    x = make_inputs(case)
    result = Result(asdict(case))
    out, result.peak_mib = measure.peak_extra_mib(lambda: forward_backward(fn, x), case.device)
    result.output = summary(out, x["labels"])
    grads = [t.grad for t in leaves(x).values()]
    result.grad_mib = sum(g.numel() * g.element_size() for g in grads) / MIB
    del out, grads
    for _ in range(case.warmup):
        forward_backward(fn, x)
    runs = [timed_step(fn, x, case.device) for _ in range(case.repeats)]
    result.fwd_ms = statistics.median(fwd for _, fwd, _ in runs)
    result.fwd_bwd_ms = statistics.median(fwd + bwd for _, fwd, bwd in runs)
    out = runs[-1][0]  # the input gradients are this run's
    if case.op == "token_logprobs":
        with torch.no_grad():
            logits = x["logits"]
            reads = [measure.timed(lambda: logits.amax(-1), case.device)[1] for _ in runs]
        result.read_ms = statistics.median(reads)
    if case.check:
        result.check = compare_with_hf(case, x, out)  # the last run's gradients
    return asdict(result)
