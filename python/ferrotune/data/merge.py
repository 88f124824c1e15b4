"""``ferrotune merge OUT1 OUT2 ... --out OUT``: several ``prep`` output folders as one.

Two cases, told apart by the manifests:

- **Shard runs of one split** (``--num-shards N``, every ``--shard-index`` 0..N-1 once, the
  same inputs): the merged folder is the one a single run writes. Each shard run wrote
  ``places.arrow`` (the input file and line of each written record, for PT each document's
  tokens), so the rows are put back in input order; PT documents are unpacked from the blocks
  and packed again, so the blocks are one run's too. Packed SFT rows cannot be reordered and
  are refused.
- **Independent folders** (each a whole run): rows are concatenated in the order given, PT
  blocks as they are (each folder's last partial block stays).

Either way the folders must agree on stage, tokenizer (by fingerprint), template and every
option that shapes rows (a :class:`ConfigError` names the first difference); the counts add up,
``rejects.jsonl`` files are joined, and the folder appears atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ferrotune.data.manifest import read_manifest
from ferrotune.data.transform import sum_manifests
from ferrotune.data.writer import open_folder
from ferrotune.errors import ConfigError

__all__ = ["merge"]

PLACES = "places.arrow"
# Rows per batch written.
BATCH_ROWS = 1000


def merge(
    folders: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    shard_size: str | int = "500MB",
) -> dict[str, Any]:
    """Merges ``folders`` into ``out`` (see the module docstring); returns the manifest."""
    if len(folders) < 2:
        raise ConfigError("merge needs at least two folders", option="inputs")
    paths = [Path(folder) for folder in folders]
    manifests = [read_manifest(path) for path in paths]
    total = sum_manifests(manifests)  # refuses folders that differ, naming the difference
    shards = _shard_runs(paths, manifests)
    stage = total["stage"]
    # PT shard runs' documents are packed again into one run's blocks; whole runs keep theirs.
    writer = open_folder(total, out, overwrite, str(shard_size), pack=shards is not None)
    if shards is None:
        for path in paths:  # PT blocks too: as they are, not repacked
            for batch in _table(path).to_batches(max_chunksize=BATCH_ROWS):
                writer.write(batch)
        rejects = [line for path in paths for line in _rejects(path)]
        total["inputs"] = [entry for manifest in manifests for entry in manifest["inputs"]]
    else:
        for table in _in_input_order(shards, stage):
            writer.write(table)
        order = {entry["path"]: i for i, entry in enumerate(manifests[0]["inputs"])}

        def place(line: str) -> tuple[int, int]:
            record = json.loads(line)
            return order.get(record["file"], len(order)), record["line"]

        rejects = sorted((line for path in shards for line in _rejects(path)), key=place)
        total["inputs"] = manifests[0]["inputs"]
        total["counts"]["other_shards"] = 0
        total["options"].update(num_shards=1, shard_index=0)
        total["stage_info"].pop("places_file", None)
    if rejects:
        writer.write_file("rejects.jsonl", "".join(rejects).encode())
    total["stage_info"]["rejects_file"] = "rejects.jsonl" if rejects else None
    if stage == "pt" and shards is None:
        total["stage_info"]["last_block"] = {"outcome": "kept", "folders": len(paths)}
    mode = "concatenated" if shards is None else "shard_runs"
    total["merge"] = {"mode": mode, "folders": [os.fspath(path) for path in paths]}
    text = writer.finish(json.dumps(total), description=f"ferrotune {stage} data (merged)")
    return json.loads(text)


def _shard_runs(paths: list[Path], manifests: list[dict[str, Any]]) -> list[Path] | None:
    """The folders ordered by shard index when they are one split's shard runs, else None
    (independent folders); refuses anything in between."""
    counts = {m["options"].get("num_shards", 1) for m in manifests}
    if counts == {1}:
        return None
    if len(counts) > 1:
        raise ConfigError(
            f"num_shards: the folders come from splits of {sorted(counts)} shards",
            option="num-shards",
        )
    (count,) = counts
    indices = sorted(m["options"]["shard_index"] for m in manifests)
    if indices != list(range(count)):
        missing = sorted(set(range(count)) - set(indices))
        raise ConfigError(
            f"shard-index: a split into {count} needs every --shard-index once; "
            f"got {indices} (missing {missing})",
            option="shard-index",
        )
    inputs = {json.dumps([(i["path"], i["sha256"]) for i in m["inputs"]]) for m in manifests}
    if len(inputs) > 1:
        raise ConfigError("inputs: the shard runs read different files", option="inputs")
    if manifests[0]["stage"] == "sft" and manifests[0]["options"].get("pack"):
        raise ConfigError(
            "pack: packed SFT rows cannot be put back in one run's order; merge unpacked "
            "shard runs, or prep the whole corpus with --pack",
            option="pack",
        )
    for path in paths:
        if not (path / PLACES).is_file():
            raise ConfigError(f"{path}: no {PLACES} (an older ferrotune's?)", option="inputs")
    order = sorted(range(len(paths)), key=lambda i: manifests[i]["options"]["shard_index"])
    return [paths[i] for i in order]


def _table(path: Path) -> Any:
    """The folder's rows, memory-mapped."""
    import pyarrow as pa

    manifest = read_manifest(path)
    tables = [
        pa.ipc.open_stream(pa.memory_map(str(path / shard["file"]))).read_all()
        for shard in manifest["shards"]
    ]
    return pa.concat_tables(tables)


def _places(path: Path) -> Any:
    import pyarrow as pa

    return pa.ipc.open_stream(pa.memory_map(str(path / PLACES))).read_all()


def _in_input_order(folders: list[Path], stage: str) -> Iterator[Any]:
    """The rows (PT: the documents) of the shard runs, in the order of one run."""
    import numpy as np
    import pyarrow as pa

    tables = [_documents(path) if stage == "pt" else _table(path) for path in folders]
    places = [_places(path) for path in folders]
    for path, table, place in zip(folders, tables, places, strict=True):
        if len(table) != len(place):
            raise ConfigError(
                f"{path}: {len(table)} rows but {len(place)} places (a damaged folder?)",
                option="inputs",
            )
    source = np.concatenate([np.full(len(p), i, dtype=np.int64) for i, p in enumerate(places)])
    row = np.concatenate([np.arange(len(p), dtype=np.int64) for p in places])
    file = np.concatenate([p["file"].to_numpy() for p in places]).astype(np.int64)
    line = np.concatenate([p["line"].to_numpy() for p in places]).astype(np.int64)
    order = np.lexsort((line, file))
    offsets = np.cumsum([0] + [len(t) for t in tables])
    whole = pa.concat_tables(tables)
    global_rows = offsets[source[order]] + row[order]
    for start in range(0, len(global_rows), BATCH_ROWS):
        yield whole.take(pa.array(global_rows[start : start + BATCH_ROWS]))


def _documents(path: Path) -> Any:
    """A PT shard run's documents, unpacked from its blocks with the lengths in places.arrow:
    the blocks' real tokens in order are the documents back to back."""
    import numpy as np
    import pyarrow as pa

    manifest = read_manifest(path)
    if manifest["options"]["last_block"] == "drop" and manifest["tokens"].get("dropped"):
        raise ConfigError(
            f"{path}: its last partial block was dropped (--last-block drop), so its last "
            "documents are gone; prep the shard runs with --last-block pad to merge them",
            option="last-block",
        )
    table = _table(path)
    ids = table["input_ids"].combine_chunks().flatten().to_numpy()
    mask = table["attention_mask"].combine_chunks().flatten().to_numpy()
    tokens = ids[mask == 1].astype(np.int32)
    lengths = _places(path)["tokens"].to_numpy().astype(np.int64)
    if lengths.sum() != len(tokens):
        raise ConfigError(
            f"{path}: the blocks hold {len(tokens)} tokens, places.arrow says {lengths.sum()}",
            option="inputs",
        )
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    documents = pa.ListArray.from_arrays(pa.array(offsets), pa.array(tokens))
    return pa.table({"input_ids": documents})


def _rejects(path: Path) -> list[str]:
    """The lines of a folder's ``rejects.jsonl`` (split at ``\n`` only: a record may hold
    U+2028), each with its newline."""
    file = path / "rejects.jsonl"
    if not file.is_file():
        return []
    return [line + "\n" for line in file.read_text(encoding="utf-8").split("\n") if line]


def add_parser(commands: Any) -> None:
    """Adds ``merge`` to the top-level ``ferrotune`` subparsers."""
    parser = commands.add_parser(
        "merge",
        help="merge prep output folders (shard runs, or whole runs)",
        description=(
            "Merge the folders of the --num-shards N runs of one split into the folder one run "
            "writes (rows back in input order, PT blocks packed again), or concatenate "
            "independent folders. They must agree on stage, tokenizer, template and options."
        ),
    )
    parser.add_argument("folders", nargs="+", metavar="FOLDER", help="prep output folders")
    parser.add_argument("--out", required=True, help="the merged folder (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument(
        "--shard-size", default="500MB", help="close an output shard past this size"
    )
    parser.add_argument("--quiet", action="store_true", help="no summary, only errors")
    parser.set_defaults(run=_run)


def _run(args: Any) -> int:
    manifest = merge(args.folders, args.out, overwrite=args.overwrite, shard_size=args.shard_size)
    if not args.quiet:
        counts = manifest["counts"]
        how = {"shard_runs": "shard runs of one split", "concatenated": "whole runs"}
        print(
            f"wrote {args.out}: {manifest['rows']:,} {manifest['stage']} rows in "
            f"{len(manifest['shards'])} shard(s) from {len(args.folders)} folders "
            f"({how[manifest['merge']['mode']]})\n"
            f"  records  {counts['read']:,} read = {counts['written']:,} written + "
            f"{counts['empty']:,} empty + {counts['rejected']:,} rejected + "
            f"{counts['dropped']:,} dropped"
        )
    return 0
