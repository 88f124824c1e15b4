"""End to end: every stage, prepped from the MedicalGPT sample data with the real Qwen2.5
tokenizer under ``engine="auto"`` and ``engine="reference"``, writes byte-identical shards (the
manifests' sha256 of each shard), the same counts and tokens, and the auto manifest's engine
section says the fast engine encoded the texts. The engine changes the speed, never the rows
(docs/architecture.md §4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferrotune.data import prep_dpo, prep_ppo, prep_pt, prep_rm, prep_sft

STAGES = {
    # stage: (prep function, the MedicalGPT inputs, options as the prep tests use them)
    "pt": (prep_pt, ["pretrain"], {"block_size": 512}),
    "sft": (prep_sft, ["sft"], {"skip_bad": True, "max_length": 4096}),
    "sft-packed": (prep_sft, ["sft"], {"skip_bad": True, "max_length": 1024, "pack": True}),
    "rm": (prep_rm, ["reward"], {}),
    "dpo": (prep_dpo, ["reward"], {}),
    "ppo": (prep_ppo, ["grpo/sample.jsonl"], {}),
}


def without_time(manifest: dict) -> dict:
    """What must be equal: everything but the engine section, the options' engine, timings and
    the output path."""
    skip = {"engine", "elapsed_seconds", "timings", "out", "output"}
    kept = {k: v for k, v in manifest.items() if k not in skip}
    kept["options"] = {k: v for k, v in manifest["options"].items() if k != "engine"}
    return kept


@pytest.mark.parametrize("stage", list(STAGES))
def test_auto_and_reference_write_identical_shards(stage, qwen_tokenizer, medicalgpt, tmp_path):
    prep, inputs, options = STAGES[stage]
    paths = [medicalgpt / name for name in inputs]
    for path in paths:
        if not path.exists():
            pytest.skip(f"{path} not found")
    manifests = {
        engine: prep(qwen_tokenizer, paths, tmp_path / engine, engine=engine, **options)
        for engine in ("auto", "reference")
    }
    auto, reference = manifests["auto"], manifests["reference"]
    assert auto["shards"] and [s["sha256"] for s in auto["shards"]] == [
        s["sha256"] for s in reference["shards"]
    ]
    for a, b in zip(auto["shards"], reference["shards"], strict=True):
        assert (tmp_path / "auto" / a["file"]).read_bytes() == (
            tmp_path / "reference" / b["file"]
        ).read_bytes()
    assert auto["counts"] == reference["counts"]
    assert auto["counts"]["written"] > 0
    assert auto["tokens"] == reference["tokens"]
    assert without_time(auto) == without_time(reference)

    engine = auto["engine"]
    assert engine["requested"] == "auto" and engine["fast_proven"] is True, engine
    assert engine["fast"] and engine["fast"].startswith("tokenizers 1."), engine
    texts = engine["texts"]
    assert texts["fast"] > 0 and texts["fast"] >= 0.99 * (texts["fast"] + texts["reference"])
    assert reference["engine"]["requested"] == "reference"
    assert reference["engine"]["fast"] is None
    assert reference["engine"]["texts"]["fast"] == 0
    assert reference["engine"]["texts"]["reference"] == texts["fast"] + texts["reference"]
    assert auto["options"]["engine"] == "auto" and reference["options"]["engine"] == "reference"


def test_fast_writes_identical_shards_where_no_text_is_guarded(
    qwen_tokenizer, medicalgpt, tmp_path
):
    """``engine="fast"`` (no guard) too, on data with no character the engines disagree on."""
    path = medicalgpt / "pretrain"
    if not path.exists():
        pytest.skip(f"{path} not found")
    fast = prep_pt(qwen_tokenizer, path, tmp_path / "fast", engine="fast", block_size=512)
    reference = prep_pt(qwen_tokenizer, path, tmp_path / "ref", engine="reference", block_size=512)
    assert [s["sha256"] for s in fast["shards"]] == [s["sha256"] for s in reference["shards"]]
    assert fast["engine"]["texts"]["reference"] == 0
    assert fast["engine"]["texts"]["fast"] == reference["engine"]["texts"]["reference"]


def test_example_data_too(example_tokenizer, tmp_path):
    """The project's own tokenizer and examples (no MedicalGPT needed): identical shards."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    runs = {
        engine: prep_sft(example_tokenizer, examples / "sft", tmp_path / engine, engine=engine)
        for engine in ("auto", "reference")
    }
    assert [s["sha256"] for s in runs["auto"]["shards"]] == [
        s["sha256"] for s in runs["reference"]["shards"]
    ]
    assert runs["auto"]["engine"]["texts"]["fast"] > 0, runs["auto"]["engine"]
