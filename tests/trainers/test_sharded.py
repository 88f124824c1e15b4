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
def fsdp_config() -> Path:
    """The example FSDP2 settings the README gives (``fsdp=true fsdp_config=...``)."""
    return EXAMPLES / "sharding" / "fsdp2.json"


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


@pytest.mark.parametrize(
    "stage, settings",
    [("pt", []), ("sft", []), ("rm", []), ("dpo", []), ("dpo", ["precompute_ref_logps=false"])],
    ids=["pt", "sft", "rm", "dpo", "dpo-live-reference"],
)
def test_two_process_fsdp2_equals_one_process(
    stage, settings, data, fsdp_config, tmp_path, torchrun, kernel_spy
):
    """With ``precompute_ref_logps=false`` the reference is sharded like the policy and runs in
    every step."""
    model = EXAMPLES / "model" / "config.json"
    args = ["train", stage, "--model", str(model), "--data", str(data[stage]),
            "max_steps=3", "save_strategy=no", *COMMON, *settings]  # fmt: skip
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
    sharded = [c for c in calls if c["sharded_root"]]
    assert len(sharded) >= 2 * 3, calls  # each process, each step
    # By default DPO precomputes the reference log-probs before the trainer shards the policy.
    precomputed = stage == "dpo" and not settings
    assert precomputed or len(sharded) == len(calls), calls
    assert all(c["in_head"] and not c["dtensor"] for c in calls), calls


def test_resume_from_a_sharded_fsdp2_checkpoint_repeats_the_unbroken_run(
    data, fsdp_config, tmp_path, torchrun
):
    """Each process saves its own shards (SHARDED_STATE_DICT, as for a model too big to gather);
    resumed from them, steps 4-6 repeat the unbroken run's, and the final model, gathered, is a
    plain transformers folder."""
    import transformers

    args = ["train", "sft", "--model", str(EXAMPLES / "model" / "config.json"),
            "--data", str(data["sft"]), "max_steps=6", "save_steps=3",
            "per_device_train_batch_size=2", "fsdp=true", f"fsdp_config={fsdp_config}",
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


def test_accelerate_launch_with_the_example_fsdp2_config(data, tmp_path, kernel_spy):
    """``accelerate launch --config_file examples/sharding/accelerate_fsdp2.yaml`` (two CPU
    processes instead of eight GPUs) shards the model and trains as one process."""
    import os
    import socket
    import subprocess
    import sys

    yaml = (EXAMPLES / "sharding" / "accelerate_fsdp2.yaml").read_text()
    yaml = yaml.replace("num_processes: 8", "num_processes: 2")
    yaml = yaml.replace("mixed_precision: bf16", 'mixed_precision: "no"\nuse_cpu: true')
    (tmp_path / "accelerate.yaml").write_text(yaml)
    args = ["train", "sft", "--model", str(EXAMPLES / "model" / "config.json"),
            "--data", str(data["sft"]), "max_steps=3", "save_strategy=no", *COMMON]  # fmt: skip
    assert (
        main([*args, "--output-dir", str(tmp_path / "one"), "per_device_train_batch_size=4"]) == 0
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": kernel_spy.pythonpath}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(tmp_path / "accelerate.yaml"), "--main_process_port", str(port),
              "-m", "ferrotune.cli"]  # fmt: skip
    done = subprocess.run(
        [*launch, *args, "--output-dir", str(tmp_path / "two"), "per_device_train_batch_size=2"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(two) == [1, 2, 3]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), (step, one, two)
    calls = kernel_spy.calls()
    assert calls and all(c["sharded_root"] and c["in_head"] for c in calls), calls


@pytest.mark.gpu
def test_deepspeed_zero3_equals_one_process(data, tmp_path, torchrun, kernel_spy):
    """ZeRO-3 (the example config) on every GPU there is: the lm_head's weight is gathered in
    DeepSpeed's hooks around the head's call, where the kernels run, and the losses are one
    plain process's with the same global batch. Needs CUDA and deepspeed."""
    pytest.importorskip("deepspeed")
    if not torch.cuda.is_available():
        pytest.skip("ZeRO-3 needs CUDA")
    gpus = min(torch.cuda.device_count(), 2)
    args = ["train", "sft", "--model", str(EXAMPLES / "model" / "config.json"),
            "--data", str(data["sft"]), "max_steps=3", "save_strategy=no",
            *[c for c in COMMON if c != "use_cpu=true"]]  # fmt: skip
    assert (
        main([*args, "--output-dir", str(tmp_path / "one"), "per_device_train_batch_size=4"]) == 0
    )
    zero3 = EXAMPLES / "sharding" / "zero3.json"
    torchrun([*args, "--output-dir", str(tmp_path / "two"), f"deepspeed={zero3}",
              f"per_device_train_batch_size={4 // gpus}"],
             pythonpath=[kernel_spy.pythonpath], processes=gpus)  # fmt: skip
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4), (step, one, two)
    calls = kernel_spy.calls()
    assert calls and all(c["in_head"] for c in calls), calls
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "two")  # a plain folder
    assert model.get_output_embeddings().weight.shape[0] == 2048


def test_half_precision_fsdp2_reduces_gradients_in_fp32():
    """accelerate's bf16 policy would reduce-scatter in bf16; the kernels' rule is fp32."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    from ferrotune.train.sharding import reduce_in_fp32

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    plugin.set_mixed_precision("bf16")
    assert plugin.mixed_precision_policy.reduce_dtype == torch.bfloat16
    reduce_in_fp32(plugin)
    assert plugin.mixed_precision_policy.param_dtype == torch.bfloat16
    assert plugin.mixed_precision_policy.reduce_dtype == torch.float32


def test_bf16_fsdp2_on_cpu_trains_close_to_fp32(data, fsdp_config, tmp_path, torchrun):
    args = ["train", "sft", "--model", str(EXAMPLES / "model" / "config.json"),
            "--data", str(data["sft"]), "max_steps=3", "save_strategy=no", *COMMON]  # fmt: skip
    assert (
        main([*args, "--output-dir", str(tmp_path / "one"), "per_device_train_batch_size=4"]) == 0
    )
    torchrun([*args, "--output-dir", str(tmp_path / "two"), "per_device_train_batch_size=2",
              "fsdp=true", f"fsdp_config={fsdp_config}", "bf16=true"])  # fmt: skip
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=2e-2), (step, one, two)
