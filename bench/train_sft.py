"""Benchmark of SFT training: ``ferrotune train sft`` against TRL's ``SFTTrainer``, on CPU.

Both train the same tiny Qwen2 (4 layers, hidden 256, the real 151,936-token Qwen vocabulary,
fp32, tied embeddings), from the same weights (initialised once from ``--seed`` and saved to
``bench/out/train-tiny-qwen2-s<seed>/``), on the same MedicalGPT ShareGPT conversations, with the
same batch size, steps, learning rate, schedule and optimizer (GA 1, no gradient checkpointing, no
evaluation, no checkpoints), the loss on the assistant answers only:

``ferrotune``
    ``prep_sft`` (Rust: render, tokenize, mask, Arrow shards), then ``train("sft", config)``:
    transformers' ``Trainer`` whose loss is ``linear_cross_entropy`` on the final hidden states.
``trl``
    ``SFTTrainer`` on a ``datasets.Dataset`` of ``{"messages": [...]}`` rows with the Qwen tokenizer
    and ``assistant_only_loss=True``. The tokenizer's own Qwen2.5 template has no ``{% generation
    %}`` markers and TRL cannot patch it, so TRL gets its ``chat_templates/qwen3_training.jinja``
    (``chat_template_path``); ferrotune is given the same template, so both render and mask the
    very same tokens.

Only conversations that fit ``--max-length`` (with the template) are kept, so neither side
truncates; ``--records`` of them (by default ``steps x batch``: each is seen once).

Measured: each contender alone in its own subprocess (``--child``); **train s** is the time
inside ``Trainer.train`` (model loading and data preparation excluded; **prep s** beside it is
``prep_sft`` for ferrotune, ``SFTTrainer.__init__`` for TRL, its tokenization), **tokens** the
non-padding tokens of every batch (``attention_mask`` summed in ``Trainer.training_step``, the
same code for both), **tokens/s** = tokens / train s, and **peak RSS** the subprocess's
``VmHWM`` (its whole life: imports, preparation, model and training).

``--sharding one,ddp,fsdp2`` runs each contender also as two processes (``torch.distributed.run``,
gloo on the CPU, half the batch each: the same global batch), under DDP and under FSDP2 with
``examples/sharding/fsdp2.json``. accelerate would fall back to DDP on CPU processes, so TRL's
``SFTTrainer`` gets the same FSDP2 set-up ferrotune's trainers do (``ferrotune.train.sharding``).
There **peak RSS** is the largest process's, **train s** the slowest process's, **tokens** the
sum over processes, and **step s** = train s / steps.

Usage (from the repository root, in the project's virtual environment)::

    python bench/train_sft.py                       # 16 steps x 4 x <=512 tokens, both
    python bench/train_sft.py --steps 8 --max-length 256 --only ferrotune
    python bench/train_sft.py --sharding one,ddp,fsdp2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import psutil

# bench/ is not a package: prep_pt.py, whose helpers this reuses, sits beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from prep_pt import (
    OUT_DIR,
    REPO,
    RESULT_TAG,
    BenchError,
    child_env,
    child_result,
    cpu_model,
    qwen_tokenizer_dir,
    run_measured,
    version,
)

from ferrotune.bench.prep_sft import trl_template

CONTENDERS = ("ferrotune", "trl")
SHARDINGS = ("one", "ddp", "fsdp2")  # one process; two under DDP; two under FSDP2
FSDP2_CONFIG = REPO / "examples" / "sharding" / "fsdp2.json"
SFT_DIR = REPO.parent / "shared" / "data" / "medicalgpt" / "sft"
# Plain ShareGPT conversations (the glaive file's tool calls are left out: TRL would need tools).
SFT_FILES = ("medical_sft_1K_format.jsonl", "sharegpt_zh_1K_format.jsonl")
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
TARGET_SPEEDUP = 1.5
MARGIN = 8  # tokens kept free under max_length: no side may truncate
TINY_QWEN2 = {
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
}


@dataclass
class Result:
    """One contender's run."""

    contender: str
    sharding: str  # one, ddp or fsdp2
    processes: int
    records: int  # rows in the training data
    steps: int  # optimizer steps taken
    batch: int
    max_length: int
    tokens: int  # non-padding tokens of every batch trained on
    label_tokens: int  # tokens the loss is on (labels != -100 / completion_mask)
    prep_s: float  # data preparation (ferrotune prep, TRL trainer init)
    ref_s: float  # reference log-probs (DPO only)
    train_s: float  # inside Trainer.train
    wall_s: float  # the whole subprocess
    peak_rss_mb: float  # VmHWM of the subprocess, 10^6 bytes
    first_loss: float
    last_loss: float

    @property
    def seconds(self) -> float:
        """What the throughput is over: training (and, for DPO, the reference pass)."""
        return self.train_s + self.ref_s

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    @property
    def step_s(self) -> float:
        return self.train_s / self.steps if self.steps else float("nan")

    @property
    def label(self) -> str:
        return self.contender if self.sharding == "one" else f"{self.contender} {self.sharding}"


# --------------------------------------------------------------------------- set-up


def tiny_model(seed: int) -> Path:
    """``bench/out/train-tiny-qwen2-s<seed>/``: the tiny Qwen2, initialised once, then reused."""
    folder = OUT_DIR / f"train-tiny-qwen2-s{seed}"
    stamp = folder / "bench-config.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == TINY_QWEN2:
        return folder
    import torch
    import transformers

    values = dict(TINY_QWEN2)
    config = transformers.AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).float()
    model.save_pretrained(folder)
    stamp.write_text(json.dumps(TINY_QWEN2))
    return folder


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def to_messages(conversation: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """ShareGPT turns → OpenAI messages; None unless plain and ending on an answer."""
    if not conversation or any(turn.get("from") not in ROLES for turn in conversation):
        return None
    messages = [{"role": ROLES[t["from"]], "content": t["value"]} for t in conversation]
    return messages if messages[-1]["role"] == "assistant" else None


def token_length(tokenizer: Any, messages: list[dict[str, str]], template: str | None) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def sft_data(count: int, max_length: int, corpus_dir: Path, template: Path) -> Path:
    """``bench/out/train_sft-data-<count>-<max_length>.jsonl``: ``count`` ShareGPT records taken in
    turn from the SFT files, each fitting ``max_length`` tokens with ``template``."""
    path = OUT_DIR / f"train_sft-data-{count}-{max_length}.jsonl"
    if path.is_file():
        return path
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    text = template.read_text(encoding="utf-8")
    sources = []
    for name in SFT_FILES:
        if not (corpus_dir / name).is_file():
            raise BenchError(f"the MedicalGPT SFT file is not there: {corpus_dir / name}")
        sources.append(iter(read_jsonl(corpus_dir / name)))
    kept: list[dict[str, Any]] = []
    while len(kept) < count and sources:
        for source in list(sources):
            record = next(source, None)
            if record is None:
                sources.remove(source)
                continue
            messages = to_messages(record.get("conversations") or [])
            if messages and token_length(tokenizer, messages, text) <= max_length - MARGIN:
                kept.append({"conversations": record["conversations"]})
            if len(kept) == count:
                break
    if len(kept) < count:
        raise BenchError(f"only {len(kept)} conversations fit {max_length} tokens, not {count}")
    write_jsonl(path, kept)
    return path


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    with partial.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    partial.replace(path)


# --------------------------------------------------------------------------- in the child

STATS: dict[str, Any] = {"tokens": 0, "label_tokens": 0, "steps": 0, "losses": []}
TIMES: dict[str, float] = {"train_s": 0.0, "ref_s": 0.0, "prep_s": 0.0}


def timed(key: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function``, adding its duration to ``TIMES[key]`` (the outermost call only)."""
    depth = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        depth[0] += 1
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                TIMES[key] += time.perf_counter() - start

    return wrapper


def instrument() -> None:
    """Counts every batch's tokens and times ``Trainer.train``: the same code for both sides."""
    import transformers

    step = transformers.Trainer.training_step

    def training_step(self, model, inputs, num_items_in_batch=None):
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        STATS["tokens"] += int(mask.sum()) if mask is not None else ids.numel()
        if "labels" in inputs:
            STATS["label_tokens"] += int((inputs["labels"] != -100).sum())
        elif "completion_mask" in inputs:  # TRL's DPO batches
            STATS["label_tokens"] += int(inputs["completion_mask"].sum())
        loss = step(self, model, inputs, num_items_in_batch)
        STATS["losses"].append(float(loss))
        STATS["steps"] += 1
        return loss

    transformers.Trainer.training_step = training_step
    transformers.Trainer.train = timed("train_s", transformers.Trainer.train)


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def ferrotune_overrides(spec: dict[str, Any]) -> list[str]:
    """The ``key=value`` settings both ferrotune stages train with."""
    return [
        f"max_steps={spec['steps']}",
        f"per_device_train_batch_size={spec['batch']}",
        f"per_device_eval_batch_size={spec['batch']}",
        "gradient_accumulation_steps=1",
        f"learning_rate={spec['lr']}",
        f"seed={spec['seed']}",
        "use_cpu=true",
        "save_strategy=no",
        "eval_strategy=no",
        "logging_steps=1",
        "report_to=none",
        "disable_tqdm=true",
        "gradient_checkpointing=false",
        "dataloader_num_workers=0",
        "loss_plot=false",
        *(["fsdp=true", f"fsdp_config={FSDP2_CONFIG}"] if spec.get("sharding") == "fsdp2" else []),
    ]


def trl_settings(spec: dict[str, Any], tmp: str) -> dict[str, Any]:
    """The same settings for TRL's configs (whose defaults differ: gradient checkpointing on,
    bf16, logging every 10 steps)."""
    return {
        "output_dir": tmp,
        "max_steps": spec["steps"],
        "per_device_train_batch_size": spec["batch"],
        "gradient_accumulation_steps": 1,
        "learning_rate": spec["lr"],
        "seed": spec["seed"],
        "use_cpu": True,
        "bf16": False,
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": 1,
        "report_to": [],
        "disable_tqdm": True,
        "gradient_checkpointing": False,
        "dataloader_num_workers": 0,
        "max_length": spec["max_length"],
        **(
            {"fsdp": True, "fsdp_config": str(FSDP2_CONFIG)}
            if spec.get("sharding") == "fsdp2"
            else {}
        ),
    }


def with_cpu_fsdp(trainer_class: type) -> type:
    """``trainer_class`` set up for FSDP2 as ferrotune's trainers are, on CPU processes too."""
    from ferrotune.train.sharding import set_up_fsdp

    class Sharded(trainer_class):
        def create_accelerator_and_postprocess(self) -> None:
            super().create_accelerator_and_postprocess()
            if set_up_fsdp(self.accelerator, self.args.fsdp_plugin_args):
                self.is_fsdp_enabled = True

    return Sharded


def child_ferrotune(spec: dict[str, Any], tmp: str) -> None:
    from ferrotune.data import prep_sft
    from ferrotune.train import SftConfig, load_config, train

    shards = Path(tmp) / "shards"
    start = time.perf_counter()
    prep_sft(
        spec["qwen"], spec["data"], shards, max_length=spec["max_length"], overlong="drop",
        template=spec["template"], overwrite=True, quiet=True,
    )  # fmt: skip
    TIMES["prep_s"] = time.perf_counter() - start
    config = load_config(
        SftConfig, None, ferrotune_overrides(spec), model=spec["model"], data=str(shards),
        output_dir=str(Path(tmp) / "run"),
    )  # fmt: skip
    train("sft", config)


def child_trl(spec: dict[str, Any], tmp: str) -> None:
    import transformers
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = [{"messages": to_messages(r["conversations"])} for r in read_jsonl(Path(spec["data"]))]
    tokenizer = transformers.AutoTokenizer.from_pretrained(spec["qwen"])
    model = transformers.AutoModelForCausalLM.from_pretrained(spec["model"], dtype="float32")
    config = SFTConfig(
        **trl_settings(spec, tmp), chat_template_path=spec["template"], assistant_only_loss=True
    )
    start = time.perf_counter()
    trainer = with_cpu_fsdp(SFTTrainer)(
        model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    TIMES["prep_s"] = time.perf_counter() - start
    trainer.train()


CHILDREN: dict[str, Callable[[dict[str, Any], str], None]] = {
    "ferrotune": child_ferrotune,
    "trl": child_trl,
}


def run_as_child(spec_path: str, children: dict[str, Callable[[dict[str, Any], str], None]]):
    """This script with ``--child SPEC``: one contender, then its result line on stdout."""
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    instrument()
    with tempfile.TemporaryDirectory(dir=spec["tmp"], prefix=f"train-{spec['contender']}-") as t:
        children[spec["contender"]](spec, t)
    losses = STATS["losses"] or [float("nan")]
    result = {
        **TIMES,
        **{k: STATS[k] for k in ("tokens", "label_tokens", "steps")},
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "peak": peak_rss(),
    }
    print(RESULT_TAG + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent


def run_contender(
    script: Path, name: str, spec: dict[str, Any], records: int, sharding: str = "one"
) -> Result:
    """One contender in its own process, or in two (``sharding`` ddp or fsdp2) that each take
    half the batch and half the threads."""
    processes = 1 if sharding == "one" else 2
    spec = {**spec, "contender": name, "sharding": sharding, "batch": spec["batch"] // processes,
            "threads": max(1, spec["threads"] // processes)}  # fmt: skip
    spec_path = Path(spec["tmp"]) / f"{script.stem}-{name}-{sharding}-spec.json"
    spec_path.write_text(json.dumps(spec))
    env = child_env(spec["threads"])
    env.update(OMP_NUM_THREADS=str(spec["threads"]), TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(script), "--child", str(spec_path)]
    if processes > 1:
        cmd[1:1] = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                    "--master_port", str(free_port())]  # fmt: skip
    wall, _, stdout = run_measured(cmd, env)
    outs = [json.loads(line.removeprefix(RESULT_TAG))
            for line in stdout.splitlines() if line.startswith(RESULT_TAG)]  # fmt: skip
    if len(outs) != processes:
        outs = [child_result(stdout)]  # raises, showing what the child printed
    slowest = max(outs, key=lambda out: out["train_s"])
    return Result(
        contender=name, sharding=sharding, processes=processes, records=records,
        steps=slowest["steps"], batch=spec["batch"] * processes, max_length=spec["max_length"],
        tokens=sum(o["tokens"] for o in outs), label_tokens=sum(o["label_tokens"] for o in outs),
        prep_s=max(o["prep_s"] for o in outs), ref_s=max(o["ref_s"] for o in outs),
        train_s=slowest["train_s"], wall_s=wall, peak_rss_mb=max(o["peak"] for o in outs) / 1e6,
        first_loss=sum(o["first_loss"] for o in outs) / processes,
        last_loss=sum(o["last_loss"] for o in outs) / processes,
    )  # fmt: skip


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def print_environment(threads: int) -> None:
    ram_gb = psutil.virtual_memory().total / 1e9
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {ram_gb:.1f} GB RAM, {threads} threads")
    print(f"load average before: {load}")
    packages = ("ferrotune", "torch", "transformers", "trl", "datasets")
    versions = ", ".join(f"{p} {version(p)}" for p in packages)
    print(f"versions: {versions}, python {platform.python_version()}")


def print_table(results: Sequence[Result], with_ref: bool) -> None:
    head = (
        f"{'contender':<16} {'steps':>5} {'tokens':>8} {'loss tok':>8} {'prep s':>7} "
        + (f"{'ref s':>6} " if with_ref else "")
        + f"{'train s':>8} {'step s':>7} {'wall s':>7} {'tokens/s':>9} {'peak RSS MB':>11} "
        + f"{'loss first→last':>17}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r.label:<16} {r.steps:>5} {r.tokens:>8} {r.label_tokens:>8} {r.prep_s:>7.2f} "
            + (f"{r.ref_s:>6.2f} " if with_ref else "")
            + f"{r.train_s:>8.2f} {r.step_s:>7.3f} {r.wall_s:>7.1f} {r.tokens_per_s:>9.0f} "
            + f"{r.peak_rss_mb:>11.0f} "
            f"{r.first_loss:>8.4f}→{r.last_loss:<8.4f}"
        )


def verdict(results: Sequence[Result], target: float) -> tuple[bool, list[str]]:
    """Ratios ferrotune / TRL and PASS/FAIL against ``target`` (speed) and TRL's peak RSS, for
    each sharding both ran under."""
    ok, lines = True, []
    for sharding in SHARDINGS:
        by = {r.contender: r for r in results if r.sharding == sharding}
        if {"ferrotune", "trl"} <= by.keys():
            passed, said = compare(by["ferrotune"], by["trl"], target)
            ok = ok and passed
            lines += [f"{sharding:<5} {line}" for line in said]
    return ok, lines


def compare(ours: Result, theirs: Result, target: float) -> tuple[bool, list[str]]:
    speed = ours.tokens_per_s / theirs.tokens_per_s
    memory = ours.peak_rss_mb / theirs.peak_rss_mb
    speed_ok, memory_ok = speed >= target, memory <= 1.0
    lines = [
        f"throughput ferrotune / trl: {speed:.2f}x (target >= {target:g}x): "
        + ("PASS" if speed_ok else "FAIL"),
        f"peak RSS   ferrotune / trl: {memory:.2f}x (target <= 1x): "
        + ("PASS" if memory_ok else "FAIL"),
    ]
    if ours.tokens != theirs.tokens or ours.label_tokens != theirs.label_tokens:
        lines.append(
            f"note: the token counts differ (tokens {ours.tokens} vs {theirs.tokens}, loss "
            f"tokens {ours.label_tokens} vs {theirs.label_tokens}); tokens/s uses each side's own"
        )
    return speed_ok and memory_ok, lines


def write_csv(results: Sequence[Result], path: Path, stage: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in fields(Result)]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["stage", *names, "tokens_per_s", "cpu", "threads"])
        for r in results:
            row = asdict(r)
            writer.writerow([stage, *(row[n] for n in names), round(r.tokens_per_s, 1),
                             cpu_model(), os.cpu_count()])  # fmt: skip


def plot(results: Sequence[Result], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.label for r in results]
    colors = ["tab:orange" if r.contender == "ferrotune" else "tab:blue" for r in results]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(9, 3.5))
    speed.bar(names, [r.tokens_per_s for r in results], color=colors)
    speed.set_ylabel("trained tokens / s")
    memory.bar(names, [r.peak_rss_mb for r in results], color=colors)
    memory.set_ylabel("peak RSS (MB)")
    for ax, values in ((speed, [r.tokens_per_s for r in results]),
                       (memory, [r.peak_rss_mb for r in results])):  # fmt: skip
        for i, value in enumerate(values):
            ax.annotate(f"{value:.0f}", (i, value), ha="center", va="bottom")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None, doc: str, defaults: dict[str, Any]):
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=defaults["steps"], help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=4, help="per-device batch (GA 1)")
    parser.add_argument("--max-length", type=int, default=defaults["max_length"])
    parser.add_argument("--records", type=int, default=0, help="data rows (default steps x batch)")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    parser.add_argument("--seed", type=int, default=0, help="model initialisation and Trainer")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--only", default=",".join(CONTENDERS), help="comma-separated subset")
    parser.add_argument(
        "--sharding", default="one", help=f"comma-separated, among {', '.join(SHARDINGS)}"
    )
    parser.add_argument("--corpus-dir", type=Path, default=defaults["corpus_dir"])
    parser.add_argument("--csv", type=Path, default=OUT_DIR / f"{defaults['name']}.csv")
    parser.add_argument("--plot", type=Path, default=OUT_DIR / f"{defaults['name']}.png")
    parser.add_argument("--tmp-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    if not only or any(name not in CONTENDERS for name in only):
        parser.error(f"--only: expected names among {', '.join(CONTENDERS)}")
    args.only = only
    args.sharding = [name.strip() for name in args.sharding.split(",") if name.strip()]
    if not args.sharding or any(name not in SHARDINGS for name in args.sharding):
        parser.error(f"--sharding: expected names among {', '.join(SHARDINGS)}")
    args.records = args.records or args.steps * args.batch_size
    return args


def bench(
    args: argparse.Namespace,
    script: Path,
    spec: dict[str, Any],
    target: float,
    title: str,
    with_ref: bool,
) -> int:
    print_environment(args.threads)
    print(
        f"model: tiny Qwen2 {TINY_QWEN2['num_hidden_layers']} layers, hidden "
        f"{TINY_QWEN2['hidden_size']}, vocab {TINY_QWEN2['vocab_size']}, fp32; {args.records} "
        f"records, {args.steps} steps x batch {args.batch_size}, max length {args.max_length}, "
        f"lr {args.lr:g}"
    )
    results = []
    for sharding in args.sharding:
        for name in args.only:
            print(f"running {name} ({sharding}) ...", flush=True)
            results.append(run_contender(script, name, spec, args.records, sharding))
    print()
    print_table(results, with_ref)
    ok, lines = verdict(results, target)
    for line in lines:
        print(line)
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    stage = script.stem.removeprefix("train_")
    write_csv(results, args.csv, stage)
    print(f"wrote {args.csv}")
    if args.plot:
        plot(results, args.plot, title)
        print(f"wrote {args.plot}")
    return 0 if ok else 3


def main(argv: Sequence[str] | None = None) -> int:
    defaults = {"steps": 16, "max_length": 512, "corpus_dir": SFT_DIR, "name": "train_sft"}
    args = parse_args(argv, __doc__, defaults)
    if args.child:
        run_as_child(args.child, CHILDREN)
        return 0
    try:
        template = trl_template()
        spec = {
            "qwen": str(qwen_tokenizer_dir()),
            "template": str(template),
            "model": str(tiny_model(args.seed)),
            "data": str(sft_data(args.records, args.max_length, args.corpus_dir, template)),
            "steps": args.steps, "batch": args.batch_size, "max_length": args.max_length,
            "lr": args.lr, "seed": args.seed, "threads": args.threads, "tmp": str(args.tmp_dir),
        }  # fmt: skip
        title = f"SFT, tiny Qwen2, {args.steps} steps x {args.batch_size} x <={args.max_length}"
        return bench(args, Path(__file__).resolve(), spec, TARGET_SPEEDUP, title, False)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
