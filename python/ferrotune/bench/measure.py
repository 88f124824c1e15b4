"""How every benchmark measures: time, peak memory, and contenders in fresh interpreters.

One way to do each, shared by ``ferrotune bench kernels|prep`` and the scripts in ``bench/``:

- **Time in the process**: :func:`timed` (CUDA synchronised around the call), medians by the
  caller.
- **Peak memory in the process**: :func:`peak_extra_mib`, memory beyond what existed before the
  call: on CUDA ``max_memory_allocated``; on the CPU Linux's resident high-water mark, reset
  first (``/proc/self/clear_refs``), less the resident set before. Meant for a fresh process, where
  nothing else has touched the allocator.
- **A contender in a fresh interpreter**: :func:`run_child` runs ``MODULE:FUNCTION`` of this
  package through ``python -m ferrotune.bench.child``, which prints the function's JSON result
  after :data:`RESULT_TAG` (or a function of the self-contained :mod:`ferrotune.bench.bare` as a
  script, under any interpreter: another virtual environment's); :func:`run_measured` runs any
  command, sampling the resident memory of it and all its descendants (``num_proc`` workers)
  every 50 ms, when ``psutil`` is there.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ferrotune.bench.bare import RESULT_TAG  # defined there: it imports nothing of ferrotune
from ferrotune.errors import FerrotuneError

POLL_SECONDS = 0.05
MIB = 1 << 20
MB = 1_000_000


class BenchError(FerrotuneError):
    """A contender failed or the set-up is missing; the message says which and why."""


def installed(module: str) -> bool:
    """Whether ``module`` (dotted names too) can be imported here, without importing it: an
    optional baseline that is not installed gets a row that says so instead of a failure."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


# --------------------------------------------------------------------------- in the process


def sync(device: str) -> None:
    """Waits for queued CUDA work, so that a timer around a call measures the call."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str = "cpu") -> tuple[Any, float]:
    """``(fn(), milliseconds)``."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, (time.perf_counter() - start) * 1e3


def status_mib(key: str) -> float:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB."""
    text = Path("/proc/self/status").read_text()
    found = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    if found is None:
        raise BenchError(f"no {key} in /proc/self/status: CPU memory needs Linux")
    return int(found.group(1)) / 1024


def peak_extra_mib(fn: Callable[[], Any], device: str = "cpu") -> tuple[Any, float]:
    """``(fn(), peak MiB beyond what existed before the call)``."""
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        return out, (torch.cuda.max_memory_allocated() - base) / MIB
    base = status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux)
    out = fn()
    return out, status_mib("VmHWM") - base


# --------------------------------------------------------------------------- subprocesses


def child_env(workers: int) -> dict[str, str]:
    """This environment, offline, with Rayon (ferrotune, tokenizers) on ``workers`` threads."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", RAYON_NUM_THREADS=str(workers))
    return env


def tree_rss(proc: Any) -> int:
    """Resident bytes of the ``psutil.Process`` ``proc`` and all its descendants, now."""
    import psutil

    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


def poll_peak_rss(popen: subprocess.Popen[bytes]) -> float:
    """Samples the tree RSS every ``POLL_SECONDS`` until the process exits; returns the peak
    in bytes (NaN without ``psutil``, after waiting for the process)."""
    try:
        import psutil
    except ImportError:
        popen.wait()
        return float("nan")
    proc = psutil.Process(popen.pid)
    peak = 0
    while True:
        peak = max(peak, tree_rss(proc))
        try:
            popen.wait(timeout=POLL_SECONDS)
            return float(peak)
        except subprocess.TimeoutExpired:
            continue


def run_measured(
    cmd: Sequence[str], env: dict[str, str], poll: bool = True
) -> tuple[float, float, str]:
    """Runs ``cmd`` to the end; returns (wall seconds, peak tree RSS bytes, stdout).

    ``poll=False`` skips the memory sampling (NaN peak), for children that measure their own
    memory and whose timings a busy parent would disturb.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        popen = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        try:
            if poll:
                peak = poll_peak_rss(popen)
            else:
                popen.wait()
                peak = float("nan")
        finally:
            if popen.poll() is None:
                popen.kill()
                popen.wait()
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        if popen.returncode != 0:
            tail = err.read().decode(errors="replace")[-4000:]
            raise BenchError(f"{' '.join(cmd)}\nfailed with exit code {popen.returncode}:\n{tail}")
    return wall, peak, stdout


def child_result(stdout: str) -> dict[str, Any]:
    """The JSON a child printed after ``RESULT_TAG``."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line.removeprefix(RESULT_TAG))
    raise BenchError(f"the child printed no result line:\n{stdout[-2000:]}")


def run_child(
    target: str,
    kwargs: dict[str, Any],
    env: dict[str, str] | None = None,
    poll: bool = True,
    python: str | None = None,
) -> dict[str, Any]:
    """``ferrotune.bench.<MODULE>.<FUNCTION>(**kwargs)`` in a fresh interpreter.

    ``target`` is ``"MODULE:FUNCTION"``; ``kwargs`` and the result travel as JSON. Returns the
    result with ``wall`` (seconds, start-up and imports included) and ``peak`` (bytes, the tree
    RSS sampled, at least the child's own peak; NaN with ``poll=False`` or without ``psutil``)
    added. ``python``: the interpreter to
    run ``bare.py`` under as a script (``-I``: its own environment's packages only, ferrotune's
    not among them); ``target`` is then ``"bare:FUNCTION"``.
    """
    if python is None:
        cmd = [sys.executable, "-m", "ferrotune.bench.child", target, json.dumps(kwargs)]
    else:
        module, function = target.split(":")
        if module != "bare":
            raise BenchError(f"{target}: only ferrotune.bench.bare runs under another Python")
        script = Path(__file__).with_name("bare.py")
        cmd = [python, "-I", str(script), function, json.dumps(kwargs)]
    wall, peak, stdout = run_measured(cmd, env if env is not None else dict(os.environ), poll)
    result = child_result(stdout)
    own = result.pop("own_peak", 0)  # a child shorter than the samples: its own peak at least
    return {**result, "wall": wall, "peak": max(peak, own) if peak == peak else peak}
