"""``ferrotune pipeline CONFIG.yaml``: PT → SFT → RM → DPO → PPO in one command.

Each configured stage's data is prepped by the Rust engine (or reused when its manifest still
matches the inputs, the tokenizer and the options), the stage is trained, saved, and handed to the
next: PT's model starts SFT; SFT's model starts RM and DPO and is PPO's actor and reference; RM's
model is PPO's reward model and critic. A stage that was not configured or not chosen is bridged
by the nearest earlier model that exists (else the config's ``model``).

A stage's ``prep: {eval_input: ...}`` is prepped with the same options into ``data/STAGE-eval``
and evaluated every ``eval_steps``.

Everything lives under ``output_dir``: ``data/STAGE`` (shards), ``models/STAGE`` (HF folders),
``report/`` (metrics, curves, ``index.html``) and ``pipeline.json``, the state that makes a rerun
skip what is done and up to date (same settings, same data, same upstream model), resume a stage
that stopped from its last checkpoint, and redo a stage whose inputs changed along with every
stage after it.

Paths in the YAML (``tokenizer``, ``model``, each ``prep.input``) are relative to the YAML's
folder, so a pipeline file travels with its data; ``output_dir`` is relative to the working
directory. Under torchrun every stage trains with DDP; the main process alone preps, writes the
state and the report, and the others follow its decisions.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import hashlib
import inspect as pyinspect
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ferrotune import data as prep_functions
from ferrotune.data.prep import CHAT_OPTIONS
from ferrotune.errors import ConfigError, did_you_mean
from ferrotune.pipeline_files import STATE_FILE, Pipeline, State
from ferrotune.stages import STAGES

__all__ = [
    "STAGES",
    "STATE_FILE",
    "Pipeline",
    "State",
    "add_parser",
    "load_pipeline",
    "run_pipeline",
]

# The model each stage starts from: the first of these stages that has a trained model.
STARTS_FROM = {"pt": (), "sft": ("pt",), "rm": ("sft", "pt"), "dpo": ("sft", "pt"),
               "ppo": ("sft", "pt")}  # fmt: skip
TOP_KEYS = ("tokenizer", "model", "output_dir", "train", *STAGES)
STAGE_KEYS = ("prep", "train")
# Training settings the pipeline itself gives each stage, and where they come from.
HANDED_ON = {
    "model": "the previous stage's model; the top-level `model` starts the first stage",
    "data": "the stage's `prep:` output",
    "eval_data": "the stage's `prep: {eval_input: ...}` output",
    "output_dir": "OUTPUT/models/STAGE; set the top-level `output_dir` or --out",
    "resume_from_checkpoint": "a stopped stage resumes from its last checkpoint by itself",
}
PREP_INPUTS = ("input", "eval_input")  # the other `prep:` keys are the prep function's options
INPUT_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


def load_pipeline(path: str | os.PathLike[str], output: str | None = None) -> Pipeline:
    """Reads and checks a pipeline YAML; ``output`` overrides its ``output_dir``."""
    import yaml

    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
        values = yaml.safe_load(text) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"{source}: no such pipeline file") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of settings")
    _check_keys(values, TOP_KEYS, str(source))
    root = source.resolve().parent
    for key in ("tokenizer", "model"):
        if not values.get(key):
            raise ConfigError(f"{source}: {key!r} is required", option=key)
    stages: dict[str, dict[str, dict[str, Any]]] = {}
    for stage in STAGES:
        spec = values.get(stage)
        if spec is None:
            continue
        where = f"{source}: {stage}"
        if isinstance(spec, dict):
            _check_keys(spec, STAGE_KEYS, where)
        if not isinstance(spec, dict) or not isinstance(spec.get("prep"), dict):
            raise ConfigError(f"{where}: expected `prep:` (with `input:`) and `train:` mappings")
        prep = dict(spec["prep"])
        if "input" not in prep:
            raise ConfigError(f"{where}.prep: `input` (files, folders or globs) is required")
        for key in ("input", "eval_input"):
            if key in prep:
                items = prep[key] if isinstance(prep[key], list) else [prep[key]]
                prep[key] = [str(root / str(item)) for item in items]
        _check_prep_options(stage, prep, f"{where}.prep")
        train = spec.get("train") or {}
        if not isinstance(train, dict):
            raise ConfigError(f"{where}.train: expected a mapping of training settings")
        stages[stage] = {"prep": prep, "train": dict(train)}
    if not stages:
        raise ConfigError(f"{source}: no stage configured (expected any of {', '.join(STAGES)})")
    common = dict(values.get("train") or {})
    for stage, spec in stages.items():
        _check_train_settings(stage, {**common, **spec["train"]}, f"{source}: {stage}")
    model = str(values["model"])
    return Pipeline(
        source=source,
        tokenizer=root / str(values["tokenizer"]),
        model=str(root / model),
        output=Path(output or values.get("output_dir") or "runs/pipeline"),
        train=common,
        stages=stages,
        text=text,
    )


def _check_keys(values: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in values:
        if key not in allowed:
            hint = did_you_mean(key, allowed)
            raise ConfigError(f"{where}: unknown key {key!r}{hint}", option=str(key))


def _check_prep_options(stage: str, prep: dict[str, Any], where: str) -> None:
    """Options ``prep_STAGE`` does not take are refused here, before any stage runs."""
    names = set(pyinspect.signature(getattr(prep_functions, f"prep_{stage}")).parameters)
    if stage != "pt":
        names |= set(CHAT_OPTIONS)
    names -= {"tokenizer", "inputs", "out", "options", "overwrite", "quiet"}
    given = ("input", "eval_input") if stage != "ppo" else ("input",)  # PPO does not evaluate
    _check_keys({k: v for k, v in prep.items() if k not in given}, (*given, *sorted(names)), where)


def _check_train_settings(stage: str, settings: dict[str, Any], where: str) -> None:
    """Unknown training settings are refused before the first stage runs, not after an hour."""
    from dataclasses import fields

    from ferrotune.train.config import check_gpu_options
    from ferrotune.train.run import CONFIGS

    names = tuple(f.name for f in fields(CONFIGS[stage]) if f.init)
    _check_keys(settings, names, f"{where} training settings")
    for key, why in HANDED_ON.items():
        if key in settings:
            raise ConfigError(f"{where} training settings: {key!r} is set by the pipeline ({why})")
    check_gpu_options(settings)


def run_pipeline(pipeline: Pipeline, stages: list[str] | None = None) -> Path:
    """Runs the chosen stages (default: every configured one) in order; returns the report."""
    from ferrotune.report import write_report

    chosen = [s for s in STAGES if s in pipeline.stages and (not stages or s in stages)]
    unknown = [s for s in stages or [] if s not in pipeline.stages]
    if unknown:
        raise ConfigError(
            f"--stages {','.join(unknown)}: not configured in {pipeline.source} "
            f"(configured: {', '.join(pipeline.stages)})",
            option="stages",
        )
    import torch
    from accelerate import PartialState

    # One process, or each of torchrun's. Created before any stage's TrainingArguments, which
    # share it: on the CPU, gloo must be asked for here, as `use_cpu` asks for it there.
    # The others wait for the main process's prep in a barrier, within ddp_timeout as in training.
    cpu = str(pipeline.train.get("use_cpu", "")).lower() == "true" or not torch.cuda.is_available()
    timeout = datetime.timedelta(seconds=int(pipeline.train.get("ddp_timeout", 1800)))
    procs = PartialState(cpu=cpu, timeout=timeout)
    main = procs.is_main_process
    state = State(pipeline.output, writer=main)
    report = pipeline.output / "report"
    for stage in chosen:
        started = time.perf_counter()
        prep = pipeline.stages[stage]["prep"]
        parts = [("data", stage, "input")]
        if "eval_input" in prep:
            parts.append(("eval_data", f"{stage}-eval", "eval_input"))
        folders = {}
        for field_name, folder, inputs in parts:
            out = pipeline.output / "data" / folder
            folders[field_name] = (
                _prepare(pipeline, state, stage, prep[inputs], out, field_name) if main else out
            )
        procs.wait_for_everyone()
        state.reload()  # the others learn what the main process prepped
        model = _train(pipeline, state, stage, folders, procs)
        if main:
            print(f"ferrotune: {stage} done in {time.perf_counter() - started:.1f} s -> {model}")
            write_report(pipeline, state)
    if main:
        report = write_report(pipeline, state)
        print(f"ferrotune: report at {report / 'index.html'}")
    procs.wait_for_everyone()
    return report


def _prepare(
    pipeline: Pipeline, state: State, stage: str, inputs: list[str], out: Path, field_name: str
) -> Path:
    """Shards of ``inputs`` in ``out`` (the stage's training or evaluation data, recorded as
    ``field_name``): reused when the manifest still matches, else prepped afresh."""
    from ferrotune.data.manifest import read_manifest, same_tokenizer

    prep = {k: v for k, v in pipeline.stages[stage]["prep"].items() if k not in PREP_INPUTS}
    files = _input_files(inputs)
    tokenizer_file = _tokenizer_file(pipeline.tokenizer)
    key = _digest({"options": prep, "inputs": inputs,
                   "tokenizer_config": _fingerprint(tokenizer_file.parent)})  # fmt: skip
    record = state.get(stage)
    what = "data" if field_name == "data" else "eval data"
    if (out / "manifest.json").is_file() and record.get(field_name) == key:
        manifest = read_manifest(out)
        listed = {str(Path(i["path"]).resolve()): i["sha256"] for i in manifest["inputs"]}
        now = {path: _sha256(Path(path)) for path in files}
        if listed == now and same_tokenizer(manifest["tokenizer"], tokenizer_file):
            print(f"ferrotune: {stage} {what} reused: {out} (manifest matches the inputs)")
            return out
    prep_fn = getattr(prep_functions, f"prep_{stage}")
    manifest = prep_fn(pipeline.tokenizer, inputs, out, overwrite=True, quiet=False, **prep)
    record.pop("status", None)  # new data: the stage's model is out of date
    record[field_name] = key
    state.save()
    counts = manifest["counts"]
    print(
        f"ferrotune: {stage} {what} prepped: {manifest['rows']:,} rows from "
        f"{counts['read']:,} records, {manifest['tokens']['written']:,} tokens -> {out}"
    )
    return out


def _train(pipeline: Pipeline, state: State, stage: str, data: dict[str, Path], procs) -> Path:
    """Trains the stage from its upstream model unless an up-to-date model is already there.

    Every process takes the same decisions from the same state; the main process alone clears
    a stale folder and writes the state, and the others wait for it before training."""
    from ferrotune.train.config import config_from_values
    from ferrotune.train.run import CONFIGS, train

    out = pipeline.output / "models" / stage
    start, start_key = _start_model(pipeline, state, stage)
    settings: dict[str, Any] = {**pipeline.train, **pipeline.stages[stage]["train"]}
    settings.update(model=start, output_dir=str(out), **{k: str(v) for k, v in data.items()})
    if "eval_data" in data:
        settings.setdefault("eval_strategy", "steps")  # every logging_steps, as Trainer does
    upstream = {"start": start_key}
    if stage == "ppo" and not settings.get("reward_fn") and not settings.get("reward_model"):
        if state.get("rm").get("status") != "done":
            raise ConfigError(
                "ppo needs a reward model: configure and run the rm stage first, or set "
                "ppo.train.reward_fn (module:function) or ppo.train.reward_model",
                option="ppo",
            )
        settings["reward_model"] = state.get("rm")["model"]
        upstream["reward"] = state.get("rm")["key"]
    record = state.get(stage)
    key = _digest({"settings": settings, "data": [record.get(k) for k in sorted(data)], **upstream})
    say = print if procs.is_main_process else _quiet
    if record.get("status") == "done" and record.get("key") == key and out.is_dir():
        say(f"ferrotune: {stage} model reused: {out} (same settings, data and start)")
        return out
    checkpoint = _last_checkpoint(out) if record.get("key") == key else None
    if checkpoint is not None:
        settings["resume_from_checkpoint"] = str(checkpoint)
        say(f"ferrotune: {stage} resumes from {checkpoint}")
    elif out.exists() and procs.is_main_process:
        shutil.rmtree(out)  # a stale model from other settings
    for later in STAGES[STAGES.index(stage) + 1 :]:
        state.get(later).pop("status", None)  # their start changes: never reused as they are
    if checkpoint is None:
        say(f"ferrotune: {stage} trains from {start}")
    record.update(status="running", key=key, model=str(out))
    state.save()
    procs.wait_for_everyone()
    config = config_from_values(CONFIGS[stage], settings)
    saved = train(stage, config)
    record["status"] = "done"
    state.save()
    procs.wait_for_everyone()
    return saved


def _quiet(*_: Any) -> None:
    """``print`` for the processes other than the main one."""


def _start_model(pipeline: Pipeline, state: State, stage: str) -> tuple[str, str]:
    """The model a stage starts from and its fingerprint: the nearest earlier stage's trained
    model, else the pipeline's ``model``."""
    for earlier in STARTS_FROM[stage]:
        record = state.get(earlier)
        if record.get("status") == "done":
            return record["model"], record["key"]
    return pipeline.model, _digest(_fingerprint(Path(pipeline.model)))


def _last_checkpoint(folder: Path) -> Path | None:
    """The newest whole checkpoint (one a killed run left half-written does not count)."""
    from ferrotune.train.checkpoints import complete_checkpoints

    found = complete_checkpoints(folder)
    return found[-1][1] if found else None


def _input_files(inputs: list[str]) -> list[str]:
    """The files an input list names, as the engine expands it (folders recursively)."""
    files: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = (p for p in path.rglob("*") if p.suffix in INPUT_SUFFIXES and p.is_file())
            files.extend(str(p.resolve()) for p in sorted(found))
        elif any(c in item for c in "*?["):
            files.extend(str(Path(p).resolve()) for p in sorted(glob.glob(item, recursive=True)))
        else:
            files.append(str(path.resolve()))
    return files


def _tokenizer_file(tokenizer: Path) -> Path:
    file = tokenizer / "tokenizer.json" if tokenizer.is_dir() else tokenizer
    if not file.is_file():
        raise ConfigError(f"tokenizer {tokenizer}: no tokenizer.json there", option="tokenizer")
    return file


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fingerprint(path: Path) -> Any:
    """What identifies a model or tokenizer input cheaply: a file's hash, a folder's files' sizes
    and modification times."""
    if path.is_file():
        return _sha256(path)
    if path.is_dir():
        return sorted(
            (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in path.rglob("*")
            if p.is_file()
        )
    raise ConfigError(f"{path}: no such model file or folder", option="model")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def add_parser(commands: Any) -> None:
    """Adds ``pipeline`` to the top-level ``ferrotune`` subparsers."""
    parser = commands.add_parser(
        "pipeline",
        help="run PT -> SFT -> RM -> DPO -> PPO from one YAML file",
        description=(
            "Prep, train and hand on every configured stage in order, then write a report "
            "(OUTPUT/report/index.html). A rerun reuses data and models that are up to date "
            "and resumes where the last run stopped."
        ),
    )
    parser.add_argument("config", metavar="CONFIG.yaml", help="the pipeline file")
    parser.add_argument("--stages", help="comma-separated subset, e.g. sft,dpo (default: all)")
    parser.add_argument("--out", help="output folder (default: the file's output_dir)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.config, args.out)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    for stage in stages or []:
        if stage not in STAGES:
            hint = did_you_mean(stage, STAGES)
            raise ConfigError(f"--stages: unknown stage {stage!r}{hint}", option="stages")
    run_pipeline(pipeline, stages)
    return 0
