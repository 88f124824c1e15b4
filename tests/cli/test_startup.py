"""``ferrotune`` starts at once: the data commands, ``--version`` and every ``--help`` import none
of the training stack (torch, transformers, datasets, TRL, accelerate, matplotlib, peft); the
train, pipeline and bench commands import theirs only when they run.

Each command runs through ``ferrotune.cli.main`` in a fresh interpreter, which then reports the
modules it holds: the test process itself has long imported torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ferrotune.cli import COMMANDS, build_parser
from ferrotune.stages import STAGES

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TOKENIZER = EXAMPLES / "tokenizer"
HEAVY = ("torch", "transformers", "datasets", "trl", "accelerate", "matplotlib", "peft")

# Runs `ferrotune.cli.main(ARGV)` (argparse's --help and --version exit), then writes the exit
# status and the heavy modules it imported to REPORT.
PROBE = """
import json, sys
argv, report = json.loads(sys.argv[1]), sys.argv[2]
from ferrotune.cli import main
try:
    code = main(argv)
except SystemExit as exit:
    code = exit.code
heavy = [name for name in json.loads(sys.argv[3]) if name in sys.modules]
with open(report, "w") as f:
    json.dump({"code": code, "heavy": heavy}, f)
"""


def run_probe(argv: list[str], tmp_path: Path) -> dict:
    """``main(argv)`` in a fresh interpreter: its exit status and the heavy modules it loaded."""
    report = tmp_path / "probe.json"
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv), str(report), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert report.is_file(), result.stderr
    return {**json.loads(report.read_text()), "stdout": result.stdout, "stderr": result.stderr}


def assert_light(argv: list[str], tmp_path: Path) -> dict:
    probe = run_probe(argv, tmp_path)
    assert probe["code"] in (0, None), probe["stderr"]
    assert probe["heavy"] == [], f"`ferrotune {' '.join(argv)}` imported {probe['heavy']}"
    return probe


@pytest.fixture(scope="module")
def pt_out(tmp_path_factory) -> Path:
    """``ferrotune prep pt`` on the examples, run (and checked) in a fresh interpreter."""
    out = tmp_path_factory.mktemp("startup") / "pt"
    argv = ["prep", "pt", "--tokenizer", str(TOKENIZER), "--input", str(EXAMPLES / "pt")]
    argv += ["--out", str(out), "--block-size", "64"]
    probe = assert_light(argv, out.parent)
    assert "blocks of 64 tokens" in probe["stdout"]
    return out


def test_prep_pt_imports_no_training_stack(pt_out):
    assert (pt_out / "manifest.json").is_file()


def test_prep_sft_imports_no_training_stack(tmp_path):
    out = tmp_path / "sft"
    argv = ["prep", "sft", "--tokenizer", str(TOKENIZER), "--input", str(EXAMPLES / "sft")]
    probe = assert_light([*argv, "--out", str(out), "--template", "chatml"], tmp_path)
    assert "sft rows" in probe["stdout"]


def test_inspect_imports_no_training_stack(pt_out, tmp_path):
    probe = assert_light(["inspect", str(pt_out), "--n", "1", "--color", "never"], tmp_path)
    assert "── row 0 of" in probe["stdout"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--version"],
        ["--help"],
        ["prep", "--help"],
        ["prep", "pt", "--help"],
        ["prep", "sft", "--help"],
        ["prep", "dpo", "--help"],
        ["inspect", "--help"],
        ["train", "--help"],
        ["train", "sft", "--help"],
        ["pipeline", "--help"],
        ["bench", "--help"],
        ["bench", "kernels", "--help"],
        ["bench", "prep", "--help"],
    ],
    ids=" ".join,
)
def test_version_and_help_import_no_training_stack(argv, tmp_path):
    probe = assert_light(argv, tmp_path)
    assert probe["stdout"].startswith("ferrotune 0." if argv == ["--version"] else "usage:")


def test_help_lists_every_command(tmp_path):
    out = assert_light(["--help"], tmp_path)["stdout"]
    for command in ("prep", "inspect", "train", "pipeline", "bench"):
        assert f"    {command} " in out, command


@pytest.mark.parametrize("command", COMMANDS)
def test_a_loaded_command_keeps_the_help_line_the_dispatcher_lists(command):
    """``ferrotune --help`` lists each command from ``COMMANDS`` without importing its module:
    the module, once loaded, must add the command with that same help line."""
    assert build_parser(command).format_help() == build_parser().format_help()


def test_the_trainers_have_a_config_per_stage_in_order():
    from ferrotune.train.run import CONFIGS

    assert tuple(CONFIGS) == STAGES
