//! Chat templates: render a conversation to text exactly as transformers'
//! `tokenizer.apply_chat_template(conversation, tokenize=False)` does.
//!
//! Training data is only as good as its prompt format: a template that renders one space or
//! newline differently from transformers trains the model on a format it never sees at
//! inference. So [`ChatTemplate`] compiles the tokenizer's own Jinja template with minijinja,
//! configured to behave like transformers' Jinja2 sandbox ([`environment`]), feeds it the
//! messages as transformers preprocesses them ([`messages`]), and reports the spans of
//! `{% generation %}` blocks ([`generation`]) for assistant-only loss masks.
//!
//! A [`ChatTemplate`] is compiled once and shared by all worker threads (`Send + Sync`);
//! rendering one conversation takes microseconds.

mod environment;
mod generation;
mod messages;
mod pyjson;
mod pystr;

use std::collections::BTreeMap;

use minijinja::Value as JinjaValue;
use serde_json::{Map, Value};

use crate::error::{CoreError, Result};
use environment::Raised;

/// What transformers passes to a template besides the messages.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// JSON-schema tool definitions (`tools=`); `None` renders as Jinja `none`, as in
    /// transformers (so `tools is defined` holds and `tools is none` too).
    pub tools: Option<Value>,
    /// RAG documents (`documents=`), likewise `none` when absent.
    pub documents: Option<Value>,
    /// Append the header that starts an assistant turn.
    pub add_generation_prompt: bool,
    /// The tokenizer's `special_tokens_map` (`bos_token`, `eos_token`, `pad_token`, ...), which
    /// transformers passes as template variables. Values are strings (or lists of strings).
    pub special_tokens: Map<String, Value>,
    /// Extra template variables (`enable_thinking`, `reasoning_effort`, ...); they override
    /// special tokens of the same name, as in transformers.
    pub kwargs: Map<String, Value>,
}

/// A rendered conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// What `apply_chat_template(..., tokenize=False)` returns.
    pub text: String,
    /// Byte ranges `(start, end)` of `text` printed inside `{% generation %}` blocks, ordered
    /// by start; empty when the template has no such blocks.
    pub generation_spans: Vec<(usize, usize)>,
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    name: String,
    has_generation: bool,
    /// The name of the template without generation markers, when the environment holds it:
    /// rendered as the authoritative text where markers could change what the template prints.
    plain_name: Option<String>,
}

/// The variable names transformers sets itself; a kwarg of the same name is a Python
/// `TypeError` there ("got multiple values for keyword argument") and an error here.
const RESERVED: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];

impl ChatTemplate {
    /// Compiles `source`. `name` (a file name, `tokenizer_config.json`, a built-in name) is only
    /// used in error messages.
    pub fn new(source: &str, name: &str) -> Result<ChatTemplate> {
        let source = normalize_newlines(source);
        let rewrite = generation::rewrite(&source);
        let mut env = environment::new_environment();
        env.add_template_owned(name.to_string(), rewrite.marked)
            .map_err(|e| template_error(name, &e))?;
        let plain_name = rewrite
            .plain
            .is_some()
            .then(|| format!("{name} (unmarked)"));
        if let (Some(plain_name), Some(plain)) = (&plain_name, rewrite.plain) {
            env.add_template_owned(plain_name.clone(), plain)
                .map_err(|e| template_error(name, &e))?;
        }
        Ok(ChatTemplate {
            env,
            name: name.to_string(),
            has_generation: rewrite.has_generation,
            plain_name,
        })
    }

    /// The name given to [`ChatTemplate::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the template marks assistant text with `{% generation %}` blocks.
    pub fn has_generation_blocks(&self) -> bool {
        self.has_generation
    }

    /// Renders one conversation (a JSON list of message objects).
    pub fn render(&self, messages: &Value, options: &RenderOptions) -> Result<Rendered> {
        let error = |message: String| CoreError::Template {
            template: self.name.clone(),
            message,
        };
        let messages = messages::prepare(messages).map_err(error)?;
        if let Some(key) = RESERVED.iter().find(|k| options.kwargs.contains_key(**k)) {
            return Err(error(format!(
                "template variable '{key}' is set by the renderer and cannot be passed as a kwarg"
            )));
        }
        if self.has_generation && self.inputs_contain_marker(&messages, options) {
            return Err(error(
                "the conversation contains the reserved noncharacter U+FDD0 or U+FDD1, which \
                 marks {% generation %} blocks"
                    .into(),
            ));
        }

        let context = context(&messages, options);
        let rendered = self.render_named(&self.name, &context)?;
        if !self.has_generation {
            return Ok(Rendered {
                text: rendered,
                generation_spans: Vec::new(),
            });
        }
        let (text, generation_spans) = generation::extract_spans(&rendered).map_err(error)?;
        if let Some(plain) = &self.plain_name {
            if self.render_named(plain, &context)? != text {
                return Err(error(
                    "a {% generation %} block inside a {% set %} block, macro, {% call %} or \
                     {% filter %} is printed transformed (e.g. trimmed), so its span in the \
                     rendering cannot be located"
                        .into(),
                ));
            }
        }
        Ok(Rendered {
            text,
            generation_spans,
        })
    }

    fn render_named(&self, name: &str, context: &JinjaValue) -> Result<String> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| template_error(&self.name, &e))?;
        template
            .render(context)
            .map_err(|e| template_error(&self.name, &e))
    }

    fn inputs_contain_marker(&self, messages: &Value, options: &RenderOptions) -> bool {
        let values = [messages, options.tools.as_ref().unwrap_or(&Value::Null)]
            .into_iter()
            .chain(options.documents.iter())
            .chain(options.special_tokens.values())
            .chain(options.kwargs.values());
        values.into_iter().any(json_contains_marker)
    }
}

/// The template variables, as transformers passes them: the special tokens, overridden by the
/// kwargs, and `messages`, `tools`, `documents`, `add_generation_prompt` (absent ones `none`).
fn context(messages: &Value, options: &RenderOptions) -> JinjaValue {
    let none = || JinjaValue::from(());
    let mut vars: BTreeMap<&str, JinjaValue> = (options.special_tokens.iter())
        .chain(&options.kwargs)
        .map(|(key, value)| (key.as_str(), to_jinja(value)))
        .collect();
    vars.insert("messages", to_jinja(messages));
    vars.insert("tools", options.tools.as_ref().map_or_else(none, to_jinja));
    vars.insert(
        "documents",
        options.documents.as_ref().map_or_else(none, to_jinja),
    );
    vars.insert(
        "add_generation_prompt",
        options.add_generation_prompt.into(),
    );
    JinjaValue::from_pairs(vars)
}

/// Jinja2 reads every `\r\n` and lone `\r` of a template as `\n` (its lexer splits the
/// source on all three and joins with `\n`), so a template saved with Windows line endings
/// renders `\n`; minijinja keeps them verbatim.
fn normalize_newlines(source: &str) -> std::borrow::Cow<'_, str> {
    if source.contains('\r') {
        source.replace("\r\n", "\n").replace('\r', "\n").into()
    } else {
        source.into()
    }
}

/// A JSON value as a template value: integers stay integers and floats floats (`1.0` prints as
/// `1.0`, as in Python), objects keep their key order.
fn to_jinja(value: &Value) -> JinjaValue {
    match value {
        Value::Null => JinjaValue::from(()),
        Value::Bool(b) => JinjaValue::from(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => JinjaValue::from(i),
            (None, Some(u)) => JinjaValue::from(u),
            _ => JinjaValue::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => JinjaValue::from(s.as_str()),
        Value::Array(items) => items.iter().map(to_jinja).collect(),
        Value::Object(fields) => {
            JinjaValue::from_pairs(fields.iter().map(|(k, v)| (k.as_str(), to_jinja(v))))
        }
    }
}

fn json_contains_marker(value: &Value) -> bool {
    match value {
        Value::String(s) => generation::contains_marker(s),
        Value::Array(items) => items.iter().any(json_contains_marker),
        Value::Object(fields) => fields
            .iter()
            .any(|(k, v)| generation::contains_marker(k) || json_contains_marker(v)),
        _ => false,
    }
}

/// A minijinja error as a [`CoreError::Template`]: the template's own `raise_exception`
/// message unchanged, anything else with minijinja's description and line.
fn template_error(name: &str, error: &minijinja::Error) -> CoreError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<Raised>() {
            return CoreError::Template {
                template: name.to_string(),
                message: raised.0.clone(),
            };
        }
        source = e.source();
    }
    CoreError::Template {
        template: name.to_string(),
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(source: &str, messages: Value, options: &RenderOptions) -> Result<Rendered> {
        ChatTemplate::new(source, "test.jinja")?.render(&messages, options)
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ChatTemplate>();
    }

    #[test]
    fn renders_chatml_with_generation_spans() {
        let source = "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' }}\
            {% if m.role == 'assistant' %}\n\
            {% generation %}{{ m.content + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}\
            {% else %}{{ m.content + '<|im_end|>\\n' }}{% endif %}{% endfor %}\n";
        let messages = json!([
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "é!"},
        ]);
        let out = render(source, messages, &RenderOptions::default()).unwrap();
        assert_eq!(
            out.text,
            "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\né!<|im_end|>\n"
        );
        let (start, end) = out.generation_spans[0];
        assert_eq!(&out.text[start..end], "é!<|im_end|>");
        assert_eq!(out.generation_spans.len(), 1);
    }

    #[test]
    fn raise_exception_carries_the_template_message_and_name() {
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user turn!') }}{% endif %}";
        let err = render(
            source,
            json!([{"role": "system", "content": "s"}]),
            &Default::default(),
        )
        .unwrap_err();
        match &err {
            CoreError::Template { template, message } => {
                assert_eq!(template, "test.jinja");
                assert_eq!(message, "Conversations must start with a user turn!");
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("test.jinja"));
    }

    #[test]
    fn raise_exception_inside_a_macro() {
        let source = "{% macro check(m) %}{{ raise_exception('bad ' ~ m.role) }}{% endmacro %}\
                      {{ check(messages[0]) }}";
        let err = render(source, json!([{"role": "x"}]), &Default::default()).unwrap_err();
        assert!(matches!(err, CoreError::Template { message, .. } if message == "bad x"));
    }

    #[test]
    fn variables_like_transformers() {
        let source = "{{ bos_token }}|{{ tools is none }}|{{ documents is defined }}|\
                      {{ enable_thinking }}|{{ eos_token }}|{{ messages|length }}";
        let options = RenderOptions {
            special_tokens: json!({"bos_token": "<s>", "eos_token": "</s>"})
                .as_object()
                .unwrap()
                .clone(),
            kwargs: json!({"enable_thinking": false, "eos_token": "<eos>"})
                .as_object()
                .unwrap()
                .clone(),
            ..Default::default()
        };
        let out = render(source, json!([{"role": "user", "content": "x"}]), &options).unwrap();
        assert_eq!(out.text, "<s>|True|True|False|<eos>|1");
    }

    #[test]
    fn generation_inside_a_set_block() {
        // Jinja2 prints "AB--inside"; transformers reports the span (2, 8), where the block
        // was evaluated, not where its text was printed.
        let source = "AB{% set x %}{% generation %}inside{% endgeneration %}{% endset %}--{{ x }}";
        let out = render(source, json!([{}]), &Default::default()).unwrap();
        assert_eq!(out.text, "AB--inside");
        assert_eq!(out.generation_spans, [(4, 10)]);
        // Trimming the captured text would strip spaces that the markers shield.
        let source = "AB{% set x %}{% generation %} in {% endgeneration %}{% endset %}{{ x|trim }}";
        let err = render(source, json!([{}]), &Default::default()).unwrap_err();
        assert!(err.to_string().contains("cannot be located"), "{err}");
    }

    #[test]
    fn windows_line_endings_render_as_in_jinja2() {
        let source = "a\r\nb{{ messages[0].content }}\r\n{% if true %}\r\nc\r\n{% endif %}\r\n";
        let out = render(source, json!([{"content": "x"}]), &Default::default()).unwrap();
        assert_eq!(out.text, "a\nbx\nc\n");
    }

    #[test]
    fn python_semantics() {
        let source = "{{ x|tojson }}|{{ x.a }}|{{ [true, none, 1.0] }}|{{ ' a \x1f'.strip() }}|\
                      {{ 'a b'.split() }}|{{ 's' is sequence }}|{{ none is iterable }}|\
                      {{ undefined_thing is iterable }}|{{ x.get('zz', 'd') }}|{{ [1, 'b']|join('-') }}\n";
        let options = RenderOptions {
            kwargs: json!({"x": {"b": "<é>", "a": 1e-5}})
                .as_object()
                .unwrap()
                .clone(),
            ..Default::default()
        };
        let out = render(source, json!([{"role": "user"}]), &options).unwrap();
        assert_eq!(
            out.text,
            r#"{"b": "<é>", "a": 1e-05}|1e-05|[True, None, 1.0]|a|['a', 'b']|True|False|True|d|1-b"#
        );
    }
}
