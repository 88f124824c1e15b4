"""``ferrotune bench kernels|prep`` as a user runs them: the exit status, the printed table, and
the CSV and PNG they write. Quick runs only (small shapes, a small corpus): these check that the
benchmarks work and compare equal work, never how fast anything is."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib.image
import pytest

from ferrotune.bench import corpora, envs, measure
from ferrotune.bench.table import CSV_COLUMNS
from ferrotune.cli import main

REPO = Path(__file__).resolve().parents[2]
HEADER = ("benchmark", "vs", "metric", "ours", "baseline", "ratio", "diff")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        return list(reader)


def assert_real_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert pixels.std() > 0.05, "a blank image"


def assert_table(printed: str) -> None:
    header = next(line for line in printed.splitlines() if line.startswith("benchmark "))
    assert header.split()[: len(HEADER)] == list(HEADER)
    assert "ratio = ours / baseline" in printed


def assert_measured(row: dict[str, str]) -> None:
    """Both figures finite and positive, and the ratio theirs."""
    ours, baseline, ratio = (float(row[k]) for k in ("ours", "baseline", "ratio"))
    assert math.isfinite(ours) and ours > 0, row
    assert math.isfinite(baseline) and baseline > 0, row
    assert ratio == pytest.approx(ours / baseline, rel=1e-4)


def test_kernels_quick_prints_and_writes_ours_against_hf(tmp_path, capsys):
    assert main(["bench", "kernels", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert_table(printed)
    rows = read_csv(tmp_path / "kernels.csv")
    ops = ("cross_entropy", "linear_cross_entropy", "token_logprobs", "linear_token_logprobs")
    metrics = ("forward", "fwd+bwd", "peak extra", "peak extra -grads")
    assert sorted((r["benchmark"].split()[0], r["metric"]) for r in rows) == sorted(
        (op, metric) for op in ops for metric in metrics
    )
    for row in rows:
        assert row["vs"] == "hf" and row["note"] == ""
        if row["unit"] == "ms":
            assert_measured(row)
        # The same seeded inputs: the loss (or mean log-prob and entropy) as HF's, in fp32.
        assert float(row["diff"]) < 1e-4, row
    assert "ferrotune vs hf on the same inputs" in printed
    assert_real_png(tmp_path / "kernels.png")


def assert_fixed_costs(rows: list[dict[str, str]], stage: str) -> None:
    """`ferrotune --version` and the command on one record, each engine: ours alone, timed."""
    fixed = {r["benchmark"] for r in rows if r["benchmark"].startswith("fixed cost: ")}
    assert fixed >= {
        "fixed cost: ferrotune --version",
        f"fixed cost: ferrotune prep {stage} --engine auto, 1 record",
        f"fixed cost: ferrotune prep {stage} --engine reference, 1 record",
    }
    for row in rows:
        if row["benchmark"] in fixed:
            assert row["vs"] == "-" and row["baseline"] == "" and float(row["ours"]) > 0, row


def test_prep_pt_quick_on_the_examples_agrees_with_every_contender(
    tmp_path, capsys, example_tokenizer
):
    args = ["bench", "prep", "pt", "--quick", "--input", str(REPO / "examples" / "pt")]
    args += ["--tokenizer", str(example_tokenizer), "--workers", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert_table(printed)
    assert "tokens agree" in printed
    assert "the bare engines (tokenizers-1.0, encode_batch_fast," in printed  # what time means
    rows = read_csv(tmp_path / "prep_pt.csv")
    assert_fixed_costs(rows, "pt")
    rows = [r for r in rows if not r["benchmark"].startswith("fixed cost: ")]
    label = "prep pt examples 0.2 MB, 1 worker"
    assert {r["benchmark"] for r in rows} == {
        label,
        f"{label} (ferrotune-cli)",
        f"{label} (ferrotune-reference)",
    }
    tiktoken = measure.installed("tiktoken")
    bare = ("encode_batch_fast", "tiktoken") if tiktoken else ("encode_batch_fast",)
    expected = {
        (vs, metric)
        for vs in ("tokenizers-1.0", "encode_batch_fast", "tiktoken", "datasets")
        for metric in ("time", "peak RSS")
    }
    expected |= {(vs, "time vs encode only") for vs in bare}
    assert {(r["vs"], r["metric"]) for r in rows if r["benchmark"] != label} == expected
    assert {(r["vs"], r["metric"]) for r in rows if r["benchmark"] == label} == expected | {
        ("ferrotune-reference", "time"),
        ("ferrotune-reference", "peak RSS"),
    }
    for row in rows:
        if row["vs"] == "tokenizers-1.0":  # its environment is made only with --setup-envs
            assert row["note"].startswith("not set up: --setup-envs") and row["baseline"] == ""
        elif row["vs"] == "tiktoken" and not tiktoken:
            assert row["note"] == "not installed: tiktoken"
        else:
            assert row["note"] == ""
            assert_measured(row)
            assert float(row["diff"]) == 0, "the same tokens on every side"
    assert not (tmp_path / "envs").exists()
    assert_real_png(tmp_path / "prep_pt.png")
    # The corpus is cached in the output folder, never written next to the examples.
    assert list(tmp_path.glob("pt-corpus-examples-*-0.2MB.txt"))


def test_prep_pt_on_the_standard_library_at_two_worker_counts(tmp_path, capsys, example_tokenizer):
    args = ["bench", "prep", "pt", "--quick", "--corpus", "stdlib", "--workers", "1,2"]
    args += ["--only", "ferrotune,encode_batch_fast", "--tokenizer", str(example_tokenizer)]
    assert main([*args, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "prep pt on stdlib: " in printed and " .py files under " in printed
    assert "tokens agree" in printed  # across engines and worker counts
    rows = read_csv(tmp_path / "prep_pt.csv")
    assert {(r["benchmark"], r["vs"]) for r in rows} == {
        (f"prep pt stdlib 0.2 MB, {w}", "encode_batch_fast") for w in ("1 worker", "2 workers")
    }
    for row in rows:
        assert_measured(row)
        assert float(row["diff"]) == 0
    corpus = corpora.stdlib_corpus()
    assert list(corpus.files) == sorted(corpus.files) and len(corpus.files) > 500
    assert all(p.suffix == ".py" and "site-packages" not in p.parts for p in corpus.files)
    text = next(tmp_path.glob("pt-corpus-stdlib-*-0.2MB.txt")).read_bytes()
    assert text.startswith(corpus.files[0].read_bytes()[:1000].replace(b"\r\n", b"\n"))


def test_an_environment_that_cannot_be_made_gets_a_row_that_says_why(
    tmp_path, capsys, example_tokenizer, monkeypatch
):
    def fail(where: Path, requirements: tuple[str, ...]) -> None:
        raise measure.BenchError("pip install tokenizers==1.0.0rc3 failed:\nno network")

    monkeypatch.setattr(envs, "create", fail)
    args = ["bench", "prep", "pt", "--quick", "--only", "ferrotune,tokenizers-1.0"]
    args += ["--setup-envs", "--input", str(REPO / "examples" / "pt")]
    args += ["--tokenizer", str(example_tokenizer), "--out", str(tmp_path)]
    assert main(args) == 0
    assert "not installed: tokenizers-1.0.0rc3 env (no network)" in capsys.readouterr().out
    rows = read_csv(tmp_path / "prep_pt.csv")
    assert rows and all(r["note"].startswith("not installed: tokenizers-1.0.0rc3") for r in rows)


def test_a_baseline_that_is_not_installed_gets_a_row_that_says_so(
    tmp_path, capsys, example_tokenizer, monkeypatch
):
    real = measure.installed
    monkeypatch.setattr(measure, "installed", lambda module: module != "datasets" and real(module))
    args = ["bench", "prep", "pt", "--quick", "--only", "ferrotune,datasets"]
    args += ["--input", str(REPO / "examples" / "pt"), "--tokenizer", str(example_tokenizer)]
    args += ["--out", str(tmp_path)]
    assert main(args) == 0
    assert "not installed: datasets" in capsys.readouterr().out
    rows = read_csv(tmp_path / "prep_pt.csv")
    assert rows and all(r["vs"] == "datasets" for r in rows)
    assert all(r["note"] == "not installed: datasets" and r["baseline"] == "" for r in rows)
    assert all(float(r["ours"]) > 0 for r in rows)


def test_prep_without_data_names_the_option_to_pass(tmp_path, capsys, example_tokenizer):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["bench", "prep", "sft", "--input", str(empty), "--tokenizer", str(example_tokenizer)]
    assert main([*args, "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("ferrotune: error: no conversations")
    assert "--input PATH" in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_prep_sft_and_dpo_quick_on_the_examples_agree_with_hf_and_trl(
    tmp_path, capsys, example_tokenizer
):
    args = ["bench", "prep", "sft", "dpo", "--quick", "--input", str(REPO / "examples")]
    args += ["--tokenizer", str(example_tokenizer), "--workers", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "same template: tokens agree" in printed
    assert "the tokenizer's own template: tokens agree" in printed
    assert "pairs agree" in printed and "tokens agree: prompt" in printed
    assert "first 50 pairs (rows 0-49): trl prompt_ids" in printed
    assert "all 50 (ferrotune-cli, ferrotune, ferrotune-reference)" in printed
    rows = read_csv(tmp_path / "prep_sft_dpo.csv")
    assert_fixed_costs(rows, "sft")
    assert_fixed_costs(rows, "dpo")
    rows = [r for r in rows if not r["benchmark"].startswith("fixed cost: ")]
    sft, dpo = "prep sft examples 0.2 MB, 1 worker", "prep dpo examples 0.2 MB, 1 worker"
    assert {(r["benchmark"], r["vs"]) for r in rows} == {
        (sft, "hf"),
        (sft, "ferrotune-reference"),
        (f"{sft} (ferrotune-cli)", "hf"),
        (f"{sft} (ferrotune-reference)", "hf"),
        (f"{sft} (ferrotune-trl-template)", "hf"),
        (dpo, "trl"),
        (dpo, "ferrotune-reference"),
        (f"{dpo} (ferrotune-cli)", "trl"),
        (f"{dpo} (ferrotune-reference)", "trl"),
    }
    for row in rows:
        assert_measured(row)
        if (
            row["benchmark"].startswith(sft)
            and row["vs"] == "hf"
            and "trl-template" not in row["benchmark"]
        ):
            assert row["diff"] == "", "different templates: tokens not comparable"
        else:
            assert float(row["diff"]) == 0, "the same template: the same tokens"
    assert_real_png(tmp_path / "prep_sft_dpo.png")
