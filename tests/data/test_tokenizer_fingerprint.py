"""The tokenizer's fingerprint (``_native.tokenizer_fingerprint``, recorded by prep as the
manifest's ``tokenizer.fingerprint``): the same for a ``tokenizer.json`` that ``transformers``
re-saved or an older writer spelled otherwise, different whenever what decides the ids differs.
The trainers' refusal of another tokenizer is tested in ``tests/trainers/test_train_cli.py``."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ferrotune import _native
from ferrotune.data import prep_pt
from ferrotune.data.manifest import same_tokenizer
from ferrotune.errors import TokenizerError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "tokenizer"


def write(folder: Path, tokenizer: dict[str, Any], **dumps: Any) -> Path:
    """``tokenizer`` as ``folder/tokenizer.json`` (``json.dumps`` options in ``dumps``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, **dumps), encoding="utf-8")
    return folder


def sha256(folder: Path) -> str:
    return hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()


def as_an_older_writer(tokenizer: dict[str, Any]) -> dict[str, Any]:
    """``tokenizer`` spelled as tokenizers before 0.20 wrote it and shuffled: merges as ``"a b"``
    strings, the keys of every object in reverse order, the vocabulary's too, the model's
    defaults left out, another version, a truncation set (ferrotune encodes without)."""

    def reversed_keys(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: reversed_keys(v) for k, v in reversed(list(value.items()))}
        if isinstance(value, list):
            return [reversed_keys(v) for v in value]
        return value

    older = reversed_keys(tokenizer)
    model = older["model"]
    model["merges"] = [" ".join(pair) for pair in tokenizer["model"]["merges"]]
    for key, default in (("ignore_merges", False), ("byte_fallback", False), ("dropout", None)):
        if model[key] == default:
            del model[key]
    older["version"] = "0.9"
    older["truncation"] = {"max_length": 8, "strategy": "LongestFirst", "stride": 0,
                           "direction": "Right"}  # fmt: skip
    return older


def token_of(tokenizer: dict[str, Any], id_: int) -> str:
    return next(token for token, i in tokenizer["model"]["vocab"].items() if i == id_)


def swap_vocab_ids(tokenizer: dict[str, Any]) -> None:
    """Two vocabulary entries trade ids (each text that uses them gets other ids)."""
    vocab = tokenizer["model"]["vocab"]
    a, b = token_of(tokenizer, 300), token_of(tokenizer, 301)
    vocab[a], vocab[b] = vocab[b], vocab[a]


def rename_vocab_entry(tokenizer: dict[str, Any]) -> None:
    vocab = tokenizer["model"]["vocab"]
    token = token_of(tokenizer, 300)
    vocab[token + "x"] = vocab.pop(token)


def swap_merges(tokenizer: dict[str, Any]) -> None:
    """Two merges trade ranks (which merge wins where both apply)."""
    merges = tokenizer["model"]["merges"]
    merges[10], merges[11] = merges[11], merges[10]


def drop_a_merge(tokenizer: dict[str, Any]) -> None:
    del tokenizer["model"]["merges"][10]


def move_an_added_token(tokenizer: dict[str, Any]) -> None:
    tokenizer["added_tokens"][-1]["id"] += 1000


def unspecial_an_added_token(tokenizer: dict[str, Any]) -> None:
    assert tokenizer["added_tokens"][0]["special"]
    tokenizer["added_tokens"][0]["special"] = False


def lstrip_an_added_token(tokenizer: dict[str, Any]) -> None:
    tokenizer["added_tokens"][0]["lstrip"] = not tokenizer["added_tokens"][0]["lstrip"]


def add_a_token(tokenizer: dict[str, Any]) -> None:
    top = max(t["id"] for t in tokenizer["added_tokens"])
    tokenizer["added_tokens"].append({"id": top + 1, "content": "<|new|>", "single_word": False,
                                      "lstrip": False, "rstrip": False, "normalized": False,
                                      "special": True})  # fmt: skip


def change_the_normalizer(tokenizer: dict[str, Any]) -> None:
    assert tokenizer["normalizer"] == {"type": "NFC"}
    tokenizer["normalizer"] = {"type": "NFKC"}


def change_the_pre_tokenizer(tokenizer: dict[str, Any]) -> None:
    byte_level = tokenizer["pre_tokenizer"]["pretokenizers"][1]
    byte_level["add_prefix_space"] = not byte_level["add_prefix_space"]


def use_byte_fallback(tokenizer: dict[str, Any]) -> None:
    tokenizer["model"]["byte_fallback"] = True


EDITS: list[Callable[[dict[str, Any]], None]] = [
    swap_vocab_ids, rename_vocab_entry, swap_merges, drop_a_merge, move_an_added_token,
    unspecial_an_added_token, lstrip_an_added_token, add_a_token, change_the_normalizer,
    change_the_pre_tokenizer, use_byte_fallback,
]  # fmt: skip


@pytest.fixture(scope="module")
def example_json() -> dict[str, Any]:
    return json.loads((EXAMPLE / "tokenizer.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("how", ["AutoTokenizer", "PreTrainedTokenizerFast"])
@pytest.mark.parametrize("which", ["qwen", "example"])
def test_a_tokenizer_resaved_by_transformers_keeps_its_fingerprint(
    how, which, qwen_tokenizer, tmp_path
):
    import transformers

    source = qwen_tokenizer if which == "qwen" else EXAMPLE
    if how == "AutoTokenizer":
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    else:
        tokenizer = transformers.PreTrainedTokenizerFast(
            tokenizer_file=str(source / "tokenizer.json")
        )
    tokenizer.save_pretrained(tmp_path)
    # transformers 5 rewrites the example's layout, and rebuilds Qwen2's decoder and
    # pre-tokeniser with other offset options; only Qwen2's file read as is comes back as it was.
    if (which, how) != ("qwen", "PreTrainedTokenizerFast"):
        assert sha256(tmp_path) != sha256(source)
    assert _native.tokenizer_fingerprint(tmp_path) == _native.tokenizer_fingerprint(source)
    assert _native.tokenizer_fingerprint(tmp_path / "tokenizer.json") == (
        _native.tokenizer_fingerprint(source)
    )


def test_an_older_writers_spelling_keeps_the_fingerprint(qwen_tokenizer, tmp_path):
    qwen = json.loads((qwen_tokenizer / "tokenizer.json").read_text(encoding="utf-8"))
    older = write(tmp_path, as_an_older_writer(qwen), ensure_ascii=True, indent=1)
    text = (older / "tokenizer.json").read_text()
    assert '"\\u0120 \\u0120"' in text  # the first merge, "Ġ Ġ", as a string and escaped
    assert text.index('"model"') < text.index('"added_tokens"')
    assert sha256(older) != sha256(qwen_tokenizer)
    assert _native.tokenizer_fingerprint(older) == _native.tokenizer_fingerprint(qwen_tokenizer)


@pytest.mark.parametrize("edit", EDITS, ids=[edit.__name__ for edit in EDITS])
def test_what_decides_the_ids_changes_the_fingerprint(edit, example_json, tmp_path):
    original = _native.tokenizer_fingerprint(EXAMPLE)
    changed = copy.deepcopy(example_json)
    edit(changed)
    assert changed != example_json
    assert _native.tokenizer_fingerprint(write(tmp_path / "changed", changed)) != original
    # The same edit spelled as an older writer would: still another tokenizer.
    older = write(tmp_path / "older", as_an_older_writer(changed))
    assert _native.tokenizer_fingerprint(older) != original
    assert _native.tokenizer_fingerprint(older) == _native.tokenizer_fingerprint(
        tmp_path / "changed"
    )


def test_prep_records_the_fingerprint_beside_the_sha256(tmp_path):
    manifest = prep_pt(EXAMPLE, [REPO / "examples" / "pt"], tmp_path / "pt", block_size=64)
    recorded = manifest["tokenizer"]
    assert recorded["fingerprint"] == _native.tokenizer_fingerprint(EXAMPLE)
    assert recorded["sha256"] == sha256(EXAMPLE)
    assert recorded["fingerprint"] != recorded["sha256"]


def test_same_tokenizer_compares_fingerprints_and_old_manifests_by_sha256(example_json, tmp_path):
    resaved = write(tmp_path / "resaved", as_an_older_writer(example_json))
    changed_json = copy.deepcopy(example_json)
    swap_merges(changed_json)
    changed = write(tmp_path / "changed", changed_json)
    recorded = {"sha256": sha256(EXAMPLE), "fingerprint": _native.tokenizer_fingerprint(EXAMPLE)}
    assert same_tokenizer(recorded, EXAMPLE)
    assert same_tokenizer(recorded, resaved / "tokenizer.json")
    assert not same_tokenizer(recorded, changed)
    old = {"sha256": recorded["sha256"]}  # a manifest written before the fingerprint
    assert same_tokenizer(old, EXAMPLE / "tokenizer.json")
    assert not same_tokenizer(old, resaved)
    assert not same_tokenizer(old, changed)


def test_a_file_that_is_no_tokenizer_is_named(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(TokenizerError, match=r"not a HuggingFace tokenizer\.json: no model"):
        _native.tokenizer_fingerprint(tmp_path)
    with pytest.raises(TokenizerError, match="no such file or folder"):
        _native.tokenizer_fingerprint(tmp_path / "missing")


def test_comparing_fingerprints_imports_no_training_stack():
    probe = (
        "import sys\n"
        "from ferrotune.data.manifest import same_tokenizer\n"
        f"from ferrotune import _native\n"
        f"path = {str(EXAMPLE)!r}\n"
        "assert same_tokenizer({'fingerprint': _native.tokenizer_fingerprint(path)}, path)\n"
        "print([m for m in ('torch', 'transformers', 'pyarrow') if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
