"""``prep rm|dpo|ppo`` on the MedicalGPT preference and prompt files with the real Qwen
tokenizer, against an independent construction with transformers (TRL's recipe: prompt rendered
with the generation prompt, the completion where the token sequences diverge) and TRL's own
``DataCollatorForPreference`` for the DPO prompt mask."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import transformers
from trl.trainer.dpo_trainer import DataCollatorForPreference

from ferrotune.data import prep_dpo, prep_ppo, prep_rm
from ferrotune.errors import DataError

from .conftest import messages_of

NO_LIMIT = 1 << 20


def read_rows(out: Path) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    tables = [pa.ipc.open_stream(str(out / s["file"])).read_all() for s in manifest["shards"]]
    return pa.concat_tables(tables).to_pylist()


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def reference_pairs(path: Path, hf) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) token ids of each record, built here with transformers."""

    def ids(messages, tools, generation_prompt=False):
        return hf.apply_chat_template(
            messages, tools=tools, add_generation_prompt=generation_prompt, tokenize=True,
            return_dict=True,
        )["input_ids"]  # fmt: skip

    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        prompt = messages_of(record["conversations"])
        tools = None
        if record.get("tools"):
            tools = [{"type": "function", "function": t} for t in json.loads(record["tools"])]
        prompt_ids = ids(prompt, tools, generation_prompt=True)
        full = [
            ids([*prompt, {"role": "assistant", "content": record[key]}], tools)
            for key in ("chosen", "rejected")
        ]
        shared = min(common_prefix(prompt_ids, f) for f in full)
        out.append((prompt_ids[:shared], full[0][shared:], full[1][shared:]))
    return out


@pytest.fixture(scope="module")
def hf_qwen(qwen_tokenizer):
    return transformers.AutoTokenizer.from_pretrained(qwen_tokenizer)


@pytest.fixture(scope="module")
def reward_files(medicalgpt: Path) -> list[Path]:
    return sorted((medicalgpt / "reward").glob("*.jsonl"))


def test_dpo_columns_equal_an_independent_construction(
    qwen_tokenizer, hf_qwen, reward_files, tmp_path
):
    manifest = prep_dpo(
        qwen_tokenizer, reward_files, tmp_path / "dpo", max_length=NO_LIMIT,
        max_prompt_length=NO_LIMIT,
    )  # fmt: skip
    rows = read_rows(tmp_path / "dpo")
    expected = [pair for path in reward_files for pair in reference_pairs(path, hf_qwen)]
    assert len(rows) == len(expected) == manifest["counts"]["written"]
    for row, (prompt, chosen, rejected) in zip(rows, expected, strict=True):
        assert row["prompt_input_ids"] == prompt
        assert row["chosen_input_ids"] == prompt + chosen
        assert row["rejected_input_ids"] == prompt + rejected
        assert row["chosen_labels"] == [-100] * len(prompt) + chosen
        assert row["rejected_labels"] == [-100] * len(prompt) + rejected
        for name in ("prompt", "chosen", "rejected"):
            assert row[f"{name}_attention_mask"] == [1] * len(row[f"{name}_input_ids"])


def test_dpo_labels_mask_the_prompt_as_trls_collator_does(qwen_tokenizer, reward_files, tmp_path):
    prep_dpo(qwen_tokenizer, reward_files[:1], tmp_path / "dpo")
    rows = read_rows(tmp_path / "dpo")[:16]
    examples = []
    for row in rows:
        n = len(row["prompt_input_ids"])
        examples.append(
            {
                "prompt_ids": row["prompt_input_ids"],
                "chosen_ids": row["chosen_input_ids"][n:],
                "rejected_ids": row["rejected_input_ids"][n:],
            }
        )
    batch = DataCollatorForPreference(pad_token_id=0)(examples)
    trl_labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    ours = [row["chosen_labels"] for row in rows] + [row["rejected_labels"] for row in rows]
    for trl_row, our_row in zip(trl_labels, ours, strict=True):
        assert trl_row[trl_row != -100].tolist() == [t for t in our_row if t != -100]
        # TRL pads on the right: the learned tokens sit at the same positions as ours.
        assert trl_row[: len(our_row)].tolist() == our_row
        assert torch.all(trl_row[len(our_row) :] == -100)


def test_legacy_layout_gives_the_same_pairs(qwen_tokenizer, medicalgpt, tmp_path):
    current = prep_dpo(qwen_tokenizer, medicalgpt / "reward" / "dpo_zh_500.jsonl", tmp_path / "a")
    legacy_file = medicalgpt / "legacy_format" / "reward" / "dpo_zh_500.jsonl"
    legacy = prep_dpo(qwen_tokenizer, legacy_file, tmp_path / "b")
    assert [s["sha256"] for s in legacy["shards"]] == [s["sha256"] for s in current["shards"]]


def test_rm_columns_are_the_dpo_sequences(qwen_tokenizer, reward_files, tmp_path):
    prep_rm(qwen_tokenizer, reward_files, tmp_path / "rm")
    prep_dpo(qwen_tokenizer, reward_files, tmp_path / "dpo")
    rm_rows, dpo_rows = read_rows(tmp_path / "rm"), read_rows(tmp_path / "dpo")
    assert len(rm_rows) == len(dpo_rows)
    for rm, dpo in zip(rm_rows, dpo_rows, strict=True):
        assert rm["input_ids_chosen"] == dpo["chosen_input_ids"]
        assert rm["input_ids_rejected"] == dpo["rejected_input_ids"]
        assert rm["attention_mask_chosen"] == [1] * len(rm["input_ids_chosen"])


def test_prompts_keep_their_end_and_answers_their_start(qwen_tokenizer, reward_files, tmp_path):
    prep_dpo(qwen_tokenizer, reward_files[:1], tmp_path / "full", max_length=NO_LIMIT,
             max_prompt_length=NO_LIMIT)  # fmt: skip
    manifest = prep_dpo(
        qwen_tokenizer, reward_files[:1], tmp_path / "cut", max_length=96, max_prompt_length=32
    )
    full = read_rows(tmp_path / "full")
    cut = read_rows(tmp_path / "cut")
    assert len(full) == len(cut)
    truncated = 0
    for whole, part in zip(full, cut, strict=True):
        prompt = whole["prompt_input_ids"]
        assert part["prompt_input_ids"] == prompt[-32:]
        n, m = len(prompt), len(part["prompt_input_ids"])
        assert part["chosen_input_ids"][m:] == whole["chosen_input_ids"][n:][: 96 - m]
        assert len(part["chosen_input_ids"]) <= 96
        truncated += len(prompt) > 32
    assert manifest["stage_info"]["truncated_prompts"] == truncated > 0
    dropped = prep_dpo(
        qwen_tokenizer, reward_files[:1], tmp_path / "drop", max_length=96, max_prompt_length=32,
        overlong="drop",
    )  # fmt: skip
    counts = dropped["counts"]
    assert counts["written"] + counts["dropped"] == counts["read"]
    assert set(counts["dropped_by_reason"]) <= {"prompt_too_long", "too_long"}


def test_bad_and_identical_pairs(qwen_tokenizer, tmp_path):
    source = tmp_path / "pairs.jsonl"
    good = {"conversations": [{"from": "human", "value": "q"}], "chosen": "a", "rejected": "b"}
    same = dict(good, rejected="a")
    missing = {"conversations": [{"from": "human", "value": "q"}], "chosen": "a"}
    source.write_text("\n".join(json.dumps(r) for r in (good, same, missing)) + "\n")
    with pytest.raises(DataError) as caught:
        prep_dpo(qwen_tokenizer, source, tmp_path / "out")
    error = caught.value
    assert (error.line, error.reason, error.field) == (3, "missing_field", "rejected")
    assert not (tmp_path / "out").exists()
    manifest = prep_dpo(qwen_tokenizer, source, tmp_path / "out", skip_bad=True)
    counts = manifest["counts"]
    assert (counts["written"], counts["dropped"], counts["rejected"]) == (1, 1, 1)
    assert counts["dropped_by_reason"] == {"identical_pair": 1}


def test_ppo_prompts_with_references(qwen_tokenizer, hf_qwen, medicalgpt, tmp_path):
    path = medicalgpt / "grpo" / "sample.jsonl"
    manifest = prep_ppo(qwen_tokenizer, path, tmp_path / "ppo")
    rows = read_rows(tmp_path / "ppo")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(records) == manifest["stage_info"]["with_reference"]
    for row, record in zip(rows, records, strict=True):
        messages = [{"role": "user", "content": record["question"]}]
        text = hf_qwen.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert row["query"] == text
        assert row["input_ids"] == hf_qwen(text, add_special_tokens=False)["input_ids"]
        assert row["reference"] == record["answer"]

    sft = medicalgpt / "sft" / "medical_sft_1K_format.jsonl"
    prep_ppo(qwen_tokenizer, sft, tmp_path / "from_sft", max_prompt_length=64)
    first = json.loads(sft.read_text(encoding="utf-8").splitlines()[0])
    row = read_rows(tmp_path / "from_sft")[0]
    assert row["reference"] == first["conversations"][-1]["value"]
    assert len(row["input_ids"]) <= 64


def test_identical_bytes_for_any_worker_count(qwen_tokenizer, reward_files, tmp_path):
    digests = [
        [s["sha256"] for s in prep_dpo(qwen_tokenizer, reward_files, tmp_path / f"w{w}",
                                       workers=w)["shards"]]
        for w in (1, 2)
    ]  # fmt: skip
    assert digests[0] == digests[1]


MARGIN_PAIRS = [
    {"conversations": [{"from": "human", "value": "Is rain good for gardens?"}],
     "chosen": "Yes: most plants need regular water.", "rejected": "No.", "score_gap": 2.5},
    {"prompt": "Why knead dough?", "chosen": "Kneading lines up the gluten.",
     "rejected": "To tire your arms.", "score_gap": -1},
]  # fmt: skip


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def test_rm_margin_field_becomes_a_float_column(tmp_path):
    """The numbers land in a float32 ``margin`` column that datasets reads and the RM collator
    passes on; every other column is what prep rm writes without it."""
    import datasets

    from ferrotune.train.reward import PairCollator

    tokenizer = Path(__file__).resolve().parents[2] / "examples" / "tokenizer"
    source = write_jsonl(tmp_path / "pairs.jsonl", MARGIN_PAIRS)
    manifest = prep_rm(tokenizer, source, tmp_path / "with", margin_field="score_gap")
    prep_rm(tokenizer, source, tmp_path / "without")
    assert manifest["options"]["margin_field"] == "score_gap"
    with_margin, plain = read_rows(tmp_path / "with"), read_rows(tmp_path / "without")
    assert [row.pop("margin") for row in with_margin] == [2.5, -1.0]
    assert with_margin == plain
    loaded = datasets.load_from_disk(str(tmp_path / "with"))
    assert loaded.features["margin"].dtype == "float32"
    batch = PairCollator(0)([loaded.with_format("torch")[i] for i in range(2)])
    assert batch["margin"].tolist() == [2.5, -1.0]


@pytest.mark.parametrize(
    "value, reason", [(None, "missing_field"), ("2.5", "wrong_type"), ([1], "wrong_type")]
)
def test_rm_margin_field_must_be_a_number(value, reason, tmp_path):
    tokenizer = Path(__file__).resolve().parents[2] / "examples" / "tokenizer"
    records = [dict(r) for r in MARGIN_PAIRS]
    if value is None:
        del records[1]["score_gap"]
    else:
        records[1]["score_gap"] = value
    source = write_jsonl(tmp_path / "pairs.jsonl", records)
    with pytest.raises(DataError) as caught:
        prep_rm(tokenizer, source, tmp_path / "out", margin_field="score_gap")
    assert (caught.value.line, caught.value.field, caught.value.reason) == (2, "score_gap", reason)
    assert str(source) in str(caught.value) and "--margin-field" in str(caught.value)
    manifest = prep_rm(tokenizer, source, tmp_path / "skip", margin_field="score_gap",
                       skip_bad=True)  # fmt: skip
    assert manifest["counts"]["rejected_by_reason"] == {reason: 1}
    assert [row["margin"] for row in read_rows(tmp_path / "skip")] == [2.5]


def test_margin_field_is_rms_only(tmp_path):
    from ferrotune.errors import ConfigError

    tokenizer = Path(__file__).resolve().parents[2] / "examples" / "tokenizer"
    source = write_jsonl(tmp_path / "pairs.jsonl", MARGIN_PAIRS)
    with pytest.raises(ConfigError, match="only `prep rm` writes a margin column"):
        prep_dpo(tokenizer, source, tmp_path / "out", margin_field="score_gap")


def test_cli_margin_field_feeds_the_reward_trainer(tmp_path):
    """`prep rm --margin-field` then `train rm`: the loss on the first step is the margin loss."""
    from ferrotune.cli import main

    repo = Path(__file__).resolve().parents[2] / "examples"
    source = write_jsonl(tmp_path / "pairs.jsonl", MARGIN_PAIRS)
    assert (
        main(
            [
                "prep",
                "rm",
                "--tokenizer",
                str(repo / "tokenizer"),
                "--input",
                str(source),
                "--out",
                str(tmp_path / "rm"),
                "--margin-field",
                "score_gap",
                "--quiet",
            ]
        )
        == 0
    )
    columns = [
        c["name"] for c in json.loads((tmp_path / "rm/manifest.json").read_text())["columns"]
    ]
    assert columns[-1] == "margin"
    assert main(["train", "rm", "--model", str(repo / "model" / "config.json"), "--data",
                 str(tmp_path / "rm"), "--output-dir", str(tmp_path / "model"), "max_steps=1",
                 "per_device_train_batch_size=2", "use_cpu=true", "save_strategy=no",
                 "report_to=none", "disable_tqdm=true"]) == 0  # fmt: skip
    state = json.loads((tmp_path / "model" / "trainer_state.json").read_text())
    first = next(row for row in state["log_history"] if "loss" in row)
    # A new score head scores near 0: the loss is near the mean of -log sigmoid(-margin).
    want = sum(float(torch.nn.functional.softplus(torch.tensor(m))) for m in (2.5, -1.0)) / 2
    assert first["loss"] == pytest.approx(want, abs=0.05)
