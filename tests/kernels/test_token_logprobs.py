"""``token_logprobs`` and ``cross_entropy`` on each backend (Triton runs in the interpreter on the
CPU) against the plain-PyTorch reference, outputs and gradients, over odd shapes and options."""

from __future__ import annotations

import pytest
import torch

from ferrotune_kernels import cross_entropy, token_logprobs, token_logprobs_ref

from .conftest import DEVICE, DTYPES

SHAPES = [(2, 5, 7), (3, 4, 130), (1, 6, 4099)]  # vocab sizes off the 4096 block, and under it


def make(shape, dtype, *, scale=3.0, ignored=0.25, seed=0):
    """Random logits and labels with some labels ignored."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    labels[torch.rand(shape[:-1], generator=gen) < ignored] = -100
    return logits.to(DEVICE), labels.to(DEVICE)


def outputs_and_grads(fn, logits, labels, upstream, **options):
    """Per-token outputs of ``fn`` and d(sum(outputs * upstream))/dlogits."""
    logits = logits.detach().requires_grad_()
    out = fn(logits, labels, **options)
    out = out if isinstance(out, tuple) else (out,)
    total = sum((o * u).sum() for o, u in zip(out, upstream, strict=False))
    (grad,) = torch.autograd.grad(total, logits)
    return [o.detach() for o in out], grad


def compare(assert_no_worse, logits, labels, **options):
    dtype = logits.dtype
    gen = torch.Generator().manual_seed(1)
    upstream = [torch.randn(labels.shape, generator=gen, dtype=torch.float64).to(DEVICE)] * 2
    ours, ours_g = outputs_and_grads(token_logprobs, logits, labels, upstream, **options)
    ref, ref_g = outputs_and_grads(token_logprobs_ref, logits, labels, upstream, **options)
    oracle, oracle_g = outputs_and_grads(
        token_logprobs_ref, logits.double(), labels, upstream, **options
    )
    names = ["logp", "entropy"]
    for name, o, r, x in zip(names, ours, ref, oracle, strict=False):
        assert o.dtype == torch.float32
        assert_no_worse(o, r, x, dtype, name)
    assert ours_g.dtype == dtype
    assert_no_worse(ours_g, ref_g, oracle_g, dtype, "d/dlogits")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"shift": False},
        {"return_entropy": True},
        {"return_entropy": True, "temperature": 0.7, "shift": False},
    ],
    ids=["shift", "noshift", "entropy", "entropy-temp-noshift"],
)
def test_matches_reference(backend, assert_no_worse, dtype, shape, options):
    logits, labels = make(shape, dtype)
    compare(assert_no_worse, logits, labels, **options)


@pytest.mark.parametrize("vocab", [151936, 50257, 7])
def test_real_vocabulary_sizes(backend, assert_no_worse, vocab):
    logits, labels = make((1, 3, vocab), torch.float32)
    compare(assert_no_worse, logits, labels, return_entropy=True)


def test_extreme_and_minus_inf_logits(backend, assert_no_worse):
    logits, labels = make((2, 4, 300), torch.float32)
    logits[0, :, :] *= 3000.0  # about ±1e4
    logits[1, :, :150] = -float("inf")  # a masked vocabulary, the first block all -inf
    labels[1] = torch.tensor([-100, 160, 299, 151])
    logits[0, 0, 5] = 1e4
    logits[0, 1, 7] = -1e4
    compare(assert_no_worse, logits, labels, return_entropy=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_label_ignored_gives_zeros_not_nan(backend, dtype):
    logits, labels = make((2, 3, 11), dtype)
    labels[:] = -100
    logits.requires_grad_()
    logp, entropy = token_logprobs(logits, labels, return_entropy=True)
    loss = cross_entropy(logits, labels)
    assert torch.equal(logp, torch.zeros_like(logp))
    assert torch.equal(entropy, torch.zeros_like(entropy))
    assert loss.item() == 0.0
    (grad,) = torch.autograd.grad(loss + logp.sum() + entropy.sum(), logits)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_non_contiguous_logits(backend, assert_no_worse):
    base, _ = make((5, 2, 26), torch.float32)
    _, labels = make((2, 5, 13), torch.float32, seed=3)
    logits = base.transpose(0, 1)[..., ::2]  # (2, 5, 13): strides (26, 52, 2)
    assert not logits.is_contiguous()
    compare(assert_no_worse, logits, labels, return_entropy=True)


@pytest.mark.parametrize("shift", [True, False])
def test_batch_of_one_token(backend, assert_no_worse, shift):
    logits, labels = make((1, 1, 9), torch.float32, ignored=0.0)
    compare(assert_no_worse, logits, labels, shift=shift)
    if shift:  # one token has nothing after it
        assert token_logprobs(logits, labels).item() == 0.0


def test_two_dim_logits_are_one_sequence(backend):
    logits, labels = make((1, 6, 10), torch.float32)
    flat = token_logprobs(logits[0], labels[0])
    assert torch.equal(flat, token_logprobs(logits, labels)[0])


def test_results_line_up_with_the_labels(backend):
    logits, labels = make((2, 5, 8), torch.float32, ignored=0.0)
    logp = token_logprobs(logits, labels)
    log_probs = torch.log_softmax(logits.double(), -1)
    assert logp[:, 0].abs().max() == 0
    expected = log_probs[0, 2, labels[0, 3]]  # position 3's label is predicted at position 2
    assert logp[0, 3].item() == pytest.approx(expected.item(), abs=1e-6)


def test_bad_labels_and_shapes_are_errors(backend):
    logits, labels = make((2, 3, 7), torch.float32)
    labels[0, 2] = 7
    with pytest.raises(ValueError, match="label 7 is outside the vocabulary"):
        token_logprobs(logits, labels)
    with pytest.raises(ValueError, match="do not match labels"):
        token_logprobs(logits, labels[:, :2])
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, labels.clamp(max=6), temperature=0.0)
