"""PT and SFT: the next-token loss from the backbone's hidden states, the logits never made.

The model runs through its own forward (so DDP, FSDP and PEFT wrappers see the call) with
``logits_to_keep=1`` and ``output_hidden_states=True``: its lm_head makes one position's logits,
and the loss takes the final hidden states (after the last norm) through ``linear_cross_entropy``.
"""

from __future__ import annotations

import torch
import transformers

from ferrotune.errors import ConfigError
from ferrotune.train.base import FerrotuneTrainer
from ferrotune_kernels import linear_cross_entropy

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


def check_plain_lm_head(model: transformers.PreTrainedModel) -> None:
    """The loss assumes logits = hidden @ lm_head.weight.T (+ bias): no scaling, no softcapping."""
    config = model.config.get_text_config()
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier"):
        if getattr(config, name, None) not in (None, 1.0):
            raise ConfigError(f"{config.model_type} scales its logits ({name}): not supported yet")


def final_hidden(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T, H) hidden states after the final norm, from the model's own forward."""
    forward = {name: inputs[name] for name in MODEL_INPUTS if name in inputs}
    out = model(**forward, output_hidden_states=True, logits_to_keep=1, use_cache=False)
    return out.hidden_states[-1]


def causal_lm_loss(
    model: torch.nn.Module,
    head: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    num_items_in_batch: int | torch.Tensor | None,
) -> torch.Tensor:
    """The mean next-token loss of ``inputs["labels"]``, over ``num_items_in_batch`` if given."""
    hidden = final_hidden(model, inputs)
    return linear_cross_entropy(
        hidden, head.weight, inputs["labels"], bias=head.bias, num_items_in_batch=num_items_in_batch
    )


@torch.no_grad()
def token_accuracy(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor) -> float:
    """Share of scored next tokens that are the argmax, logits made ~32 MiB of rows at a time."""
    scored = labels[:, 1:] != -100
    rows, targets = hidden[:, :-1][scored], labels[:, 1:][scored]
    if not len(targets):
        return 0.0
    step = max(1, (1 << 23) // head.weight.shape[0])
    correct = sum(
        int((torch.nn.functional.linear(part, head.weight, head.bias).argmax(-1) == want).sum())
        for part, want in zip(rows.split(step), targets.split(step), strict=True)
    )
    return correct / len(targets)


class CausalLMTrainer(FerrotuneTrainer):
    """``Trainer`` whose loss is ``causal_lm_loss``; evaluation adds perplexity and accuracy."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        hidden = final_hidden(model, inputs)
        labels = inputs["labels"]
        loss = linear_cross_entropy(
            hidden, head.weight, labels, bias=head.bias, num_items_in_batch=num_items_in_batch
        )
        if not model.training:
            self.record("token_accuracy", torch.tensor(token_accuracy(hidden, head, labels)))
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
