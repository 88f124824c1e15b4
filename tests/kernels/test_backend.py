"""Which implementation runs: CUDA → Triton, CPU → PyTorch, ``FERROTUNE_KERNELS`` forces one."""

from __future__ import annotations

import pytest
import torch

from ferrotune_kernels import backend, rows, token_logprobs


def test_cpu_tensors_take_the_pytorch_path(monkeypatch):
    monkeypatch.delenv("FERROTUNE_KERNELS", raising=False)
    assert backend.choose(torch.zeros(1)) == "torch"


def test_environment_forces_a_backend(monkeypatch):
    calls = []
    real_scan = rows.scan

    def spy(*args, **kwargs):
        calls.append(kwargs["backend"])
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(rows, "scan", spy)
    logits, labels = torch.randn(1, 3, 5), torch.tensor([[1, 2, 3]])
    for name in ("torch", "triton"):
        monkeypatch.setenv("FERROTUNE_KERNELS", name)
        token_logprobs(logits, labels)
    assert calls == ["torch", "triton"]


def test_unknown_backend_is_an_error(monkeypatch):
    monkeypatch.setenv("FERROTUNE_KERNELS", "cuda")
    with pytest.raises(ValueError, match="expected one of triton, torch"):
        backend.choose(torch.zeros(1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("FERROTUNE_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        backend.choose(torch.zeros(1))
