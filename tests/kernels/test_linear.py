"""``linear_token_logprobs`` and ``linear_cross_entropy`` on each backend against the full-logits
reference: outputs and the gradients of hidden states, weight and bias, over several vocabulary
slices, odd shapes, tied embeddings."""

from __future__ import annotations

import pytest
import torch
from transformers.loss.loss_utils import ForCausalLMLoss

from ferrotune_kernels import (
    linear,
    linear_cross_entropy,
    linear_cross_entropy_ref,
    linear_token_logprobs,
    linear_token_logprobs_ref,
)

from .conftest import DEVICE, DTYPES


def make(batch, seq, hidden, vocab, dtype, *, bias=False, ignored=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, seq, hidden, generator=gen, dtype=torch.float64)
    w = torch.randn(vocab, hidden, generator=gen, dtype=torch.float64) / hidden**0.5 * 2
    b = torch.randn(vocab, generator=gen, dtype=torch.float64) if bias else None
    labels = torch.randint(0, vocab, (batch, seq), generator=gen)
    labels[torch.rand(batch, seq, generator=gen) < ignored] = -100
    cast = lambda t: None if t is None else t.to(dtype=dtype, device=DEVICE)  # noqa: E731
    return cast(h), cast(w), cast(b), labels.to(DEVICE)


def run(fn, h, w, b, labels, upstream, **options):
    """Outputs of ``fn`` and the gradients of sum(outputs * upstream) w.r.t. h, w (and b)."""
    leaves = [t.detach().requires_grad_() for t in (h, w, b) if t is not None]
    bias = leaves[2] if b is not None else None
    out = fn(leaves[0], leaves[1], labels, bias=bias, **options)
    out = out if isinstance(out, tuple) else (out,)
    total = sum((o * u).sum() for o, u in zip(out, upstream, strict=False))
    return [o.detach() for o in out], torch.autograd.grad(total, leaves)


def compare(assert_no_worse, fn, ref, h, w, b, labels, **options):
    gen = torch.Generator().manual_seed(7)
    upstream = [torch.randn(labels.shape, generator=gen, dtype=torch.float64).to(DEVICE)] * 2
    ref_options = {k: v for k, v in options.items() if k != "vocab_slice"}
    ours, ours_g = run(fn, h, w, b, labels, upstream, **options)
    mine, ref_g = run(ref, h, w, b, labels, upstream, **ref_options)
    double = [None if t is None else t.double() for t in (h, w, b)]
    oracle, oracle_g = run(ref, *double, labels, upstream, **ref_options)
    dtype = h.dtype
    for name, o, r, x in zip(["out", "entropy"], ours, mine, oracle, strict=False):
        assert_no_worse(o, r, x, dtype, name)
    for name, o, r, x in zip(
        ["d/dhidden", "d/dweight", "d/dbias"], ours_g, ref_g, oracle_g, strict=False
    ):
        assert o.dtype == dtype
        assert_no_worse(o, r, x, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("vocab_slice", [None, 3, 128])
@pytest.mark.parametrize(
    "options",
    [{}, {"return_entropy": True, "temperature": 0.8}, {"shift": False, "return_entropy": True}],
    ids=["plain", "entropy-temp", "noshift-entropy"],
)
def test_token_logprobs_match_reference(backend, assert_no_worse, dtype, vocab_slice, options):
    h, w, b, labels = make(2, 5, 16, 257, dtype, bias=True)
    compare(
        assert_no_worse,
        linear_token_logprobs,
        linear_token_logprobs_ref,
        h,
        w,
        b,
        labels,
        vocab_slice=vocab_slice,
        **options,
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_reference(backend, assert_no_worse, dtype, reduction):
    h, w, _, labels = make(3, 4, 8, 50, dtype)
    compare(
        assert_no_worse,
        linear_cross_entropy,
        linear_cross_entropy_ref,
        h,
        w,
        None,
        labels,
        reduction=reduction,
        vocab_slice=16,
    )


@pytest.mark.parametrize("num_items", [None, 11])
def test_cross_entropy_equals_transformers_loss(backend, num_items):
    h, w, _, labels = make(2, 6, 12, 151936 // 64, torch.float32)
    h.requires_grad_()
    w.requires_grad_()
    ours = linear_cross_entropy(h, w, labels, num_items_in_batch=num_items, vocab_slice=512)
    theirs = ForCausalLMLoss(h @ w.T, labels, w.shape[0], num_items_in_batch=num_items)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    ours_grads = torch.autograd.grad(ours, (h, w))
    their_grads = torch.autograd.grad(theirs, (h, w))
    for a, b in zip(ours_grads, their_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_tied_embeddings_get_both_gradients(backend):
    """The lm_head weight is the input embedding: its gradient is the sum of both uses."""
    torch.manual_seed(0)
    vocab, dim = 37, 8
    ids = torch.randint(0, vocab, (2, 6), device=DEVICE)
    labels = ids.clone()
    labels[0, :2] = -100

    def loss_with(fn):
        embedding = torch.nn.Embedding(vocab, dim).to(DEVICE)
        torch.nn.init.normal_(embedding.weight, generator=torch.Generator().manual_seed(3))
        hidden = torch.tanh(embedding(ids))  # stands in for the transformer blocks
        loss = fn(hidden, embedding.weight, labels)
        loss.backward()
        return loss.detach(), embedding.weight.grad

    ours, ours_grad = loss_with(lambda h, w, y: linear_cross_entropy(h, w, y, vocab_slice=10))
    ref, ref_grad = loss_with(linear_cross_entropy_ref)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-5, atol=1e-6)


def test_every_label_ignored(backend):
    h, w, _, labels = make(2, 3, 8, 20, torch.float32)
    labels[:] = -100
    h.requires_grad_()
    w.requires_grad_()
    loss = linear_cross_entropy(h, w, labels)
    logp, entropy = linear_token_logprobs(h, w, labels, return_entropy=True)
    assert loss.item() == 0.0 and not logp.any() and not entropy.any()
    grads = torch.autograd.grad(loss + logp.sum() + entropy.sum(), (h, w))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_non_contiguous_hidden_and_one_token(backend, assert_no_worse):
    h, w, _, labels = make(6, 2, 10, 33, torch.float32)
    hidden = h.transpose(0, 1)  # (2, 6, 10), not contiguous
    compare(
        assert_no_worse,
        linear_token_logprobs,
        linear_token_logprobs_ref,
        hidden,
        w,
        None,
        labels.reshape(2, 6),
        vocab_slice=8,
    )
    one_h, one_w, _, one_label = make(1, 1, 10, 33, torch.float32, ignored=0.0)
    compare(
        assert_no_worse,
        linear_token_logprobs,
        linear_token_logprobs_ref,
        one_h,
        one_w,
        None,
        one_label,
        shift=False,
    )


def test_shape_and_dtype_errors(backend):
    h, w, _, labels = make(1, 4, 8, 20, torch.float32)
    with pytest.raises(ValueError, match="does not match hidden size"):
        linear_cross_entropy(h, w[:, :5], labels)
    with pytest.raises(ValueError, match="cast one"):
        linear_cross_entropy(h.double(), w, labels)
    with pytest.raises(ValueError, match="bias of shape"):
        linear_cross_entropy(h, w, labels, bias=torch.zeros(3))


def test_autocast_runs_the_lm_head_in_the_autocast_dtype(monkeypatch):
    """fp32 weights under bf16 autocast (mixed-precision training): the loss is computed as
    ``F.linear`` under autocast computes the logits, and the fp32 weight gets an fp32 gradient."""
    monkeypatch.setenv("FERROTUNE_KERNELS", "torch")  # the interpreter cannot do bf16
    h, w, _, labels = make(2, 5, 16, 100, torch.float32)
    results = []
    for fn in (linear_cross_entropy, linear_cross_entropy_ref):
        weight = w.clone().requires_grad_()
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = fn(h, weight, labels)
        loss.backward()
        results.append((loss.detach(), weight.grad))
    (ours, ours_grad), (ref, ref_grad) = results
    assert ours_grad.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=2**-7, atol=2**-9)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_eager_gradient_loss_over_several_token_chunks(
    backend, assert_no_worse, monkeypatch, reduction
):
    """fp32 weights: the loss forms its gradients in the forward, 16 tokens at a time here."""
    monkeypatch.setattr(linear, "CPU_SLICE_BYTES", 1)
    monkeypatch.setattr(linear, "CUDA_SLICE_BYTES", 1)
    h, w, b, labels = make(3, 20, 8, 45, torch.float32, bias=True)
    assert (labels[:, 1:] != -100).sum() > 32  # at least three chunks of 16
    for num_items in [None, 50] if reduction == "mean" else [None]:
        compare(
            assert_no_worse,
            linear_cross_entropy,
            linear_cross_entropy_ref,
            h,
            w,
            b,
            labels,
            reduction=reduction,
            num_items_in_batch=num_items,
        )
