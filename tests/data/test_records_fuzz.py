"""Property: random records through the Python API of every stage's prep never crash, hang or
lose a record. Each input line is written, counted empty, dropped or rejected with a reason
(``--skip-bad``), and ``rejects.jsonl`` holds exactly the rejects, each naming its file and
line; well-formed conversations mixed in are written.

A file is a mix of: well-formed records of the stage's layout; records assembled from every
layout's keys with values of any JSON type (empty strings, nulls, numbers, nested lists of
turns with unknown roles); and broken lines (truncated JSON, random text, lone surrogates
escaped, NUL bytes, deep nesting). Lines end in ``\\n`` or ``\\r\\n``, some files start with a
UTF-8 BOM.

Derandomised like ``test_engine_parity_fuzz.py``: ``FERROTUNE_FUZZ_EXAMPLES`` (default 300,
split over the stages) sets the size of the run, ``FERROTUNE_FUZZ_SEED=N`` draws other
examples. The long run::

    FERROTUNE_FUZZ_EXAMPLES=20000 FERROTUNE_FUZZ_SEED=$RANDOM pytest tests/data/test_records_fuzz.py
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from ferrotune import data as prep_api
from ferrotune.data import ShardDataset

TOKENIZER = Path(__file__).resolve().parents[2] / "examples" / "tokenizer"
EXAMPLES = max(int(os.environ.get("FERROTUNE_FUZZ_EXAMPLES", "300")) // 5, 10)
SEED = os.environ.get("FERROTUNE_FUZZ_SEED")
REASON = re.compile(r"^[a-z][a-z_]*$")

# Every layout's keys, and the roles and speaker names they use (conversation.rs).
KEYS = ["conversations", "messages", "instruction", "input", "output", "history", "system",
        "tools", "chosen", "rejected", "prompt", "question", "query", "answer", "response",
        "response_chosen", "response_rejected", "text", "id"]  # fmt: skip
TURN_KEYS = ["from", "value", "role", "content", "tool_calls", "name", "weight"]
ROLES = ["human", "gpt", "user", "assistant", "system", "tool", "function_call",
         "observation", "bot", "", "USER"]  # fmt: skip

words = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), words)
turns = st.dictionaries(st.sampled_from(TURN_KEYS), st.one_of(scalars, st.sampled_from(ROLES)),
                        max_size=4)  # fmt: skip
values = st.one_of(
    scalars,
    st.lists(turns, max_size=5),
    st.lists(st.one_of(scalars, st.lists(scalars, max_size=2)), max_size=3),
    st.dictionaries(st.sampled_from(TURN_KEYS), scalars, max_size=3),
)
any_record = st.dictionaries(st.sampled_from(KEYS), values, max_size=5)

# A word with a letter in it: never empty after trimming, so a record made of them is usable.
said = st.from_regex(r"[A-Za-z\u4e00-\u4e2f]{1,6}( [a-z0-9]{1,6}){0,4}", fullmatch=True)


@st.composite
def good_record(draw, stage: str) -> dict:
    """A record the stage must write: alternating turns that end with an answer."""
    pairs = draw(st.lists(st.tuples(said, said), min_size=1, max_size=3))
    turns = [t for q, a in pairs for t in ({"from": "human", "value": q},
                                           {"from": "gpt", "value": a})]  # fmt: skip
    if stage == "pt":
        return {"text": " ".join(t["value"] for t in turns)}
    if stage in ("rm", "dpo"):
        chosen = turns[-1]["value"]  # and a different answer (identical answers are dropped)
        return {"conversations": turns[:-1], "chosen": chosen, "rejected": chosen + " not"}
    return {"conversations": turns}


def broken_line(draw) -> str:
    kind = draw(st.sampled_from(["truncated", "text", "nul", "deep", "surrogate", "scalar"]))
    if kind == "truncated":
        full = json.dumps(draw(any_record), ensure_ascii=False)
        return full[: draw(st.integers(0, max(len(full) - 1, 0)))]
    if kind == "text":
        return draw(st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n")))
    if kind == "nul":
        return '{"text": "a\x00b"}'
    if kind == "deep":
        depth = draw(st.integers(100, 5000))
        return '{"messages": ' + "[" * depth + "]" * depth + "}"
    if kind == "surrogate":
        return '{"text": "\\ud800 lone", "conversations": "\\udfff"}'
    return json.dumps(draw(scalars))


@st.composite
def corpus(draw, stage: str) -> tuple[bytes, int, int]:
    """A JSON Lines file, its records (non-blank lines), and how many are well-formed."""
    lines, good = [], 0
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["good", "any", "broken"]))
        if kind == "good":
            lines.append(json.dumps(draw(good_record(stage)), ensure_ascii=draw(st.booleans())))
            good += 1
        elif kind == "any":
            lines.append(json.dumps(draw(any_record), ensure_ascii=draw(st.booleans())))
        else:
            lines.append(broken_line(draw))
    lines = [line for line in lines if line.strip()]  # a blank line is no record
    if not lines:
        lines, good = [json.dumps(draw(good_record(stage)))], 1
    end = draw(st.sampled_from(["\n", "\r\n"]))
    text = end.join(lines) + draw(st.sampled_from(["", end]))
    bom = "\ufeff" if draw(st.booleans()) else ""
    return (bom + text).encode("utf-8", "surrogatepass"), len(lines), good


def check_prep(stage: str, source: bytes, lines: int, good: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.jsonl"
        path.write_bytes(source)
        out = Path(tmp) / "out"
        options = {"block_size": 16} if stage == "pt" else {}
        prep = getattr(prep_api, f"prep_{stage}")
        manifest = prep(TOKENIZER, path, out, skip_bad=True, quiet=True, **options)
        counts = manifest["counts"]
        assert counts["read"] == lines, (counts, source)
        accounted = counts["written"] + counts["empty"] + counts["dropped"] + counts["rejected"]
        assert accounted == lines, (counts, source)
        for kind in ("empty", "dropped", "rejected"):
            by_reason = counts[f"{kind}_by_reason"]
            assert sum(by_reason.values()) == counts[kind], counts
            assert all(REASON.match(reason) for reason in by_reason), counts
        assert counts["written"] >= good, (counts, source)
        rejects = out / "rejects.jsonl"
        # JSON Lines ends lines at "\n" only (a record may hold U+2028 or U+0085)
        lines_of = rejects.read_text(encoding="utf-8").split("\n") if counts["rejected"] else []
        rejected = [json.loads(line) for line in lines_of if line]
        assert len(rejected) == counts["rejected"], counts
        for reject in rejected:
            assert reject["file"] == str(path) and 1 <= reject["line"] <= lines, reject
            assert REASON.match(reject["reason"]) and reject["message"], reject
        assert len(ShardDataset(out)) == manifest["rows"]


@pytest.mark.parametrize("stage", ["pt", "sft", "rm", "dpo", "ppo"])
def test_random_records_are_written_or_counted_with_a_reason(stage):
    @settings(
        max_examples=EXAMPLES,
        derandomize=SEED is None,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=corpus(stage))
    def check(case: tuple[bytes, int, int]) -> None:
        check_prep(stage, *case)

    if SEED is not None:
        check = seed(int(SEED))(check)
    check()
