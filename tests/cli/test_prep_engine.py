"""``--engine auto|fast|reference`` on every ``ferrotune prep`` stage: handed to the engine (the
manifest records what was asked), the same rows whichever engine runs, and a known option of
the Python functions and of the pipeline's ``prep:`` mappings."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from ferrotune.cli import main
from ferrotune.data import prep_pt, prep_sft
from ferrotune.pipeline import _check_prep_options
from ferrotune.stages import STAGES

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
TOKENIZER = str(EXAMPLES / "tokenizer")
INPUTS = {"pt": "pt", "sft": "sft", "rm": "pairs", "dpo": "pairs", "ppo": "ppo"}


def rows(out: Path) -> list[dict]:
    """Every row of every shard, as Python values."""
    manifest = json.loads((out / "manifest.json").read_text())
    table = pa.concat_tables(
        pa.ipc.open_stream(pa.memory_map(str(out / shard["file"]))).read_all()
        for shard in manifest["shards"]
    )
    return table.to_pylist()


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_hands_the_engine_on(stage, tmp_path):
    args = ["prep", stage, "--tokenizer", TOKENIZER, "--input", str(EXAMPLES / INPUTS[stage])]
    args += ["--quiet"] if stage == "pt" else ["--quiet", "--template", "chatml"]
    written = {}
    for engine in ("default", "reference", "fast"):
        out = tmp_path / engine
        extra = [] if engine == "default" else ["--engine", engine]
        assert main([*args, "--out", str(out), *extra]) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        asked = "auto" if engine == "default" else engine
        assert manifest["options"]["engine"] == asked
        assert manifest["engine"]["requested"] == asked
        written[engine] = rows(out)
    assert written["reference"] == written["default"] == written["fast"]


def test_an_unknown_engine_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["prep", "pt", "--tokenizer", TOKENIZER, "--input", str(EXAMPLES / "pt"),
              "--out", str(tmp_path / "out"), "--engine", "turbo"])  # fmt: skip
    assert exit.value.code == 2
    assert "invalid choice: 'turbo'" in capsys.readouterr().err


def test_the_python_functions_take_engine(tmp_path):
    pt = prep_pt(TOKENIZER, EXAMPLES / "pt", tmp_path / "pt", engine="reference")
    assert pt["options"]["engine"] == "reference"
    sft = prep_sft(TOKENIZER, EXAMPLES / "sft", tmp_path / "sft", template="chatml", engine="fast")
    assert sft["options"]["engine"] == "fast"


@pytest.mark.parametrize("stage", STAGES)
def test_the_pipeline_accepts_engine_in_prep(stage):
    _check_prep_options(stage, {"input": ["x"], "engine": "reference"}, f"{stage}.prep")
