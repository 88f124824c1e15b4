"""``prep_*`` functions: thin typed wrappers over the Rust engine that return the manifest."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Literal

from ferrotune import _native

PathLike = str | os.PathLike[str]


def _as_list(inputs: PathLike | Sequence[PathLike]) -> list[str]:
    if isinstance(inputs, (str, os.PathLike)):
        return [os.fspath(inputs)]
    return [os.fspath(item) for item in inputs]


def prep_pt(
    tokenizer: PathLike,
    inputs: PathLike | Sequence[PathLike],
    out: PathLike,
    *,
    block_size: int = 1024,
    workers: int | None = None,
    text_field: str = "text",
    doc_sep: Literal["line", "blank-line"] = "line",
    last_block: Literal["pad", "drop"] = "pad",
    eos: bool = True,
    eos_token: str | None = None,
    empty: Literal["skip", "error"] = "skip",
    skip_bad: bool = False,
    overwrite: bool = False,
    quiet: bool = True,
    num_shards: int = 1,
    shard_index: int = 0,
    shard_size: str | int = "500MB",
    input_format: Literal["txt", "jsonl", "json", "parquet"] | None = None,
) -> dict[str, Any]:
    """Tokenizes a pretraining corpus and packs it into ``block_size`` blocks under ``out``.

    ``tokenizer`` is a HF model folder (``tokenizer.json`` + ``tokenizer_config.json``) or a
    ``tokenizer.json``. ``inputs`` are files, folders or globs of ``.txt`` (one document per
    line, or per paragraph with ``doc_sep="blank-line"``), ``.jsonl``/``.json`` (the
    ``text_field``) and ``.parquet`` (the ``text_field`` column).

    Each document is encoded as ``transformers``' ``tokenizer(text)`` would, followed by EOS
    (unless ``eos=False``), concatenated and cut into blocks; ``position_ids`` restart at each
    document and each block. The last partial block is padded (labels -100) or dropped.

    The folder appears atomically when the run succeeds. A bad record raises
    :class:`ferrotune.errors.DataError` naming file, line and field, unless ``skip_bad``, which
    writes it to ``rejects.jsonl`` and counts it. Returns the manifest (also in
    ``out/manifest.json``), whose counts add up: read = written + empty + rejected.
    """
    manifest = _native.prep_pt(
        os.fspath(tokenizer),
        _as_list(inputs),
        os.fspath(out),
        block_size=block_size,
        workers=workers or 0,
        text_field=text_field,
        doc_sep=doc_sep,
        last_block=last_block,
        eos=eos,
        eos_token=eos_token,
        empty=empty,
        skip_bad=skip_bad,
        overwrite=overwrite,
        quiet=quiet,
        num_shards=num_shards,
        shard_index=shard_index,
        shard_size=str(shard_size),
        input_format=input_format,
    )
    return json.loads(manifest)


def prep_sft(
    tokenizer: PathLike,
    inputs: PathLike | Sequence[PathLike],
    out: PathLike,
    *,
    template: PathLike = "auto",
    system: str | None = None,
    max_length: int = 2048,
    overlong: Literal["truncate", "drop"] = "truncate",
    learn: Literal["all", "last"] = "all",
    same_role: Literal["reject", "merge"] = "reject",
    layout: str | None = None,
    pack: bool = False,
    workers: int | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    quiet: bool = True,
    num_shards: int = 1,
    shard_index: int = 0,
    shard_size: str | int = "500MB",
) -> dict[str, Any]:
    """Renders conversations with the chat template, tokenizes them once, and writes
    ``input_ids``, ``attention_mask`` and ``labels`` (-100 everywhere but the assistant answers,
    whose closing end-of-turn token is learned) under ``out``.

    ``inputs`` are ``.jsonl``/``.json`` files of ShareGPT (with tools, function calls and
    observations), OpenAI ``messages`` or Alpaca records, detected per record (``layout`` forces
    one). ``template`` is ``auto`` (the tokenizer's own), a built-in (chatml, qwen, llama3,
    vicuna, alpaca) or a ``.jinja`` file; templates with ``{% generation %}`` blocks give the
    masks transformers' ``return_assistant_tokens_mask`` gives. ``learn="last"`` learns only the
    final answer. Conversations longer than ``max_length`` are truncated or dropped
    (``overlong``); those ending on a user turn or with nothing to learn are dropped; all are
    counted in the manifest. ``pack`` fills ``max_length`` rows best-fit-decreasing with
    ``position_ids`` restarting per conversation.
    """
    manifest = _native.prep_sft(
        os.fspath(tokenizer),
        _as_list(inputs),
        os.fspath(out),
        template=os.fspath(template),
        system=system,
        max_length=max_length,
        overlong=overlong,
        learn=learn,
        same_role=same_role,
        layout=layout,
        pack=pack,
        workers=workers or 0,
        skip_bad=skip_bad,
        overwrite=overwrite,
        quiet=quiet,
        num_shards=num_shards,
        shard_index=shard_index,
        shard_size=str(shard_size),
    )
    return json.loads(manifest)
