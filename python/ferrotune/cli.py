"""The ``ferrotune`` command: a dispatcher, each command in its own module.

``COMMANDS`` names every command, the module that builds its parser (``add_parser(subparsers)``,
which sets the function that runs it) and the help line ``ferrotune --help`` lists. Only the
module of the command being run is imported, and each imports what its run needs when it runs:
``ferrotune prep``, ``inspect``, ``--version`` and every ``--help`` start at once, without torch
or transformers (docs/architecture.md §10).

Errors are printed as one plain line naming the file, line and field (no traceback) and the exit
status is non-zero; ``FERROTUNE_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from ferrotune import __version__
from ferrotune.errors import FerrotuneError

__all__ = ["COMMANDS", "build_parser", "main"]

# command -> (the module whose `add_parser(subparsers)` adds it, its line in `ferrotune --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "prep": ("ferrotune.data.command", "prepare a corpus into Arrow shards"),
    "inspect": (
        "ferrotune.inspect",
        "summarize a prepared folder and decode a few rows, learned tokens marked",
    ),
    "train": ("ferrotune.train.command", "train a stage on prepped shards"),
    "bench": (
        "ferrotune.bench.command",
        "benchmark ours against what users run today (table, CSV, PNG)",
    ),
    "pipeline": ("ferrotune.pipeline", "run PT -> SFT -> RM -> DPO -> PPO from one YAML file"),
    "merge": ("ferrotune.data.merge", "merge prep output folders (shard runs, or whole runs)"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``ferrotune`` parser with ``command``'s own parser, from its module; the other
    commands are there by name and help line only (enough for ``ferrotune --help``)."""
    parser = argparse.ArgumentParser(
        prog="ferrotune",
        description="A fast LLM training pipeline: data prep in Rust, fused kernels, trainers.",
    )
    parser.add_argument("--version", action="version", version=f"ferrotune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if name == command:
            importlib.import_module(module).add_parser(commands)
        else:
            commands.add_parser(name, help=help_text)
    return parser


def command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs: its first word that is not an option (the top-level options,
    ``--help`` and ``--version``, take no value), or ``None``."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_of(argv))
    args, extra = parser.parse_known_args(argv)
    if extra:
        # KEY=VALUE overrides of `train` may come before and after its options: argparse only
        # collects one run of positionals, so the rest arrive here.
        if getattr(args, "command", None) != "train" or not all("=" in item for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        code = args.run(args)
        _close_process_group()
        return code
    except KeyboardInterrupt:
        print("ferrotune: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (FerrotuneError, OSError) as error:
        if os.environ.get("FERROTUNE_DEBUG"):
            raise
        print(f"ferrotune: error: {error}", file=sys.stderr)
        return 1


def _close_process_group() -> None:
    """Under torchrun, leave the process group in order after a run that succeeded: wait for
    every process, then destroy it, rather than let interpreter exit tear down gloo's threads
    while a peer still talks (an occasional abort, seen in CI)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.distributed.is_available():
        return
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":  # `python -m ferrotune.cli`, as torchrun launches it
    sys.exit(main())
