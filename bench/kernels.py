"""Benchmark of ferrotune_kernels: fused LM-head losses and log-probs against what users run today.

Four ops, each measured for forward time, forward+backward time and peak memory beyond its inputs:

``cross_entropy``
    causal-LM loss from (B, T, V) logits.
``linear_cross_entropy``
    the same from (B, T, H) hidden states and the (V, H) lm_head weight.
``token_logprobs``
    per-token log p(label) and entropy from logits (backward with random per-token upstream
    gradients for both, as PPO / GRPO have them).
``linear_token_logprobs``
    the same from hidden states and the lm_head weight.

Contenders (each where it applies and is importable):

``ferrotune``
    ``ferrotune_kernels`` (Triton on CUDA tensors, the chunked PyTorch path on CPU tensors).
``hf``
    the eager path: ``logits = hidden @ weight.T`` for the linear ops, then transformers'
    ``ForCausalLMLoss(logits, labels, V)``, or for log-probs
    ``log_softmax(logits[:, :-1].float() / T).gather(labels)`` and ``-(p * logp).sum(-1)``.
``trl``
    TRL: ``selective_log_softmax_and_entropy`` on logits (its Triton kernel on CUDA, else
    ``selective_log_softmax`` + ``entropy_from_logits``) and, for the linear ops, the chunked lm
    head behind ``fused_lm_head=True`` (``trl.kernels.ChunkedLogProbFunction``, chunk 32768).
``liger``
    Liger-Kernel's ``LigerCrossEntropyLoss`` / ``LigerFusedLinearCrossEntropyLoss`` (CUDA only).

Memory. On the CPU every (op, shape, contender) runs in its own subprocess: inputs are made, the
resident set is read, Linux's high-water mark is reset (``/proc/self/clear_refs``), the op
runs forward and backward once, and peak extra = ``VmHWM`` - that baseline. Gradients of the
inputs count as extra; the table also shows the figure without them. On CUDA everything runs in
this process and peak extra = ``max_memory_allocated`` - ``memory_allocated`` before the op.
Time: the memory run is the warm-up; then the median of ``--repeats`` runs.

Correctness, in the same run: at every shape the ``ferrotune`` child also runs ``hf`` on the same
inputs and prints the largest difference of the loss (or of per-token log-probs and entropies)
and of every input gradient.

Acceptance targets (from the issue):

- CPU, chunked path, N = 4096, H = 256, V = 151936, fp32: ``linear_cross_entropy`` gives HF's
  loss within 1e-5, with peak extra memory <= 25% of HF's.
- GPU, N = 8192, H = 4096, V = 151936, bf16: ``linear_cross_entropy`` forward+backward <= 60 ms
  with <= 1 GiB beyond inputs and gradients; ``token_logprobs`` + entropy forward within 1.3x of
  one read of the logits (timed as ``logits.amax(-1)``).

Usage (from the repository root, in the project's virtual environment)::

    python bench/kernels.py             # CPU: ferrotune and hf, N = 1024, 4096, V = 151936,
                                        # H = 256, fp32 (~7-8 min on 2 cores)
    python bench/kernels.py --quick     # CPU smoke test: N = 512, 1024, V = 32000 (~1 min)
    python bench/kernels.py --only ferrotune,hf,trl --ops linear_cross_entropy --n 4096
    python bench/kernels.py --full      # all contenders, N = 512..4096 x V = 32000, 151936
    python bench/kernels.py             # on a GPU: all contenders, N = 2048, 4096, 8192,
                                        # H = 4096, bf16, 10 repeats

It prints the machine and versions, a table (op, N, V, contender, forward ms, forward+backward
ms, peak extra MiB with and without gradients, time and memory ratios to ``hf``, output
difference from ``hf``), the correctness checks and the acceptance checks, and writes
``bench/out/kernels.csv`` and ``bench/out/kernels.png``. It exits 2 if an acceptance check fails,
1 on any other failure.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

# bench/ is not a package: prep_pt.py, whose helpers this reuses, sits beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from prep_pt import OUT_DIR, RESULT_TAG, BenchError, child_result, cpu_model, version

OPS = ("cross_entropy", "linear_cross_entropy", "token_logprobs", "linear_token_logprobs")
CONTENDERS = ("ferrotune", "hf", "trl", "liger")
APPLIES = {  # which contenders have each op
    "cross_entropy": ("ferrotune", "hf", "liger"),
    "linear_cross_entropy": ("ferrotune", "hf", "trl", "liger"),
    "token_logprobs": ("ferrotune", "hf", "trl"),
    "linear_token_logprobs": ("ferrotune", "hf", "trl"),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
IGNORE = -100
SEED = 0
LOGIT_STD = 2.0  # logits of the random inputs have about this spread, like a trained LM head's
TRL_CHUNK = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE
MIB = 1 << 20
CPU_HEADLINE = {"n": 4096, "hidden": 256, "vocab": 151936, "dtype": "fp32"}
GPU_HEADLINE = {"n": 8192, "hidden": 4096, "vocab": 151936, "dtype": "bf16"}
LOSS_TOL = 1e-5
CPU_MEMORY_SHARE = 0.25
GPU_MS = 60.0
GPU_BEYOND_MIB = 1024.0
GPU_READ_RATIO = 1.3


@dataclass(frozen=True)
class Case:
    """One contender on one op at one shape."""

    op: str
    contender: str
    n: int  # tokens, B * T
    hidden: int
    vocab: int
    dtype: str
    device: str
    seq_len: int  # T (B = n / T)
    ignored: float  # share of labels set to IGNORE
    temperature: float
    warmup: int  # extra runs after the measured-memory run, before timing
    repeats: int
    check: bool  # also run hf in the same process and compare outputs and gradients


@dataclass
class Result:
    case: Case
    fwd_ms: float = float("nan")
    fwd_bwd_ms: float = float("nan")
    peak_mib: float = float("nan")  # beyond inputs, gradients included
    grad_mib: float = float("nan")  # the input gradients alone
    output: list[float] = field(default_factory=list)  # [loss] or [mean log p, mean entropy]
    read_ms: float = float("nan")  # token_logprobs: one read of the logits (amax)
    check: dict[str, float] = field(default_factory=dict)  # max |ours - hf| per output/gradient
    error: str = ""


# --------------------------------------------------------------------------- the contenders


def shifted_to_labels(values: torch.Tensor) -> torch.Tensor:
    """(B, T - 1) values about labels[:, 1:] → (B, T) aligned with labels (0 at t = 0)."""
    return F.pad(values, (1, 0))


def eager_logits(x: dict[str, torch.Tensor]) -> torch.Tensor:
    return x["logits"] if "logits" in x else x["hidden"] @ x["weight"].T  # (B, T, V)


def eager_token_logprobs(logits, labels, temperature):
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


def trl_token_logprobs(logits, labels, temperature):
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


def trl_chunked(hidden, weight, labels, temperature, entropy):
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

    def place(v):
        if compact:
            return v.new_zeros(mask.shape).masked_scatter(mask, v)
        return v.view(mask.shape).masked_fill(~mask, 0)

    if not entropy:
        return -place(logp).sum() / mask.sum().clamp(min=1)
    return shifted_to_labels(place(logp)), shifted_to_labels(place(ent))


def liger_loss(x: dict[str, torch.Tensor]) -> torch.Tensor:
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


def contender_fn(op: str, contender: str, temperature: float) -> Callable[[dict], Any]:
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

        def hf_loss(x):
            logits = eager_logits(x)
            return ForCausalLMLoss(logits, x["labels"], logits.shape[-1])

        return hf_loss
    if contender == "trl":
        if op.startswith("linear"):
            t = temperature if token else 1.0  # the losses are at temperature 1, as HF's
            return lambda x: trl_chunked(x["hidden"], x["weight"], x["labels"], t, token)
        return lambda x: trl_token_logprobs(x["logits"], x["labels"], temperature)
    return liger_loss


# --------------------------------------------------------------------------- measuring


def make_inputs(case: Case) -> dict[str, torch.Tensor]:
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
    x: dict[str, torch.Tensor] = {"labels": labels}
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


def leaves(x: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [v for v in x.values() if isinstance(v, torch.Tensor) and v.requires_grad]


def forward_backward(fn, x) -> Any:
    for t in leaves(x):
        t.grad = None
    out = fn(x)
    if isinstance(out, tuple):
        torch.autograd.backward(out, (x["grad_logp"], x["grad_entropy"]))
    else:
        out.backward()
    return out


def summary(out, labels) -> list[float]:
    """[loss], or [mean log p, mean entropy] over the scored label positions."""
    if not isinstance(out, tuple):
        return [float(out)]
    scored = labels != IGNORE
    scored[:, 0] = False
    return [float(v[scored].double().mean()) for v in out]


def status_mib(key: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) / 1024


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(device: str, fn: Callable[[], Any]) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, (time.perf_counter() - start) * 1e3


def peak_extra_mib(case: Case, fn, x) -> tuple[Any, float]:
    """Runs forward+backward once; returns its output and the peak MiB beyond what existed."""
    gc.collect()
    if case.device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = forward_backward(fn, x)
        torch.cuda.synchronize()
        return out, (torch.cuda.max_memory_allocated() - base) / MIB
    base = status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux)
    out = forward_backward(fn, x)
    return out, status_mib("VmHWM") - base


@torch.no_grad()
def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in fp64, a few rows at a time (no fp64 copy of a 2.5 GB gradient)."""
    width = a.shape[-1] if a.dim() else 1
    rows_a, rows_b = a.reshape(-1, width), b.reshape(-1, width)
    return max(
        float((x.double() - y.double()).abs().max())
        for x, y in zip(rows_a.split(256), rows_b.split(256), strict=True)
    )


def timed_run(device: str, fn, x) -> tuple[Any, float, float]:
    """(output, forward ms, forward+backward ms) of one run."""
    for t in leaves(x):
        t.grad = None
    out, fwd = timed(device, lambda: fn(x))
    grads = (x["grad_logp"], x["grad_entropy"]) if isinstance(out, tuple) else None
    _, bwd = timed(device, lambda: torch.autograd.backward(out, grads))
    return out, fwd, fwd + bwd


def measure(case: Case) -> Result:
    fn = contender_fn(case.op, case.contender, case.temperature)
    small = replace(case, n=min(case.n, 64), vocab=min(case.vocab, 1024), seq_len=32)
    forward_backward(fn, make_inputs(small))  # lazy imports and first-call set-up, before memory
    x = make_inputs(case)
    result = Result(case)
    out, result.peak_mib = peak_extra_mib(case, fn, x)
    result.output = summary(out, x["labels"])
    result.grad_mib = sum(t.grad.numel() * t.grad.element_size() for t in leaves(x)) / MIB
    del out
    for _ in range(case.warmup):
        forward_backward(fn, x)
    runs = [timed_run(case.device, fn, x) for _ in range(case.repeats)]
    result.fwd_ms = statistics.median(fwd for _, fwd, _ in runs)
    result.fwd_bwd_ms = statistics.median(total for _, _, total in runs)
    out = runs[-1][0]  # the input gradients are this run's
    if case.op == "token_logprobs":
        with torch.no_grad():
            reads = [
                timed(case.device, lambda: x["logits"].amax(-1))[1] for _ in range(case.repeats)
            ]
        result.read_ms = statistics.median(reads)
    if case.check:
        result.check = compare_with_hf(case, x, out)
    return result


def compare_with_hf(case: Case, x: dict[str, Any], ours) -> dict[str, float]:
    """Max |ours - hf| of the outputs and every input gradient (``ours`` from the last run)."""
    names = [k for k, v in x.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    our_grads = {k: x[k].grad for k in names}
    theirs = forward_backward(contender_fn(case.op, "hf", case.temperature), x)
    diffs: dict[str, float] = {}
    if isinstance(ours, tuple):
        diffs["logp"], diffs["entropy"] = (
            max_diff(a, b) for a, b in zip(ours, theirs, strict=True)
        )
    else:
        diffs["loss"] = max_diff(ours.detach(), theirs.detach())
    for k in names:
        diffs[f"grad_{k}"] = max_diff(our_grads[k], x[k].grad)
        diffs[f"max|grad_{k}|"] = float(x[k].grad.abs().max())
    return diffs


def run_case(case: Case) -> Result:
    """CPU: in a fresh subprocess (a clean resident set to measure); CUDA: in this process."""
    try:
        if case.device == "cuda":
            try:
                return measure(case)
            finally:
                gc.collect()
                torch.cuda.empty_cache()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(asdict(case))]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            raise BenchError(f"exit code {proc.returncode}: {tail}")
        data = child_result(proc.stdout)
        return Result(Case(**data.pop("case")), **data)
    except (BenchError, RuntimeError, ImportError) as e:
        return Result(case, error=str(e).splitlines()[0][:200])


# --------------------------------------------------------------------------- report


def print_environment(device: str) -> None:
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"machine: {props.name}, {props.total_memory / 2**30:.0f} GiB; host {cpu_model()}")
    else:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        print(
            f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {ram:.0f} GiB RAM, "
            f"torch threads {torch.get_num_threads()}"
        )
    packages = ("ferrotune-kernels", "torch", "triton", "transformers", "trl", "liger-kernel")
    print(
        f"versions: {', '.join(f'{p} {version(p)}' for p in packages)}, python "
        f"{platform.python_version()}"
    )


def available(device: str) -> set[str]:
    names = {"ferrotune", "hf"}
    try:
        import trl.kernels  # noqa: F401

        names.add("trl")
    except ImportError:
        print("trl not installed: skipped")
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        print("liger-kernel not installed: skipped")
    else:
        if device == "cuda":
            names.add("liger")
        else:
            print("liger-kernel needs CUDA: skipped")
    return names


def key(case: Case) -> tuple:
    return case.op, case.n, case.hidden, case.vocab, case.dtype


def baselines(results: Sequence[Result]) -> dict[tuple, Result]:
    return {key(r.case): r for r in results if r.case.contender == "hf" and not r.error}


def ratio(a: float, b: float) -> float:
    return a / b if b and b == b else float("nan")


def output_diff(r: Result, hf: Result | None) -> float:
    if hf is None or not r.output or len(r.output) != len(hf.output):
        return float("nan")
    return max(abs(a - b) for a, b in zip(r.output, hf.output, strict=True))


def print_table(results: Sequence[Result]) -> None:
    header = (
        f"{'op':<22} {'N':>5} {'V':>6} {'contender':<9} {'fwd ms':>9} {'fwd+bwd ms':>10} "
        f"{'peak MiB':>9} {'-grads':>8} {'time/hf':>7} {'mem/hf':>6} {'|out-hf|':>8}"
    )
    print(header)
    print("-" * len(header))
    hf = baselines(results)
    for r in results:
        c = r.case
        if r.error:
            print(f"{c.op:<22} {c.n:>5} {c.vocab:>6} {c.contender:<9} error: {r.error}")
            continue
        base = hf.get(key(c))
        t = ratio(r.fwd_bwd_ms, base.fwd_bwd_ms) if base else float("nan")
        m = ratio(r.peak_mib, base.peak_mib) if base else float("nan")
        print(
            f"{c.op:<22} {c.n:>5} {c.vocab:>6} {c.contender:<9} {r.fwd_ms:>9.1f} "
            f"{r.fwd_bwd_ms:>10.1f} {r.peak_mib:>9.0f} {r.peak_mib - r.grad_mib:>8.0f} "
            f"{t:>7.2f} {m:>6.2f} {output_diff(r, base):>8.1e}"
        )


def print_checks(results: Sequence[Result]) -> None:
    print("ferrotune vs hf on the same inputs (max abs difference; |grad| = hf's largest):")
    for r in results:
        if r.check:
            c = r.case
            parts = [
                f"{name} {value:.2e}" if not name.startswith("max|") else f"{name} {value:.1e}"
                for name, value in r.check.items()
            ]
            print(f"  {c.op} N={c.n} V={c.vocab}: {', '.join(parts)}")
    for r in results:
        if r.case.op == "token_logprobs" and r.case.contender == "ferrotune" and not r.error:
            print(
                f"  token_logprobs N={r.case.n} V={r.case.vocab}: forward {r.fwd_ms:.1f} ms = "
                f"{ratio(r.fwd_ms, r.read_ms):.2f}x one read of the logits (amax, "
                f"{r.read_ms:.1f} ms)"
            )


def check(ok: list[bool], passed: bool, text: str) -> None:
    """Record one acceptance check and print it with PASS or FAIL."""
    ok.append(passed)
    print(f"  {text}: {'PASS' if passed else 'FAIL'}")


def acceptance(results: Sequence[Result], device: str) -> bool:
    """Prints the issue's acceptance checks at the reference shape; False if one fails."""
    target = GPU_HEADLINE if device == "cuda" else CPU_HEADLINE
    at = {
        (r.case.op, r.case.contender): r
        for r in results
        if not r.error and all(getattr(r.case, k) == v for k, v in target.items())
    }
    shape = ", ".join(f"{k}={v}" for k, v in target.items())
    print(f"acceptance ({device}, {shape}):")
    ours = at.get(("linear_cross_entropy", "ferrotune"))
    if ours is None:
        print("  not measured at that shape (see --n/--v/--hidden/--dtype)")
        return True
    ok: list[bool] = []
    if device == "cuda":
        beyond = ours.peak_mib - ours.grad_mib
        ms = ours.fwd_bwd_ms
        check(ok, ms <= GPU_MS, f"linear_cross_entropy fwd+bwd {ms:.1f} ms <= {GPU_MS:.0f} ms")
        check(
            ok,
            beyond <= GPU_BEYOND_MIB,
            f"beyond inputs and gradients {beyond:.0f} MiB <= {GPU_BEYOND_MIB:.0f} MiB",
        )
        tlp = at.get(("token_logprobs", "ferrotune"))
        if tlp is not None:
            r = ratio(tlp.fwd_ms, tlp.read_ms)
            check(
                ok,
                r <= GPU_READ_RATIO,
                f"token_logprobs+entropy forward {tlp.fwd_ms:.2f} ms = {r:.2f}x one read "
                f"({tlp.read_ms:.2f} ms) <= {GPU_READ_RATIO}x",
            )
    else:
        if "loss" in ours.check:
            diff = ours.check["loss"]
            check(
                ok,
                diff <= LOSS_TOL,
                f"loss vs hf, same inputs: |diff| {diff:.2e} <= {LOSS_TOL:g} "
                f"(ours {ours.output[0]:.7f})",
            )
        hf = at.get(("linear_cross_entropy", "hf"))
        if hf is not None:
            share = ratio(ours.peak_mib, hf.peak_mib)
            check(
                ok,
                share <= CPU_MEMORY_SHARE,
                f"peak extra memory {ours.peak_mib:.0f} MiB / hf {hf.peak_mib:.0f} MiB = "
                f"{share:.1%} <= {CPU_MEMORY_SHARE:.0%}",
            )
    return all(ok)


def write_csv(results: Sequence[Result], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    hf = baselines(results)
    machine = torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_model()
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        fields = [k for k in asdict(results[0].case) if k not in ("check", "warmup")]
        writer.writerow(
            [
                *fields,
                "fwd_ms",
                "fwd_bwd_ms",
                "peak_extra_mib",
                "grad_mib",
                "time_vs_hf",
                "memory_vs_hf",
                "output",
                "output_diff_vs_hf",
                "read_ms",
                "check",
                "error",
                "machine",
            ]
        )
        for r in results:
            base = hf.get(key(r.case))
            writer.writerow(
                [
                    *(getattr(r.case, k) for k in fields),
                    f"{r.fwd_ms:.2f}",
                    f"{r.fwd_bwd_ms:.2f}",
                    f"{r.peak_mib:.1f}",
                    f"{r.grad_mib:.1f}",
                    f"{ratio(r.fwd_bwd_ms, base.fwd_bwd_ms):.3f}" if base else "",
                    f"{ratio(r.peak_mib, base.peak_mib):.3f}" if base else "",
                    " ".join(f"{v:.8g}" for v in r.output),
                    f"{output_diff(r, base):.3g}",
                    f"{r.read_ms:.2f}",
                    json.dumps(r.check) if r.check else "",
                    r.error,
                    machine,
                ]
            )


def plot(results: Sequence[Result], path: Path, device: str) -> None:
    """Forward+backward time and peak extra memory against N: a row per op, a line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [op for op in OPS if any(r.case.op == op for r in results)]
    vocabs = sorted({r.case.vocab for r in results})
    fig, axes = plt.subplots(len(ops), 2, figsize=(11, 3.2 * len(ops)), squeeze=False)
    for row, op in zip(axes, ops, strict=True):
        for contender in CONTENDERS:
            for i, vocab in enumerate(vocabs):
                style = ("-o", "--s", ":^", "-.d")[i % 4]
                runs = sorted(
                    (
                        r
                        for r in results
                        if (r.case.op, r.case.contender, r.case.vocab) == (op, contender, vocab)
                        and not r.error
                    ),
                    key=lambda r: r.case.n,
                )
                if not runs:
                    continue
                color = f"C{CONTENDERS.index(contender)}"
                ns = [r.case.n for r in runs]
                label = f"{contender} V={vocab}"
                row[0].plot(ns, [r.fwd_bwd_ms for r in runs], style, color=color, label=label)
                row[1].plot(ns, [r.peak_mib for r in runs], style, color=color, label=label)
        for ax, what in zip(row, ("forward+backward ms", "peak extra MiB"), strict=True):
            ax.set_title(f"{op}: {what}", fontsize=10)
            ax.set_xlabel("N tokens")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    r0 = results[0].case
    where = (
        torch.cuda.get_device_name(0)
        if device == "cuda"
        else f"{cpu_model()}, {os.cpu_count()} CPUs"
    )
    fig.suptitle(f"ferrotune_kernels, H={r0.hidden}, {r0.dtype}: {where}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}") from e
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError("values must be positive")
    return values


def name_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [part.strip() for part in text.split(",") if part.strip()]
        if not names or any(name not in choices for name in names):
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}; got {text!r}")
        return [name for name in choices if name in names]

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark ferrotune_kernels against HF eager, TRL and Liger-Kernel: time, "
        "peak memory and agreement of the fused LM-head losses and log-probs."
    )
    parser.add_argument(
        "--n",
        type=int_list,
        help="tokens N, comma-separated (default CPU 1024,4096; GPU 2048,4096,8192)",
    )
    parser.add_argument("--v", type=int_list, help="vocabulary sizes (default 151936)")
    parser.add_argument("--hidden", type=int, help="hidden size H (default CPU 256, GPU 4096)")
    parser.add_argument("--dtype", choices=DTYPES, help="default CPU fp32, GPU bf16")
    parser.add_argument("--seq-len", type=int, default=1024, help="T; B = N / T (default 1024)")
    parser.add_argument("--ops", type=name_list(OPS), default=list(OPS), help="subset of ops")
    parser.add_argument(
        "--only",
        type=name_list(CONTENDERS),
        help=f"subset of {', '.join(CONTENDERS)} (default CPU ferrotune,hf; GPU all four)",
    )
    parser.add_argument("--repeats", type=int, help="timed runs, median (default CPU 2, GPU 10)")
    parser.add_argument(
        "--warmup", type=int, help="untimed runs after the memory run (default CPU 0, GPU 2)"
    )
    parser.add_argument("--ignored", type=float, default=0.0, help="share of labels set to -100")
    parser.add_argument("--temperature", type=float, default=1.0, help="for the log-prob ops")
    parser.add_argument("--quick", action="store_true", help="N = 512,1024, V = 32000, 1 repeat")
    parser.add_argument(
        "--full", action="store_true", help="N = 512,1024,2048,4096 x V = 32000,151936, 3 repeats"
    )
    parser.add_argument("--cpu", action="store_true", help="the CPU path even with a GPU")
    parser.add_argument("--no-check", action="store_true", help="skip the same-input hf check")
    parser.add_argument("--csv", type=Path, default=OUT_DIR / "kernels.csv")
    parser.add_argument("--plot", type=Path, default=OUT_DIR / "kernels.png")
    parser.add_argument("--_child", help=argparse.SUPPRESS)  # internal: one Case as JSON
    return parser.parse_args(argv)


def plan(args: argparse.Namespace, device: str, names: set[str]) -> list[Case]:
    """Every (op, V, N, contender) to run; defaults depend on the device (see parse_args)."""
    gpu = device == "cuda"
    ns, vs, repeats = ([2048, 4096, 8192], [151936], 10) if gpu else ([1024, 4096], [151936], 2)
    # TRL's CPU fallbacks are slow (~2x hf) and nobody trains on them: on the CPU only with --only
    only = list(CONTENDERS) if gpu else ["ferrotune", "hf"]
    if args.quick:
        ns, vs, repeats = [512, 1024], [32000], 1
    if args.full:
        ns, vs, repeats, only = [512, 1024, 2048, 4096], [32000, 151936], 3, list(CONTENDERS)
    common = {
        "hidden": args.hidden or (4096 if gpu else 256),
        "dtype": args.dtype or ("bf16" if gpu else "fp32"),
        "device": device,
        "seq_len": args.seq_len,
        "ignored": args.ignored,
        "temperature": args.temperature,
        "warmup": args.warmup if args.warmup is not None else (2 if gpu else 0),
        "repeats": args.repeats or repeats,
    }
    return [
        Case(
            op=op, contender=c, n=n, vocab=v, check=c == "ferrotune" and not args.no_check, **common
        )
        for op in args.ops
        for v in args.v or vs
        for n in args.n or ns
        for c in APPLIES[op]
        if c in (args.only or only) and c in names
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args._child:
        result = measure(Case(**json.loads(args._child)))
        print(RESULT_TAG + json.dumps(asdict(result)), flush=True)
        return 0
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    print_environment(device)
    cases = plan(args, device, available(device))
    if not cases:
        print("error: nothing to run", file=sys.stderr)
        return 1
    results = []
    start = time.perf_counter()
    for i, case in enumerate(cases, 1):
        print(
            f"[{i}/{len(cases)}] {case.op} N={case.n} V={case.vocab} {case.contender} ...",
            end=" ",
            flush=True,
        )
        results.append(run_case(case))
        r = results[-1]
        print(r.error or f"{r.fwd_bwd_ms:.0f} ms, {r.peak_mib:.0f} MiB", flush=True)
    print(f"\ntotal {time.perf_counter() - start:.0f} s\n")
    print_table(results)
    print()
    print_checks(results)
    print()
    passed = acceptance(results, device)
    write_csv(results, args.csv)
    print(f"wrote {args.csv}")
    with contextlib.suppress(ImportError):
        plot(results, args.plot, device)
        print(f"wrote {args.plot}")
    if any(r.error for r in results):
        return 1
    return 0 if passed else 2


if __name__ == "__main__":
    sys.exit(main())
