"""``ferrotune train pt|sft|rm|dpo|ppo``: the command line of the trainers.

The parser needs only the stage names (``ferrotune.stages``); the trainers, torch and
transformers are imported when a stage runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from ferrotune.stages import STAGES


def add_parser(commands: Any) -> None:
    """Adds ``train`` to the top-level ``ferrotune`` subparsers."""
    train = commands.add_parser("train", help="train a stage on prepped shards")
    stages = train.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for stage in STAGES:
        parser = stages.add_parser(
            stage,
            help=f"train {stage.upper()} on `ferrotune prep {stage}` shards",
            description=(
                (
                    "Run PPO on the prompts of `ferrotune prep ppo`: rollouts with generate, "
                    "scores from a reward model or reward_fn, clipped actor and critic updates. "
                    if stage == "ppo"
                    else f"Train {stage.upper()} with transformers' Trainer on the shards of "
                    f"`ferrotune prep {stage}`, the loss through ferrotune's fused kernels. "
                )
                + "Settings "
                "come from --config (YAML), then the options below, then KEY=VALUE overrides: "
                "any TrainingArguments field (learning_rate=2e-5 max_steps=100 ...) or "
                "ferrotune's (lora_r, loss_plot ...)."
            ),
        )
        parser.add_argument("--config", metavar="YAML", help="settings file")
        parser.add_argument("--model", help="a HF model folder, or a model config .json")
        parser.add_argument("--data", help="a `ferrotune prep` output folder")
        parser.add_argument("--eval-data", help="an evaluation folder from `ferrotune prep`")
        parser.add_argument("--output-dir", help="where checkpoints and the model go")
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings")
        parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from ferrotune.train.config import load_config
    from ferrotune.train.run import CONFIGS, train

    config = load_config(
        CONFIGS[args.stage],
        args.config,
        args.overrides,
        model=args.model,
        data=args.data,
        eval_data=args.eval_data,
        output_dir=args.output_dir,
    )
    out = train(args.stage, config)
    print(f"ferrotune: {args.stage} model saved to {out}")
    return 0
