"""What one kernel benchmark case is and what it measured: :class:`Case` and :class:`Result`.

Both travel as JSON between ``ferrotune.bench.kernels`` (which plans the cases and tabulates the
results) and ``ferrotune.bench.kernel_ops`` (which measures one case, in a child process on the
CPU); their own module, so that neither of those imports the other at the top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Case", "Result"]


@dataclass(frozen=True)
class Case:
    """One contender on one op at one shape (JSON-able: it travels to the child process)."""

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
    """What one case measured (JSON-able: it comes back from the child process)."""

    case: dict[str, Any]
    fwd_ms: float = math.nan
    fwd_bwd_ms: float = math.nan
    peak_mib: float = math.nan  # beyond inputs, gradients included
    grad_mib: float = math.nan  # the input gradients alone
    output: list[float] = field(default_factory=list)  # [loss] or [mean log p, mean entropy]
    read_ms: float = math.nan  # token_logprobs: one read of the logits (amax)
    check: dict[str, float] = field(default_factory=dict)  # max |ours - hf| per output/gradient
    error: str = ""
