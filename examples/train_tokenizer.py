"""Train the small byte-level BPE tokenizer that ships in ``examples/tokenizer/``.

Why this exists: the demo and the test suite need a real Hugging Face tokenizer,
but they must run offline with no model-hub download. This script trains a tiny
(2048-entry) tokenizer from the project's own example corpus in ``examples/pt/``.
It copies the structure of Qwen2's ``tokenizer.json`` (NFC normaliser, Qwen2's
split regex, then byte-level mapping, with ChatML special tokens), so code paths
exercised with it behave the same as with a real Qwen2-family tokenizer.

The output is deterministic: running the script twice writes byte-identical files.

Usage::

    python examples/train_tokenizer.py [--out examples/tokenizer]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

EXAMPLES_DIR = Path(__file__).resolve().parent
CORPUS_DIR = EXAMPLES_DIR / "pt"
DEFAULT_OUT = EXAMPLES_DIR / "tokenizer"

# The full vocabulary size: 3 special tokens + 256 byte symbols + 1789 merges.
VOCAB_SIZE = 2048
MIN_FREQUENCY = 2
MODEL_MAX_LENGTH = 4096

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Order matters: the trainer gives these ids 0, 1, 2.
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]

# Qwen2's pre-tokenizer pattern, verbatim.
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML, behaving like Qwen2.5's template without tool support: a default system
# message when the conversation does not start with one.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n'"
    " + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

SAMPLE_TEXT = "Bread rises because yeast makes gas. 面包会发起来是因为酵母产生了气体。"


def corpus_files(corpus_dir: Path) -> list[Path]:
    """The corpus files, in a fixed order."""
    files = sorted(p for p in corpus_dir.iterdir() if p.suffix in {".txt", ".jsonl"})
    if not files:
        raise SystemExit(f"no .txt or .jsonl files in {corpus_dir}")
    return files


def iter_documents(files: list[Path]) -> Iterator[str]:
    """Yield each document: a .txt line, or the ``text`` of a .jsonl record."""
    for path in files:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if path.suffix == ".jsonl":
                    if line.strip():
                        yield json.loads(line)["text"]
                else:
                    yield line.rstrip("\n")


def byte_level(**kwargs: bool) -> dict[str, object]:
    """A ByteLevel component exactly as Qwen2's tokenizer.json spells it."""
    return {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": False,
        "use_regex": False,
        **kwargs,
    }


def build_tokenizer() -> Tokenizer:
    """An untrained tokenizer with Qwen2's pipeline around an empty BPE model."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(
        add_prefix_space=False, trim_offsets=False, use_regex=False
    )
    return tok


def train(files: list[Path]) -> Tokenizer:
    tok = build_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=MIN_FREQUENCY,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter_documents(files), trainer=trainer)
    # Spell the decoder and post-processor exactly as Qwen2 does (the Python
    # constructors fill in different, unused defaults), then reload to validate.
    data = json.loads(tok.to_str())
    data["decoder"] = byte_level()
    data["post_processor"] = byte_level()
    return Tokenizer.from_str(json.dumps(data, ensure_ascii=False))


def tokenizer_config(tok: Tokenizer) -> dict[str, object]:
    """The ``tokenizer_config.json``: transformers needs no other file to load it."""
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": ENDOFTEXT,
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": ENDOFTEXT,
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }


def write_json(path: Path, text: str) -> None:
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8", newline="\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus", type=Path, default=CORPUS_DIR, help="folder of .txt / .jsonl files"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output tokenizer folder")
    args = parser.parse_args()

    files = corpus_files(args.corpus)
    tok = train(files)

    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    if vocab_size != VOCAB_SIZE:
        raise SystemExit(
            f"trained vocab has {vocab_size} entries, expected {VOCAB_SIZE} (corpus too small?)"
        )
    for t in SPECIAL_TOKENS:
        ids = tok.encode(t).ids
        if ids != [tok.token_to_id(t)]:
            raise SystemExit(f"special token {t!r} does not encode to a single id: {ids}")

    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "tokenizer.json", tok.to_str(pretty=True))
    write_json(
        args.out / "tokenizer_config.json",
        json.dumps(tokenizer_config(tok), indent=2, ensure_ascii=False),
    )

    enc = tok.encode(SAMPLE_TEXT)
    print(f"corpus: {', '.join(p.name for p in files)}")
    print(f"wrote {args.out}/tokenizer.json and tokenizer_config.json")
    print(f"vocab size: {vocab_size}")
    print("special tokens: " + ", ".join(f"{t}={tok.token_to_id(t)}" for t in SPECIAL_TOKENS))
    print(f"sample: {SAMPLE_TEXT!r}")
    print(f"  {len(enc.ids)} tokens: {enc.ids}")
    print(f"  pieces: {[tok.decode([i]) for i in enc.ids]}")


if __name__ == "__main__":
    main()
