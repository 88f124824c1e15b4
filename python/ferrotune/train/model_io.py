"""How the trainers read a model: what its output head computes, computed *inside* its forward.

The fused losses need the final hidden states and the head's weight together, and never the
full logits. Taking ``get_output_embeddings().weight`` after the forward works on one device
and under DDP, but not once the model is sharded. Under FSDP2 the weight is a sharded DTensor
outside the root's forward (using it there all-gathers it again through DTensor dispatch, or
fails). Under DeepSpeed ZeRO-3 it is an empty placeholder outside the head's own forward.

So the head's ``forward`` is replaced, on the instance, by a :class:`HeadTap`:

- When a trainer asks (``head_output(model, fn, ...)``), the tap runs
  ``fn(hidden, weight, bias)`` instead of the plain linear layer. It runs in the head's own call,
  inside the model's forward, after FSDP2's root unshard and DeepSpeed's gather hooks, on the
  whole weight. The result comes back through the model's output (as ``logits``), so the
  engines' backward hooks, and DDP's search for unused parameters, see it.
- Otherwise the head is the plain layer (``generate``, a classifier's score head). The tap keeps
  its output: a classifier's score at every position, before transformers pools it.

The state dict, ``save_pretrained`` and the engines' wrapping see the same module as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import transformers

HeadFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], Any]
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


class HeadTap:
    """The output head's ``forward``: ``fn`` when one is pending, the plain layer otherwise."""

    def __init__(self, head: torch.nn.Module) -> None:
        self.head = head
        self.plain = head.forward
        self.fn: HeadFn | None = None
        self.output: Any = None

    def __call__(self, hidden: torch.Tensor) -> Any:
        if self.fn is None:
            out = self.plain(hidden)
        else:
            weight = self.head.weight
            if _is_dtensor(weight):
                raise RuntimeError(
                    "the output head's weight is still sharded inside the model's forward: the "
                    "sharding engine did not gather it (is the head wrapped on its own?)"
                )
            out = self.fn(hidden, weight, self.head.bias)
        self.output = out
        return out


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside DDP (``.module``) and peft wrappers; FSDP2 and ZeRO-3 shard
    the model in place, so it is itself."""
    while isinstance(model, torch.nn.parallel.DistributedDataParallel) or (
        hasattr(model, "module") and not isinstance(model, transformers.PreTrainedModel)
    ):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def is_causal_lm(model: torch.nn.Module) -> bool:
    return isinstance(base_model(model), transformers.GenerationMixin)


def output_head(model: torch.nn.Module) -> torch.nn.Module:
    """The head that reads the final hidden states: a causal LM's lm_head, a classifier's score."""
    base = base_model(model)
    head = base.get_output_embeddings() if is_causal_lm(base) else getattr(base, "score", None)
    if head is None:
        raise TypeError(f"{type(base).__name__} has neither an lm_head nor a score head")
    return head


def head_tap(model: torch.nn.Module) -> HeadTap:
    """The model's :class:`HeadTap`, installed on its head the first time it is asked for."""
    head = output_head(model)
    tap = head.__dict__.get("forward")
    if not isinstance(tap, HeadTap):
        tap = HeadTap(head)
        head.forward = tap
    return tap


def head_output(model: torch.nn.Module, fn: HeadFn | None, inputs: dict[str, torch.Tensor]) -> Any:
    """``fn(hidden, weight, bias)`` computed in the model's forward on ``inputs`` (input_ids and
    the attention mask or position ids present); with ``fn`` None, the head's plain output at
    every position ((B, T, labels) for a classifier)."""
    tap = head_tap(model)
    forward = {name: inputs[name] for name in MODEL_INPUTS if name in inputs}
    if is_causal_lm(model):
        forward["logits_to_keep"] = 0  # the head sees every position; fn decides what it makes
    tap.fn = fn
    try:
        model(**forward, use_cache=False)
    finally:
        tap.fn = None
    out, tap.output = tap.output, None  # the graph is the caller's now, not the tap's
    return out


def last_real(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values[b, t]`` at each row's last position where ``mask`` is 1 (left or right padding)."""
    last = mask.shape[1] - 1 - mask.flip(1).argmax(dim=1)
    return values[torch.arange(values.shape[0], device=values.device), last]


def _is_dtensor(tensor: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return False
    return isinstance(tensor, DTensor)
