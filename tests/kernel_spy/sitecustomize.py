"""Loaded at start-up by processes that have this folder on PYTHONPATH (the ``kernel_spy``
fixture): every call of a fused lm_head kernel appends a line to ``$SPY_DIR/spy-PID.jsonl``
saying whether it ran inside the head's call (``HeadTap``), under an FSDP2-sharded module's
forward, and on a DTensor weight."""

import json
import os
import sys

import ferrotune_kernels


def _spy(name, kernel):
    def call(hidden, weight, *args, **kwargs):
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor

        frames, frame = [], sys._getframe(1)
        while frame is not None:
            frames.append(frame)
            frame = frame.f_back
        record = {
            "kernel": name,
            "in_head": any(f.f_code.co_qualname == "HeadTap.__call__" for f in frames),
            "sharded_root": any(isinstance(f.f_locals.get("self"), FSDPModule) for f in frames),
            "dtensor": isinstance(weight, DTensor),
        }
        path = os.path.join(os.environ["SPY_DIR"], f"spy-{os.getpid()}.jsonl")
        with open(path, "a") as out:
            out.write(json.dumps(record) + "\n")
        return kernel(hidden, weight, *args, **kwargs)

    return call


if os.environ.get("SPY_DIR"):
    for _name in ("linear_cross_entropy", "linear_token_logprobs"):
        setattr(ferrotune_kernels, _name, _spy(_name, getattr(ferrotune_kernels, _name)))
