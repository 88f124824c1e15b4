"""Virtual environments for baselines that cannot share the project's.

``tokenizers`` 1.0 is one: ``transformers`` pins the 0.2x line. Such an environment lives in the
benchmark's output folder, ``OUT/envs/<name>``, is created only when asked
(``ferrotune bench prep --setup-envs``: ``python -m venv`` and ``pip install``, PyPI needed),
and is reused from then on; a ``ready`` file inside, written last, marks one that is complete.
Its interpreter runs the self-contained :mod:`ferrotune.bench.bare` as a script.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ferrotune.bench.measure import BenchError

# name -> what pip installs there
ENVS = {"tokenizers-1.0.0rc3": ("tokenizers==1.0.0rc3",)}
SETUP_SECONDS = 900


def folder(out: Path, name: str) -> Path:
    return out / "envs" / name


def python(out: Path, name: str, setup: bool) -> tuple[str | None, str]:
    """``(interpreter, "")`` of the environment ``name``, created first if ``setup``; else
    ``(None, why)``: ``"not set up: ..."`` (not asked to create it) or ``"not installed: ..."``
    (creating it failed), the note of the contender's rows."""
    where = folder(out, name)
    exe = where / "bin" / "python"
    if (where / "ready").is_file() and exe.is_file():
        return str(exe), ""
    if not setup:
        return None, f"not set up: --setup-envs creates envs/{name}"
    try:
        create(where, ENVS[name])
    except BenchError as e:
        print(f"ferrotune bench: creating {where} failed: {e}", file=sys.stderr)
        last = (str(e).strip().splitlines() or ["?"])[-1][:120]
        return None, f"not installed: {name} env ({last})"
    return str(exe), ""


def run(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=SETUP_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"{' '.join(cmd)}: {e}") from e
    if done.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed:\n{(done.stderr or done.stdout)[-2000:]}")
    return done.stdout


def create(where: Path, requirements: tuple[str, ...]) -> None:
    """A fresh virtual environment at ``where`` with ``requirements``; ``ready`` lists what pip
    installed. A half-made one (no ``ready``) is removed first."""
    print(
        f"  setting up {where}: python -m venv, pip install {' '.join(requirements)} ...",
        file=sys.stderr,
        flush=True,
    )
    if where.exists():
        shutil.rmtree(where)
    run([sys.executable, "-m", "venv", str(where)])
    exe = str(where / "bin" / "python")
    run([exe, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements])
    frozen = run([exe, "-m", "pip", "freeze", "--disable-pip-version-check"])
    (where / "ready").write_text(frozen)
