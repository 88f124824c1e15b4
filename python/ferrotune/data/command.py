"""``ferrotune prep pt|sft|rm|dpo|ppo``: the command line of the data engine.

``add_parser`` adds ``prep`` and its stages to the ``ferrotune`` subparsers; each stage's run
calls the matching ``ferrotune.data.prep_*`` function and prints a summary (``summarize_pt``,
``summarize_chat``) whose counts add up. Nothing here imports torch or the trainers.
"""

from __future__ import annotations

import argparse
from typing import Any

from ferrotune.stages import CHAT_STAGES

__all__ = ["add_parser", "summarize_chat", "summarize_pt"]

ENGINES = ("auto", "fast", "reference")


def add_parser(commands: Any) -> None:
    """Adds ``prep`` and its stages to the top-level ``ferrotune`` subparsers."""
    prep = commands.add_parser("prep", help="prepare a corpus into Arrow shards")
    stages = prep.add_subparsers(dest="stage", required=True, metavar="STAGE")
    _add_prep_pt(stages)
    for stage in CHAT_STAGES:
        _add_prep_chat(stages, stage)


def _add_common(parser: argparse.ArgumentParser) -> None:
    """Options every prep stage shares."""
    parser.add_argument(
        "--tokenizer",
        required=True,
        help="HF model folder (tokenizer.json + tokenizer_config.json) or a tokenizer.json",
    )
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="files, folders or globs (.txt, .jsonl, .json, .parquet)",
    )
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument(
        "--workers", type=int, default=0, help="tokenizer threads (default: one per core)"
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="write bad records to OUT/rejects.jsonl with their reason and go on",
    )
    parser.add_argument(
        "--empty",
        choices=["skip", "error"],
        default="skip",
        help="records with nothing to train on (an empty document, an empty message, no "
        "messages): skip and count them by reason, or treat them as bad records",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress and no summary, only errors"
    )
    parser.add_argument(
        "--num-shards",
        type=int,
        default=1,
        help="split the input between this many independent runs (by record)",
    )
    parser.add_argument(
        "--shard-index", type=int, default=0, help="which of --num-shards this run is (0-based)"
    )
    parser.add_argument(
        "--shard-size", default="500MB", help="close an output shard past this size"
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="the tokenizer engine: auto (the fast encoder where it is proven identical to the "
        "reference, the reference elsewhere), fast, or reference (HF tokenizers 0.23)",
    )
    parser.add_argument(
        "--engine-ray",
        metavar="ADDRESS",
        help="run as a Ray Data job writing the same folder: auto (the cluster RAY_ADDRESS "
        "names, else a local Ray) or a cluster address (ray://HOST:10001)",
    )


def _common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The values of the options `_add_common` defines, as keyword arguments."""
    return {
        "workers": args.workers,
        "skip_bad": args.skip_bad,
        "empty": args.empty,
        "overwrite": args.overwrite,
        "quiet": args.quiet,
        "num_shards": args.num_shards,
        "shard_index": args.shard_index,
        "shard_size": args.shard_size,
        "engine": args.engine,
    }


def _add_prep_pt(prep: Any) -> None:
    parser = prep.add_parser(
        "pt",
        help="tokenize a text corpus and pack it into fixed-size pretraining blocks",
        description=(
            "Tokenize documents (.txt lines or paragraphs, .jsonl/.json/.parquet text fields), "
            "append EOS, concatenate and cut into --block-size blocks. Writes Arrow shards that "
            "datasets.load_from_disk reads, plus manifest.json."
        ),
    )
    _add_common(parser)
    parser.add_argument("--block-size", type=int, default=1024, help="tokens per block")
    parser.add_argument(
        "--text-field", default="text", help="JSON field or Parquet column with the text"
    )
    parser.add_argument(
        "--doc-sep",
        choices=["line", "blank-line"],
        default="line",
        help=".txt files: one document per line, or per blank-line-separated paragraph",
    )
    parser.add_argument(
        "--last-block",
        choices=["pad", "drop"],
        default="pad",
        help="the last partial block: pad it (labels -100) or drop it; counted either way",
    )
    parser.add_argument(
        "--eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="append the EOS token after each document",
    )
    parser.add_argument("--eos-token", help="use this token as EOS instead of the tokenizer's")
    parser.add_argument(
        "--format",
        choices=["txt", "jsonl", "json", "parquet"],
        help="read every input in this format (default: from the file name)",
    )
    parser.set_defaults(run=_run_prep_pt)


def _run_prep_pt(args: argparse.Namespace) -> int:
    options = {
        "block_size": args.block_size,
        "text_field": args.text_field,
        "doc_sep": args.doc_sep,
        "last_block": args.last_block,
        "eos": args.eos,
        "eos_token": args.eos_token,
        "input_format": args.format,
    }
    manifest = _prep("pt", args, options)
    if not args.quiet:
        print(summarize_pt(manifest, args.out))
    return 0


def _prep(stage: str, args: argparse.Namespace, options: dict[str, Any]) -> dict[str, Any]:
    """Runs the stage here, or as a Ray Data job with ``--engine-ray``; returns the manifest."""
    options.update(_common_kwargs(args))
    if args.engine_ray:
        from ferrotune.data import ray

        if options["workers"] == 0:
            options["workers"] = 1  # one thread per Ray task: Ray runs a task per core
        return ray.prep(stage, args.tokenizer, args.input, args.out, address=args.engine_ray,
                        **options)  # fmt: skip
    from ferrotune.data import prep

    function = getattr(prep, f"prep_{stage}")
    return function(args.tokenizer, args.input, args.out, **options)


def summarize_pt(manifest: dict[str, Any], out: str) -> str:
    """A few lines a user reads to trust the run: counts that add up, tokens, time."""
    counts, tokens = manifest["counts"], manifest["tokens"]
    info = manifest["stage_info"]
    shards = manifest["shards"]
    size = sum(shard["bytes"] for shard in shards)
    last = info["last_block"]
    if last["outcome"] == "padded":
        tail = f"last block padded ({last['tokens']:,} tokens + {last['padding']:,} padding)"
    elif last["outcome"] == "dropped":
        tail = f"last partial block dropped ({last['tokens']:,} tokens)"
    else:
        tail = "no partial block"
    elapsed = manifest["elapsed_seconds"]
    rate = tokens["documents"] / max(elapsed, 1e-9)
    lines = [
        f"wrote {out}: {manifest['rows']:,} blocks of {info['block_size']:,} tokens "
        f"in {len(shards)} shard(s), {size / 1e6:.1f} MB",
        _counts_line(manifest, out),
        f"  tokens   {tokens['documents']:,} from documents, {tokens['written']:,} in blocks; "
        f"{tail}",
        f"  time     {elapsed:.2f} s, {rate / 1e6:.2f} M tokens/s "
        f"with {manifest['options']['workers']} worker(s)",
        _profile_line(manifest),
    ]
    if counts["other_shards"]:
        lines.insert(
            2, f"  sharding {counts['other_shards']:,} records left to the other --shard-index runs"
        )
    return "\n".join(lines)


# Each conversation stage's help line and description.
CHAT_HELP = {
    "sft": (
        "render conversations with the chat template; labels only on assistant answers",
        "Render ShareGPT / OpenAI messages / Alpaca records with the chat template, tokenize "
        "once, and label only the assistant answers (their end-of-turn token included); -100 "
        "elsewhere. Optionally pack rows best-fit-decreasing.",
    ),
    "rm": (
        "preference pairs for reward modelling (chosen/rejected sequences)",
        "Render MedicalGPT / TRL preference records: one prompt rendering shared by the chosen "
        "and rejected answers; writes input_ids_chosen/_rejected and their attention masks.",
    ),
    "dpo": (
        "preference pairs for DPO (prompt, chosen and rejected with labels -100 over the prompt)",
        "Render MedicalGPT / TRL preference records; the prompt is the token prefix shared with "
        "both answers' renderings (as TRL's DPO trainer takes it); labels -100 over the prompt.",
    ),
    "ppo": (
        "prompts for PPO rollouts, rendered with the generation prompt",
        "Render prompts (any conversation or preference record, or prompt/query/question "
        "records) with the generation prompt; keeps the query text and a reference answer.",
    ),
}


def _add_prep_chat(prep: Any, stage: str) -> None:
    """``prep sft|rm|dpo|ppo``: the shared conversation options plus the stage's own."""
    help_text, description = CHAT_HELP[stage]
    parser = prep.add_parser(stage, help=help_text, description=description)
    _add_common(parser)
    parser.add_argument(
        "--template",
        default="auto",
        help="auto (the tokenizer's own), chatml, qwen, llama3, vicuna, alpaca, or FILE.jinja",
    )
    parser.add_argument("--system", help="system prompt for conversations that have none")
    parser.add_argument(
        "--max-length", type=int, default=2048, help="tokens per sequence (prompt + answer)"
    )
    parser.add_argument(
        "--overlong",
        choices=["truncate", "drop"],
        default="truncate",
        help="too long: keep what fits (prompts their end, answers their start), or drop; counted",
    )
    parser.add_argument(
        "--same-role",
        choices=["reject", "merge"],
        default="reject",
        help="two user (or assistant) turns in a row: a bad record, or joined into one",
    )
    parser.add_argument(
        "--format",
        default="auto",
        help="record layout: auto (detected per record), sharegpt, openai, alpaca, "
        "medicalgpt_preference, legacy_preference, trl_preference, prompt",
    )
    if stage == "sft":
        parser.add_argument(
            "--learn",
            choices=["all", "last"],
            default="all",
            help="learn every assistant turn, or only the last",
        )
        parser.add_argument(
            "--pack", action="store_true", help="pack conversations into --max-length rows"
        )
    else:
        parser.add_argument(
            "--max-prompt-length",
            type=int,
            default=1024,
            help="prompt tokens kept (its end) at most",
        )
    if stage == "rm":
        parser.add_argument(
            "--margin-field",
            metavar="NAME",
            help="write each record's number NAME to a `margin` column (the reward loss "
            "subtracts it, as TRL's RewardTrainer)",
        )
    parser.set_defaults(run=_run_prep_chat, stage=stage)


def _run_prep_chat(args: argparse.Namespace) -> int:
    names = ["template", "system", "max_length", "overlong", "same_role", "format"]
    names += ["learn", "pack"] if args.stage == "sft" else ["max_prompt_length"]
    names += ["margin_field"] if args.stage == "rm" else []
    manifest = _prep(args.stage, args, {name: getattr(args, name) for name in names})
    if not args.quiet:
        print(summarize_chat(manifest, args.out))
    return 0


def _counts_line(manifest: dict[str, Any], out: str) -> str:
    """``read = written + empty + rejected + dropped``, each with its reasons."""
    counts = manifest["counts"]

    def reasons(key: str) -> str:
        by_reason = counts.get(f"{key}_by_reason") or {}
        if not by_reason or list(by_reason) == [key]:  # PT's empty documents say it already
            return ""
        return f" ({', '.join(f'{k} {v:,}' for k, v in by_reason.items())})"

    line = (
        f"  records  {counts['read']:,} read = {counts['written']:,} written "
        f"+ {counts['empty']:,} empty{reasons('empty') if counts['empty'] else ''} "
        f"+ {counts['rejected']:,} rejected"
    )
    if counts["rejected"]:
        line += f"{reasons('rejected')[:-1]}; see {out}/rejects.jsonl)"
    if counts.get("dropped"):
        line += f" + {counts['dropped']:,} dropped{reasons('dropped')}"
    return line


def summarize_chat(manifest: dict[str, Any], out: str) -> str:
    """What a user checks before training: counts, tokens (learned share for SFT), template."""
    tokens, info = manifest["tokens"], manifest["stage_info"]
    template = manifest["template"]
    lines = [
        f"wrote {out}: {manifest['rows']:,} {manifest['stage']} rows "
        f"in {len(manifest['shards'])} shard(s)",
        _counts_line(manifest, out),
    ]
    if manifest["stage"] == "sft":
        masks = "generation blocks" if template["generation_blocks"] else "located answers"
        lines.append(
            f"  tokens   {tokens['written']:,}, learned {tokens['labels']:,} "
            f"({100 * tokens['label_share']:.1f}%); {info['truncated']:,} truncated "
            f"(masks from {masks})"
        )
        if info["packed"]:
            lines.append(f"  packing  {100 * info['packing_efficiency']:.1f}% of row capacity used")
    else:
        detail = ", ".join(f"{k} {v:,}" for k, v in info.items() if isinstance(v, int))
        lines.append(f"  tokens   {tokens['written']:,}; {detail}")
    lines.append(f"  template {template['name']}")
    lines.append(f"  time     {manifest['elapsed_seconds']:.2f} s")
    lines.append(_profile_line(manifest))
    return "\n".join(lines)


def _profile_line(manifest: dict[str, Any]) -> str:
    """Where the time went: the tokenizer's load and the pipeline's wall seconds, then its
    parts' CPU seconds (they overlap; the workers' are summed); and which engine encoded how
    many texts."""
    t = manifest["timings"]
    engine = manifest["engine"]
    texts = engine["texts"]
    return (
        f"  profile  tokenizer {t['tokenizer']:.2f} s, pipeline {t['pipeline']:.2f} s "
        f"(CPU s: read {t['read']:.2f}, encode {t['process']:.2f}, write {t['write']:.2f}); "
        f"--engine {engine['requested']}: {texts['fast']:,} texts fast, "
        f"{texts['reference']:,} reference"
    )
