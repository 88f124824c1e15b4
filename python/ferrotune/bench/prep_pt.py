"""``ferrotune bench prep pt``: text lines into 1024-token pretraining blocks, three ways.

``ferrotune``
    ``ferrotune.data.prep_pt`` (what ``ferrotune prep pt`` runs): Rust reads, tokenizes, appends
    EOS, packs and writes Arrow shards.
``datasets``
    The HF ``datasets`` pipeline of MedicalGPT-style pretraining scripts: ``load_dataset("text")``
    → ``map(tokenize, num_proc=N)`` (``AutoTokenizer``, EOS appended, empty lines dropped) →
    ``map(group_texts, num_proc=N)`` → ``save_to_disk``.
``encode_batch_fast``
    Bare ``tokenizers.Tokenizer.encode_batch_fast`` over batches of 2000 lines, writing
    nothing: the ceiling for any pipeline whose BPE is HF ``tokenizers``.

tokens are document tokens plus one EOS per non-empty line, before packing, and must agree
across all three. blocks differ on purpose: ferrotune packs across the whole corpus and pads
the last block; the classic ``group_texts`` drops the remainder of every 1000-document batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ferrotune.bench.prep import WHITESPACE, Contender, PrepRun, Stage, agree, ferrotune_child

BLOCK_SIZE = 1024
BATCH_LINES = 2000
FERROTUNE_OPTIONS = {"block_size": BLOCK_SIZE}


def is_document(text: str) -> bool:
    """Whether ferrotune counts the line as a document (not empty or whitespace only)."""
    return bool(text.strip(WHITESPACE))


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


def batches(corpus: Path, size: int) -> Iterator[list[str]]:
    """The corpus's documents, streamed in lists of ``size``."""
    batch: list[str] = []
    with corpus.open(encoding="utf-8", newline="\n") as f:
        for line in f:
            text = line.removesuffix("\n").removesuffix("\r")  # as ferrotune's line reader
            if is_document(text):
                batch.append(text)
                if len(batch) >= size:
                    yield batch
                    batch = []
    if batch:
        yield batch


def encode_batch_child(corpus: str, tokenizer: str, **_: Any) -> dict[str, Any]:
    """Bare ``encode_batch_fast``: tokens of every document plus one EOS each; writes nothing."""
    from tokenizers import Tokenizer

    start = time.perf_counter()
    bpe = Tokenizer.from_file(str(Path(tokenizer) / "tokenizer.json"))
    tokens = documents = 0
    for batch in batches(Path(corpus), BATCH_LINES):
        tokens += sum(len(encoding) for encoding in bpe.encode_batch_fast(batch))
        documents += len(batch)
    seconds = time.perf_counter() - start
    with open(corpus, "rb") as f:
        lines = sum(1 for _ in f)
    return {"records": lines, "items": 0, "tokens": tokens + documents, "seconds": seconds}


def check(runs: Sequence[PrepRun], extra: dict[str, Any]) -> bool:
    """Prints whether the contenders' token counts agree; False if not."""
    return agree("tokens", {r.contender: r.tokens for r in runs})


STAGE = Stage(
    name="pt",
    subdir="pretrain",
    pattern="*.txt",
    records="pretraining text",
    items="blocks",
    default_mb=50.0,
    contenders=(
        Contender("ferrotune", "prep_pt:ferrotune", ours=True),
        Contender("encode_batch_fast", "prep_pt:encode_batch_child"),
        Contender("datasets", "prep_pt:datasets_child", needs=("datasets",)),
    ),
    comparable=(("ferrotune", "encode_batch_fast"), ("ferrotune", "datasets")),
    check=check,
    keep_blank=True,
    example="pt",
)
