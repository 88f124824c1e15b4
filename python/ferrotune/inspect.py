"""``ferrotune inspect OUT``: look at a prepared folder before spending GPU hours on it.

The manifest says whether a run added up (records read = written + empty + rejected + dropped,
the learned-token share); decoded rows say whether the masks are right. The commonest silent
data bug in fine-tuning is a label mask that learns the prompt, or nothing, and it shows at once
when the learned tokens are marked: green on a terminal, ``[[...]]`` elsewhere (pipes, logs,
tests). Runs of learned or masked tokens are decoded together, so multi-byte characters that
span tokens come out whole; padding is one note with its count and a document (or packed
conversation) start, where ``position_ids`` restart at 0, is a `` ¦ `` marker.

Columns are handled by name, not by stage, so every stage's folder reads the same way: each
column containing ``input_ids`` is a sequence, and its ``attention_mask``, ``labels`` and
``position_ids`` are the columns named with that part replaced (``chosen_input_ids`` goes with
``chosen_labels``, ``input_ids_chosen`` with ``attention_mask_chosen``). A sequence without
labels (RM, PPO) is shown plain.

Shards are memory-mapped and read batch by batch: the length histogram touches only the mask
columns and the examples stop at the last wanted row. NumPy, pyarrow and tokenizers are
imported when the command runs, not when ``ferrotune`` builds its parser, so the other commands
start without them; torch is never imported (the manifest is read by
``ferrotune.data.manifest``, the shards by pyarrow).
"""

from __future__ import annotations

import argparse
import os
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferrotune.errors import ConfigError, DataError, TokenizerError

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    from tokenizers import Tokenizer

__all__ = ["add_parser", "run"]

IGNORE_INDEX = -100
BAR_WIDTH = 40
MAX_INPUTS_LISTED = 5

GREEN = "\x1b[32m"
DIM = "\x1b[2m"
CYAN = "\x1b[36m"
RESET = "\x1b[0m"


def add_parser(commands: Any) -> None:
    """Adds ``inspect`` to the top-level ``ferrotune`` subparsers."""
    parser = commands.add_parser(
        "inspect",
        help="summarize a prepared folder and decode a few rows, learned tokens marked",
        description=(
            "Print the manifest's summary (inputs, tokenizer, template, counts, tokens, "
            "learned-token share, packing) and a histogram of row lengths, then decode rows "
            "with the recorded tokenizer: learned tokens (labels != -100) in green on a "
            "terminal or in [[ ]] otherwise, padding as <pad ×N>, document starts as ¦."
        ),
    )
    parser.add_argument("out", metavar="OUT", help="a folder written by ferrotune prep")
    parser.add_argument(
        "--n", type=int, default=3, metavar="K", help="decode rows 0..K-1 (default 3; 0: none)"
    )
    parser.add_argument(
        "--index",
        type=int,
        action="append",
        metavar="I",
        help="decode row I instead (repeatable; negative counts from the end)",
    )
    parser.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="ANSI colours: auto (on a terminal, unless NO_COLOR is set), always, never",
    )
    parser.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="decode with this tokenizer.json (or folder) instead of the recorded one",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """The ``inspect`` command; returns the exit status."""
    from ferrotune.data.manifest import read_manifest

    out = Path(args.out)
    manifest = read_manifest(out)
    indices = wanted_rows(manifest["rows"], args.n, args.index)
    tokenizer = load_tokenizer(manifest, args.tokenizer) if indices else None
    style = Style(color=use_color(args.color))
    print(summarize(manifest, out, row_lengths(out, manifest)))
    if tokenizer is None:
        return 0
    print()
    print(style.legend())
    rows = read_rows(out, manifest, set(indices))
    for index in indices:
        print()
        print(render_row(index, manifest["rows"], rows[index], tokenizer, style))
    return 0


# --- which rows, which colours, which tokenizer ---------------------------------------------


def wanted_rows(rows: int, n: int, indices: list[int] | None) -> list[int]:
    """The rows to decode, in the order asked: ``--index`` values, else ``0..n-1``."""
    if indices is None:
        if n < 0:
            raise ConfigError(f"--n {n}: must be 0 or more", option="n")
        return list(range(min(n, rows)))
    wanted = []
    for index in indices:
        if not -rows <= index < rows:
            span = f"0..{rows - 1}" if rows else "none"
            raise ConfigError(
                f"--index {index}: out of range, the folder has {rows:,} rows ({span})",
                option="index",
            )
        wanted.append(index % rows)
    return wanted


def use_color(choice: str) -> bool:
    if choice == "auto":
        return sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    return choice == "always"


def load_tokenizer(manifest: dict[str, Any], override: str | None) -> Tokenizer:
    """The tokenizer the folder was prepared with; warns on stderr if it is another one (by the
    manifest's fingerprint, so a re-saved ``tokenizer.json`` with the same ids is no other).

    The manifest records the path as given to ``prep`` (often relative to where it ran), so a
    missing file names ``--tokenizer`` as the way out.
    """
    try:
        from tokenizers import Tokenizer
    except ImportError as error:
        raise TokenizerError(
            "ferrotune inspect decodes with the `tokenizers` package: pip install tokenizers"
        ) from error
    from ferrotune.data.manifest import same_tokenizer

    recorded = manifest["tokenizer"]
    path = Path(override or recorded["path"])
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        message = (
            f"--tokenizer {path}: no such file"
            if override
            else f"{path}: the tokenizer the folder was prepared with is not there (relative "
            f"paths are read from {Path.cwd()}); pass --tokenizer PATH"
        )
        raise TokenizerError(message, path=str(path))
    known = recorded.get("fingerprint") or recorded.get("sha256")
    if known and not same_tokenizer(recorded, path):
        which = "fingerprint" if recorded.get("fingerprint") else "sha256"
        print(
            f"ferrotune: warning: {path} is not the tokenizer.json the folder was prepared "
            f"with ({which} differs); decoded text may be wrong",
            file=sys.stderr,
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for every failure
        raise TokenizerError(f"{path}: cannot load tokenizer: {error}", path=str(path)) from error


@dataclass(frozen=True)
class Style:
    """How learned, masked and unlabelled text, notes and document starts are marked."""

    color: bool

    def learned(self, text: str) -> str:
        return f"{GREEN}{text}{RESET}" if self.color else f"[[{text}]]"

    def masked(self, text: str) -> str:
        return f"{DIM}{text}{RESET}" if self.color else text

    def note(self, text: str) -> str:
        return f"{CYAN}{text}{RESET}" if self.color else text

    def legend(self) -> str:
        if self.color:
            marks = f"{self.learned('learned')}, {self.masked('masked')}"
        else:
            marks = "learned tokens in [[ ]], masked tokens bare"
        return f"{marks}; {self.note('<pad ×N>')} padding, {self.note('¦')} a document start"


# --- the summary --------------------------------------------------------------------------


def summarize(manifest: dict[str, Any], out: Path, lengths: np.ndarray) -> str:
    """The manifest's story in a few lines, then the histogram of ``lengths``."""
    lines = [
        f"{out}: {manifest['stage']}, {manifest['rows']:,} rows "
        f"in {len(manifest['shards'])} shard(s)",
        *_input_lines(manifest["inputs"]),
        _tokenizer_line(manifest["tokenizer"]),
    ]
    if manifest.get("template"):
        lines.append(f"  template   {manifest['template']['name']}")
    lines.extend(_count_lines(manifest["counts"]))
    lines.append(_token_line(manifest))
    efficiency = (manifest.get("stage_info") or {}).get("packing_efficiency")
    if efficiency is not None:
        lines.append(f"  packing    {100 * efficiency:.1f}% of row capacity used")
    sequences = [c["name"] for c in manifest.get("columns", []) if "input_ids" in c["name"]]
    longest = " (the longest of its sequences)" if len(sequences) > 1 else ""
    lines.append(f"  lengths    non-padding tokens per row{longest}")
    lines.extend(f"    {line}" for line in histogram_lines(length_histogram(lengths)))
    return "\n".join(lines)


def _input_lines(inputs: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"  {'inputs' if i == 0 else '':10} {entry['path']} ({entry['records']:,} records)"
        for i, entry in enumerate(inputs[:MAX_INPUTS_LISTED])
    ]
    rest = inputs[MAX_INPUTS_LISTED:]
    if rest:
        records = sum(entry["records"] for entry in rest)
        lines.append(f"  {'':10} ... and {len(rest):,} more ({records:,} records)")
    return lines


def _tokenizer_line(tokenizer: dict[str, Any]) -> str:
    eos = tokenizer.get("eos")
    eos_text = f"eos {eos['token']} = {eos['id']}" if eos else "no eos"
    return f"  tokenizer  {tokenizer['path']} (vocab {tokenizer['vocab_size']:,}, {eos_text})"


def _count_lines(counts: dict[str, Any]) -> list[str]:
    """``read = written + empty + rejected + dropped``, each with its reasons."""
    line = (
        f"  records    {counts['read']:,} read = {counts['written']:,} written "
        f"+ {counts['empty']:,} empty + {counts['rejected']:,} rejected"
        f"{_reasons(counts.get('rejected_by_reason'))} "
        f"+ {counts.get('dropped', 0):,} dropped{_reasons(counts.get('dropped_by_reason'))}"
    )
    lines = [line]
    if counts.get("other_shards"):
        lines.append(
            f"  sharding   {counts['other_shards']:,} records left to the other --shard-index runs"
        )
    return lines


def _reasons(by_reason: dict[str, int] | None) -> str:
    if not by_reason:
        return ""
    return " (" + ", ".join(f"{reason} {count:,}" for reason, count in by_reason.items()) + ")"


def _token_line(manifest: dict[str, Any]) -> str:
    """All tokens, the learned share where the stage labels tokens, padding, and whatever
    else the stage counts (DPO's prompt/chosen/rejected tokens, truncations)."""
    tokens = manifest["tokens"]
    line = f"  tokens     {tokens['written']:,}"
    parts = [
        f"{name} {value:,}"
        for name, value in tokens.items()
        if name not in ("written", "labels", "label_share", "padding")
        and isinstance(value, int)
        and value
    ]
    if parts:
        line += f" ({', '.join(parts)})"
    if tokens.get("labels") is not None and tokens["written"]:
        share = tokens["labels"] / tokens["written"]
        line += f", learned {tokens['labels']:,} ({100 * share:.1f}%)"
    if "padding" in tokens:
        line += f", padding {tokens['padding']:,}"
    info = manifest.get("stage_info") or {}
    truncated = [
        f"{value:,} {name.replace('_', ' ')}"
        for name, value in info.items()
        if name.startswith("truncated") and value
    ]
    if truncated:
        line += "; " + ", ".join(truncated)
    return line


def length_histogram(lengths: np.ndarray) -> list[tuple[int, int]]:
    """``(upper bound, rows)`` per power-of-two bucket, from the first non-empty to the last.

    A row of ``n`` tokens falls in the smallest bucket ``2**k >= n``, as the manifest's own
    ``<=N`` histogram counts them.
    """
    import numpy as np

    if len(lengths) == 0:
        return []
    exponents = np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64)
    counts = np.bincount(exponents)
    low = int(np.flatnonzero(counts)[0])
    return [(2**k, int(counts[k])) for k in range(low, len(counts))]


def histogram_lines(buckets: list[tuple[int, int]]) -> list[str]:
    """``<=N  ████ rows`` lines, the bars scaled to the largest bucket."""
    if not buckets:
        return ["(no rows)"]
    top = max(count for _, count in buckets)
    label_width = max(len(f"<={bound:,}") for bound, _ in buckets)
    lines = []
    for bound, count in buckets:
        bar = "█" * (max(1, round(BAR_WIDTH * count / top)) if count else 0)
        lines.append(f"{f'<={bound:,}':>{label_width}} {bar:<{BAR_WIDTH}} {count:,}")
    return lines


# --- reading the shards -------------------------------------------------------------------


def _shard_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """The record batches of one shard, memory-mapped: only the pages read are loaded."""
    import pyarrow as pa

    with pa.memory_map(str(path), "r") as source:
        yield from pa.ipc.open_stream(source)


def _batches(out: Path, manifest: dict[str, Any]) -> Iterator[tuple[int, pa.RecordBatch]]:
    """``(first row, batch)`` over every shard, in order."""
    start = 0
    for shard in manifest["shards"]:
        for batch in _shard_batches(out / shard["file"]):
            yield start, batch
            start += batch.num_rows


def _companion(ids_column: str, part: str) -> str:
    """``chosen_input_ids`` → ``chosen_labels`` for ``part="labels"``."""
    return ids_column.replace("input_ids", part)


def row_lengths(out: Path, manifest: dict[str, Any]) -> np.ndarray:
    """Non-padding tokens per row: the attention-mask sum, or the list length where a
    sequence has no mask; with several sequences per row (RM, DPO), the longest."""
    import numpy as np

    parts = []
    for _, batch in _batches(out, manifest):
        names = batch.schema.names
        per_sequence = [
            _real_tokens(batch, name, _companion(name, "attention_mask"))
            for name in names
            if "input_ids" in name
        ]
        if per_sequence:
            parts.append(np.max(per_sequence, axis=0))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _real_tokens(batch: pa.RecordBatch, ids_name: str, mask_name: str) -> np.ndarray:
    import numpy as np
    import pyarrow.compute as pc

    if mask_name not in batch.schema.names:
        return pc.list_value_length(batch.column(ids_name)).to_numpy().astype(np.int64)
    mask = batch.column(mask_name)
    attended = pc.list_flatten(mask).to_numpy(zero_copy_only=False) != 0
    parents = pc.list_parent_indices(mask).to_numpy()
    return np.bincount(parents[attended], minlength=len(mask)).astype(np.int64)


def read_rows(out: Path, manifest: dict[str, Any], wanted: set[int]) -> dict[int, dict[str, Any]]:
    """The ``wanted`` rows as ``{column: Python value}``, reading only as far as the last."""
    found: dict[int, dict[str, Any]] = {}
    for start, batch in _wanted_batches(out, manifest, wanted):
        for index in sorted(i for i in wanted if start <= i < start + batch.num_rows):
            found[index] = {
                name: batch.column(name)[index - start].as_py() for name in batch.schema.names
            }
        if len(found) == len(wanted):
            return found
    missing = sorted(wanted - found.keys())
    raise DataError(
        f"{out}: row {missing[0]} is not in the shards although manifest.json counts "
        f"{manifest['rows']:,} rows",
        path=str(out),
    )


def _wanted_batches(
    out: Path, manifest: dict[str, Any], wanted: set[int]
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """The batches of shards that may hold a wanted row; other shards are not opened."""
    first = 0
    for shard in manifest["shards"]:
        if any(first <= i < first + shard["rows"] for i in wanted):
            start = first
            for batch in _shard_batches(out / shard["file"]):
                yield start, batch
                start += batch.num_rows
        first += shard["rows"]


# --- decoding a row -----------------------------------------------------------------------


def render_row(
    index: int, rows: int, row: dict[str, Any], tokenizer: Tokenizer, style: Style
) -> str:
    """One row: a header, then each sequence decoded, then any other column (text, scores)."""
    sequences = [name for name in row if "input_ids" in name]
    used = set(sequences)
    for name in sequences:
        used.update(_companion(name, part) for part in ("attention_mask", "labels", "position_ids"))
    lines = [f"── row {index:,} of {rows:,} ──"]
    for name in sequences:
        heading, text = render_sequence(name, row, tokenizer, style)
        lines.append(heading if name == "input_ids" else f"{name}: {heading}")
        lines.append(text)
    for name, value in row.items():
        if name not in used:
            lines.append(f"{name}: {_visible(_shorten(repr(value)))}")
    return "\n".join(lines)


def render_sequence(
    name: str, row: dict[str, Any], tokenizer: Tokenizer, style: Style
) -> tuple[str, str]:
    """``(counts, text)`` for the sequence in column ``name`` of ``row``."""
    ids = row[name]
    mask = row.get(_companion(name, "attention_mask")) or [1] * len(ids)
    labels = row.get(_companion(name, "labels"))
    positions = row.get(_companion(name, "position_ids"))
    kinds = [_kind(i, mask, labels) for i in range(len(ids))]
    pieces = []
    for start, end, kind in _runs(kinds, mask, positions):
        if start and positions is not None and positions[start] == 0 and kind != "pad":
            pieces.append(style.note(" ¦ "))
        if kind == "pad":
            pieces.append(style.note(f"<pad ×{end - start:,}>"))
            continue
        text = _visible(tokenizer.decode(ids[start:end], skip_special_tokens=False))
        pieces.append({"learned": style.learned, "masked": style.masked}.get(kind, str)(text))
    real = len(ids) - kinds.count("pad")
    heading = f"{real:,} tokens"
    if labels is not None:
        heading += f", {kinds.count('learned'):,} learned"
    if real < len(ids):
        heading += f", {len(ids) - real:,} padding"
    return heading, "".join(pieces)


def _kind(i: int, mask: list[int], labels: list[int] | None) -> str:
    if not mask[i]:
        return "pad"
    if labels is None:
        return "plain"
    return "masked" if labels[i] == IGNORE_INDEX else "learned"


def _runs(
    kinds: list[str], mask: list[int], positions: list[int] | None
) -> Iterator[tuple[int, int, str]]:
    """``(start, end, kind)`` of maximal runs of one kind, also cut where a document starts."""
    start = 0
    for i in range(1, len(kinds) + 1):
        at_end = i == len(kinds)
        restarts = not at_end and positions is not None and positions[i] == 0 and mask[i]
        if at_end or kinds[i] != kinds[start] or restarts:
            yield start, i, kinds[start]
            start = i


def _visible(text: str) -> str:
    """``text`` with control characters (an ESC in the data, a CR) escaped, newlines kept, so
    the data cannot drive the terminal or hide what it holds."""
    return "".join(
        ch if ch in "\n\t" or unicodedata.category(ch) != "Cc" else ascii(ch)[1:-1] for ch in text
    )


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"
