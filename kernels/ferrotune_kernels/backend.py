"""Which implementation runs an op: Triton kernels for CUDA tensors, chunked PyTorch for the rest.

``FERROTUNE_KERNELS=triton|torch`` forces one. It is read on every call, so a test or a benchmark
can flip it without re-importing. Forcing ``triton`` on CPU tensors works only under
``TRITON_INTERPRET=1`` (set before Triton is imported): that is how CI runs the kernels.
"""

from __future__ import annotations

import os

import torch

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # macOS, Windows, or a torch build without Triton: the PyTorch path still works
    HAS_TRITON = False

BACKENDS = ("triton", "torch")
ENV_VAR = "FERROTUNE_KERNELS"


def interpreting() -> bool:
    """Whether Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def choose(tensor: torch.Tensor) -> str:
    """The backend for an op whose main input is ``tensor``."""
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={forced!r}: expected one of {', '.join(BACKENDS)}")
        if forced == "triton":
            if not HAS_TRITON:
                raise RuntimeError(f"{ENV_VAR}=triton but Triton is not installed")
            if not tensor.is_cuda and not interpreting():
                raise RuntimeError(
                    f"{ENV_VAR}=triton with {tensor.device.type} tensors needs TRITON_INTERPRET=1 "
                    "(set before Triton is imported): Triton compiles for GPUs only"
                )
        return forced
    return "triton" if HAS_TRITON and tensor.is_cuda else "torch"
