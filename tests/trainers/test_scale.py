"""A resumed run continues exactly as an unbroken one, and two-process DDP (gloo, CPU) gives the
losses of one process with the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ferrotune.cli import main
from ferrotune.data import prep_sft

COMMON = ["use_cpu=true", "disable_tqdm=true", "learning_rate=5e-3", "logging_steps=1"]


@pytest.fixture(scope="module")
def sft_data(qwen_tokenizer, medicalgpt, tiny_config, tmp_path_factory) -> dict[str, Path]:
    """Eight real conversations of different lengths: ranks see different token counts."""
    root = tmp_path_factory.mktemp("scale")
    lines = (medicalgpt / "sft" / "medical_sft_1K_format.jsonl").read_text().splitlines()[:8]
    (root / "few.jsonl").write_text("\n".join(lines) + "\n")
    prep_sft(qwen_tokenizer, root / "few.jsonl", root / "shards", max_length=160)
    return {"data": root / "shards", "model": tiny_config}


def losses(out: Path) -> dict[int, float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return {row["step"]: row["loss"] for row in state["log_history"] if "loss" in row}


def test_resume_from_checkpoint_gives_the_unbroken_losses(sft_data, tmp_path):
    base = ["train", "sft", "--model", str(sft_data["model"]), "--data", str(sft_data["data"]),
            "per_device_train_batch_size=2", "max_steps=6", "save_steps=3", *COMMON]  # fmt: skip
    assert main([*base, "--output-dir", str(tmp_path / "whole")]) == 0
    checkpoint = tmp_path / "whole" / "checkpoint-3"
    resumed = tmp_path / "resumed"
    assert main([*base, "--output-dir", str(resumed), f"resume_from_checkpoint={checkpoint}"]) == 0
    whole, again = losses(tmp_path / "whole"), losses(resumed)
    assert sorted(again) == [1, 2, 3, 4, 5, 6]  # steps 1-3 come with the checkpoint's history
    for step in (4, 5, 6):
        assert again[step] == pytest.approx(whole[step], rel=1e-6), (step, whole, again)


def test_two_process_ddp_equals_one_process(sft_data, tmp_path, torchrun):
    args = ["train", "sft", "--model", str(sft_data["model"]), "--data", str(sft_data["data"]),
            "max_steps=3", "save_strategy=no", "optim=sgd", *COMMON]  # fmt: skip
    assert (
        main([*args, "--output-dir", str(tmp_path / "one"), "per_device_train_batch_size=4"]) == 0
    )
    torchrun([*args, "--output-dir", str(tmp_path / "two"), "per_device_train_batch_size=2"])
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), (step, one, two)


def test_two_process_dpo_shares_the_reference_pass(tmp_path, torchrun):
    """Under DDP each process scores half of the pairs with the reference; the gathered cache
    equals one process's, and the DPO losses are one process's for the same global batch."""
    from ferrotune.data import prep_dpo

    repo = Path(__file__).resolve().parents[2] / "examples"
    data = tmp_path / "dpo"
    prep_dpo(repo / "tokenizer", repo / "pairs", data, max_length=256)
    args = ["train", "dpo", "--model", str(repo / "model" / "config.json"), "--data", str(data),
            "max_steps=3", "save_strategy=no", "optim=sgd", "seed=1", *COMMON]  # fmt: skip
    assert (
        main([*args, "--output-dir", str(tmp_path / "one"), "per_device_train_batch_size=4"]) == 0
    )
    (cache,) = data.glob("ref-logps-*.pt")
    single = torch.load(cache)
    cache.unlink()  # the two processes compute it again, half each
    torchrun([*args, "--output-dir", str(tmp_path / "two"), "per_device_train_batch_size=2"])
    assert torch.allclose(torch.load(cache), single, rtol=1e-5, atol=1e-5)
    assert len(single) == 48 and single.abs().min() > 0  # every pair scored, none left at 0
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5), (step, one, two)
