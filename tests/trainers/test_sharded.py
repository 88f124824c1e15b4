"""FSDP2 (two gloo processes on the CPU) trains as one process with the global batch: the same
losses and the same final weights, for PT, SFT, RM and DPO. The fused kernels run inside the
lm_head's call in the sharded model's forward, on the whole weight, never a DTensor. A resumed
FSDP2 run repeats the unbroken one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ferrotune.cli import main
from ferrotune.data import prep_dpo, prep_pt, prep_rm, prep_sft

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
COMMON = ["use_cpu=true", "disable_tqdm=true", "learning_rate=5e-3", "logging_steps=1",
          "optim=sgd", "seed=1", "report_to=none"]  # fmt: skip


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


@pytest.mark.parametrize("stage", ["pt", "sft", "rm", "dpo"])
def test_two_process_fsdp2_equals_one_process(
    stage, data, fsdp_config, tmp_path, torchrun, kernel_spy
):
    model = EXAMPLES / "model" / "config.json"
    args = ["train", stage, "--model", str(model), "--data", str(data[stage]),
            "max_steps=3", "save_strategy=no", *COMMON]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--output-dir", str(one), "per_device_train_batch_size=4"]) == 0
    torchrun(
        [*args, "--output-dir", str(two), "per_device_train_batch_size=2", "fsdp=true",
         f"fsdp_config={fsdp_config}"],
        pythonpath=[kernel_spy.pythonpath],
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
    calls = kernel_spy.calls()
    if stage == "rm":  # a plain score head: no fused kernel
        assert calls == []
        return
    # DPO precomputes the reference log-probs before the trainer shards the policy.
    sharded = [c for c in calls if c["sharded_root"]]
    assert len(sharded) >= 2 * 3, calls  # each process, each step
    assert all(c["in_head"] and not c["dtensor"] for c in calls), calls


def test_resume_from_a_sharded_fsdp2_checkpoint_repeats_the_unbroken_run(data, tmp_path, torchrun):
    """Each process saves its own shards (SHARDED_STATE_DICT, as for a model too big to gather);
    resumed from them, steps 4-6 repeat the unbroken run's, and the final model, gathered, is a
    plain transformers folder."""
    import transformers

    config = tmp_path / "fsdp.json"
    config.write_text(json.dumps({
        "version": 2, "transformer_layer_cls_to_wrap": ["Qwen2DecoderLayer"],
        "state_dict_type": "SHARDED_STATE_DICT",
    }))  # fmt: skip
    args = ["train", "sft", "--model", str(EXAMPLES / "model" / "config.json"),
            "--data", str(data["sft"]), "max_steps=6", "save_steps=3",
            "per_device_train_batch_size=2", "fsdp=true", f"fsdp_config={config}",
            *[c for c in COMMON if not c.startswith("optim=")]]  # fmt: skip
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    torchrun([*args, "--output-dir", str(whole)])
    checkpoint = whole / "checkpoint-3"
    torchrun([*args, "--output-dir", str(resumed), f"resume_from_checkpoint={checkpoint}"])
    once, again = losses(whole), losses(resumed)
    assert sorted(again) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert again[step] == pytest.approx(once[step], rel=1e-5), (step, once, again)
    model = transformers.AutoModelForCausalLM.from_pretrained(resumed)
    reference = transformers.AutoModelForCausalLM.from_pretrained(whole)
    for name, weight in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], weight, rtol=1e-4, atol=1e-6)
