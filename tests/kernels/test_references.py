"""The references are right, and ours equal the libraries people use: ``F.cross_entropy``,
transformers' ``ForCausalLMLoss`` (with ``num_items_in_batch``), ``torch.distributions``' entropy,
``gradcheck`` in float64, and TRL's DPO log-probs on real MedicalGPT preference pairs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.loss.loss_utils import ForCausalLMLoss

from ferrotune_kernels import (
    cross_entropy,
    cross_entropy_ref,
    linear_cross_entropy,
    linear_cross_entropy_ref,
    linear_token_logprobs,
    linear_token_logprobs_ref,
    token_logprobs,
    token_logprobs_ref,
)


def make(batch=2, seq=5, vocab=11, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, seq, vocab, generator=gen, dtype=dtype) * 2
    labels = torch.randint(0, vocab, (batch, seq), generator=gen)
    labels[0, 1] = labels[1, 3] = -100
    return logits, labels


def test_token_logprobs_ref_is_minus_torch_cross_entropy():
    logits, labels = make()
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), reduction="none"
    )
    logp = token_logprobs_ref(logits, labels)
    torch.testing.assert_close(logp[:, 1:].reshape(-1), -nll)
    assert torch.all(logp[:, 0] == 0)


def test_entropy_ref_is_torch_distributions():
    logits, labels = make()
    _, entropy = token_logprobs_ref(logits, labels, shift=False, return_entropy=True, temperature=2)
    expected = torch.distributions.Categorical(logits=logits / 2).entropy()
    torch.testing.assert_close(entropy, torch.where(labels != -100, expected, 0.0))


@pytest.mark.parametrize("num_items", [None, 7, torch.tensor(13)])
@pytest.mark.parametrize("implementation", ["reference", "torch", "triton"])
def test_cross_entropy_is_transformers_for_causal_lm_loss(monkeypatch, implementation, num_items):
    logits, labels = make(dtype=torch.float32)
    logits = logits.to(torch.float16)  # ForCausalLMLoss upcasts; so do we, per row
    if implementation == "reference":
        fn = cross_entropy_ref
    else:
        monkeypatch.setenv("FERROTUNE_KERNELS", implementation)
        fn = cross_entropy
    leaf = logits.clone().requires_grad_()
    ours = fn(leaf, labels, num_items_in_batch=num_items)
    (ours_grad,) = torch.autograd.grad(ours, leaf)
    leaf = logits.clone().requires_grad_()
    theirs = ForCausalLMLoss(leaf, labels, 11, num_items_in_batch=num_items)
    (their_grad,) = torch.autograd.grad(theirs, leaf)
    assert ours.dtype == theirs.dtype == torch.float32
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    torch.testing.assert_close(ours_grad, their_grad, rtol=0, atol=2**-11)


def _gradcheck(fn, *inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["reference", "torch"])
def test_gradcheck_float64(monkeypatch, implementation):
    """Analytic gradients equal finite differences; the PyTorch path computes in fp64 for fp64."""
    monkeypatch.setenv("FERROTUNE_KERNELS", "torch")
    reference = implementation == "reference"
    logprobs = token_logprobs_ref if reference else token_logprobs
    loss = cross_entropy_ref if reference else cross_entropy
    linear = linear_token_logprobs_ref if reference else linear_token_logprobs
    slices = {} if reference else {"vocab_slice": 4}
    logits, labels = make(batch=2, seq=4, vocab=7)
    logits.requires_grad_()
    gen = torch.Generator().manual_seed(5)
    up_logp, up_entropy = torch.randn(2, 2, 4, generator=gen, dtype=torch.float64)

    def weighted(x):
        logp, entropy = logprobs(x, labels, return_entropy=True, temperature=0.9)
        return (logp * up_logp).sum() + (entropy * up_entropy).sum()

    _gradcheck(weighted, logits)
    _gradcheck(lambda x: loss(x, labels, num_items_in_batch=5), logits)
    hidden = torch.randn(2, 4, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(7, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, generator=gen, requires_grad=True)

    def weighted_linear(h, w, b):
        logp, entropy = linear(h, w, labels, bias=b, return_entropy=True, **slices)
        return (logp * up_logp).sum() + (entropy * up_entropy).sum()

    _gradcheck(weighted_linear, hidden, weight, bias)
    linear_loss = linear_cross_entropy_ref if reference else linear_cross_entropy
    _gradcheck(lambda h, w, b: linear_loss(h, w, labels, bias=b), hidden, weight, bias)


@pytest.fixture(scope="module")
def dpo_batch(qwen_tokenizer, medicalgpt, tmp_path_factory):
    """Real preference pairs: ``ferrotune prep dpo`` on MedicalGPT's reward file, TRL-collated."""
    import json

    import pyarrow as pa
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from ferrotune.data import prep_dpo

    out = tmp_path_factory.mktemp("dpo") / "shards"
    prep_dpo(qwen_tokenizer, medicalgpt / "reward" / "dpo_zh_500.jsonl", out)
    manifest = json.loads((out / "manifest.json").read_text())
    table = pa.ipc.open_stream(str(out / manifest["shards"][0]["file"])).read_all()
    examples = []
    for row in table.slice(0, 3).to_pylist():
        n = len(row["prompt_input_ids"])
        examples.append(
            {
                "prompt_ids": row["prompt_input_ids"][-24:],
                "chosen_ids": row["chosen_input_ids"][n:][:24],
                "rejected_ids": row["rejected_input_ids"][n:][:24],
            }
        )
    return DataCollatorForPreference(pad_token_id=151643)(examples)


@pytest.fixture
def tiny_qwen():
    """A random-initialised Qwen2 with the Qwen vocabulary (nothing is downloaded)."""
    import transformers

    config = transformers.Qwen2Config(
        vocab_size=151936,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("implementation", ["torch", "triton"])
def test_sequence_logps_equal_trls_dpo(monkeypatch, dpo_batch, tiny_qwen, implementation):
    """Summed over completion tokens, ``token_logprobs`` (and the linear op from the hidden
    states) equal what TRL 1.16's DPOTrainer computes: its fused LM head on the same batch, with
    its labels (input ids, -100 outside the completion)."""
    from trl.trainer.utils import add_fused_lm_head

    monkeypatch.setenv("FERROTUNE_KERNELS", implementation)
    batch = dpo_batch
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        out = tiny_qwen(**inputs, output_hidden_states=True)
        ours = token_logprobs(out.logits, labels).sum(-1)
        hidden = out.hidden_states[-1]
        linear = linear_token_logprobs(hidden, tiny_qwen.lm_head.weight, labels).sum(-1)
        add_fused_lm_head(tiny_qwen)
        trl = tiny_qwen(**inputs, labels=labels, fused_lm_head=True).log_probs.sum(1)
    assert labels.shape[0] == 6 and (labels != -100).sum() > 50
    torch.testing.assert_close(ours, trl, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(linear, trl, rtol=1e-5, atol=1e-4)
