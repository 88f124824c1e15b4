"""FSDP2 on CPU processes too: what accelerate leaves to DDP.

accelerate turns an FSDP plugin (``fsdp``/``fsdp_config`` in ``TrainingArguments``, or
``accelerate launch --config_file`` with ``distributed_type: FSDP``) into FSDP only on GPU-like
devices. With CPU processes (gloo) it silently falls back to DDP. ``torch.distributed.fsdp``'s
``fully_shard`` itself runs on the CPU. So the trainers turn the state back into FSDP there, and
the same sharded code path that runs on GPUs can be run and tested on any machine. Beyond
tests, this is for debugging a sharded run's numerics without GPUs. It is not for speed.
"""

from __future__ import annotations

import os
from typing import Any


def fsdp_on_cpu(accelerator: Any, plugin_args: dict | None) -> bool:
    """Makes ``accelerator`` shard with FSDP when an FSDP plugin was asked for and it fell back
    to DDP on CPU processes; returns whether it did. ``plugin_args`` are TrainingArguments'
    (``fsdp_plugin_args``); without them the plugin reads accelerate's environment."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    asked = plugin_args is not None or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if not asked or state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin(**(plugin_args or {}))
    if plugin.fsdp_version != 2:
        from ferrotune.errors import ConfigError

        raise ConfigError("FSDP on CPU processes needs FSDP2 (fsdp_config version: 2)")
    # Both states: each new AcceleratorState() copies PartialState's fields over its own.
    PartialState().distributed_type = DistributedType.FSDP
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    return True


def without_tied_copies(model: Any, state_dict: dict) -> dict:
    """A gathered full state dict without the copies of tied weights. Gathering makes each tied
    name (``lm_head.weight`` of ``model.embed_tokens.weight``) its own tensor, which
    transformers' pointer check no longer sees as tied. Saved as is, the folder would hold the
    vocabulary matrix twice."""
    tied = (
        model.get_expanded_tied_weights_keys()
        if model.config.get_text_config().tie_word_embeddings
        else {}
    )
    out = dict(state_dict)
    for copy, source in tied.items():
        if copy in out and source in out and out[copy].equal(out[source]):
            del out[copy]
    return out
