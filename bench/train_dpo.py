"""Benchmark of DPO training: ``ferrotune train dpo`` against TRL's ``DPOTrainer``, on CPU.

The set-up and measurements are ``train_sft.py``'s (its helpers are imported): the same tiny
Qwen2 from the same saved weights, each contender alone in its own subprocess, the same batch,
steps, learning rate and schedule (GA 1, no gradient checkpointing, no evaluation, no
checkpoints), ``beta`` 0.1, the sigmoid loss, the reference being the starting model:

``ferrotune``
    ``prep_dpo`` (the tokenizer's own Qwen template), then ``train("dpo", config)``: the
    reference log-probs precomputed in one pass (its default), chosen and rejected in one forward,
    per-sequence log-probs from the hidden states through ``linear_token_logprobs``.
``trl``
    ``DPOTrainer`` with ``precompute_ref_log_probs=True`` on a ``datasets.Dataset`` of
    conversational ``prompt`` / ``chosen`` / ``rejected`` rows, the Qwen tokenizer (its own
    template too).

The pairs are the MedicalGPT ``reward/dpo_zh_500.jsonl`` records whose chosen and rejected
conversations both fit ``--max-length``, so neither side truncates; ``--records`` of them (by
default ``steps x batch``: each is trained on once, and the reference pass covers exactly them).

**tokens** are the non-padding tokens of chosen + rejected of every batch, counted the same way
on both sides (``attention_mask`` summed in ``Trainer.training_step``). **ref s** is the reference
pass (ferrotune's ``reference_logps``, TRL's ``_precompute_ref_logps``), **train s** the time in
``Trainer.train``; tokens/s = tokens / (ref s + train s), since the reference pass is part of the
cost of DPO. **prep s** is ``prep_dpo`` for ferrotune, ``DPOTrainer.__init__`` less its reference
pass for TRL (tokenization). Peak RSS: the subprocess's ``VmHWM``.

Usage (from the repository root, in the project's virtual environment)::

    python bench/train_dpo.py                       # 8 steps x 4 pairs x <=384 tokens, both
    python bench/train_dpo.py --steps 4 --max-length 256 --only trl
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

# bench/ is not a package: train_sft.py, whose helpers this reuses, sits beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from prep_pt import REPO, BenchError, qwen_tokenizer_dir
from train_sft import (
    OUT_DIR,
    ROLES,
    TIMES,
    ferrotune_overrides,
    parse_args,
    read_jsonl,
    run_as_child,
    timed,
    tiny_model,
    token_length,
    trl_settings,
    write_jsonl,
)
from train_sft import bench as run_bench

PAIRS_FILE = REPO.parent / "shared" / "data" / "medicalgpt" / "reward" / "dpo_zh_500.jsonl"
TARGET_SPEEDUP = 2.0
MARGIN = 8  # tokens kept free under max_length: no side may truncate


def to_pair(record: dict[str, Any]) -> dict[str, list[dict[str, str]]] | None:
    """A MedicalGPT preference record → TRL's conversational prompt/chosen/rejected."""
    turns = record.get("conversations") or []
    if not turns or any(turn.get("from") not in ROLES for turn in turns):
        return None
    prompt = [{"role": ROLES[t["from"]], "content": t["value"]} for t in turns]
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if prompt[-1]["role"] != "user" or not chosen or not rejected:
        return None
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def dpo_data(count: int, max_length: int, pairs_file: Path) -> Path:
    """``bench/out/train_dpo-data-<count>-<max_length>.jsonl``: the first ``count`` pairs whose
    chosen and rejected conversations fit ``max_length`` tokens with the tokenizer's template."""
    path = OUT_DIR / f"train_dpo-data-{count}-{max_length}.jsonl"
    if path.is_file():
        return path
    if not pairs_file.is_file():
        raise BenchError(f"the MedicalGPT preference file is not there: {pairs_file}")
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    kept = []
    for record in read_jsonl(pairs_file):
        pair = to_pair(record)
        if pair and all(
            token_length(tokenizer, pair["prompt"] + pair[side], None) <= max_length - MARGIN
            for side in ("chosen", "rejected")
        ):
            kept.append(record)
        if len(kept) == count:
            break
    if len(kept) < count:
        raise BenchError(f"only {len(kept)} pairs fit {max_length} tokens, not {count}")
    write_jsonl(path, kept)
    return path


def child_ferrotune(spec: dict[str, Any], tmp: str) -> None:
    import ferrotune.train.run as run
    from ferrotune.data import prep_dpo
    from ferrotune.train import load_config, train
    from ferrotune.train.config import DpoConfig

    run.reference_logps = timed("ref_s", run.reference_logps)
    shards = Path(tmp) / "shards"  # fresh: no reference log-probs cached beside it
    start = time.perf_counter()
    prep_dpo(
        spec["qwen"], spec["data"], shards, max_length=spec["max_length"],
        max_prompt_length=spec["max_length"], overlong="drop", overwrite=True, quiet=True,
    )  # fmt: skip
    TIMES["prep_s"] = time.perf_counter() - start
    config = load_config(
        DpoConfig, None, ferrotune_overrides(spec), model=spec["model"], data=str(shards),
        output_dir=str(Path(tmp) / "run"),
    )  # fmt: skip
    train("dpo", config)


def child_trl(spec: dict[str, Any], tmp: str) -> None:
    import transformers
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    DPOTrainer._precompute_ref_logps = timed("ref_s", DPOTrainer._precompute_ref_logps)
    rows = [to_pair(record) for record in read_jsonl(Path(spec["data"]))]
    tokenizer = transformers.AutoTokenizer.from_pretrained(spec["qwen"])
    model = transformers.AutoModelForCausalLM.from_pretrained(spec["model"], dtype="float32")
    config = DPOConfig(
        **trl_settings(spec, tmp), precompute_ref_log_probs=True,
        precompute_ref_batch_size=spec["batch"], beta=0.1, loss_type=["sigmoid"],
    )  # fmt: skip
    start = time.perf_counter()
    trainer = DPOTrainer(
        model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    TIMES["prep_s"] = time.perf_counter() - start - TIMES["ref_s"]
    trainer.train()


CHILDREN = {"ferrotune": child_ferrotune, "trl": child_trl}


def main(argv: list[str] | None = None) -> int:
    defaults = {"steps": 8, "max_length": 384, "corpus_dir": PAIRS_FILE, "name": "train_dpo"}
    args = parse_args(argv, __doc__, defaults)
    if args.child:
        run_as_child(args.child, CHILDREN)
        return 0
    try:
        spec = {
            "qwen": str(qwen_tokenizer_dir()),
            "model": str(tiny_model(args.seed)),
            "data": str(dpo_data(args.records, args.max_length, args.corpus_dir)),
            "steps": args.steps, "batch": args.batch_size, "max_length": args.max_length,
            "lr": args.lr, "seed": args.seed, "threads": args.threads, "tmp": str(args.tmp_dir),
        }  # fmt: skip
        title = (
            f"DPO, tiny Qwen2, {args.steps} steps x {args.batch_size} pairs x <={args.max_length}"
        )
        return run_bench(args, Path(__file__).resolve(), spec, TARGET_SPEEDUP, title, True)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
