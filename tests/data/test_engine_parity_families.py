"""The fast engine is exact on the other byte-level BPE families it is proven on, and ``auto``
leaves every other tokenizer to the reference.

Nothing can be downloaded, so the families are small tokenizers trained here with HF
``tokenizers`` (``conftest.py``): GPT-2's layout (its byte-level regex; trimmed offsets, and
untrimmed as GPT-2's own file), Llama 3's (NFC, the cl100k split with up to three digits, a BOS
added by a template post-processor) and Qwen2's split trained small (no normaliser, no
post-processor). Each must report ``fast_proven`` and give HF's ids and offsets on
``multilingual.txt``, the training text and MedicalGPT's pretraining documents, with the fast
engine encoding them. Unproven tokenizers (WordPiece, Unigram, and byte-level BPE files one
step outside the proven set) must report why and encode everything with the reference, still
equal to HF. Random text through the families: ``test_engine_parity_fuzz.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import KNOWN_DIVERGENCES, mostly_fast, nonempty_lines, training_lines

PROVEN = [
    "gpt2_tokenizer",
    "gpt2_untrimmed_tokenizer",
    "llama3_tokenizer",
    "qwen2_small_tokenizer",
]
# Whether the fast engine derives offsets (the reference gives them where it cannot).
DERIVES_OFFSETS = {name: name != "gpt2_tokenizer" for name in PROVEN}


@pytest.fixture(params=PROVEN)
def family(request) -> tuple[str, Path]:
    return request.param, request.getfixturevalue(request.param)


def test_the_families_are_proven(family, engine_pair):
    name, path = family
    report = engine_pair(path).report()
    assert report["fast_proven"] is True, report
    assert report["why_not_proven"] is None
    assert report["fast"] and report["fast"].startswith("tokenizers 1.")
    hf = json.loads((path / "tokenizer.json").read_text())
    assert hf["model"]["type"] == "BPE" and hf["added_tokens"], name  # a real trained file
    assert len(hf["model"]["vocab"]) > 600


def test_multilingual_and_training_text(family, multilingual_lines, engine_pair):
    name, path = family
    texts = list(dict.fromkeys([*multilingual_lines, *training_lines()]))
    texts.append("\n".join(multilingual_lines))
    pair = engine_pair(path)
    ids, offsets = pair.assert_both(texts)
    assert ids == {"fast": len(texts), "reference": 0}, ids  # the guard passes every line
    if DERIVES_OFFSETS[name]:
        assert mostly_fast(offsets, 0.5), offsets
    else:
        # Trimmed offsets cannot be derived from the ids: the reference gives them all.
        assert offsets == {"fast": 0, "reference": len(texts)}, offsets


def test_medicalgpt_pretraining_documents(family, pretrain_files, engine_pair):
    name, path = family
    docs = [doc for file in pretrain_files for doc in nonempty_lines(file.read_text("utf-8"))]
    ids, offsets = engine_pair(path).assert_both(docs)
    assert ids["fast"] == len(docs), ids
    if DERIVES_OFFSETS[name]:
        assert mostly_fast(offsets), offsets
    else:
        assert offsets["fast"] == 0, offsets


def test_stdlib_sample(family, stdlib_sources, engine_pair):
    """Every 25th distinct line of CPython's sources, and every 50th whole file."""
    name, path = family
    lines = list(dict.fromkeys(line for source in stdlib_sources for line in source.split("\n")))
    texts = [*lines[::25], *stdlib_sources[::50]]
    ids, offsets = engine_pair(path).assert_both(texts)
    assert mostly_fast(ids, 0.999), ids
    if DERIVES_OFFSETS[name]:
        assert mostly_fast(offsets, 0.999), offsets
    else:
        assert offsets["fast"] == 0, offsets


def test_add_special_tokens_is_honoured(llama3_tokenizer, engine_pair, multilingual_lines):
    """Llama 3's post-processor adds BOS: with ``add_special_tokens`` the ids start with it,
    without (and with offsets) they do not, as HF's."""
    pair = engine_pair(llama3_tokenizer)
    bos = pair.hf.token_to_id("<|begin_of_text|>")
    texts = multilingual_lines[:10]
    with_bos = pair.ours.encode_batch(texts, add_special_tokens=True)
    without = pair.ours.encode_batch(texts, add_special_tokens=False)
    assert all(ids[0] == bos for ids in with_bos)
    assert [ids[1:] for ids in with_bos] == without
    assert without == [e.ids for e in pair.hf.encode_batch(texts, add_special_tokens=False)]
    assert [ids for ids, _ in pair.ours.encode_batch_with_offsets(texts)] == without
    # A special token written in the text is matched as written, next to anything.
    text = "x<|end_of_text|><|begin_of_text|>y <|end_of_text|>\n"
    assert pair.assert_ids([text]) == {"fast": 1, "reference": 0}
    assert pair.assert_offsets([text]) == {"fast": 1, "reference": 0}


@pytest.mark.parametrize("engine", ["auto", "fast"])
def test_known_divergences(family, engine_pair, engine):
    """On the texts the engines' Unicode tables disagree on, ``auto`` goes to the reference;
    ``fast`` runs the fast engine on them (where it differs is what the guard is for)."""
    _, path = family
    pair = engine_pair(path, engine)
    if engine == "auto":
        ids, offsets = pair.assert_both(KNOWN_DIVERGENCES)
        n = len(KNOWN_DIVERGENCES)
        assert ids == offsets == {"fast": 0, "reference": n}
    else:
        _, counts = pair.ours_ids(list(KNOWN_DIVERGENCES))
        assert counts["fast"] == len(KNOWN_DIVERGENCES)


# ---------------------------------------------------------------------------------------------
# Unproven tokenizers: the reference for every text


def edited(source: Path, folder: Path, edit) -> Path:
    """A copy of a trained tokenizer folder with its tokenizer.json edited."""
    folder.mkdir()
    data = json.loads((source / "tokenizer.json").read_text())
    edit(data)
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    config = source / "tokenizer_config.json"
    (folder / "tokenizer_config.json").write_text(config.read_text())
    return folder


def o200k_split(data: dict) -> None:
    """Another Split pattern (GPT-4o's o200k style, case-aware letters)."""
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = (
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+"
        r"|\s+(?!\S)|\s+"
    )


def lstrip_token(data: dict) -> None:
    data["added_tokens"][-1]["lstrip"] = True


def nfkc(data: dict) -> None:
    data["normalizer"] = {"type": "NFKC"}


def byte_fallback(data: dict) -> None:
    data["model"]["byte_fallback"] = True


UNPROVEN_EDITS = {
    "o200k_split": (o200k_split, "Split pattern not proven"),
    "lstrip_token": (lstrip_token, "lstrip"),
    "nfkc": (nfkc, "NFKC normaliser"),
    "byte_fallback": (byte_fallback, "byte_fallback"),
}


@pytest.fixture(params=["wordpiece", "unigram", *UNPROVEN_EDITS])
def unproven(request, tmp_path) -> tuple[Path, str]:
    """An unproven tokenizer folder and a word its why_not_proven must contain."""
    if request.param == "wordpiece":
        return request.getfixturevalue("wordpiece_tokenizer"), "WordPiece"
    if request.param == "unigram":
        return request.getfixturevalue("unigram_tokenizer"), "Unigram"
    edit, reason = UNPROVEN_EDITS[request.param]
    source = request.getfixturevalue("llama3_tokenizer")
    return edited(source, tmp_path / request.param, edit), reason


def test_unproven_tokenizers_go_to_the_reference(unproven, engine_pair, multilingual_lines):
    path, reason = unproven
    pair = engine_pair(path, "auto")
    report = pair.report()
    assert report["fast_proven"] is False, report
    assert reason in report["why_not_proven"], report
    assert report["fast"] is None  # auto does not even load it
    texts = [*multilingual_lines, *training_lines()[:200], "\n".join(multilingual_lines)]
    ids, offsets = pair.assert_both(texts)
    assert ids == offsets == {"fast": 0, "reference": len(texts)}
