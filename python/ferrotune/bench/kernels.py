"""``ferrotune bench kernels``: fused LM-head losses and log-probs against what users run today.

Each op of :mod:`ferrotune.bench.kernel_ops` at each shape, for each contender: forward time,
forward+backward time and peak memory beyond the inputs, on the same seeded inputs.

Memory. On the CPU every (op, shape, contender) runs in its own interpreter
(:func:`ferrotune.bench.measure.run_child`): after a run at a tiny shape (imports, first-call
set-up) the inputs are made and the op runs forward and backward once under
:func:`~ferrotune.bench.measure.peak_extra_mib`, so the input gradients count as extra (the
``-grads`` metric takes them out). On CUDA everything runs in this process. Time: that run is
the warm-up; then ``--warmup`` untimed runs and the median of ``--repeats`` timed ones.

Correctness, in the same run: at every shape the ``ferrotune`` child also runs ``hf`` on the
same inputs and reports the largest difference of the loss (or of per-token log-probs and
entropies) and of every input gradient.

Acceptance targets (from the issue): on the CPU at N = 4096, H = 256, V = 151936, fp32,
``linear_cross_entropy`` gives HF's loss within 1e-5 with peak extra memory <= 25% of HF's; on a
GPU at N = 8192, H = 4096, V = 151936, bf16, its forward+backward takes <= 60 ms with <= 1 GiB
beyond inputs and gradients, and ``token_logprobs`` + entropy forward is within 1.3x of one read
of the logits (``logits.amax(-1)``).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ferrotune.bench import measure, table
from ferrotune.bench.cases import Case, Result
from ferrotune.bench.measure import BenchError

CPU_HEADLINE = {"n": 4096, "hidden": 256, "vocab": 151936, "dtype": "fp32"}
GPU_HEADLINE = {"n": 8192, "hidden": 4096, "vocab": 151936, "dtype": "bf16"}
LOSS_TOL = 1e-5
CPU_MEMORY_SHARE = 0.25
GPU_MS = 60.0
GPU_BEYOND_MIB = 1024.0
GPU_READ_RATIO = 1.3
PACKAGES = ("ferrotune", "ferrotune-kernels", "torch", "triton", "transformers", "trl")
OPS = ("cross_entropy", "linear_cross_entropy", "token_logprobs", "linear_token_logprobs")
CONTENDERS = ("ferrotune", "hf", "trl", "liger")
BASELINES = CONTENDERS[1:]
APPLIES = {  # which contenders have each op
    "cross_entropy": ("ferrotune", "hf", "liger"),
    "linear_cross_entropy": ("ferrotune", "hf", "trl", "liger"),
    "token_logprobs": ("ferrotune", "hf", "trl"),
    "linear_token_logprobs": ("ferrotune", "hf", "trl"),
}
# The module each optional contender imports, and the distribution that provides it.
NEEDS = {"trl": ("trl.kernels", "trl"), "liger": ("liger_kernel", "liger-kernel")}


@dataclass(frozen=True)
class Settings:
    """What ``ferrotune bench kernels`` measures (its options, by name); ``None``: the device's
    default."""

    n: Sequence[int] | None = None  # tokens N = B * T (CPU 1024, 4096; GPU 2048, 4096, 8192)
    v: Sequence[int] | None = None  # vocabulary sizes (151936)
    hidden: int | None = None  # H (CPU 256, GPU 4096)
    dtype: str | None = None  # fp32 on the CPU, bf16 on a GPU
    seq_len: int = 1024  # T; B = N / T
    ops: Sequence[str] | None = None  # all four
    only: Sequence[str] | None = None  # contenders (CPU ferrotune, hf: TRL's CPU fallbacks slow)
    repeats: int | None = None  # timed runs, median (CPU 2, GPU 10)
    warmup: int | None = None  # untimed runs after the memory run (CPU 0, GPU 2)
    ignored: float = 0.0  # share of labels set to -100
    temperature: float = 1.0  # of the log-prob ops
    quick: bool = False  # N = 512, V = 8192, H = 64, 1 repeat: a smoke test in seconds
    full: bool = False  # every contender, N = 512..4096 x V = 32000, 151936, 3 repeats
    cpu: bool = False  # the CPU path even where CUDA is
    no_check: bool = False  # skip comparing ferrotune with hf on the same inputs


# --------------------------------------------------------------------------- one case


def run_case(case: Case) -> Result:
    """CPU: in a fresh interpreter (a clean resident set to measure); CUDA: in this process."""
    try:
        if case.device == "cuda":
            import torch

            from ferrotune.bench.kernel_ops import measure_case

            try:
                return Result(**measure_case(**asdict(case)))
            finally:
                gc.collect()
                torch.cuda.empty_cache()
        raw = measure.run_child("kernel_ops:measure_case", asdict(case), poll=False)
        return Result(**{k: v for k, v in raw.items() if k not in ("wall", "peak")})
    except (BenchError, RuntimeError, ImportError) as e:
        lines = str(e).strip().splitlines() or [type(e).__name__]
        return Result(asdict(case), error=lines[-1][:200])


# --------------------------------------------------------------------------- the plan


def missing(device: str) -> dict[str, str]:
    """The optional baselines that cannot run here, with why."""
    why = {
        name: f"not installed: {package}"
        for name, (module, package) in NEEDS.items()
        if not measure.installed(module)
    }
    if device != "cuda":
        why.setdefault("liger", "liger-kernel needs CUDA")
    return why


def plan(settings: Settings, device: str, skip: dict[str, str]) -> tuple[list[Case], list[str]]:
    """Every (op, V, N, contender) to run, and the contenders asked for (those in ``skip``
    included, so that their rows can say why they did not run). Defaults depend on the device
    (see ``Settings``)."""
    gpu = device == "cuda"
    if gpu:
        ns, vs, hidden, repeats = [2048, 4096, 8192], [151936], 4096, 10
    else:
        ns, vs, hidden, repeats = [1024, 4096], [151936], 256, 2
    only = list(CONTENDERS) if gpu else ["ferrotune", "hf"]
    if settings.quick:
        ns, vs, hidden, repeats = [512], [8192], 64, 1
    if settings.full:
        ns, vs, repeats, only = [512, 1024, 2048, 4096], [32000, 151936], 3, list(CONTENDERS)
    common = {
        "hidden": settings.hidden or hidden,
        "dtype": settings.dtype or ("bf16" if gpu else "fp32"),
        "device": device,
        "seq_len": settings.seq_len,
        "ignored": settings.ignored,
        "temperature": settings.temperature,
        "warmup": settings.warmup if settings.warmup is not None else (2 if gpu else 0),
        "repeats": settings.repeats or repeats,
    }
    wanted, compare = list(settings.only or only), not settings.no_check
    cases = [
        Case(op=op, contender=c, n=n, vocab=v, check=c == "ferrotune" and compare, **common)
        for op in settings.ops or OPS
        for v in settings.v or vs
        for n in settings.n or ns
        for c in APPLIES[op]
        if c in wanted and c not in skip
    ]
    return cases, wanted


# --------------------------------------------------------------------------- report


def label(case: dict[str, Any]) -> str:
    return f"{case['op']} N={case['n']} V={case['vocab']}"


def rows(results: Sequence[Result], skip: dict[str, str], wanted: Sequence[str]) -> list[table.Row]:
    """ferrotune against each baseline, per shape: forward, forward+backward, peak memory with
    and without the input gradients, and the difference of the outputs (loss, or mean log p and
    entropy: the inputs are the same seeded ones)."""
    by_key = {(label(r.case), r.case["contender"]): r for r in results}
    out = []
    for r in results:
        if r.case["contender"] != "ferrotune":
            continue
        asked = [vs for vs in BASELINES if vs in APPLIES[r.case["op"]] and vs in wanted]
        for vs in asked or ["-"]:  # "-": ours alone, as --only ferrotune asks
            base = by_key.get((label(r.case), vs))
            note = r.error or (base.error if base else skip.get(vs, "not run"))
            theirs = base if base and not base.error else Result(r.case)
            diff = (
                max(abs(a - b) for a, b in zip(r.output, theirs.output, strict=True))
                if r.output and len(r.output) == len(theirs.output)
                else math.nan
            )
            for metric, unit, attr in (
                ("forward", "ms", lambda x: x.fwd_ms),
                ("fwd+bwd", "ms", lambda x: x.fwd_bwd_ms),
                ("peak extra", "MiB", lambda x: x.peak_mib),
                ("peak extra -grads", "MiB", lambda x: x.peak_mib - x.grad_mib),
            ):
                out.append(
                    table.Row(label(r.case), vs, metric, unit, attr(r), attr(theirs), diff, note)
                )
    return out


def print_checks(results: Sequence[Result]) -> None:
    print("ferrotune vs hf on the same inputs (max abs difference; |grad| = hf's largest):")
    for r in results:
        if r.check:
            parts = [
                f"{name} {value:.1e}" if name.startswith("max|") else f"{name} {value:.2e}"
                for name, value in r.check.items()
            ]
            print(f"  {label(r.case)}: {', '.join(parts)}")
    for r in results:
        if r.case["op"] == "token_logprobs" and r.case["contender"] == "ferrotune" and not r.error:
            print(
                f"  {label(r.case)}: forward {r.fwd_ms:.1f} ms = {r.fwd_ms / r.read_ms:.2f}x one "
                f"read of the logits (amax, {r.read_ms:.1f} ms)"
            )


def check(ok: list[bool], passed: bool, text: str) -> None:
    """Records one acceptance check and prints it with PASS or FAIL."""
    ok.append(passed)
    print(f"  {text}: {'PASS' if passed else 'FAIL'}")


def acceptance(results: Sequence[Result], device: str) -> bool:
    """Prints the issue's acceptance checks at the reference shape; False if one fails."""
    target = GPU_HEADLINE if device == "cuda" else CPU_HEADLINE
    at = {
        (r.case["op"], r.case["contender"]): r
        for r in results
        if not r.error and all(r.case[k] == v for k, v in target.items())
    }
    print(f"acceptance ({device}, {', '.join(f'{k}={v}' for k, v in target.items())}):")
    ours = at.get(("linear_cross_entropy", "ferrotune"))
    if ours is None:
        print("  not measured at that shape (see --n/--v/--hidden/--dtype)")
        return True
    ok: list[bool] = []
    if device == "cuda":
        beyond, ms = ours.peak_mib - ours.grad_mib, ours.fwd_bwd_ms
        check(ok, ms <= GPU_MS, f"linear_cross_entropy fwd+bwd {ms:.1f} ms <= {GPU_MS:.0f} ms")
        check(
            ok,
            beyond <= GPU_BEYOND_MIB,
            f"beyond inputs and gradients {beyond:.0f} MiB <= {GPU_BEYOND_MIB:.0f} MiB",
        )
        tlp = at.get(("token_logprobs", "ferrotune"))
        if tlp is not None:
            r = tlp.fwd_ms / tlp.read_ms
            check(
                ok,
                r <= GPU_READ_RATIO,
                f"token_logprobs+entropy forward {tlp.fwd_ms:.2f} ms = {r:.2f}x one read "
                f"({tlp.read_ms:.2f} ms) <= {GPU_READ_RATIO}x",
            )
        return all(ok)
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
        share = ours.peak_mib / hf.peak_mib
        check(
            ok,
            share <= CPU_MEMORY_SHARE,
            f"peak extra memory {ours.peak_mib:.0f} MiB / hf {hf.peak_mib:.0f} MiB = "
            f"{share:.1%} <= {CPU_MEMORY_SHARE:.0%}",
        )
    return all(ok)


def run(settings: Settings, out: Path) -> int:
    """Runs the plan, prints the table and checks, writes ``out/kernels.{csv,png}``.

    Exit status: 2 if an acceptance check fails, 1 if a run failed, else 0.
    """
    import torch

    device = "cuda" if torch.cuda.is_available() and not settings.cpu else "cpu"
    where = table.machine() + f", torch threads {torch.get_num_threads()}"
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        where = f"{props.name}, {props.total_memory / 2**30:.0f} GiB; host {table.cpu_model()}"
    print(f"machine: {where}")
    print(table.versions(PACKAGES))
    skip = missing(device)
    cases, wanted = plan(settings, device, skip)
    if not cases:
        raise BenchError("nothing to run: see --ops and --only")
    results, start = [], time.perf_counter()
    for i, case in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] {label(asdict(case))} {case.contender} ...", end=" ", flush=True)
        results.append(run_case(case))
        r = results[-1]
        print(r.error or f"{r.fwd_bwd_ms:.0f} ms, {r.peak_mib:.0f} MiB", flush=True)
    print(f"\ntotal {time.perf_counter() - start:.0f} s\n")
    first = cases[0]
    title = f"ferrotune_kernels, H={first.hidden}, {first.dtype}: {where}"
    table.report(rows(results, skip, wanted), out, "kernels", title, where)
    print()
    print_checks(results)
    print()
    passed = acceptance(results, device)
    if any(r.error for r in results):
        return 1
    return 0 if passed else 2
