//! The conversation layouts: any JSON object becomes a conversation, a preference pair or a
//! prompt, or a [`Problem`] with a known reason, never a panic; and what comes out renders
//! with every built-in template or fails as a template error.
//!
//! Records are built from the layouts' own keys and value shapes (conversation.rs), with wrong
//! types, empty strings, unknown roles and nesting mixed in, so most of them get past layout
//! detection and into the field checks. Every record is tried with every layout, as a forced
//! `--format` does, and with both `--same-role` policies.

use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use ferrotune_core::chat::BUILTINS;
use ferrotune_core::chat_prep::EMPTY_REASONS;
use ferrotune_core::conversation::{self, Layout, Problem, SameRole};
use ferrotune_core::{ChatTemplate, CoreError, RenderOptions};
use serde_json::{json, Map, Value};

use super::{pick, template};

/// Every reason a layout may refuse a record for (conversation.rs).
pub const REASONS: [&str; 12] = [
    "missing_field",
    "wrong_type",
    "invalid_tools",
    "invalid_function_call",
    "unknown_role",
    "empty_content",
    "misplaced_system",
    "consecutive_roles",
    "wrong_layout",
    "prompt_not_open",
    "empty",
    "no_prompt",
];

/// The keys the layouts read, and a few they do not.
pub const KEYS: [&str; 30] = [
    "conversations",
    "from",
    "value",
    "messages",
    "role",
    "content",
    "tool_calls",
    "instruction",
    "input",
    "output",
    "history",
    "system",
    "tools",
    "chosen",
    "rejected",
    "prompt",
    "question",
    "response_chosen",
    "response_rejected",
    "query",
    "answer",
    "reference",
    "response",
    "name",
    "arguments",
    "function",
    "reasoning_content",
    "thinking",
    "text",
    "id",
];

/// ShareGPT and OpenAI role names, with near misses.
pub const ROLES: [&str; 14] = [
    "human",
    "user",
    "gpt",
    "assistant",
    "model",
    "system",
    "function_call",
    "observation",
    "tool",
    "function",
    "developer",
    "bot",
    "User",
    "",
];

/// Strings that mean something to a layout or a template.
const STRINGS: [&str; 18] = [
    "",
    " ",
    "\n",
    "hi",
    "é 你好",
    "{\"name\": \"f\", \"arguments\": {\"x\": 1}}",
    "[{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 1}\"}]",
    "{\"arguments\": {}}",
    "[{\"name\": \"f\", \"parameters\": {}}]",
    "[{\"type\": \"function\", \"function\": {\"name\": \"f\"}}]",
    "not json {",
    "null",
    "[]",
    "a\u{FDD0}b",
    "\u{FDD1}",
    "{{ raise_exception('x') }}",
    "<|im_end|>",
    "\0",
];

/// The keys each layout is told by (with its optional ones), and none.
const SKELETONS: [&[&str]; 9] = [
    &["conversations", "system", "tools"],
    &["messages", "tools"],
    &["instruction", "input", "output", "system", "history"],
    &["conversations", "chosen", "rejected", "system", "tools"],
    &[
        "system",
        "history",
        "question",
        "response_chosen",
        "response_rejected",
    ],
    &["prompt", "chosen", "rejected"],
    &["chosen", "rejected"],
    &["prompt", "query", "question", "answer", "system"],
    &[],
];

/// A string: mostly one of [`STRINGS`] or a role, sometimes anything.
pub fn string(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(match u.choose_index(4)? {
        0 | 1 => pick(u, &STRINGS)?.to_string(),
        2 => pick(u, &ROLES)?.to_string(),
        _ => u.arbitrary()?,
    })
}

/// Any JSON value, nested at most `depth` deep, leaning to the layouts' shapes.
pub fn value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let choices = if depth == 0 { 4 } else { 9 };
    Ok(match u.choose_index(choices)? {
        0 => Value::String(string(u)?),
        1 => pick(
            u,
            &[
                json!(0),
                json!(-1),
                json!(1.5),
                json!(1e300),
                json!(u64::MAX),
            ],
        )?,
        2 => Value::Null,
        3 => Value::Bool(u.arbitrary()?),
        4 => Value::Array(list(u, |u| value(u, depth - 1))?),
        5 => object(u, depth - 1)?,
        6 => turns(u, depth - 1)?,
        7 => messages(u, depth - 1)?,
        _ => history(u)?,
    })
}

fn list(
    u: &mut Unstructured<'_>,
    mut item: impl FnMut(&mut Unstructured<'_>) -> Result<Value>,
) -> Result<Vec<Value>> {
    (0..u.int_in_range(0..=5)?).map(|_| item(u)).collect()
}

fn object(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let mut map = Map::new();
    for _ in 0..u.int_in_range(0..=4)? {
        map.insert(pick(u, &KEYS)?.to_string(), value(u, depth)?);
    }
    Ok(Value::Object(map))
}

/// A value that is usually a string and sometimes anything.
fn mostly_string(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    if u.ratio(7, 8)? {
        Ok(Value::String(string(u)?))
    } else {
        value(u, depth)
    }
}

/// ShareGPT turns `[{"from", "value"}]`, now and then missing a key or with a stray one.
pub fn turns(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let turns = list(u, |u| {
        let mut turn = Map::new();
        if u.ratio(15, 16)? {
            let from = if u.ratio(7, 8)? {
                json!(pick(u, &ROLES)?)
            } else {
                value(u, depth)?
            };
            turn.insert("from".into(), from);
        }
        if u.ratio(15, 16)? {
            turn.insert("value".into(), mostly_string(u, depth)?);
        }
        if u.ratio(1, 8)? {
            turn.insert(pick(u, &KEYS)?.into(), value(u, depth)?);
        }
        Ok(Value::Object(turn))
    })?;
    Ok(Value::Array(turns))
}

/// OpenAI messages `[{"role", "content", "tool_calls"?, ...}]`.
pub fn messages(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    Ok(Value::Array(list(u, |u| message(u, depth))?))
}

fn message(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let mut message = Map::new();
    if u.ratio(15, 16)? {
        let role = if u.ratio(7, 8)? {
            json!(pick(u, &ROLES)?)
        } else {
            value(u, depth)?
        };
        message.insert("role".into(), role);
    }
    if u.ratio(7, 8)? {
        let content = if u.ratio(1, 8)? {
            Value::Null
        } else {
            mostly_string(u, depth)?
        };
        message.insert("content".into(), content);
    }
    if u.ratio(1, 4)? {
        let calls = pick(
            u,
            &[
                json!([{"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]),
                json!([]),
                Value::Null,
                json!("f(x)"),
            ],
        )?;
        message.insert("tool_calls".into(), calls);
    }
    if u.ratio(1, 8)? {
        let key = pick(u, &["reasoning_content", "thinking", "reasoning", "name"])?;
        message.insert(key.into(), mostly_string(u, depth)?);
    }
    Ok(Value::Object(message))
}

/// Alpaca history `[[question, answer], ...]`, sometimes not pairs of strings.
fn history(u: &mut Unstructured<'_>) -> Result<Value> {
    let pairs = list(u, |u| {
        let size = pick(u, &[2, 2, 2, 1, 3])?;
        let pair = (0..size)
            .map(|_| mostly_string(u, 0))
            .collect::<Result<Vec<Value>>>()?;
        Ok(Value::Array(pair))
    })?;
    Ok(Value::Array(pairs))
}

/// `tools`: a JSON text (as ShareGPT files store it), a list of schemas, or something else.
fn tools(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(match u.choose_index(4)? {
        0 => Value::String(string(u)?),
        1 => json!([{"name": "f", "parameters": {"type": "object"}}]),
        2 => json!([{"type": "function", "function": {"name": "f"}}, 3]),
        _ => value(u, 2)?,
    })
}

/// A value shaped for `key` (seven times in eight), else any value.
fn field(u: &mut Unstructured<'_>, key: &str) -> Result<Value> {
    if u.ratio(1, 8)? {
        return value(u, 2);
    }
    match key {
        "conversations" => turns(u, 1),
        "messages" => messages(u, 1),
        "history" => history(u),
        "tools" => tools(u),
        "chosen" | "rejected" | "response_chosen" | "response_rejected" | "prompt" => {
            if u.arbitrary()? {
                messages(u, 1)
            } else {
                Ok(Value::String(string(u)?))
            }
        }
        _ => Ok(Value::String(string(u)?)),
    }
}

/// A record: half the time a valid record of one layout with up to two random changes
/// anywhere in it (most records in a real corpus are fine, and a valid one gets past every
/// check to the rendering); else the keys of one layout with values of any shape.
pub fn record(u: &mut Unstructured<'_>) -> Result<Map<String, Value>> {
    if u.arbitrary()? {
        let mut record = Value::Object(valid_record(u)?);
        for _ in 0..u.int_in_range(0..=2)? {
            mutate(u, &mut record)?;
        }
        if let Value::Object(record) = record {
            return Ok(record);
        }
    }
    let skeleton = pick(u, &SKELETONS)?;
    let mut record = Map::new();
    for key in skeleton {
        if u.ratio(7, 8)? {
            record.insert(key.to_string(), field(u, key)?);
        }
    }
    for _ in 0..u.int_in_range(0..=2)? {
        record.insert(pick(u, &KEYS)?.to_string(), value(u, 2)?);
    }
    Ok(record)
}

/// Text that every check accepts.
const CLEAN: [&str; 6] = ["hi", "é 你好", "2 + 2?", "a\nb", "  padded  ", "<|im_end|>"];

const CALL: &str = "{\"name\": \"f\", \"arguments\": {\"x\": 1}}";

fn clean(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(json!(pick(u, &CLEAN)?))
}

/// A valid record of one layout, as conversation.rs documents them.
fn valid_record(u: &mut Unstructured<'_>) -> Result<Map<String, Value>> {
    let system = |u: &mut Unstructured<'_>| -> Result<Option<Value>> {
        Ok(if u.arbitrary()? {
            Some(clean(u)?)
        } else {
            None
        })
    };
    let mut record = Map::new();
    match u.choose_index(9)? {
        0 => {
            record.insert("conversations".into(), valid_turns(u, true)?);
            if let Some(system) = system(u)? {
                record.insert("system".into(), system);
            }
            if u.arbitrary()? {
                record.insert(
                    "tools".into(),
                    json!("[{\"name\": \"f\", \"parameters\": {}}]"),
                );
            }
        }
        1 => {
            record.insert("messages".into(), valid_messages(u, true)?);
        }
        2 => {
            record.insert("instruction".into(), clean(u)?);
            record.insert("input".into(), pick(u, &[json!(""), json!("input")])?);
            record.insert("output".into(), clean(u)?);
            record.insert("history".into(), json!([["q", "a"]]));
        }
        3 => {
            record.insert("conversations".into(), valid_turns(u, false)?);
            record.insert("chosen".into(), clean(u)?);
            record.insert("rejected".into(), clean(u)?);
        }
        4 => {
            record.insert("system".into(), clean(u)?);
            record.insert("history".into(), json!([["q", "a"]]));
            record.insert("question".into(), clean(u)?);
            record.insert("response_chosen".into(), clean(u)?);
            record.insert("response_rejected".into(), clean(u)?);
        }
        5 => {
            let prompt = if u.arbitrary()? {
                clean(u)?
            } else {
                valid_messages(u, false)?
            };
            record.insert("prompt".into(), prompt);
            record.insert("chosen".into(), clean(u)?);
            let rejected = json!([{"role": "assistant", "content": pick(u, &CLEAN)?}]);
            record.insert("rejected".into(), rejected);
        }
        6 => {
            // TRL's implicit prompt: two conversations sharing all but their last answer.
            let shared = valid_messages(u, false)?;
            for key in ["chosen", "rejected"] {
                let mut conversation = shared.as_array().expect("a list").clone();
                conversation.push(json!({"role": "assistant", "content": pick(u, &CLEAN)?}));
                record.insert(key.into(), Value::Array(conversation));
            }
        }
        _ => {
            let key = pick(u, &["prompt", "query", "question"])?;
            record.insert(key.into(), clean(u)?);
            if u.arbitrary()? {
                record.insert("answer".into(), clean(u)?);
            }
        }
    }
    Ok(record)
}

/// ShareGPT turns: a system turn maybe, then rounds of a question and an answer (the answer
/// maybe after a function call and its observation); the last answer only `with_answer`.
fn valid_turns(u: &mut Unstructured<'_>, with_answer: bool) -> Result<Value> {
    let mut turns = Vec::new();
    if u.arbitrary()? {
        turns.push(json!({"from": "system", "value": pick(u, &CLEAN)?}));
    }
    let rounds = u.int_in_range(1..=3)?;
    for round in 1..=rounds {
        turns.push(json!({"from": pick(u, &["human", "user"])?, "value": pick(u, &CLEAN)?}));
        if round == rounds && !with_answer {
            break;
        }
        if u.arbitrary()? {
            turns.push(json!({"from": "function_call", "value": CALL}));
            turns.push(json!({"from": "observation", "value": "{\"y\": 2}"}));
        }
        turns.push(json!({"from": pick(u, &["gpt", "assistant"])?, "value": pick(u, &CLEAN)?}));
    }
    Ok(Value::Array(turns))
}

/// OpenAI messages, shaped as [`valid_turns`], with tool calls as OpenAI writes them.
fn valid_messages(u: &mut Unstructured<'_>, with_answer: bool) -> Result<Value> {
    let mut messages = Vec::new();
    if u.arbitrary()? {
        messages.push(json!({"role": "system", "content": pick(u, &CLEAN)?}));
    }
    let rounds = u.int_in_range(1..=3)?;
    for round in 1..=rounds {
        messages.push(json!({"role": "user", "content": pick(u, &CLEAN)?}));
        if round == rounds && !with_answer {
            break;
        }
        if u.arbitrary()? {
            let call = json!([{"type": "function", "function": {"name": "f", "arguments": {}}}]);
            messages.push(json!({"role": "assistant", "content": null, "tool_calls": call}));
            messages.push(json!({"role": "tool", "content": "{\"y\": 2}"}));
        }
        messages.push(json!({"role": "assistant", "content": pick(u, &CLEAN)?}));
    }
    Ok(Value::Array(messages))
}

/// Replaces one value somewhere in `value` (a field, a turn, a role, a text) with any value,
/// or removes a field.
fn mutate(u: &mut Unstructured<'_>, value: &mut Value) -> Result<()> {
    match value {
        Value::Array(items) if !items.is_empty() && u.ratio(3, 4)? => {
            let index = u.choose_index(items.len())?;
            mutate(u, &mut items[index])
        }
        Value::Object(fields) if !fields.is_empty() && u.ratio(3, 4)? => {
            let index = u.choose_index(fields.len())?;
            let key = fields.keys().nth(index).expect("an index in range").clone();
            if u.ratio(1, 4)? {
                fields.shift_remove(&key);
                return Ok(());
            }
            mutate(u, fields.get_mut(&key).expect("a key of the map"))
        }
        _ => {
            *value = if u.arbitrary()? {
                Value::String(string(u)?)
            } else {
                self::value(u, 2)?
            };
            Ok(())
        }
    }
}

/// Normalises `record` with every layout and policy; checks each outcome and renders what
/// comes out.
pub fn check_record(record: &Map<String, Value>) {
    assert!(
        EMPTY_REASONS.iter().all(|r| REASONS.contains(r)),
        "EMPTY_REASONS are reasons"
    );
    if let Some(layout) = Layout::detect(record) {
        // The key each layout is told by (conversation.rs, `Layout::detect`).
        let keys: &[&str] = match layout {
            Layout::ShareGpt | Layout::MedicalGptPreference => &["conversations"],
            Layout::OpenAi => &["messages"],
            Layout::Alpaca => &["instruction"],
            Layout::LegacyPreference => &["response_chosen"],
            Layout::TrlPreference => &["chosen"],
            Layout::Prompt => &["prompt", "query", "question"],
        };
        assert!(
            keys.iter().any(|key| record.contains_key(*key)),
            "{layout:?} detected without {keys:?}"
        );
    }
    for layout in Layout::ALL {
        for same_role in [SameRole::Reject, SameRole::Merge] {
            let what = format!("{layout:?}, {same_role:?}");
            match conversation::conversation(record, layout, same_role) {
                Ok(conversation) => {
                    let is_conversation =
                        matches!(layout, Layout::ShareGpt | Layout::OpenAi | Layout::Alpaca);
                    assert!(is_conversation, "{what}: a conversation");
                    check_messages(&conversation.messages, &what);
                    render_builtins(&conversation.messages, conversation.tools.as_ref(), false);
                }
                Err(problem) => check_problem(&problem, &what),
            }
            match conversation::preference(record, layout, same_role) {
                Ok(pair) => {
                    assert!(layout.is_preference(), "{what}: a preference pair");
                    let prompt = &pair.prompt.messages;
                    check_messages(prompt, &what);
                    assert!(!prompt.is_empty(), "{what}: an empty prompt");
                    assert_ne!(
                        role(prompt.last().unwrap()),
                        "assistant",
                        "{what}: prompt not open"
                    );
                    for answer in [&pair.chosen, &pair.rejected] {
                        check_messages(answer, &what);
                        let first = answer.first().map(role);
                        assert_eq!(first, Some("assistant"), "{what}: answer {answer:?}");
                        let whole = [prompt.as_slice(), answer].concat();
                        render_builtins(&whole, pair.prompt.tools.as_ref(), false);
                    }
                    render_builtins(prompt, pair.prompt.tools.as_ref(), true);
                }
                Err(problem) => check_problem(&problem, &what),
            }
            match conversation::prompt(record, layout, same_role) {
                Ok(prompt) => {
                    let messages = &prompt.prompt.messages;
                    check_messages(messages, &what);
                    assert!(
                        messages.iter().any(|m| role(m) != "system"),
                        "{what}: a prompt with no turn to answer: {messages:?}"
                    );
                    render_builtins(messages, prompt.prompt.tools.as_ref(), true);
                }
                Err(problem) => check_problem(&problem, &what),
            }
        }
    }
}

fn check_problem(problem: &Problem, what: &str) {
    assert!(
        REASONS.contains(&problem.reason),
        "{what}: unknown reason {:?} ({})",
        problem.reason,
        problem.message
    );
    assert!(
        !problem.message.is_empty(),
        "{what}: a problem says what is wrong"
    );
}

fn role(message: &Value) -> &str {
    message["role"].as_str().unwrap_or("")
}

fn has_tool_calls(message: &Value) -> bool {
    message.get("tool_calls").is_some()
}

/// What `check_turns` guarantees of the messages it lets through: known roles, no null
/// fields, text in every message but an assistant's tool call, a system message only first,
/// and no two user or assistant turns in a row (merged or refused) unless a tool call is one.
fn check_messages(messages: &[Value], what: &str) {
    for (index, message) in messages.iter().enumerate() {
        let Value::Object(fields) = message else {
            panic!("{what}: message {index} is not an object: {message}");
        };
        let role = role(message);
        assert!(
            ["system", "user", "assistant", "tool", "developer"].contains(&role),
            "{what}: role {role:?}"
        );
        assert!(
            fields.values().all(|v| !v.is_null()),
            "{what}: a null field in {message}"
        );
        let text = message["content"].as_str().unwrap_or("");
        assert!(
            !text.trim().is_empty() || has_tool_calls(message),
            "{what}: empty message {index}: {message}"
        );
        assert!(
            index == 0 || role != "system",
            "{what}: system message at {index}"
        );
    }
    for pair in messages.windows(2) {
        let repeats = role(&pair[0]) == role(&pair[1])
            && role(&pair[1]) != "tool"
            && !has_tool_calls(&pair[0])
            && !has_tool_calls(&pair[1]);
        assert!(!repeats, "{what}: two {} turns in a row", role(&pair[1]));
    }
}

/// The built-in templates, compiled once.
fn builtins() -> &'static [ChatTemplate] {
    static TEMPLATES: OnceLock<Vec<ChatTemplate>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        BUILTINS
            .iter()
            .map(|(name, source)| ChatTemplate::new(source, name).expect("a built-in compiles"))
            .collect()
    })
}

/// Renders `messages` with every built-in: a rendering with one generation span per assistant
/// message (each built-in wraps every assistant answer), or a template error.
fn render_builtins(messages: &[Value], tools: Option<&Value>, add_generation_prompt: bool) {
    let options = RenderOptions {
        tools: tools.cloned(),
        add_generation_prompt,
        special_tokens: json!({"bos_token": "<s>", "eos_token": "</s>"})
            .as_object()
            .expect("an object")
            .clone(),
        ..RenderOptions::default()
    };
    let list = Value::Array(messages.to_vec());
    for built_in in builtins() {
        match built_in.render(&list, &options) {
            Ok(rendered) => {
                template::check_rendered(&rendered);
                let answers = messages.iter().filter(|m| role(m) == "assistant").count();
                assert_eq!(
                    rendered.generation_spans.len(),
                    answers,
                    "{}: one span per answer in {:?}",
                    built_in.name(),
                    rendered.text
                );
            }
            Err(CoreError::Template { template, .. }) => assert_eq!(template, built_in.name()),
            Err(other) => panic!("{}: not a template error: {other:?}", built_in.name()),
        }
    }
}
