"""``ferrotune bench prep pt``: text lines into 1024-token pretraining blocks, every way at once.

Ours:

``ferrotune-cli``
    ``ferrotune prep pt --tokenizer T --input CORPUS --out TMP --block-size 1024 --workers N
    --quiet``, the command as a user runs it; its seconds are the whole wall time, interpreter
    start-up and the tokenizer load included.
``ferrotune`` / ``ferrotune-reference``
    ``ferrotune.data.prep_pt`` (what the command runs) with ``engine="auto"`` (HF tokenizers
    1.0 where it is proven identical) / ``engine="reference"`` (HF tokenizers 0.23): Rust reads,
    tokenizes, appends EOS, packs and writes Arrow shards; seconds: the manifest's.

Baselines; the bare engines (``bare.py``) write nothing and report load + encode and encode only:

``tokenizers-1.0``
    Bare ``tokenizers`` 1.0.0rc3 ``Tokenizer.encode_batch`` over batches of 2000 lines, in its own
    virtual environment (``OUT/envs/tokenizers-1.0.0rc3``, made by ``--setup-envs``):
    transformers pins the 0.2x line.
``encode_batch_fast``
    Bare ``tokenizers.Tokenizer.encode_batch_fast`` (this environment's 0.2x), the same batches:
    the ceiling for any pipeline whose BPE is HF ``tokenizers``.
``tiktoken``
    A ``tiktoken.Encoding`` built from the same ``tokenizer.json`` (:func:`bare.load_tiktoken`),
    ``encode_batch(num_threads=N)`` over NFC-normalized batches.
``datasets``
    The HF ``datasets`` pipeline of MedicalGPT-style pretraining scripts: ``load_dataset("text")``
    → ``map(tokenize, num_proc=N)`` (``AutoTokenizer``, EOS appended, empty lines dropped) →
    ``map(group_texts, num_proc=N)`` → ``save_to_disk``.

tokens are document tokens plus one EOS per non-empty line, before packing, and must agree
across all of them. blocks differ on purpose: ferrotune packs across the whole corpus and pads
the last block; the classic ``group_texts`` drops the remainder of every 1000-document batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ferrotune.bench.bare import is_document
from ferrotune.bench.prep import (
    CLI,
    Contender,
    PrepRun,
    Stage,
    agree,
    ferrotune_child,
)
from ferrotune.bench.prep_spec import MEDICALGPT, STDLIB

BLOCK_SIZE = 1024
FERROTUNE_OPTIONS = {"block_size": BLOCK_SIZE}
OURS = ("ferrotune-cli", "ferrotune", "ferrotune-reference")
BASELINES = ("tokenizers-1.0", "encode_batch_fast", "tiktoken", "datasets")


def ferrotune(**kwargs: Any) -> dict[str, Any]:
    return ferrotune_child("pt", **kwargs)


def from_manifest(manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    """Blocks written, and the document tokens + EOS before packing (the others' count)."""
    return {"items": manifest["rows"], "tokens": manifest["tokens"]["documents"]}


def datasets_child(corpus: str, tokenizer: str, workers: int, tmp_dir: str) -> dict[str, Any]:
    """The HF ``datasets`` pipeline, timed from tokenizer load to ``save_to_disk``."""
    import tempfile
    from itertools import chain

    import datasets
    import pyarrow.compute as pc
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix="datasets-") as tmp:
        start = time.perf_counter()
        hf_tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        eos = hf_tokenizer.eos_token_id

        def tokenize(examples: dict[str, list[str]]) -> dict[str, list[list[int]]]:
            texts = [text for text in examples["text"] if is_document(text)]
            encoded = hf_tokenizer(texts)
            for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True):
                ids.append(eos)
                mask.append(1)
            return dict(encoded)

        def group_texts(examples: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
            concatenated = {k: list(chain(*examples[k])) for k in examples}
            total = len(concatenated["input_ids"])
            if total >= BLOCK_SIZE:
                total = (total // BLOCK_SIZE) * BLOCK_SIZE
            result = {
                k: [t[i : i + BLOCK_SIZE] for i in range(0, total, BLOCK_SIZE)]
                for k, t in concatenated.items()
            }
            result["labels"] = result["input_ids"].copy()
            return result

        raw = datasets.load_dataset(
            "text", data_files=corpus, split="train", cache_dir=str(Path(tmp) / "cache")
        )
        tokenized = raw.map(tokenize, batched=True, num_proc=workers, remove_columns=["text"])
        grouped = tokenized.map(group_texts, batched=True, num_proc=workers)
        grouped.save_to_disk(str(Path(tmp) / "saved"))
        seconds = time.perf_counter() - start
        lengths = pc.list_value_length(tokenized.data.column("input_ids"))
        tokens = pc.sum(lengths).as_py() or 0
    return {"records": len(raw), "items": len(grouped), "tokens": tokens, "seconds": seconds}


def check(runs: Sequence[PrepRun], extra: dict[str, Any]) -> bool:
    """Prints whether the contenders' token counts agree; False if not."""
    return agree("tokens", {r.label: r.tokens for r in runs})


STAGE = Stage(
    name="pt",
    subdir="pretrain",
    pattern="*.txt",
    records="pretraining text",
    items="blocks",
    default_mb=50.0,
    contenders=(
        Contender("ferrotune-cli", CLI, ours=True),
        Contender("ferrotune", "prep_pt:ferrotune", ours=True),
        Contender(
            "ferrotune-reference", "prep_pt:ferrotune", ours=True, options={"engine": "reference"}
        ),
        Contender(
            "tokenizers-1.0",
            "bare:tokenizers_child",
            options={"method": "encode_batch"},
            env="tokenizers-1.0.0rc3",
        ),
        Contender(
            "encode_batch_fast", "bare:tokenizers_child", options={"method": "encode_batch_fast"}
        ),
        Contender("tiktoken", "bare:tiktoken_child", needs=("tiktoken",)),
        Contender("datasets", "prep_pt:datasets_child", needs=("datasets",)),
    ),
    comparable=tuple((ours, base) for ours in OURS for base in BASELINES),
    check=check,
    keep_blank=True,
    example="pt",
    packages=("tiktoken",),
    corpora=(MEDICALGPT, STDLIB),
)
