"""Shared pieces of the engine parity tests (``test_engine_parity*.py``).

The rule they enforce (docs/architecture.md §4, issue 12): the fast engine must give the
reference's ids and offsets *exactly* for every text ``--engine auto`` uses it on; exactness is
the gate, never a tolerance. The independent reference is HF's Python ``tokenizers`` package
loaded from the same ``tokenizer.json`` (truncation and padding off). Every comparison also
reads ``engine_report()`` and returns how many texts each engine encoded, so a test can assert
that the fast engine really ran and did not pass by routing everything to the reference.

Here: :class:`EnginePair` (ferrotune's ``Tokenizer`` under one engine beside HF's), the corpora
readers, the hypothesis text strategy, and small tokenizers trained on the spot (nothing can be
downloaded) for byte-level BPE families besides Qwen2's and for unproven ones.
"""

from __future__ import annotations

import json
import sysconfig
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

import pytest
import tokenizers
from hypothesis import strategies as st
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from ferrotune.data import Tokenizer

HERE = Path(__file__).resolve().parent
MULTILINGUAL = HERE / "multilingual.txt"

# The cl100k pattern with runs of up to three digits (Llama 3), exactly as the proven families'
# tokenizer.json files spell it (rust/core/src/encoder/support.rs, PATTERNS[1]); Qwen2's has
# single digits (PATTERNS[0]).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")

# Texts on which the two engines' Unicode tables disagree (a mark added after Unicode 9, whose
# NFC the reference's tables do not know; a letter assigned in Unicode 17; a Unicode 16
# composition): the guard of `--engine auto` must send them to the reference.
KNOWN_DIVERGENCES = (
    "\u0302\u1df9",
    "A\u1dfa\u0301",
    "\u09fe\u0323",
    "\U000326f2'S",
    "\U00016ec1'I",
    "\U00016d67\U00016d67 x",
)

QWEN_SPECIALS = ("<|im_end|>", "<|endoftext|>", "<|im_start|>")
# Qwen2.5's added tokens that are not special (matched in the text all the same).
QWEN_ADDED = ("<tool_call>", "</tool_call>", "<think>", "</think>", "<|fim_prefix|>")

# MedicalGPT's ShareGPT roles as chat-message roles.
ROLES = {"human": "user", "gpt": "assistant", "system": "system", "observation": "tool"}


def messages_of(turns: list[dict]) -> list[dict]:
    """ShareGPT turns as chat messages (a function call: an assistant turn with tool_calls)."""
    messages = []
    for turn in turns:
        if turn["from"] == "function_call":
            call = {"type": "function", "function": json.loads(turn["value"])}
            messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        else:
            messages.append({"role": ROLES[turn["from"]], "content": turn["value"]})
    return messages


# ---------------------------------------------------------------------------------------------
# The two engines side by side


@cache
def hf_tokenizer(path: Path) -> tokenizers.Tokenizer:
    """HF's Python tokenizer for a folder or tokenizer.json: the independent reference."""
    file = path / "tokenizer.json" if path.is_dir() else path
    tokenizer = tokenizers.Tokenizer.from_file(str(file))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _first_mismatch(texts: Sequence[str], ours: list, reference: list, what: str) -> str:
    """The first text on which the encodings differ, with both (near the first difference,
    for long ones)."""
    for i, (text, a, b) in enumerate(zip(texts, ours, reference, strict=True)):
        if a == b:
            continue
        shown = text if len(text) <= 300 else text[:300] + f"... ({len(text)} characters)"
        a_ids, b_ids = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
        at = next((k for k, (x, y) in enumerate(zip(a_ids, b_ids, strict=False)) if x != y), None)
        if at is None:
            at = min(len(a_ids), len(b_ids))
        if a_ids != b_ids and len(text) > 300:
            a, b = a_ids[max(0, at - 5) : at + 10], b_ids[max(0, at - 5) : at + 10]
            shown += f"; ids differ from token {at} (shown from token {max(0, at - 5)})"
        return (
            f"{what} differ on text {i} of {len(texts)}: {shown!r}\n"
            f"  reference (HF tokenizers {tokenizers.__version__}): {b}\n"
            f"  ferrotune: {a}"
        )
    return f"{what}: {len(ours)} encodings for {len(reference)} texts"


class EnginePair:
    """ferrotune's ``Tokenizer`` under one engine beside HF's Python tokenizer, one file.

    ``ours_*`` return the encodings with how many texts each engine encoded in that call (from
    ``engine_report``); ``assert_*`` compare with HF, failing with the first text that differs,
    and return those counts."""

    def __init__(self, path: Path, engine: str):
        self.path = path
        self.engine = engine
        self.ours = Tokenizer(path, engine=engine)
        self.hf = hf_tokenizer(path)
        # A post-processor that adds no token leaves the ids as they are: HF's ids with special
        # tokens are then its ids without, and one reference call serves both comparisons (HF's
        # encoding is what the corpora tests spend their time on).
        self.adds_nothing = (
            self.hf.num_special_tokens_to_add(False) == 0
            and self.hf.encode("a").ids == self.hf.encode("a", add_special_tokens=False).ids
        )

    def report(self) -> dict:
        return json.loads(self.ours.engine_report())

    def _counted(self, encode):
        before = self.report()["texts"]
        out = encode()
        after = self.report()["texts"]
        return out, {name: after[name] - before[name] for name in ("fast", "reference")}

    def ours_ids(self, texts: list[str]) -> tuple[list[list[int]], dict[str, int]]:
        return self._counted(lambda: self.ours.encode_batch(texts, add_special_tokens=True))

    def ours_offsets(self, texts: list[str]) -> tuple[list, dict[str, int]]:
        # (ids, [(start, end), ...]) per text, as HF's (encoding.ids, encoding.offsets).
        return self._counted(lambda: self.ours.encode_batch_with_offsets(texts))

    def reference_ids(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=True)]

    def reference_offsets(self, texts: list[str]) -> list:
        return [(e.ids, e.offsets) for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def _compare(self, texts, ours, counts, reference, what) -> dict[str, int]:
        what = f"{what} (engine={self.engine}, {self.path.name})"
        assert ours == reference, _first_mismatch(texts, ours, reference, what)
        assert counts["fast"] + counts["reference"] == len(texts), counts
        return counts

    def assert_ids(self, texts: Sequence[str]) -> dict[str, int]:
        """Ids with special tokens equal HF's on every text."""
        texts = list(texts)
        ours, counts = self.ours_ids(texts)
        return self._compare(texts, ours, counts, self.reference_ids(texts), "ids")

    def assert_offsets(self, texts: Sequence[str]) -> dict[str, int]:
        """Ids and character offsets, no special tokens added, equal HF's on every text."""
        texts = list(texts)
        ours, counts = self.ours_offsets(texts)
        reference = self.reference_offsets(texts)
        return self._compare(texts, ours, counts, reference, "ids and offsets")

    def assert_both(self, texts: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]:
        """:meth:`assert_ids` and :meth:`assert_offsets`; returns both counts."""
        if not self.adds_nothing:
            return self.assert_ids(texts), self.assert_offsets(texts)
        texts = list(texts)
        ours_ids, ids_counts = self.ours_ids(texts)
        ours, offsets_counts = self.ours_offsets(texts)
        reference = self.reference_offsets(texts)
        reference_ids = [ids for ids, _ in reference]
        return (
            self._compare(texts, ours_ids, ids_counts, reference_ids, "ids"),
            self._compare(texts, ours, offsets_counts, reference, "ids and offsets"),
        )


@pytest.fixture(scope="session")
def engine_pair():
    """``engine_pair(path, engine="auto")``: an :class:`EnginePair`, one per path and engine
    for the session (counts are per call, so sharing is safe)."""
    pairs: dict[tuple[Path, str], EnginePair] = {}

    def get(path: Path, engine: str = "auto") -> EnginePair:
        key = (Path(path), engine)
        if key not in pairs:
            pairs[key] = EnginePair(Path(path), engine)
        return pairs[key]

    return get


def mostly_fast(counts: dict[str, int], share: float = 0.99) -> bool:
    """The fast engine encoded at least ``share`` of the texts (and at least one)."""
    total = counts["fast"] + counts["reference"]
    return counts["fast"] > 0 and counts["fast"] >= share * total


# ---------------------------------------------------------------------------------------------
# Corpora


def nonempty_lines(text: str) -> list[str]:
    """Each line of a text file as the PT reader cuts it (``\\r\\n`` too), empty ones left out."""
    lines = (line.removesuffix("\r") for line in text.split("\n"))
    return [line for line in lines if line.strip()]


@pytest.fixture(scope="session")
def multilingual_lines() -> list[str]:
    """tests/data/multilingual.txt: a line or a few in each of ~40 scripts and languages."""
    return nonempty_lines(MULTILINGUAL.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def stdlib_sources() -> list[str]:
    """Every UTF-8 ``*.py`` file of CPython's standard library (site-packages left out)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    sources = []
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "dist-packages" in path.parts:
            continue
        try:
            sources.append(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    if len(sources) < 100:
        pytest.skip(f"CPython's standard library sources not found under {root}")
    return sources


def strings_in(value) -> Iterator[str]:
    """Every string value in a JSON record, nested ones too."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


# ---------------------------------------------------------------------------------------------
# Random text for the property tests

COMBINING = st.one_of(
    st.characters(min_codepoint=0x0300, max_codepoint=0x036F),
    st.characters(min_codepoint=0x1AB0, max_codepoint=0x1AFF),
    st.characters(min_codepoint=0x1DC0, max_codepoint=0x1DFF),
    st.characters(min_codepoint=0x20D0, max_codepoint=0x20FF),
    # Marks added after Unicode 9 (unknown to the reference's NFC tables), then marks that
    # compose or reorder: Telugu, Malayalam, Arabic, Gurmukhi, Latin, Devanagari, Hebrew,
    # Thai, Hangul jamo, kana voicing marks.
    st.sampled_from(
        "\u1df9\u1dfa\u09fe\u0c3c\u0c00\u0d00\u08d3\u0a51"
        "\u0323\u0327\u0301\u093c\u05b0\u0651\u0e48\u1161\u11a8\u3099\u309a"
    ),
)
BASES = st.sampled_from("aAeEoOuUiIsSnNcCyYzZ ɛəıİ\u1ecd\u0101\u1100\u1109\uac00\u0915\u05d0")


def any_of(words: str) -> st.SearchStrategy[str]:
    """One of the space-separated ``words``."""
    return st.sampled_from(words.split(" "))


# Emoji: ZWJ families and professions, skin tones, flags, keycaps, variation selectors, and
# their parts alone.
EMOJI = any_of(
    "👩\u200d👩\u200d👧\u200d👦 👋🏽 👍🏿 🧑🏾\u200d💻 ❤️\u200d🔥 🏳️\u200d🌈 1️⃣ 🇯🇵 🇺🇦 🇧🇷 "
    "\u200d \ufe0f 🏽 🇫 😀 🤖 \U0001fae8"
)
CJK = st.one_of(
    st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
    st.characters(min_codepoint=0x3040, max_codepoint=0x30FF),
    st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3),
    st.characters(min_codepoint=0x20000, max_codepoint=0x323AF),  # the supplementary planes
    st.sampled_from("，。！？、：；「」『』（）【】《》〜・ー"),
)
SCRIPTS = any_of(
    "Ελληνικά кириллица Україна עברית العربية हिन्दी বাংলা தமிழ் ไทย ລາວ ខ្មែរ မြန်မာ བོད་ "
    "ქართული Հայերեն አማርኛ Tiếng Tie\u0302\u0301ng Vie\u0323\u0302t İstanbul ığüş Łódź Příliš "
    "ọ\u0300mọ ΣΑΣ ß ǅ ﬁ Å \u212b \u2126 ｈｅｌｌｏ 𝔸𝕓 ²³ ½ Ⅻ"
)
SPACES = st.lists(
    st.sampled_from(
        [
            " ",
            "  ",
            "\t",
            "\n",
            "\r\n",
            "\r",
            "\xa0",
            "\u3000",
            "\u2003",
            "\u200b",
            "\x0b",
            "\x0c",
            "\u2028",
            "\x85",
        ]
    ),
    min_size=1,
    max_size=12,
).map("".join)
DIGITS = st.one_of(
    st.from_regex(r"[0-9]{1,12}", fullmatch=True),
    any_of("١٢٣ ०१२ ๑๒๓ ３４５ 1,000 3.14 -42 1e-9 0x1F"),
)
PUNCTUATION = st.one_of(
    st.sampled_from("!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~'"),
    any_of("... — – « » “ ” ‘ ’ ¿ ¡ • … → ∀ ≤ √ <| |> <|im_ |im_end|> <|endoftext| </s> <s>"),
)
CONTRACTIONS = any_of("'s 'S 't 'T 're 'RE 've 'VE 'm 'M 'll 'LL 'Ll 'd 'D ’s ''s ' n't")
WORDS = st.from_regex(r"[A-Za-z]{1,10}", fullmatch=True)


def fuzz_text(specials: Sequence[str]) -> st.SearchStrategy[str]:
    """Random text: weighted pieces (words, combining marks, emoji and ZWJ sequences, CJK,
    scripts, runs of whitespace, digits, punctuation, contractions, the tokenizer's special
    tokens right next to text) joined, or fully random ``st.text()``."""
    weights = {WORDS: 6, BASES: 3, COMBINING: 4, EMOJI: 2, CJK: 3, SCRIPTS: 3, SPACES: 4}
    weights |= {DIGITS: 2, PUNCTUATION: 3, CONTRACTIONS: 3, st.characters(): 1}
    weights[st.sampled_from(list(specials))] = 2
    weighted = st.sampled_from([s for s, weight in weights.items() for _ in range(weight)])
    piece = weighted.flatmap(lambda strategy: strategy)
    built = st.lists(piece, max_size=40).map("".join)
    return st.one_of(built, built, built, st.text(), st.text(min_size=20, max_size=200))


# ---------------------------------------------------------------------------------------------
# Small tokenizers trained here


def training_lines() -> list[str]:
    """A few hundred lines: the multilingual file, English prose written here, Python source."""
    english = [
        "The quick brown fox jumps over the lazy dog while the cat sleeps by the fire.",
        "It's a truth universally acknowledged that tests we'd skipped are the ones that fail.",
        "She said they'll arrive at 10:30, but I'm not sure they've left yet; we'll see.",
        "Tokenizers split text into pieces, and byte-level models never meet an unknown byte.",
        "In 2024 the team measured 1,234,567 tokens per second on 16 cores (about 3.5x).",
        "A well-tested program is one whose tests were written before the bugs were found.",
        "Offsets map each token back to the characters it came from, which masks depend on.",
        "   Indented lines, trailing spaces   and\ttabs\tmatter to whitespace rules too.   ",
    ]
    lines = nonempty_lines(MULTILINGUAL.read_text(encoding="utf-8"))
    source = Path(json.__file__).read_text(encoding="utf-8")
    source += Path(sysconfig.__file__).read_text(encoding="utf-8")
    return lines * 3 + english * 10 + source.split("\n")[:600]


def train_byte_level(
    tokenizer: tokenizers.Tokenizer, specials: Sequence[str], vocab_size: int = 1200
) -> None:
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_lines(), trainer=trainer)


def save(tokenizer: tokenizers.Tokenizer, folder: Path, config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    if config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def gpt2_style(folder: Path, trim_offsets: bool) -> Path:
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=trim_offsets)
    train_byte_level(tokenizer, ["<|endoftext|>"])
    return save(tokenizer, folder, {"eos_token": "<|endoftext|>"})


@pytest.fixture(scope="session")
def gpt2_tokenizer(tmp_path_factory) -> Path:
    """GPT-2's layout: byte-level pre-tokeniser with its own regex; offsets trimmed, so the
    fast engine cannot derive them (ids fast, offsets from the reference)."""
    return gpt2_style(tmp_path_factory.mktemp("gpt2-style"), trim_offsets=True)


@pytest.fixture(scope="session")
def gpt2_untrimmed_tokenizer(tmp_path_factory) -> Path:
    """The same with ``trim_offsets: false``, as GPT-2's own tokenizer.json: offsets derived."""
    return gpt2_style(tmp_path_factory.mktemp("gpt2-untrimmed"), trim_offsets=False)


@pytest.fixture(scope="session")
def llama3_tokenizer(tmp_path_factory) -> Path:
    """Llama 3's layout: NFC, the cl100k split with up to three digits, a byte-level step, and
    a template post-processor adding BOS (so ``add_special_tokens`` changes the ids)."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    train_byte_level(tokenizer, ["<|begin_of_text|>", "<|end_of_text|>"])
    bos = tokenizer.token_to_id("<|begin_of_text|>")
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                special_tokens=[("<|begin_of_text|>", bos)],
            ),
        ]
    )
    folder = tmp_path_factory.mktemp("llama3-style")
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
    return save(tokenizer, folder, config)


@pytest.fixture(scope="session")
def qwen2_small_tokenizer(tmp_path_factory) -> Path:
    """Qwen2's split (single digits) and byte-level step, trained small: no normaliser and no
    post-processor (the other branches of the support check), and added tokens that are not
    special, as Qwen2.5's ``<tool_call>``."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    train_byte_level(tokenizer, list(QWEN_SPECIALS))
    tokenizer.add_tokens([tokenizers.AddedToken(t, normalized=False) for t in QWEN_ADDED])
    folder = tmp_path_factory.mktemp("qwen2-style")
    return save(tokenizer, folder, {"eos_token": "<|im_end|>"})


@pytest.fixture(scope="session")
def wordpiece_tokenizer(tmp_path_factory) -> Path:
    """BERT's layout (WordPiece, BERT normaliser and pre-tokeniser): not proven."""
    tokenizer = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(
        vocab_size=800, special_tokens=specials, show_progress=False
    )
    tokenizer.train_from_iterator(training_lines(), trainer=trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    folder = tmp_path_factory.mktemp("wordpiece")
    return save(tokenizer, folder, {"eos_token": "[SEP]", "pad_token": "[PAD]"})


@pytest.fixture(scope="session")
def unigram_tokenizer(tmp_path_factory) -> Path:
    """SentencePiece's layout (Unigram with Metaspace): not proven."""
    tokenizer = tokenizers.Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=3000, special_tokens=["<unk>", "</s>"], unk_token="<unk>", show_progress=False
    )
    tokenizer.train_from_iterator(training_lines(), trainer=trainer)
    folder = tmp_path_factory.mktemp("unigram")
    return save(tokenizer, folder, {"eos_token": "</s>", "unk_token": "<unk>"})
