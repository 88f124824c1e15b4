"""``ferrotune pipeline``: the example runs every stage and writes a report that renders in a
browser; a rerun reuses what is up to date; a run that stopped after SFT resumes at RM; a
newcomer's mistakes are named before anything runs."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ferrotune.cli import main
from ferrotune.pipeline import STAGES

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "pipeline.yaml"
EX = REPO / "examples"


@pytest.fixture(scope="module")
def example_run(tmp_path_factory) -> Path:
    """The README's main job, as it ships: examples/pipeline.yaml, every stage."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    assert main(["pipeline", str(EXAMPLE), "--out", str(out)]) == 0
    return out


def history(run: Path, stage: str) -> list[dict]:
    return json.loads((run / "report" / f"{stage}.json").read_text())["history"]


def test_the_example_runs_every_stage(example_run):
    state = json.loads((example_run / "pipeline.json").read_text())["stages"]
    for stage in STAGES:
        assert state[stage]["status"] == "done", stage
        manifest = json.loads((example_run / "data" / stage / "manifest.json").read_text())
        assert manifest["stage"] == stage
        assert (example_run / "models" / stage / "config.json").is_file()
        assert (example_run / "report" / f"{stage}.png").is_file()
    for stage in ("pt", "sft"):
        losses = [row["loss"] for row in history(example_run, stage) if "loss" in row]
        assert losses[-1] < losses[0], (stage, losses)
        held_out = [row["eval_loss"] for row in history(example_run, stage) if "eval_loss" in row]
        assert len(held_out) == 6 if stage == "pt" else 4, held_out  # every eval_steps = 10
        manifest = json.loads(
            (example_run / "data" / f"{stage}-eval" / "manifest.json").read_text()
        )
        assert manifest["stage"] == stage and manifest["rows"] > 0
    pt_eval = [row["eval_loss"] for row in history(example_run, "pt") if "eval_loss" in row]
    assert pt_eval[-1] < pt_eval[0]  # held-out articles: the model learned more than the notes
    dpo = [row["loss"] for row in history(example_run, "dpo") if "loss" in row]
    assert dpo[0] == pytest.approx(math.log(2), abs=1e-3)  # starts from SFT, its own reference
    assert any("accuracy" in row for row in history(example_run, "rm"))
    ppo = history(example_run, "ppo")
    assert len(ppo) == 20 and all(math.isfinite(row["score"]) for row in ppo)
    assert (example_run / "models" / "ppo" / "critic" / "config.json").is_file()
    page = (example_run / "report" / "index.html").read_text()
    assert "pipeline.yaml" in page and "Reward model" in page and "Evaluation data" in page


def test_a_second_run_reuses_data_and_models(example_run, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in example_run.glob("*/*/*.safetensors")}
    capsys.readouterr()
    assert main(["pipeline", str(EXAMPLE), "--out", str(example_run)]) == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert f"{stage} data reused" in out and f"{stage} model reused" in out, out
    assert "pt eval data reused" in out and "sft eval data reused" in out
    assert stamps and stamps == {p: p.stat().st_mtime_ns for p in stamps}


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium on PATH (.ci/run installs Debian's chromium)")


def test_the_report_renders_in_headless_chromium(example_run, tmp_path):
    """Opened from disk, no server: every image loads (the page's own check, read from the DOM
    after load) and the screenshot is a real page, not a blank one."""
    page = (example_run / "report" / "index.html").resolve().as_uri()
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=5000", "--dump-dom", page],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    loaded = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert loaded, dom[:2000]
    assert loaded.group(1) == loaded.group(2) == str(len(STAGES)), loaded.group(0)
    assert 'data-loaded="no"' not in dom and 'class="missing"' not in dom
    shot = tmp_path / "report.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,1600", page],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (1600, 1200)
    assert pixels[..., :3].std() > 0.05  # text, tables and curves, not an empty page


def small_pipeline(folder: Path, pairs: str = "pairs", train: str = "") -> Path:
    """Every stage for a step or two on the examples' data; ``train``: more common settings."""
    text = f"""
tokenizer: {EX / "tokenizer"}
model: {EX / "model" / "config.json"}
train: {{use_cpu: true, max_steps: 2, per_device_train_batch_size: 2, save_strategy: "no",
        report_to: none, disable_tqdm: true{train}}}
pt: {{prep: {{input: {EX / "pt"}, block_size: 64}}}}
sft: {{prep: {{input: {EX / "sft"}, max_length: 256}}}}
rm: {{prep: {{input: {EX / pairs}, max_length: 256}}}}
ppo:
  prep: {{input: {EX / "ppo"}, max_prompt_length: 96}}
  train: {{max_steps: 1, response_length: 4}}
"""
    path = folder / "small.yaml"
    path.write_text(text)
    return path


def test_a_run_stopped_after_sft_resumes_at_rm(tmp_path, capsys):
    out = str(tmp_path / "run")
    broken = small_pipeline(tmp_path, pairs="no-such-folder")
    assert main(["pipeline", str(broken), "--out", out]) != 0  # PT and SFT done, RM fails
    assert "no-such-folder" in capsys.readouterr().err
    state = json.loads((tmp_path / "run" / "pipeline.json").read_text())["stages"]
    assert [s for s in STAGES if state.get(s, {}).get("status") == "done"] == ["pt", "sft"]
    fixed = small_pipeline(tmp_path)
    assert main(["pipeline", str(fixed), "--out", out]) == 0
    log = capsys.readouterr().out
    assert "pt model reused" in log and "sft model reused" in log
    assert "rm data prepped" in log and "ppo data prepped" in log
    assert "rm model reused" not in log
    assert main(["pipeline", str(fixed), "--out", out, "--stages", "ppo"]) == 0
    assert "ppo model reused" in capsys.readouterr().out


def test_a_stage_killed_mid_training_resumes_from_its_checkpoint(tmp_path, capsys):
    """RM writes a checkpoint every step; after a "crash" while checkpoint-2 was written (the
    state still says running), the rerun resumes from checkpoint-1, the last whole one, and logs
    the unbroken run's step-2 loss."""
    path = small_pipeline(tmp_path)
    lines = path.read_text().splitlines()
    lines = [line[:-1] + ", train: {save_strategy: steps, save_steps: 1}}"
             if line.startswith("rm:") else line for line in lines]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    assert main(["pipeline", str(path), "--out", str(out), "--stages", "pt,sft,rm"]) == 0
    rm = out / "models" / "rm"
    unbroken = [row["loss"] for row in history(out, "rm") if "loss" in row]
    summary = [row["train_loss"] for row in history(out, "rm") if "train_loss" in row]
    # checkpoint-2 as a kill while it was written leaves it: all but a whole trainer_state.json
    state_file = rm / "checkpoint-2" / "trainer_state.json"
    state_file.write_text(state_file.read_text()[:100])
    (rm / "model.safetensors").unlink()
    state = json.loads((out / "pipeline.json").read_text())
    state["stages"]["rm"]["status"] = "running"
    (out / "pipeline.json").write_text(json.dumps(state))
    capsys.readouterr()
    assert main(["pipeline", str(path), "--out", str(out), "--stages", "pt,sft,rm"]) == 0
    assert f"rm resumes from {rm / 'checkpoint-1'}" in capsys.readouterr().out
    resumed = [row["loss"] for row in history(out, "rm") if "loss" in row]
    assert len(unbroken) == len(resumed) == 2
    assert resumed == pytest.approx(unbroken, rel=1e-6)
    # The summary's mean loss covers both steps, not only the one trained after the resume.
    assert [row["train_loss"] for row in history(out, "rm") if "train_loss" in row] == (
        pytest.approx(summary, rel=1e-6)
    )


@pytest.mark.parametrize(
    "edit, message",
    [
        (("tokenizer:", "tokeniser:"), "unknown key 'tokeniser'; did you mean 'tokenizer'?"),
        (("ppo:\n  prep", "ppo:\n  prop"), "ppo: unknown key 'prop'; did you mean 'prep'?"),
        (("max_steps: 2", "max_step: 2"), "unknown key 'max_step'; did you mean 'max_steps'?"),
        (("block_size", "block_sise"), "unknown key 'block_sise'; did you mean 'block_size'?"),
        (("use_cpu: true", "use_cpu: true, fp16: true"), "fp16=True: this machine has no CUDA"),
        (("max_steps: 2,", "max_steps: 2, model: x,"), "'model' is set by the pipeline"),
        (
            ("max_prompt_length: 96", "max_prompt_length: 96, eval_input: x"),
            "ppo.prep: unknown key 'eval_input'",
        ),
    ],
)
def test_mistakes_are_named_before_anything_runs(edit, message, tmp_path, capsys):
    import torch

    if "fp16" in edit[1] and torch.cuda.is_available():
        pytest.skip("the GPU-only error needs a machine without a GPU")
    path = small_pipeline(tmp_path)
    path.write_text(path.read_text().replace(*edit))
    assert main(["pipeline", str(path), "--out", str(tmp_path / "run")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "data").exists()  # refused up front


def test_stage_choices_are_checked(tmp_path, capsys):
    path = small_pipeline(tmp_path)
    assert main(["pipeline", str(path), "--stages", "sfft", "--out", str(tmp_path / "r")]) == 1
    assert "unknown stage 'sfft'; did you mean 'sft'?" in capsys.readouterr().err
    assert main(["pipeline", str(path), "--stages", "dpo", "--out", str(tmp_path / "r")]) == 1
    assert "--stages dpo: not configured" in capsys.readouterr().err
    assert main(["pipeline", str(path), "--stages", "ppo", "--out", str(tmp_path / "r")]) == 1
    assert "ppo needs a reward model" in capsys.readouterr().err


def test_the_pipeline_runs_under_torchrun(tmp_path, torchrun):
    """Two processes: the main one preps and writes state and report, both train every stage
    (DDP), and a second launch reuses everything."""
    path, out = small_pipeline(tmp_path), tmp_path / "run"
    torchrun(["pipeline", str(path), "--out", str(out)])
    state = json.loads((out / "pipeline.json").read_text())["stages"]
    assert [s for s in STAGES if state.get(s, {}).get("status") == "done"] == [
        "pt", "sft", "rm", "ppo"
    ]  # fmt: skip
    assert (out / "report" / "index.html").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("models/*/model.safetensors")}
    torchrun(["pipeline", str(path), "--out", str(out)])
    assert len(stamps) == 4 and stamps == {p: p.stat().st_mtime_ns for p in stamps}


def test_the_pipeline_runs_every_stage_under_fsdp2(tmp_path, torchrun, kernel_spy):
    """``fsdp: true`` and the example ``fsdp_config`` in the pipeline's common settings: every
    stage trains sharded (the kernel calls run under the FSDP2 root) and saves plain models."""
    config = REPO / "examples" / "sharding" / "fsdp2.json"
    path = small_pipeline(tmp_path, train=f", fsdp: true, fsdp_config: {config}")
    out = tmp_path / "run"
    torchrun(["pipeline", str(path), "--out", str(out)], pythonpath=[kernel_spy.pythonpath])
    state = json.loads((out / "pipeline.json").read_text())["stages"]
    assert [s for s in STAGES if state.get(s, {}).get("status") == "done"] == [
        "pt", "sft", "rm", "ppo"
    ]  # fmt: skip
    assert len(list(out.glob("models/*/model.safetensors"))) == 4
    calls = kernel_spy.calls()
    assert calls and all(c["sharded_root"] and c["in_head"] for c in calls), calls
