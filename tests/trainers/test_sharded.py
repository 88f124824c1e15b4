"""FSDP2 (two gloo processes on the CPU) trains as one process with the global batch: the same
losses and the same final weights, for PT, SFT, RM and DPO. The fused kernels run inside the
lm_head's call in the sharded model's forward, on the whole weight, never a DTensor. A resumed
FSDP2 run repeats the unbroken one."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ferrotune.cli import main
from ferrotune.data import prep_dpo, prep_pt, prep_rm, prep_sft

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
COMMON = ["use_cpu=true", "disable_tqdm=true", "learning_rate=5e-3", "logging_steps=1",
          "optim=sgd", "seed=1", "report_to=none"]  # fmt: skip

# Every fused-kernel call is recorded: inside the head's call? under a sharded root? a DTensor?
SPY = """
import json, os, sys
import ferrotune_kernels

def spy(name, kernel):
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
            out.write(json.dumps(record) + "\\n")
        return kernel(hidden, weight, *args, **kwargs)
    return call

for name in ("linear_cross_entropy", "linear_token_logprobs"):
    setattr(ferrotune_kernels, name, spy(name, getattr(ferrotune_kernels, name)))
"""


@pytest.fixture(scope="module")
def fsdp_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fsdp") / "fsdp.json"
    path.write_text(json.dumps({
        "version": 2, "transformer_layer_cls_to_wrap": ["Qwen2DecoderLayer"],
        "reshard_after_forward": True, "state_dict_type": "FULL_STATE_DICT",
    }))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def data(example_tokenizer, tmp_path_factory) -> dict[str, Path]:
    """Each stage's shards from the project's examples, and the tiny example model."""
    root = tmp_path_factory.mktemp("sharded")
    prep_pt(example_tokenizer, EXAMPLES / "pt", root / "pt", block_size=64)
    prep_sft(example_tokenizer, EXAMPLES / "sft", root / "sft", max_length=128)
    prep_rm(example_tokenizer, EXAMPLES / "pairs", root / "rm", max_length=128)
    prep_dpo(example_tokenizer, EXAMPLES / "pairs", root / "dpo", max_length=128)
    return {"pt": root / "pt", "sft": root / "sft", "rm": root / "rm", "dpo": root / "dpo"}


def losses(out: Path) -> dict[int, float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return {row["step"]: row["loss"] for row in state["log_history"] if "loss" in row}


def spied(folder: Path) -> list[dict]:
    return [json.loads(line) for f in folder.glob("spy-*.jsonl") for line in f.open()]


@pytest.mark.parametrize("stage", ["pt", "sft", "rm", "dpo"])
def test_two_process_fsdp2_equals_one_process(
    stage, data, fsdp_config, tmp_path, torchrun, monkeypatch
):
    model = EXAMPLES / "model" / "config.json"
    args = ["train", stage, "--model", str(model), "--data", str(data[stage]),
            "max_steps=3", "save_strategy=no", *COMMON]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--output-dir", str(one), "per_device_train_batch_size=4"]) == 0
    spy = tmp_path / "spy"
    spy.mkdir()
    (spy / "sitecustomize.py").write_text(textwrap.dedent(SPY))
    monkeypatch.setenv("SPY_DIR", str(spy))
    torchrun(
        [*args, "--output-dir", str(two), "per_device_train_batch_size=2", "fsdp=true",
         f"fsdp_config={fsdp_config}"],
        pythonpath=[str(spy)],
    )  # fmt: skip
    one_losses, two_losses = losses(one), losses(two)
    assert sorted(one_losses) == sorted(two_losses) == [1, 2, 3]
    for step in one_losses:
        assert two_losses[step] == pytest.approx(one_losses[step], rel=1e-5), (step, one_losses)
    one_weights, two_weights = (
        load_file(one / "model.safetensors"),
        load_file(two / "model.safetensors"),
    )
    assert sorted(one_weights) == sorted(two_weights)
    for name, weight in one_weights.items():
        torch.testing.assert_close(two_weights[name], weight, rtol=1e-4, atol=1e-6, msg=name)
    calls = spied(spy)
    if stage == "rm":  # a plain score head: no fused kernel
        assert calls == []
        return
    # DPO precomputes the reference log-probs before the trainer shards the policy.
    sharded = [c for c in calls if c["sharded_root"]]
    assert len(sharded) >= 2 * 3, calls  # each process, each step
    assert all(c["in_head"] and not c["dtensor"] for c in calls), calls
