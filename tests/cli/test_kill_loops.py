"""Kill loops: ``ferrotune prep STAGE`` killed with SIGKILL at random moments never leaves an
output folder that looks complete unless it is, and a rerun with the same arguments writes the
unbroken run's bytes.

For every stage, a corpus grown from ``examples/`` (with malformed records, so ``--skip-bad``
writes ``rejects.jsonl``, and a small ``--shard-size``, so shards close all through the run) is
prepped once unbroken; then, ``FERROTUNE_KILLS`` times (10 by default; raise it for a longer
hunt), a run is started, killed at a random moment of the unbroken run's wall time, the folder
checked, and rerun to the end. Every other killed run starts from no output, the others replace
a complete one (``--overwrite``'s path). ``FERROTUNE_KILL_SEED`` picks other moments.

"Identical" is every file's bytes, the manifest's included but for its ``timings`` and
``elapsed_seconds`` (how long this run took; nothing else in the folder depends on the clock).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EX = REPO / "examples"
KILLS = int(os.environ.get("FERROTUNE_KILLS", "10"))
SEED = int(os.environ.get("FERROTUNE_KILL_SEED", "0"))
CLOCK_FIELDS = ("timings", "elapsed_seconds")

# Each stage's inputs: examples files repeated (a few MB, about half a second of prep here).
SOURCES = {
    "pt": ["pt/notes_en.txt", "pt/notes_zh.txt", "pt/articles.jsonl"],
    "sft": ["sft/conversations.jsonl", "sft/messages.jsonl"],
    "rm": ["pairs/preferences.jsonl"],
    "dpo": ["pairs/preferences.jsonl"],
    "ppo": ["ppo/prompts.jsonl"],
}
REPEATS = {"pt": 200, "sft": 250, "rm": 300, "dpo": 300, "ppo": 1500}
OPTIONS = {
    "pt": ["--block-size", "128"],
    "sft": ["--max-length", "256"],
    "rm": ["--max-length", "256"],
    "dpo": ["--max-length", "256"],
    "ppo": [],
}


def grow_corpus(stage: str, folder: Path) -> list[Path]:
    """The stage's example files, each repeated, a malformed JSON line every 997 lines."""
    folder.mkdir(parents=True)
    files = []
    for name in SOURCES[stage]:
        source = EX / name
        lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
        grown = folder / source.name
        with grown.open("w", encoding="utf-8") as out:
            for i, line in enumerate(lines * REPEATS[stage]):
                out.write(line)
                if source.suffix == ".jsonl" and i % 997 == 996:
                    out.write('{"broken": \n')
        files.append(grown)
    return files


def prep_command(stage: str, inputs: list[Path], out: Path) -> list[str]:
    return [
        sys.executable, "-m", "ferrotune", "prep", stage,
        "--tokenizer", str(EX / "tokenizer"), "--input", *map(str, inputs), "--out", str(out),
        "--skip-bad", "--shard-size", "256KB", "--overwrite", "--quiet", *OPTIONS[stage],
    ]  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of an output folder, the manifest without its clock fields."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "manifest.json":
            manifest = json.loads(data)
            for key in CLOCK_FIELDS:
                manifest.pop(key)
            data = json.dumps(manifest, sort_keys=True).encode()
        files[str(path.relative_to(folder))] = data
    return files


def leftovers(out: Path) -> list[str]:
    """What a run left beside ``out`` other than ``out`` itself (nothing when a kill came before
    the run made ``out``'s parent folder)."""
    if not out.parent.is_dir():
        return []
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


@pytest.mark.parametrize("stage", list(SOURCES))
def test_prep_killed_at_random_moments(stage, tmp_path):
    inputs = grow_corpus(stage, tmp_path / "corpus")
    reference_out = tmp_path / "reference" / "out"
    started = time.perf_counter()
    subprocess.run(prep_command(stage, inputs, reference_out), check=True)
    wall = time.perf_counter() - started
    reference = snapshot(reference_out)
    assert "rejects.jsonl" in reference and sum(".arrow" in name for name in reference) > 2

    out = tmp_path / "killed" / "out"
    command = prep_command(stage, inputs, out)
    rng = random.Random(f"{SEED}-{stage}")
    survived = []
    for attempt in range(KILLS):
        if attempt % 2 == 0 and out.exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)  # from nothing, then over a run
        moment = rng.uniform(0.0, wall * 1.1)
        run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(moment)
        run.send_signal(signal.SIGKILL)
        run.wait()
        where = f"{stage}: killed at {moment:.3f} s of {wall:.3f} s (attempt {attempt})"
        if out.exists():  # whatever is there must be the whole output
            assert snapshot(out) == reference, where
        stray = [name for name in leftovers(out) if ".ferrotune-partial-" not in name]
        assert not stray, (where, stray)
        survived.append(run.returncode == -signal.SIGKILL)
        rerun = subprocess.run(command, capture_output=True, text=True)
        assert rerun.returncode == 0, (where, rerun.stderr)
        assert snapshot(out) == reference, where
        assert leftovers(out) == [], where  # the rerun removed the killed run's staging
    assert sum(survived) >= KILLS // 2, f"most runs must really be killed, not finish: {survived}"


# ---------------------------------------------------------------------------------------------
# The pipeline: killed anywhere (a prep, a training step, a checkpoint or model being written,
# the state, the report), then rerun, it ends with the unbroken run's models and report.

PIPELINE_KILLS = int(os.environ.get("FERROTUNE_PIPELINE_KILLS", "4"))
# What a report may hold that depends on the clock: run times and rates.
CLOCK_KEY = re.compile(r"runtime|per_second")


def kill_pipeline_config(folder: Path) -> Path:
    """Every stage, three steps each, a checkpoint after every step."""
    path = folder / "pipeline.yaml"
    path.write_text(f"""
tokenizer: {EX / "tokenizer"}
model: {EX / "model" / "config.json"}
train: {{use_cpu: true, seed: 0, max_steps: 3, per_device_train_batch_size: 2, logging_steps: 1,
        save_strategy: steps, save_steps: 1, report_to: none, disable_tqdm: true}}
pt: {{prep: {{input: {EX / "pt"}, eval_input: {EX / "pt" / "articles.jsonl"}, block_size: 64}},
     train: {{eval_steps: 2}}}}
sft: {{prep: {{input: {EX / "sft"}, max_length: 256}}}}
rm: {{prep: {{input: {EX / "pairs"}, max_length: 256}}}}
dpo: {{prep: {{input: {EX / "pairs"}, max_length: 256}}}}
ppo:
  prep: {{input: {EX / "ppo"}, max_prompt_length: 96}}
  train: {{max_steps: 2, response_length: 4}}
""")
    return path


def pipeline_result(run: Path) -> dict[str, object]:
    """What a finished pipeline gave: each stage's weights, and its report without the clock."""
    from safetensors.torch import load_file

    result: dict[str, object] = {}
    for weights in sorted((run / "models").glob("*/**/*.safetensors")):
        if "checkpoint-" not in str(weights):
            result[str(weights.relative_to(run))] = load_file(weights)
    for page in sorted((run / "report").glob("*.json")):
        report = json.loads(page.read_text())
        report["history"] = [
            {k: v for k, v in row.items() if not CLOCK_KEY.search(k)} for row in report["history"]
        ]
        report["final"] = {k: v for k, v in report["final"].items() if not CLOCK_KEY.search(k)}
        for key in ("data_manifest", "eval_data_manifest"):
            for field in CLOCK_FIELDS:
                (report[key] or {}).pop(field, None)
        report.pop("model")  # the run's own folder
        result[str(page.relative_to(run))] = report
    return result


def assert_same_result(got: dict[str, object], want: dict[str, object], where: str) -> None:
    import torch

    assert got.keys() == want.keys(), where
    for name, value in want.items():
        if isinstance(value, dict) and all(isinstance(t, torch.Tensor) for t in value.values()):
            assert value.keys() == got[name].keys(), (where, name)
            for key, tensor in value.items():
                torch.testing.assert_close(got[name][key], tensor, rtol=1e-5, atol=1e-7,
                                           msg=f"{where}: {name} {key}")  # fmt: skip
        else:
            assert same(got[name], value), (where, name, got[name], value)


def same(got: object, want: object) -> bool:
    """Equal, floats to 1e-5 relative (a resumed run's sums may round differently)."""
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(same(got[k], want[k]) for k in want)
        )
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(same, got, want))
    if isinstance(want, float) and isinstance(got, float):
        return math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-9)
    return got == want


def test_pipeline_killed_at_random_moments(tmp_path):
    config = kill_pipeline_config(tmp_path)
    command = [sys.executable, "-m", "ferrotune", "pipeline", str(config), "--out"]
    started = time.perf_counter()
    subprocess.run([*command, str(tmp_path / "unbroken")], check=True, capture_output=True)
    wall = time.perf_counter() - started
    want = pipeline_result(tmp_path / "unbroken")

    run = tmp_path / "killed"
    rng = random.Random(f"{SEED}-pipeline")
    kills, finished, reached = 0, 0, []
    while kills < PIPELINE_KILLS:
        moment = rng.uniform(0.0, wall)
        log = tmp_path / f"run-{kills}-{finished}.log"
        with log.open("w") as stdout:
            proc = subprocess.Popen([*command, str(run)], stdout=stdout, stderr=subprocess.PIPE,
                                    text=True)  # fmt: skip
            try:
                _, err = proc.communicate(timeout=moment)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                said = [line for line in log.read_text().splitlines() if "ferrotune:" in line]
                reached.append(f"{moment:.1f} s: {said[-1] if said else 'starting'}")
                continue
        assert proc.returncode == 0, err[-3000:]  # it finished first: the whole result
        assert_same_result(pipeline_result(run), want, f"after {kills} kills")
        finished += 1
        subprocess.run(["rm", "-rf", str(run)], check=True)  # and again from nothing
    print(f"pipeline: {kills} kills, {finished} runs finished between them; killed after:")
    print("\n".join(reached))
    rerun = subprocess.run([*command, str(run)], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_result(pipeline_result(run), want, f"after {kills} kills")


def test_half_written_checkpoints_are_not_resumed_from(tmp_path):
    """Each trainer's last-written file marks a whole checkpoint; a kill before it, or in the
    middle of it, leaves a folder a rerun must pass over."""
    from ferrotune.train.checkpoints import PPO_STATE, TRAINER_STATE, complete_checkpoints

    def checkpoint(step: int, *files: tuple[str, str]) -> Path:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name, text in (("model.safetensors", "weights"), *files):
            (folder / name).write_text(text)
        return folder

    whole = checkpoint(1, (TRAINER_STATE, '{"global_step": 1}'))
    checkpoint(2, (TRAINER_STATE, '{"global_st'))  # killed while writing its state
    checkpoint(3)  # killed before the state
    ppo = checkpoint(4, ("rng-0.pt", "rng"), (PPO_STATE, "state"))
    checkpoint(5, ("rng-0.pt", "rng"))  # PPO, killed before ppo_state.pt replaced its .tmp
    (tmp_path / "checkpoint-x").mkdir()
    assert complete_checkpoints(tmp_path) == [(1, whole), (4, ppo)]
    assert complete_checkpoints(tmp_path / "absent") == []
