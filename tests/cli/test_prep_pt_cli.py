"""The ``ferrotune`` command as a user runs it: a real process, its exit status and output,
and what a SIGKILL or Ctrl-C at any moment leaves behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest

REPO = Path(__file__).resolve().parents[2]


def prep_pt_args(source: Path | str, out: Path, *extra: str) -> list[str]:
    """A ``python -m ferrotune prep pt`` command line with the example tokenizer."""
    return [
        sys.executable, "-m", "ferrotune", "prep", "pt", "--tokenizer", "examples/tokenizer",
        "--input", str(source), "--out", str(out), *extra,
    ]  # fmt: skip


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO, **kwargs)


def test_readme_main_job_prints_a_summary_that_adds_up(tmp_path):
    out = tmp_path / "pt"
    result = run(prep_pt_args("examples/pt", out, "--block-size", "256"))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert (
        f"records  {counts['read']:,} read = {counts['written']:,} written "
        f"+ {counts['empty']:,} empty + 0 rejected"
    ) in result.stdout
    assert f"{manifest['rows']:,} blocks of 256 tokens" in result.stdout
    assert counts["empty"] > 0, "the example text files have blank lines"


def test_version_and_help():
    result = run([sys.executable, "-m", "ferrotune", "--version"])
    assert result.returncode == 0
    assert result.stdout.startswith("ferrotune 0.")
    result = run([sys.executable, "-m", "ferrotune", "prep", "pt", "--help"])
    for option in (
        "--block-size", "--workers", "--text-field", "--doc-sep", "--last-block", "--eos",
        "--no-eos", "--skip-bad", "--overwrite", "--quiet", "--num-shards", "--shard-index",
        "--shard-size",
    ):  # fmt: skip
        assert option in result.stdout


def test_bad_input_exits_non_zero_with_one_plain_line(tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    result = run(prep_pt_args(source, tmp_path / "out"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{source}:line 2, field 'text': no field 'text' (fields: txt" in result.stderr
    assert not (tmp_path / "out").exists()


def test_quiet_prints_nothing(tmp_path):
    result = run(prep_pt_args("examples/pt", tmp_path / "out", "--quiet"))
    assert result.returncode == 0
    assert result.stdout == "" and result.stderr == ""


def test_progress_is_plain_log_lines_when_stderr_is_not_a_terminal(tmp_path):
    env = dict(os.environ, FERROTUNE_LOG_INTERVAL="0")
    result = run(prep_pt_args("examples/pt", tmp_path / "out"), env=env)
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    assert lines, "at least one progress line"
    assert all(line.startswith("[prep pt] ") and "tokens/s" in line for line in lines)
    assert "\r" not in result.stderr and "\x1b" not in result.stderr


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory) -> Path:
    """~30 MB of the examples' text: a few seconds of work with one worker."""
    sources = sorted((REPO / "examples/pt").glob("*.txt"))
    text = "".join(p.read_text(encoding="utf-8") for p in sources)
    path = tmp_path_factory.mktemp("big") / "big.txt"
    path.write_text(text * 700, encoding="utf-8")
    return path


def loads_as_dataset(path: Path) -> bool:
    try:
        datasets.load_from_disk(str(path))
    except Exception:
        return False
    return True


def start(big_corpus: Path, out: Path, *extra: str) -> subprocess.Popen:
    """The prep run, with SIGINT as a terminal delivers it: an earlier test (Ray, Spark) can
    leave this process ignoring SIGINT, and a child inherits that, so Ctrl-C would not reach
    the run."""
    args = prep_pt_args(big_corpus, out, "--workers", "1", "--quiet", *extra)
    return subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def wait_for_a_shard(folder: Path, timeout: float = 60.0) -> None:
    """Waits until a run writing into ``folder/out`` has a shard open in its staging folder."""
    deadline = time.monotonic() + timeout
    while not any(folder.glob(".out.ferrotune-partial-*/*.partial")):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("moment", ["at start", "while writing shards"])
def test_sigkill_leaves_nothing_that_loads(big_corpus, tmp_path, moment):
    out = tmp_path / "out"
    process = start(big_corpus, out)
    if moment == "while writing shards":
        wait_for_a_shard(tmp_path)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists()
    for folder in tmp_path.iterdir():
        assert not loads_as_dataset(folder), f"{folder.name} loads as a complete dataset"

    # The next run succeeds and sweeps the dead run's staging folder away.
    rerun = start(big_corpus, out)
    assert rerun.wait() == 0
    assert loads_as_dataset(out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_sigkill_during_overwrite_keeps_the_old_output(big_corpus, tmp_path):
    out = tmp_path / "out"
    assert run(prep_pt_args("examples/pt", out, "--quiet")).returncode == 0
    before = (out / "manifest.json").read_bytes()
    process = start(big_corpus, out, "--overwrite")
    wait_for_a_shard(tmp_path)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (out / "manifest.json").read_bytes() == before
    assert loads_as_dataset(out)


def test_ctrl_c_stops_cleanly_and_removes_the_staging_folder(big_corpus, tmp_path):
    out = tmp_path / "out"
    process = start(big_corpus, out)
    wait_for_a_shard(tmp_path)
    os.kill(process.pid, signal.SIGINT)
    assert process.wait(timeout=30) == 130
    assert list(tmp_path.iterdir()) == []
