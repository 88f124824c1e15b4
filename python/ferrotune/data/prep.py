"""``prep_*`` functions: thin wrappers over the Rust engine that return the manifest.

Options every conversation stage (``prep_sft``, ``prep_rm``, ``prep_dpo``,
``prep_ppo``) takes as keywords: ``template`` (``"auto"``: the tokenizer's own; ``chatml``,
``qwen``, ``llama3``, ``vicuna``, ``alpaca``; or a ``.jinja`` path), ``system`` (a system prompt
for conversations without one), ``max_length``, ``overlong`` (``"truncate"`` or ``"drop"``),
``same_role`` (``"reject"`` or ``"merge"`` two turns of one role in a row), ``format`` (record
layout: ``"auto"`` or ``sharegpt``, ``openai``, ``alpaca``, ``medicalgpt_preference``,
``legacy_preference``, ``trl_preference``, ``prompt``), ``empty`` (``"skip"``, the default: a
record with nothing to train on, such as an empty message, is skipped and counted by reason;
``"error"``: it is a bad record), ``workers``, ``skip_bad``,
``overwrite``, ``quiet``, ``num_shards``, ``shard_index``, ``shard_size`` and ``engine``
(``"auto"``: the fast encoder where it is proven identical to the reference, the reference
elsewhere; ``"fast"``; ``"reference"``: HF ``tokenizers`` 0.23 for every text). Unknown keywords
are refused by name (:class:`ferrotune.errors.ConfigError`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Literal

from ferrotune import _native

PathLike = str | os.PathLike[str]
# The keyword options every conversation stage takes besides its own (this module's docstring).
CHAT_OPTIONS = ("template", "system", "max_length", "overlong", "same_role", "format",
                "empty", "workers", "skip_bad", "overwrite", "quiet", "num_shards", "shard_index",
                "shard_size", "engine")  # fmt: skip


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
    engine: Literal["auto", "fast", "reference"] = "auto",
) -> dict[str, Any]:
    """Tokenizes a pretraining corpus and packs it into ``block_size`` blocks under ``out``.

    ``tokenizer`` is a HF model folder (``tokenizer.json`` + ``tokenizer_config.json``) or a
    ``tokenizer.json``. ``inputs`` are files, folders or globs of ``.txt`` (one document per
    line, or per paragraph with ``doc_sep="blank-line"``), ``.jsonl``/``.json`` (the
    ``text_field``) and ``.parquet`` (the ``text_field`` column).

    Each document is encoded as ``transformers``' ``tokenizer(text)`` would, followed by EOS
    (unless ``eos=False``), concatenated and cut into blocks; ``position_ids`` restart at each
    document and each block. The last partial block is padded (labels -100) or dropped.

    ``engine`` picks the encoder: ``"auto"`` (the fast encoder where it is proven identical to
    the reference, the reference elsewhere), ``"fast"``, or ``"reference"`` (HF ``tokenizers``
    0.23 for every document); the ids are the reference's whichever runs, and the manifest
    records the choice.

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
        engine=engine,
    )
    return json.loads(manifest)


def _prep_chat(
    stage: str,
    tokenizer: PathLike,
    inputs: PathLike | Sequence[PathLike],
    out: PathLike,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Sends one conversation stage's options to the engine as JSON; returns the manifest."""
    if "template" in options:
        options["template"] = os.fspath(options["template"])
    if "shard_size" in options:
        options["shard_size"] = str(options["shard_size"])
    if options.get("workers") is None:
        options.pop("workers", None)
    options.update(tokenizer=os.fspath(tokenizer), inputs=_as_list(inputs), out=os.fspath(out))
    return json.loads(_native.prep_chat(stage, json.dumps(options)))


def prep_sft(
    tokenizer: PathLike,
    inputs: PathLike | Sequence[PathLike],
    out: PathLike,
    *,
    learn: Literal["all", "last"] = "all",
    pack: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Renders conversations with the chat template, tokenizes them once, and writes
    ``input_ids``, ``attention_mask`` and ``labels`` (-100 everywhere but the assistant answers,
    whose closing end-of-turn token is learned) under ``out``; returns the manifest.

    ``inputs`` are ``.jsonl``/``.json`` files of ShareGPT (with tools, function calls and
    observations), OpenAI ``messages`` or Alpaca records, detected per record. Templates with
    ``{% generation %}`` blocks give the masks transformers' ``return_assistant_tokens_mask``
    gives. ``learn="last"`` learns only the final answer. Conversations longer than
    ``max_length`` (default 2048) are truncated or dropped; those ending on a user turn or with
    nothing to learn are dropped; all are counted. ``pack`` fills ``max_length`` rows
    best-fit-decreasing with ``position_ids`` restarting per conversation. Other keywords: the
    conversation-stage options of this module's docstring.
    """
    return _prep_chat("sft", tokenizer, inputs, out, dict(options, learn=learn, pack=pack))


def prep_rm(
    tokenizer: PathLike,
    inputs: PathLike | Sequence[PathLike],
    out: PathLike,
    *,
    max_prompt_length: int = 1024,
    margin_field: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Preference pairs for reward modelling: ``input_ids_chosen``, ``attention_mask_chosen``,
    ``input_ids_rejected``, ``attention_mask_rejected`` (TRL ``RewardTrainer``'s columns).

    Reads MedicalGPT (``conversations`` + ``chosen`` + ``rejected``, and the legacy
    ``question``/``response_chosen``/``response_rejected`` layout) and TRL preference records.
    The prompt is rendered once with the generation prompt and shared by both answers; it keeps
    its end within ``max_prompt_length``, answers keep their start within ``max_length``.
    Identical answers are dropped and counted. ``margin_field``: each record's number of that
    name goes to a float32 ``margin`` column, subtracted in the reward loss (TRL's
    ``RewardTrainer``); a record without one is a bad record naming the field. Other keywords:
    the conversation-stage options of this module's docstring.
    """
    options.update(max_prompt_length=max_prompt_length, margin_field=margin_field)
    return _prep_chat("rm", tokenizer, inputs, out, options)


def prep_dpo(
    tokenizer: PathLike,
    inputs: PathLike | Sequence[PathLike],
    out: PathLike,
    *,
    max_prompt_length: int = 1024,
    **options: Any,
) -> dict[str, Any]:
    """Preference pairs for DPO: ``prompt_input_ids``/``prompt_attention_mask`` and, for chosen
    and rejected, ``*_input_ids`` (prompt included), ``*_attention_mask`` and ``*_labels``
    (-100 over the prompt). The prompt is where TRL's DPO trainer puts it: the longest token
    prefix it shares with both full renderings. Inputs and lengths as :func:`prep_rm`.
    """
    options["max_prompt_length"] = max_prompt_length
    return _prep_chat("dpo", tokenizer, inputs, out, options)


def prep_ppo(
    tokenizer: PathLike,
    inputs: PathLike | Sequence[PathLike],
    out: PathLike,
    *,
    max_prompt_length: int = 1024,
    **options: Any,
) -> dict[str, Any]:
    """Prompts for PPO rollouts: ``input_ids``/``attention_mask`` of the prompt rendered with
    the generation prompt, ``query`` (its text) and ``reference`` (the record's answer, or
    null). Any conversation or preference layout works (a final answer is kept as the
    reference), as do ``prompt``, ``query`` and ``question``/``answer`` records. Other
    keywords: the conversation-stage options of this module's docstring.
    """
    options["max_prompt_length"] = max_prompt_length
    return _prep_chat("ppo", tokenizer, inputs, out, options)
