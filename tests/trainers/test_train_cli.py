"""``ferrotune train pt|sft`` from the command line on shards that ``ferrotune prep`` made from
the MedicalGPT files (Qwen tokenizer) and from the project's examples, tiny models from a config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import transformers

from ferrotune.cli import main
from ferrotune.data import prep_pt, prep_sft

REPO = Path(__file__).resolve().parents[2]
QUIET = ["use_cpu=true", "disable_tqdm=true", "save_strategy=no"]


@pytest.fixture(scope="module")
def sft_few(qwen_tokenizer, medicalgpt, tmp_path_factory) -> Path:
    """Four real SFT conversations, prepped: a batch the model sees again and again."""
    root = tmp_path_factory.mktemp("sft")
    lines = (medicalgpt / "sft" / "medical_sft_1K_format.jsonl").read_text().splitlines()[:4]
    (root / "few.jsonl").write_text("\n".join(lines) + "\n")
    prep_sft(qwen_tokenizer, root / "few.jsonl", root / "shards", max_length=256)
    return root / "shards"


def logged_losses(out: Path) -> list[float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [row["loss"] for row in state["log_history"] if "loss" in row]


def test_sft_trains_saves_and_reloads(sft_few, tiny_config, tmp_path, capsys):
    out = tmp_path / "sft"
    code = main(
        ["train", "sft", "--model", str(tiny_config), "--data", str(sft_few), "--output-dir",
         str(out), "max_steps=12", "per_device_train_batch_size=4", "learning_rate=1e-2",
         "save_strategy=steps", "save_steps=12", *QUIET[:2]]
    )  # fmt: skip
    assert code == 0
    assert f"sft model saved to {out}" in capsys.readouterr().out
    losses = logged_losses(out / "checkpoint-12")
    assert len(losses) == 12 and losses[-1] < 0.8 * losses[0], losses
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "tokenizer.json").is_file()  # the data's tokenizer, beside the model
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ids = tokenizer("头痛怎么办", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()


def test_pt_trains_on_the_examples(tmp_path):
    data = tmp_path / "pt"
    prep_pt(REPO / "examples" / "tokenizer", [REPO / "examples" / "pt"], data, block_size=128)
    out = tmp_path / "model"
    code = main(
        ["train", "pt", "--model", str(REPO / "examples" / "model" / "config.json"), "--data",
         str(data), "--output-dir", str(out), "max_steps=3", "report_to=tensorboard", *QUIET]
    )  # fmt: skip
    assert code == 0
    assert (out / "model.safetensors").is_file()
    assert list(out.rglob("events.out.tfevents.*")), "no TensorBoard log"


def test_yaml_config_with_overrides(tmp_path, tiny_config, sft_few):
    from ferrotune.train import SftConfig, load_config

    (tmp_path / "run.yaml").write_text(
        f"model: {tiny_config}\ndata: {sft_few}\nlearning_rate: 0.001\nmax_steps: 7\n"
        "gradient_accumulation_steps: 2\n"
    )
    config = load_config(SftConfig, str(tmp_path / "run.yaml"), ["max_steps=9"], data=None)
    assert (config.learning_rate, config.max_steps, config.gradient_accumulation_steps) == (
        0.001,
        9,
        2,
    )
    assert config.model == str(tiny_config)


@pytest.mark.parametrize(
    "args, message",
    [
        (["learnig_rate=1"], "unknown setting 'learnig_rate'; did you mean 'learning_rate'?"),
        (["max_steps=many"], "invalid int value: 'many'"),
    ],
)
def test_bad_settings_are_one_line_errors(args, message, sft_few, tiny_config, capsys):
    code = main(["train", "sft", "--model", str(tiny_config), "--data", str(sft_few), *args])
    assert code == 1
    assert message in capsys.readouterr().err


def test_data_from_another_stage_and_a_bad_model_are_named(tmp_path, sft_few, tiny_config, capsys):
    assert main(["train", "pt", "--model", str(tiny_config), "--data", str(sft_few)]) == 1
    assert "prepped for 'sft', not 'pt'" in capsys.readouterr().err
    assert main(["train", "sft", "--model", str(tmp_path), "--data", str(sft_few)]) == 1
    assert "not a model folder (config.json and weights) nor a model config" in (
        capsys.readouterr().err
    )


def test_lora_trains_adapters_and_saves_a_merged_model(sft_few, tiny_config, tmp_path):
    out = tmp_path / "lora"
    code = main(
        ["train", "sft", "--model", str(tiny_config), "--data", str(sft_few), "--output-dir",
         str(out), "max_steps=2", "lora_r=4", "lora_target_modules=q_proj,v_proj",
         "learning_rate=1e-2", *QUIET]
    )  # fmt: skip
    assert code == 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    merged = transformers.AutoModelForCausalLM.from_pretrained(out)  # a plain model
    base = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**json.loads(tiny_config.read_text()))
    )
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert merged.model.layers[0].self_attn.q_proj.weight.shape == (
        base.model.layers[0].self_attn.q_proj.weight.shape
    )


def test_pt_on_medicalgpt_text_loss_falls_and_reloads(qwen_tokenizer, pretrain_files, tiny_config,
                                                      tmp_path):  # fmt: skip
    text = pretrain_files[0].read_text(encoding="utf-8")[:6000]
    (tmp_path / "part.txt").write_text(text, encoding="utf-8")
    prep_pt(qwen_tokenizer, [tmp_path / "part.txt"], tmp_path / "pt", block_size=128)
    out = tmp_path / "model"
    code = main(
        ["train", "pt", "--model", str(tiny_config), "--data", str(tmp_path / "pt"),
         "--output-dir", str(out), "max_steps=10", "per_device_train_batch_size=8",
         "learning_rate=1e-2", *QUIET]
    )  # fmt: skip
    assert code == 0
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [row["loss"] for row in state["log_history"] if "loss" in row]
    assert losses[-1] < 0.85 * losses[0], losses
    transformers.AutoModelForCausalLM.from_pretrained(out)


def test_sft_output_feeds_rm_and_dpo(sft_few, tiny_config, qwen_tokenizer, medicalgpt, tmp_path):
    """The SFT model folder is the next stages' --model: RM gets a new score head on it, DPO
    takes it as policy and reference (frozen here, not precomputed)."""
    from ferrotune.data import prep_dpo, prep_rm

    sft = tmp_path / "sft"
    assert main(["train", "sft", "--model", str(tiny_config), "--data", str(sft_few),
                 "--output-dir", str(sft), "max_steps=1", *QUIET]) == 0  # fmt: skip
    lines = (medicalgpt / "reward" / "dpo_zh_500.jsonl").read_text().splitlines()[:4]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    prep_rm(qwen_tokenizer, tmp_path / "pairs.jsonl", tmp_path / "rm-data", max_length=128)
    prep_dpo(qwen_tokenizer, tmp_path / "pairs.jsonl", tmp_path / "dpo-data", max_length=128)
    assert main(["train", "rm", "--model", str(sft), "--data", str(tmp_path / "rm-data"),
                 "--output-dir", str(tmp_path / "rm"), "max_steps=1", *QUIET]) == 0  # fmt: skip
    assert main(["train", "dpo", "--model", str(sft), "--data", str(tmp_path / "dpo-data"),
                 "--output-dir", str(tmp_path / "dpo"), "max_steps=1", "logging_steps=1",
                 "precompute_ref_logps=false", *QUIET]) == 0  # fmt: skip
    state = json.loads((tmp_path / "dpo" / "trainer_state.json").read_text())
    first = next(row for row in state["log_history"] if "loss" in row)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy = frozen reference
    assert not list((tmp_path / "dpo-data").glob("ref-logps-*"))  # nothing precomputed


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU-only errors need a machine without")
@pytest.mark.parametrize(
    "setting, message",
    [
        ("fp16=true", "fp16=true: this machine has no CUDA GPU. fp16 mixed precision needs"),
        ("tf32=true", "tf32=true: this machine has no CUDA GPU."),
        ("bf16=true", "bf16=true: this machine has no CUDA GPU; bf16 on the CPU needs use_cpu"),
        ("optim=adamw_bnb_8bit", "optim=adamw_bnb_8bit: bitsandbytes optimizers need a CUDA"),
    ],
)
def test_gpu_only_settings_on_a_cpu_machine(setting, message, sft_few, tiny_config, capsys):
    code = main(["train", "sft", "--model", str(tiny_config), "--data", str(sft_few), setting])
    assert code == 1
    assert message in capsys.readouterr().err


def test_a_model_with_another_tokenizer_is_named(sft_few, tiny_config, tmp_path, capsys):
    """The data was prepped with the Qwen tokenizer; a model folder shipping the examples'
    tokenizer (as every stage's output does) must not train on it."""
    model = tmp_path / "model"
    config = transformers.AutoConfig.for_model(**json.loads(tiny_config.read_text()))
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(model)
    (model / "tokenizer.json").write_bytes(
        (REPO / "examples/tokenizer/tokenizer.json").read_bytes()
    )
    assert main(["train", "sft", "--model", str(model), "--data", str(sft_few)]) == 1
    err = capsys.readouterr().err
    assert f"--model {model} has another tokenizer than the data" in err
    assert f"prep the data again with --tokenizer {model}" in err


def _config_folder(tiny_config: Path, folder: Path) -> Path:
    """``folder`` with the tiny config as its ``config.json``: ``--model`` for a model
    random-initialised there (a tokenizer is added by each test)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(tiny_config.read_text())
    return folder


def _legacy_spelling(tokenizer: dict) -> dict:
    """``tokenizer`` as an older writer spelled it: merges as ``"a b"`` strings, keys sorted."""
    model = dict(tokenizer["model"], merges=[" ".join(p) for p in tokenizer["model"]["merges"]])
    return json.loads(json.dumps(dict(tokenizer, model=model), sort_keys=True))


@pytest.mark.parametrize("how", ["AutoTokenizer", "PreTrainedTokenizerFast", "legacy"])
def test_a_model_with_the_datas_tokenizer_resaved_trains(
    how, sft_few, tiny_config, qwen_tokenizer, tmp_path
):
    """Every checkpoint re-serialises ``tokenizer.json`` (``save_pretrained``): other bytes, the
    same ids. The data was prepped with the Qwen tokenizer; its re-saved copy must be accepted."""
    model = _config_folder(tiny_config, tmp_path / "model")
    source = qwen_tokenizer / "tokenizer.json"
    if how == "AutoTokenizer":
        transformers.AutoTokenizer.from_pretrained(qwen_tokenizer).save_pretrained(model)
    elif how == "PreTrainedTokenizerFast":
        transformers.PreTrainedTokenizerFast(tokenizer_file=str(source)).save_pretrained(model)
    else:
        legacy = _legacy_spelling(json.loads(source.read_text(encoding="utf-8")))
        (model / "tokenizer.json").write_text(json.dumps(legacy, ensure_ascii=False))
    if how != "PreTrainedTokenizerFast":  # read as is, Qwen2's file is written back unchanged
        assert (model / "tokenizer.json").read_bytes() != source.read_bytes()
    out = tmp_path / "out"
    args = ["train", "sft", "--model", str(model), "--data", str(sft_few), "--output-dir",
            str(out), "max_steps=1", *QUIET]  # fmt: skip
    assert main(args) == 0
    assert (out / "config.json").is_file()


def _swap_vocab_ids(tokenizer: dict) -> None:
    vocab = tokenizer["model"]["vocab"]
    vocab["hello"], vocab["world"] = vocab["world"], vocab["hello"]


def _change_a_merge(tokenizer: dict) -> None:
    merges = tokenizer["model"]["merges"]
    assert merges[2] == ["i", "n"]
    merges[2] = ["o", "n"]


def _move_an_added_token(tokenizer: dict) -> None:
    token = next(t for t in tokenizer["added_tokens"] if t["content"] == "<|im_end|>")
    token["id"] = 151700


def _unspecial_an_added_token(tokenizer: dict) -> None:
    token = next(t for t in tokenizer["added_tokens"] if t["content"] == "<|im_start|>")
    assert token["special"]
    token["special"] = False


def _change_the_normalizer(tokenizer: dict) -> None:
    assert tokenizer["normalizer"] == {"type": "NFC"}
    tokenizer["normalizer"] = {"type": "NFKC"}


@pytest.mark.parametrize(
    "edit",
    [_swap_vocab_ids, _change_a_merge, _move_an_added_token, _unspecial_an_added_token,
     _change_the_normalizer],
    ids=lambda edit: edit.__name__.strip("_"),
)  # fmt: skip
def test_a_model_with_a_changed_tokenizer_is_refused(
    edit, sft_few, tiny_config, qwen_tokenizer, tmp_path, capsys
):
    """One vocabulary entry, merge, added token or the normaliser changed is another tokenizer:
    its fingerprint differs from the manifest's, and training is refused as for any other."""
    from ferrotune import _native

    tokenizer = json.loads((qwen_tokenizer / "tokenizer.json").read_text(encoding="utf-8"))
    edit(tokenizer)
    model = _config_folder(tiny_config, tmp_path / "model")
    (model / "tokenizer.json").write_text(json.dumps(_legacy_spelling(tokenizer)))
    manifest = json.loads((sft_few / "manifest.json").read_text())
    assert _native.tokenizer_fingerprint(model) != manifest["tokenizer"]["fingerprint"]
    assert main(["train", "sft", "--model", str(model), "--data", str(sft_few)]) == 1
    err = capsys.readouterr().err
    assert f"--model {model} has another tokenizer than the data" in err
    assert f"prep the data again with --tokenizer {model}" in err


def test_gradient_checkpointing_gives_the_same_steps(sft_few, tiny_config, tmp_path):
    """The loss reads the final hidden states (``logits_to_keep=1``, ``output_hidden_states``):
    recomputing activations in the backward must not change losses or gradient norms."""

    def run(checkpointing: str) -> list[tuple[float, float]]:
        out = tmp_path / checkpointing
        assert main(["train", "sft", "--model", str(tiny_config), "--data", str(sft_few),
                     "--output-dir", str(out), "max_steps=3", "per_device_train_batch_size=2",
                     "learning_rate=1e-2", f"gradient_checkpointing={checkpointing}",
                     *QUIET]) == 0  # fmt: skip
        state = json.loads((out / "trainer_state.json").read_text())
        return [(r["loss"], r["grad_norm"]) for r in state["log_history"] if "loss" in r]

    plain, recomputed = run("false"), run("true")
    assert len(plain) == 3
    for (loss, norm), (loss2, norm2) in zip(plain, recomputed, strict=True):
        assert loss2 == pytest.approx(loss, rel=1e-5) and norm2 == pytest.approx(norm, rel=1e-4)


@pytest.fixture(scope="module")
def example_pairs(tmp_path_factory) -> dict[str, Path]:
    from ferrotune.data import prep_dpo, prep_rm

    root = tmp_path_factory.mktemp("pairs")
    prep_rm(REPO / "examples/tokenizer", REPO / "examples/pairs", root / "rm", max_length=256)
    prep_dpo(REPO / "examples/tokenizer", REPO / "examples/pairs", root / "dpo", max_length=256)
    return {"rm": root / "rm", "dpo": root / "dpo"}


@pytest.mark.parametrize("stage", ["rm", "dpo"])
def test_preference_stages_evaluate(stage, example_pairs, tmp_path):
    """Reward pairs have no ``labels``: evaluation still gives the loss and the stage's metrics.
    DPO evaluated before training, policy = reference (precomputed for the eval pairs too):
    the loss is ln 2 and the margins 0."""
    data = str(example_pairs[stage])
    out = tmp_path / stage
    assert main(["train", stage, "--model", str(REPO / "examples/model/config.json"), "--data",
                 data, "--eval-data", data, "--output-dir", str(out), "max_steps=2",
                 "eval_strategy=steps", "eval_steps=1", "eval_on_start=true",
                 "per_device_eval_batch_size=16", *QUIET]) == 0  # fmt: skip
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [row for row in state["log_history"] if "eval_loss" in row]
    assert [row["step"] for row in evals] == [0, 1, 2]
    metric = "eval_accuracy" if stage == "rm" else "eval_rewards/accuracies"
    assert all(0.0 <= row[metric] <= 1.0 and math.isfinite(row["eval_loss"]) for row in evals)
    if stage == "dpo":
        assert evals[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert evals[0]["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
        assert len(list(example_pairs["dpo"].glob("ref-logps-*.pt"))) == 1  # one cache serves both
