"""FSDP2 as the trainers set it up: on CPU processes too, and with gradients reduced in fp32.

CPU processes: accelerate turns an FSDP plugin (``fsdp``/``fsdp_config`` in
``TrainingArguments``, or ``accelerate launch --config_file`` with ``distributed_type: FSDP``)
into FSDP only on GPU-like devices; with CPU processes (gloo) it silently falls back to DDP.
``torch.distributed.fsdp``'s ``fully_shard`` itself runs on the CPU, so the trainers turn the
state back into FSDP there, and the sharded code path that runs on GPUs runs and is tested on
any machine (and a sharded run's numerics can be debugged without GPUs; it is not for speed).

Mixed precision. With ``bf16``/``fp16``, accelerate's FSDP2 policy computes in that dtype
and also reduce-scatters the gradients in it. The kernels' rule is half-precision inputs with
fp32 accumulation (``ferrotune_kernels``), so the policy keeps ``param_dtype`` and reduces in
fp32: a sum over N ranks then rounds once, not at every step of the ring.
"""

from __future__ import annotations

import os
from typing import Any


def set_up_fsdp(accelerator: Any, plugin_args: dict | None) -> bool:
    """FSDP2 on CPU processes when asked for (see above) and fp32 gradient reduction; returns
    whether ``accelerator`` shards with FSDP2. ``plugin_args`` are TrainingArguments'
    (``fsdp_plugin_args``); without them an FSDP plugin reads accelerate's environment."""
    _fsdp_on_cpu(accelerator, plugin_args)
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is not None:
        reduce_in_fp32(plugin)
    return bool(accelerator.is_fsdp2)


def reduce_in_fp32(plugin: Any) -> None:
    """A half-precision FSDP2 policy reduces gradients in fp32 (see above)."""
    import dataclasses

    import torch

    policy = plugin.mixed_precision_policy
    half = (torch.bfloat16, torch.float16)
    if plugin.fsdp_version == 2 and policy is not None and policy.param_dtype in half:
        plugin.mixed_precision_policy = dataclasses.replace(policy, reduce_dtype=torch.float32)


def _fsdp_on_cpu(accelerator: Any, plugin_args: dict | None) -> None:
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    asked = plugin_args is not None or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if not asked or state.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin(**(plugin_args or {}))
    if plugin.fsdp_version != 2:
        from ferrotune.errors import ConfigError

        raise ConfigError("FSDP on CPU processes needs FSDP2 (fsdp_config version: 2)")
    # Both states: each new AcceleratorState() copies PartialState's fields over its own.
    PartialState().distributed_type = DistributedType.FSDP
    state.distributed_type = DistributedType.FSDP
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin


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
