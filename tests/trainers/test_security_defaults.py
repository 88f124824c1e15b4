"""Security defaults (issue 13, point 6): chat templates cannot reach files, modules or the
environment; trainers load safetensors weights only unless ``allow_pickle_weights`` is set, and
never run a model folder's own code unless ``trust_remote_code`` is set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import transformers

from ferrotune.data import render_chat_template
from ferrotune.errors import ConfigError, TemplateError
from ferrotune.train.config import SftConfig, config_from_values
from ferrotune.train.models import load_causal_lm, load_reward_model

MESSAGES = [{"role": "user", "content": "hi"}]
TINY = {
    "model_type": "qwen2", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
}  # fmt: skip


def tiny_model() -> transformers.PreTrainedModel:
    config = transformers.AutoConfig.for_model(**TINY)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


# ------------------------------------------------------------------ templates


@pytest.mark.parametrize(
    "source",
    [
        "{% include '/etc/passwd' %}",
        "{% include 'tokenizer.json' %}",
        "{% import 'os' as os %}{{ os.environ }}",
        "{% from 'subprocess' import run %}{{ run('true') }}",
        "{% extends '/etc/hostname' %}",
    ],
)
def test_a_template_cannot_load_files_or_modules(source: str) -> None:
    with pytest.raises(TemplateError):
        render_chat_template(source, MESSAGES)


@pytest.mark.parametrize(
    "expression",
    [
        "environ", "os", "self", "cycler", "joiner", "lipsum", "config", "request",
        "''.__class__", "messages.__class__", "range.__globals__", "namespace.__init__",
    ],
)  # fmt: skip
def test_a_template_sees_no_environment_and_no_python_internals(expression: str) -> None:
    """What Jinja-in-Python leaks (``__class__`` walks to ``os``, ``self``, the env): here an
    undefined value renders empty or fails, never a Python object."""
    os.environ["FERROTUNE_SECRET"] = "do-not-leak"
    source = "{{ " + expression + " }}|{{ " + expression + ".FERROTUNE_SECRET }}"
    try:
        text, _ = render_chat_template(source, MESSAGES)
    except TemplateError:
        return
    assert "do-not-leak" not in text
    assert "<" not in text and "object" not in text and "module" not in text


# ------------------------------------------------------------------ model weights and code


def test_pickle_weights_are_refused_unless_allowed(tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    model = tiny_model()
    model.save_pretrained(folder)  # transformers 5 writes safetensors only: make the pickle
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    for load in (
        lambda **kw: load_causal_lm(str(folder), seed=0, **kw),
        lambda **kw: load_reward_model(str(folder), seed=0, pad_id=0, **kw),
    ):
        with pytest.raises(ConfigError, match="pickle") as caught:
            load()
        assert caught.value.option == "model"
        assert "allow_pickle_weights=true" in str(caught.value)
        assert load(allow_pickle=True) is not None


def test_safetensors_folders_never_fall_back_to_a_pickle_beside_them(tmp_path: Path) -> None:
    """A folder with both loads the safetensors file, even if the pickle is corrupt."""
    folder = tmp_path / "both"
    model = tiny_model()
    model.save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle, and never opened")
    loaded = load_causal_lm(str(folder), seed=0)
    for a, b in zip(model.parameters(), loaded.parameters(), strict=True):
        assert torch.equal(a, b)


def remote_code_folder(tmp_path: Path, model_type: str) -> tuple[Path, Path]:
    """A saved tiny model whose config maps it to its own ``modeling_evil.py``, which writes
    a marker file when imported; the folder and the marker's path."""
    folder = tmp_path / model_type
    tiny_model().save_pretrained(folder)
    marker = tmp_path / f"{model_type}-ran"
    (folder / "modeling_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import Qwen2ForCausalLM as EvilForCausalLM\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {
        "AutoConfig": "modeling_evil.EvilConfig",
        "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_a_models_own_code_is_not_run_unless_trusted(tmp_path: Path) -> None:
    # An architecture transformers does not know needs the folder's code: refused.
    folder, marker = remote_code_folder(tmp_path, "evil")
    with pytest.raises(ConfigError, match="trust_remote_code") as caught:
        load_causal_lm(str(folder), seed=0)
    assert caught.value.option == "model"
    assert not marker.exists()
    # One it knows is built from its own classes; the folder's code is never imported.
    folder, marker = remote_code_folder(tmp_path, "qwen2")
    model = load_causal_lm(str(folder), seed=0)
    assert type(model) is transformers.Qwen2ForCausalLM
    assert not marker.exists()


def test_the_training_config_defaults_are_the_safe_ones(tiny_config: Path) -> None:
    config = config_from_values(SftConfig, {"model": str(tiny_config), "data": "d"})
    assert config.trust_remote_code is False
    assert config.allow_pickle_weights is False
    opted = config_from_values(
        SftConfig,
        {"model": "m", "data": "d", "trust_remote_code": "true", "allow_pickle_weights": "true"},
    )
    assert opted.trust_remote_code is True and opted.allow_pickle_weights is True
