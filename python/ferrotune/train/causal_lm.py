"""PT and SFT: the next-token loss from the backbone's hidden states, the logits never made.

The model runs through its own forward (so DDP, FSDP2, ZeRO-3 and PEFT wrappers see the call),
and its lm_head's call computes the loss, ``linear_cross_entropy`` on the final hidden states
(after the last norm) and the whole head weight: ``model_io`` says why it must be there.
"""

from __future__ import annotations

import torch
import transformers

from ferrotune.errors import ConfigError
from ferrotune.train.base import FerrotuneTrainer
from ferrotune.train.model_io import head_output
from ferrotune_kernels import linear_cross_entropy


def check_plain_lm_head(model: transformers.PreTrainedModel) -> None:
    """The loss assumes logits = hidden @ lm_head.weight.T (+ bias): no scaling, no softcapping."""
    config = model.config.get_text_config()
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier"):
        if getattr(config, name, None) not in (None, 1.0):
            raise ConfigError(f"{config.model_type} scales its logits ({name}): not supported yet")


def causal_lm_loss(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    num_items_in_batch: int | torch.Tensor | None,
    *,
    metrics: dict[str, float] | None = None,
) -> torch.Tensor:
    """The mean next-token loss of ``inputs["labels"]``, over ``num_items_in_batch`` if given.
    A ``metrics`` dict gets ``token_accuracy``, from the same hidden states and head call."""
    labels = inputs["labels"]

    def loss(hidden, weight, bias):
        if metrics is not None:
            metrics["token_accuracy"] = token_accuracy(hidden, weight, bias, labels)
        return linear_cross_entropy(
            hidden, weight, labels, bias=bias, num_items_in_batch=num_items_in_batch
        )

    return head_output(model, loss, inputs)


@torch.no_grad()
def token_accuracy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor
) -> float:
    """Share of scored next tokens that are the argmax, logits made ~32 MiB of rows at a time."""
    scored = labels[:, 1:] != -100
    rows, targets = hidden[:, :-1][scored], labels[:, 1:][scored]
    if not len(targets):
        return 0.0
    step = max(1, (1 << 23) // weight.shape[0])
    correct = sum(
        int((torch.nn.functional.linear(part, weight, bias).argmax(-1) == want).sum())
        for part, want in zip(rows.split(step), targets.split(step), strict=True)
    )
    return correct / len(targets)


class CausalLMTrainer(FerrotuneTrainer):
    """``Trainer`` whose loss is ``causal_lm_loss``; evaluation adds perplexity and accuracy."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        metrics: dict[str, float] | None = None if model.training else {}
        loss = causal_lm_loss(model, inputs, num_items_in_batch, metrics=metrics)
        for name, value in (metrics or {}).items():
            self.record(name, torch.tensor(value))
        # Divided by the token count of every micro-batch (and rank): Trainer must not divide by
        # the accumulation steps again; DDP averages gradients over ranks, so undo that average.
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        return (loss, {"loss": loss}) if return_outputs else loss

    def evaluate(self, *args, **kwargs):
        metrics = super().evaluate(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", "eval")
        if f"{prefix}_loss" in metrics:
            metrics[f"{prefix}_perplexity"] = float(
                torch.exp(torch.tensor(metrics[f"{prefix}_loss"]))
            )
            self.log({f"{prefix}_perplexity": metrics[f"{prefix}_perplexity"]})
        return metrics
