"""Chat templates rendered by the Rust engine, byte-identical to transformers.

``render_chat_template`` is what ``tokenizer.apply_chat_template(messages, tokenize=False)``
returns, computed without transformers or Jinja2, plus the character spans of the template's
``{% generation %}`` blocks (the assistant text a training template marks as learned).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ferrotune import _native


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    special_tokens: Mapping[str, Any] | None = None,
    name: str = "chat_template",
    **kwargs: Any,
) -> tuple[str, list[tuple[int, int]]]:
    """Renders ``messages`` with the Jinja ``template``; returns ``(text, generation_spans)``.

    Arguments mean what they mean to ``apply_chat_template``: ``special_tokens`` is the
    tokenizer's ``special_tokens_map`` (``bos_token``, ``eos_token``, ...), ``kwargs`` are extra
    template variables such as ``enable_thinking`` and win over special tokens of the same name.
    Everything must be JSON data (tools as JSON schemas, not Python functions).

    ``generation_spans`` are ``(start, end)`` character offsets into ``text``, one per
    ``{% generation %}`` block, empty for templates without such blocks. Raises
    :class:`ferrotune.errors.TemplateError` (with ``.template`` = ``name`` and ``.message``)
    where the template fails or calls ``raise_exception``.
    """
    text, spans = _native.render_chat_template(
        template,
        _dumps(list(messages)),
        tools_json=None if tools is None else _dumps(list(tools)),
        documents_json=None if documents is None else _dumps(list(documents)),
        add_generation_prompt=add_generation_prompt,
        special_tokens_json=None if special_tokens is None else _dumps(dict(special_tokens)),
        kwargs_json=_dumps(kwargs) if kwargs else None,
        name=name,
    )
    return text, [tuple(span) for span in spans]


def builtin_templates() -> dict[str, str]:
    """The built-in chat templates that ``--template NAME`` picks (chatml, qwen, llama3, vicuna,
    alpaca), name → Jinja source. They carry ``{% generation %}`` blocks, so transformers'
    ``return_assistant_tokens_mask`` works with them too."""
    return dict(_native.builtin_templates())
