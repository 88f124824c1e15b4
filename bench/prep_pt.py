"""``python bench/prep_pt.py ARGS`` runs ``ferrotune bench prep pt ARGS`` (see README.md here).

The benchmark lives in ``ferrotune.bench`` so that it runs from an installed wheel. This script
also re-exports the measuring helpers that ``train_*.py`` here import from it.
"""

import sys
from pathlib import Path

from ferrotune.bench.command import script_argv
from ferrotune.bench.corpora import qwen_tokenizer_dir
from ferrotune.bench.measure import RESULT_TAG, BenchError, child_env, child_result, run_measured
from ferrotune.bench.table import cpu_model, version
from ferrotune.cli import main

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "bench" / "out"

__all__ = [
    "OUT_DIR",
    "REPO",
    "RESULT_TAG",
    "BenchError",
    "child_env",
    "child_result",
    "cpu_model",
    "qwen_tokenizer_dir",
    "run_measured",
    "version",
]

if __name__ == "__main__":
    sys.exit(main(script_argv(__file__, "prep", "pt")))
