"""PT/SFT loss and trainer: equal to transformers' own loss, packing keeps sequences apart,
gradient accumulation equals one bigger batch, a NaN stops the run and keeps the checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

from ferrotune.train import CausalLMTrainer, NonFiniteLossError, SftConfig, causal_lm_loss
from ferrotune.train.collate import PadCollator


def tiny_model(vocab: int = 96, seed: int = 0) -> transformers.PreTrainedModel:
    config = transformers.Qwen2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config)


def rows(lengths: list[int], vocab: int = 96, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """SFT-like rows: a masked prompt, then learned answer tokens."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(1, vocab, (n,), generator=gen)
        labels = ids.clone()
        labels[: n // 3] = -100
        out.append(
            {"input_ids": ids, "attention_mask": torch.ones(n, dtype=torch.long), "labels": labels}
        )
    return out


@pytest.mark.parametrize("with_items", [False, True])
def test_loss_equals_transformers_loss(with_items):
    model = tiny_model()
    batch = PadCollator(0)(rows([9, 14, 5]))
    items = (batch["labels"][:, 1:] != -100).sum() + 3 if with_items else None
    ours = causal_lm_loss(model, batch, items)
    theirs = model(**batch, num_items_in_batch=items).loss
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    ours_grad = torch.autograd.grad(ours, model.lm_head.weight)[0]
    their_grad = torch.autograd.grad(theirs, model.lm_head.weight)[0]
    torch.testing.assert_close(ours_grad, their_grad, rtol=1e-4, atol=1e-6)


def test_packed_rows_equal_unpacked():
    """One row holding two sequences (position ids restart, no attention mask) gives the loss of
    the two sequences batched apart: nothing attends across the boundary."""
    model = tiny_model()
    first, second = rows([11, 7], seed=3)
    apart = PadCollator(0)([first, second])
    items = (apart["labels"][:, 1:] != -100).sum()
    packed_row = {
        "input_ids": torch.cat([first["input_ids"], second["input_ids"]]),
        "labels": torch.cat([first["labels"], second["labels"]]),
        "position_ids": torch.cat([torch.arange(11), torch.arange(7)]),
    }
    packed_row["labels"][11] = -100  # a packed sequence starts on a masked prompt token
    packed = PadCollator(0)([packed_row])
    assert "attention_mask" not in packed
    loss_apart = causal_lm_loss(model, apart, items)
    loss_packed = causal_lm_loss(model, packed, items)
    assert loss_packed.item() == pytest.approx(loss_apart.item(), rel=1e-5)


class ListData(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def trained(tmp_path, name, data, **settings):
    config = SftConfig(
        output_dir=str(tmp_path / name),
        model="-",
        data="-",
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        loss_plot=False,
        disable_tqdm=True,
        **settings,
    )
    model = tiny_model()
    trainer = CausalLMTrainer(
        model=model, args=config, train_dataset=ListData(data), data_collator=PadCollator(0)
    )
    trainer.train()
    return model, trainer


def test_gradient_accumulation_equals_one_bigger_batch(tmp_path):
    """Rows with different numbers of learned tokens: the loss is over all tokens of the
    accumulated batch (num_items_in_batch), not a mean of per-micro-batch means."""
    data = rows([20, 6, 13, 9], seed=5)
    common = {"max_steps": 1, "learning_rate": 0.5, "optim": "sgd", "seed": 1}
    accumulated, _ = trained(
        tmp_path, "ga", data, per_device_train_batch_size=1, gradient_accumulation_steps=4, **common
    )
    whole, _ = trained(
        tmp_path,
        "one",
        data,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        **common,
    )
    start = tiny_model()
    moved = 0.0
    for (name, a), b, c in zip(
        accumulated.named_parameters(), whole.parameters(), start.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
        moved = max(moved, (a - c).abs().max().item())
    assert moved > 1e-3  # the step did something


def test_a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
    class Poison(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    model.model.norm.weight.fill_(float("nan"))

    config = SftConfig(
        output_dir=str(tmp_path / "run"),
        model="-",
        data="-",
        use_cpu=True,
        save_steps=1,
        max_steps=5,
        loss_plot=False,
        disable_tqdm=True,
    )
    trainer = CausalLMTrainer(
        model=tiny_model(),
        args=config,
        train_dataset=ListData(rows([8, 8, 8, 8])),
        data_collator=PadCollator(0),
        callbacks=[Poison()],
    )
    with pytest.raises(NonFiniteLossError, match="step 3: the loss is nan") as stop:
        trainer.train()
    # checkpoint-2 holds the weights that gave the nan; checkpoint-1's gave step 2's finite loss
    assert stop.value.checkpoint == str(tmp_path / "run" / "checkpoint-1")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(stop.value.checkpoint)
    assert all(torch.isfinite(p).all() for p in reloaded.parameters())


def test_evaluation_reports_loss_perplexity_and_token_accuracy(tmp_path):
    data = rows([12, 9, 15], seed=9)
    model, trainer = trained(tmp_path, "eval", data, max_steps=1, learning_rate=0.0)
    metrics = trainer.evaluate(ListData(data))
    batch = PadCollator(0)(data)
    with torch.no_grad():
        out = model(**batch)
    scored = batch["labels"][:, 1:] != -100
    hits = out.logits[:, :-1].argmax(-1) == batch["labels"][:, 1:]
    assert metrics["eval_loss"] == pytest.approx(out.loss.item(), rel=1e-5)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(out.loss.item()), rel=1e-5)
    assert metrics["eval_token_accuracy"] == pytest.approx(hits[scored].float().mean().item())
