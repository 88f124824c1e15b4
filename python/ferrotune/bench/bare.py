"""The bare tokenizer engines of ``ferrotune bench prep pt``: documents in, token counts out.

Self-contained on purpose: it imports nothing of ferrotune, so that an interpreter of another
virtual environment (``tokenizers`` 1.0, which ``transformers`` cannot share an environment
with) runs it as a script, ``python -I bare.py FUNCTION KWARGS_JSON``, printing the function's
JSON result after :data:`RESULT_TAG` as :mod:`ferrotune.bench.child` does. Every engine runs
that way, this environment's too, so none carries ferrotune's imports in its memory.

Each engine reports its time two ways: ``seconds``, load + encode (reading ``tokenizer.json``
and the corpus and encoding: what a user's script pays), and ``encode_seconds``, the encode
calls alone. ``tokens`` are every document's tokens plus one EOS each, as ferrotune counts them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

RESULT_TAG = "BENCH_RESULT "  # the line a child's result follows (ferrotune.bench.measure)
BATCH_LINES = 2000
# What Rust's `str::trim` removes (the Unicode White_Space property), which ferrotune uses to
# find empty documents and turns. Plain `str.strip()` would also strip U+001C..U+001F.
WHITESPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)


def is_document(text: str) -> bool:
    """Whether ferrotune counts the line as a document (not empty or whitespace only)."""
    return bool(text.strip(WHITESPACE))


def batches(corpus: Path, size: int = BATCH_LINES) -> Iterator[list[str]]:
    """The corpus's documents (its non-empty lines), streamed in lists of ``size``."""
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


def count_lines(corpus: str) -> int:
    with open(corpus, "rb") as f:
        return sum(1 for _ in f)


def encode_all(corpus: str, encode: Any) -> tuple[int, int, float]:
    """(tokens, documents, seconds in ``encode``) over the corpus; ``encode(batch)`` returns
    each document's token count."""
    tokens = documents = 0
    encoding = 0.0
    for batch in batches(Path(corpus)):
        start = time.perf_counter()
        tokens += sum(encode(batch))
        encoding += time.perf_counter() - start
        documents += len(batch)
    return tokens, documents, encoding


def result(corpus: str, tokens: int, documents: int, times: Sequence[float], version: str) -> dict:
    load, encode, total = times
    detail = {"load_seconds": load, "encode_seconds": encode, "version": version}
    return {
        "records": count_lines(corpus),
        "items": 0,
        "tokens": tokens + documents,  # + one EOS per document
        "seconds": total,
        "detail": detail,
    }


# --------------------------------------------------------------------------- HF tokenizers


def tokenizers_child(corpus: str, tokenizer: str, method: str, **_: Any) -> dict[str, Any]:
    """``tokenizers.Tokenizer.<method>`` over batches of ``BATCH_LINES`` documents: 0.2x's
    ``encode_batch_fast`` (no offsets), 1.0's ``encode_batch`` (1.0 has no offsets at all)."""
    import tokenizers

    start = time.perf_counter()
    bpe = tokenizers.Tokenizer.from_file(str(Path(tokenizer) / "tokenizer.json"))
    encode_batch = getattr(bpe, method)
    load = time.perf_counter() - start
    tokens, documents, encode = encode_all(corpus, lambda b: map(len, encode_batch(b)))
    total = time.perf_counter() - start
    version = f"tokenizers {tokenizers.__version__}"
    return result(corpus, tokens, documents, (load, encode, total), version)


# --------------------------------------------------------------------------- tiktoken


class NotApplicable(ValueError):
    """The engine cannot reproduce this tokenizer; the row says so instead of failing."""


def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet back to bytes: each byte is a printable character, the
    printable ASCII and Latin-1 ones themselves, the rest U+0100 onwards in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in chars]
    chars.update({b: chr(256 + i) for i, b in enumerate(others)})
    return {c: b for b, c in chars.items()}


def split_pattern(pre_tokenizer: dict[str, Any] | None) -> str:
    """The regex of a byte-level BPE's ``Split`` pre-tokenizer (Qwen2, Llama 3, cl100k-like)."""
    parts = (pre_tokenizer or {}).get("pretokenizers") or [pre_tokenizer or {}]
    kinds = [p.get("type") for p in parts]
    splits = [p for p in parts if p.get("type") == "Split" and "Regex" in p.get("pattern", {})]
    if len(splits) != 1 or "ByteLevel" not in kinds:
        raise NotApplicable(f"not applicable: pre-tokenizer {kinds}, not Split(regex) + ByteLevel")
    return splits[0]["pattern"]["Regex"]


def load_tiktoken(path: Path) -> tuple[Any, str | None]:
    """A ``tiktoken.Encoding`` equal to the byte-level BPE of ``tokenizer.json`` at ``path``, and
    the Unicode normalization to apply first (``"NFC"`` or None).

    mergeable_ranks: every vocabulary token's bytes (the byte-level alphabet decoded) at its id
    (tiktoken merges by rank, HF by merge order: the same where ids follow the merges, as in
    vocabularies converted from tiktoken's, like Qwen's); pat_str: the ``Split`` pre-tokenizer's
    regex; special tokens: every added token (HF matches them in the text, special or not).
    """
    import tiktoken

    spec = json.loads(path.read_text(encoding="utf-8"))
    model, normalizer = spec["model"], spec.get("normalizer") or {}
    if model.get("type") != "BPE":
        raise NotApplicable(f"not applicable: a {model.get('type')} model, not byte-level BPE")
    if normalizer.get("type") not in (None, "NFC"):
        raise NotApplicable(f"not applicable: normalizer {normalizer.get('type')}")
    added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
    decode = byte_decoder()
    try:
        ranks = {
            bytes(decode[c] for c in token): i
            for token, i in model["vocab"].items()
            if token not in added
        }
    except KeyError as e:
        raise NotApplicable(f"not applicable: {e} is not a byte-level character") from e
    if any(bytes([b]) not in ranks for b in range(256)):
        raise NotApplicable("not applicable: the vocabulary lacks some single bytes")
    encoding = tiktoken.Encoding(
        path.parent.name,
        pat_str=split_pattern(spec.get("pre_tokenizer")),
        mergeable_ranks=ranks,
        special_tokens=added,
    )
    return encoding, normalizer.get("type")


def tiktoken_child(corpus: str, tokenizer: str, workers: int, **_: Any) -> dict[str, Any]:
    """``tiktoken.Encoding.encode_batch(num_threads=workers)`` of an Encoding built from the same
    ``tokenizer.json``, NFC applied first (as HF's normalizer does) within the encode time."""
    import unicodedata

    import tiktoken

    start = time.perf_counter()
    try:
        encoding, form = load_tiktoken(Path(tokenizer) / "tokenizer.json")
    except NotApplicable as e:
        return {"skip": str(e)}
    load = time.perf_counter() - start

    def encode(batch: list[str]) -> Any:
        if form:
            batch = [unicodedata.normalize(form, text) for text in batch]
        return map(len, encoding.encode_batch(batch, num_threads=workers, allowed_special="all"))

    tokens, documents, seconds = encode_all(corpus, encode)
    total = time.perf_counter() - start
    version = f"tiktoken {tiktoken.__version__}"
    return result(corpus, tokens, documents, (load, seconds, total), version)


def own_peak() -> int:
    """This process's peak resident bytes so far (Linux reports ``ru_maxrss`` in KiB): a child
    too short-lived for the parent's 50 ms samples still reports its peak."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: Sequence[str]) -> int:
    name, kwargs = argv
    function = {"tokenizers_child": tokenizers_child, "tiktoken_child": tiktoken_child}[name]
    result = function(**json.loads(kwargs))
    print(RESULT_TAG + json.dumps({**result, "own_peak": own_peak()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
