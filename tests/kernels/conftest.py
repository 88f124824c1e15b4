"""Shared pieces of the kernel tests: backends, device, dtypes, and the error rule.

Error rule (docs/architecture.md §8): against an fp64 oracle (the plain-PyTorch reference on fp64
copies of the inputs), a kernel's error is no worse than the reference's own error on the inputs as
given (the reference computes like transformers does: fp32 log-softmax, gradients rounded once to
the input's dtype), plus 4 units in the last place of that dtype at the tensor's scale (a wrong
gradient is off by orders of magnitude more; the loss whose gradients are formed in the forward and
scaled in the backward needs about 4 in fp32).
"""

from __future__ import annotations

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The Triton interpreter cannot do bf16 arithmetic: bf16 is checked on a GPU only.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
HALF_ULP = {
    torch.float64: 1e-12,
    torch.float32: 2**-24,
    torch.float16: 2**-11,
    torch.bfloat16: 2**-8,
}


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch) -> str:
    """Run the test once on each implementation."""
    monkeypatch.setenv("FERROTUNE_KERNELS", request.param)
    return request.param


def _error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


@pytest.fixture
def assert_no_worse():
    """``check(ours, reference, oracle, dtype, what)`` asserts the error rule above."""

    def check(ours, reference, oracle, dtype, what):
        assert ours.shape == oracle.shape, f"{what}: shape {ours.shape} != {oracle.shape}"
        assert torch.isfinite(ours).all() == torch.isfinite(oracle).all(), f"{what}: non-finite"
        scale = max(1.0, oracle.abs().max().item()) if oracle.numel() else 1.0
        ours_err, ref_err = _error(ours, oracle), _error(reference, oracle)
        allowed = ref_err + 8 * HALF_ULP[dtype] * scale
        assert ours_err <= allowed, (
            f"{what} ({dtype}): error {ours_err:.3g} against fp64, reference's own {ref_err:.3g}"
        )

    return check
