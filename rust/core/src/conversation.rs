//! Conversation and preference records: every input layout (docs/architecture.md §3) normalised into one shape,
//! OpenAI-style messages, which is what chat templates render.
//!
//! Layouts, detected from a record's keys (or forced):
//! - ShareGPT `{"conversations":[{"from","value"}], "system"?, "tools"?}` with `from` in
//!   human/user, gpt/assistant, system, function_call, observation;
//! - OpenAI `{"messages":[{"role","content"}], "tools"?}`;
//! - Alpaca `{"instruction","input"?,"output","system"?,"history"?}`;
//! - MedicalGPT preference `{"conversations":[prompt turns], "chosen", "rejected", "tools"?}`;
//! - its legacy layout `{"system","history":[[q,a]...],"question","response_chosen","response_rejected"}`;
//! - TRL preference `{"prompt","chosen","rejected"}` as strings or message lists, and TRL's
//!   implicit-prompt `{"chosen","rejected"}` message lists sharing their prompt;
//! - prompts `{"prompt"}`, `{"query"}`, `{"question","answer"?}`.
//!
//! ShareGPT `function_call` turns become assistant messages with `tool_calls` and `observation`
//! turns `tool` messages, so each model's own template renders its native tool-call format.
//! Malformed records give a [`Problem`] with a stable reason key and the field at fault.

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::reader::json_kind;

/// The record layouts ferrotune reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    ShareGpt,
    OpenAi,
    Alpaca,
    MedicalGptPreference,
    LegacyPreference,
    TrlPreference,
    Prompt,
}

impl Layout {
    pub const ALL: [Layout; 7] = [
        Layout::ShareGpt,
        Layout::OpenAi,
        Layout::Alpaca,
        Layout::MedicalGptPreference,
        Layout::LegacyPreference,
        Layout::TrlPreference,
        Layout::Prompt,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Layout::ShareGpt => "sharegpt",
            Layout::OpenAi => "openai",
            Layout::Alpaca => "alpaca",
            Layout::MedicalGptPreference => "medicalgpt_preference",
            Layout::LegacyPreference => "legacy_preference",
            Layout::TrlPreference => "trl_preference",
            Layout::Prompt => "prompt",
        }
    }

    pub fn parse(name: &str) -> Option<Layout> {
        Layout::ALL.into_iter().find(|layout| layout.name() == name)
    }

    /// Parses `--format`: `auto` (detect per record) or a layout name.
    pub fn parse_option(name: &str) -> crate::error::Result<Option<Layout>> {
        if name == "auto" {
            return Ok(None);
        }
        Layout::parse(name).map(Some).ok_or_else(|| {
            let names: Vec<&str> = Layout::ALL.iter().map(|l| l.name()).collect();
            crate::error::CoreError::config(
                "format",
                format!("'{name}' is not one of auto, {}", names.join(", ")),
            )
        })
    }

    /// The keys that identify the layout, for error messages.
    pub fn signature(self) -> &'static str {
        match self {
            Layout::ShareGpt => "conversations",
            Layout::OpenAi => "messages",
            Layout::Alpaca => "instruction + output",
            Layout::MedicalGptPreference => "conversations + chosen + rejected",
            Layout::LegacyPreference => "question + response_chosen + response_rejected",
            Layout::TrlPreference => "prompt + chosen + rejected, or chosen + rejected",
            Layout::Prompt => "prompt, query or question",
        }
    }

    /// Whether records of this layout carry a chosen/rejected pair.
    pub fn is_preference(self) -> bool {
        matches!(
            self,
            Layout::MedicalGptPreference | Layout::LegacyPreference | Layout::TrlPreference
        )
    }

    /// Tells the layout from a record's keys; `None` when no layout fits.
    pub fn detect(record: &Map<String, Value>) -> Option<Layout> {
        let has = |key: &str| record.contains_key(key);
        if has("chosen") && has("rejected") {
            if has("conversations") {
                Some(Layout::MedicalGptPreference)
            } else {
                Some(Layout::TrlPreference)
            }
        } else if has("response_chosen") && has("response_rejected") {
            Some(Layout::LegacyPreference)
        } else if has("conversations") {
            Some(Layout::ShareGpt)
        } else if has("messages") {
            Some(Layout::OpenAi)
        } else if has("instruction") && has("output") {
            Some(Layout::Alpaca)
        } else if has("prompt") || has("query") || has("question") {
            Some(Layout::Prompt)
        } else {
            None
        }
    }
}

/// Why a record cannot be used: a stable reason key, the field at fault, and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub field: Option<String>,
    pub message: String,
}

impl Problem {
    fn new(reason: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            reason,
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

type Parsed<T> = std::result::Result<T, Problem>;

/// What to do when two turns of the same role follow each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameRole {
    /// Join their contents with a blank line.
    Merge,
    /// Treat the record as bad (`consecutive_roles`).
    Reject,
}

impl SameRole {
    pub fn parse(name: &str) -> crate::error::Result<SameRole> {
        match name {
            "reject" => Ok(SameRole::Reject),
            "merge" => Ok(SameRole::Merge),
            other => Err(crate::error::CoreError::config(
                "same-role",
                format!("'{other}' is not one of reject, merge"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SameRole::Reject => "reject",
            SameRole::Merge => "merge",
        }
    }
}

/// A conversation in OpenAI message form, with its tools.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Conversation {
    /// `{"role", "content", "tool_calls"?}` objects, as chat templates expect.
    pub messages: Vec<Value>,
    /// JSON-schema tool definitions (`{"type":"function","function":{...}}`), if any.
    pub tools: Option<Value>,
}

impl Conversation {
    /// The role of message `index`.
    pub fn role(&self, index: usize) -> &str {
        self.messages[index]["role"].as_str().unwrap_or("")
    }

    pub fn last_role(&self) -> Option<&str> {
        self.messages
            .last()
            .map(|m| m["role"].as_str().unwrap_or(""))
    }
}

/// A preference pair: a shared prompt and the two answers (each one or more assistant turns,
/// possibly with tool calls).
#[derive(Debug, Clone, PartialEq)]
pub struct Preference {
    pub prompt: Conversation,
    pub chosen: Vec<Value>,
    pub rejected: Vec<Value>,
}

/// A prompt for PPO: the conversation so far and a reference answer when the record has one.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRecord {
    pub prompt: Conversation,
    pub reference: Option<String>,
}

fn message(role: &str, content: impl Into<String>) -> Value {
    json!({"role": role, "content": content.into()})
}

fn field<'a>(record: &'a Map<String, Value>, key: &str) -> Parsed<&'a Value> {
    record
        .get(key)
        .ok_or_else(|| Problem::new("missing_field", key, format!("no field '{key}'")))
}

fn string<'a>(value: &'a Value, key: &str) -> Parsed<&'a str> {
    value.as_str().ok_or_else(|| {
        Problem::new(
            "wrong_type",
            key,
            format!("expected a string, found {}", json_kind(value)),
        )
    })
}

/// A string field of an object nested at `at` (`conversations[2]`); errors name `at.key`.
/// The path is only formatted on error: this runs for every turn of every record.
fn nested_string<'a>(object: &'a Map<String, Value>, key: &str, at: &str) -> Parsed<&'a str> {
    let path = || format!("{at}.{key}");
    match object.get(key) {
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(Problem::new(
            "wrong_type",
            path(),
            format!("expected a string, found {}", json_kind(other)),
        )),
        None => Err(Problem::new(
            "missing_field",
            path(),
            format!("no field '{key}'"),
        )),
    }
}

fn optional_string<'a>(record: &'a Map<String, Value>, key: &str) -> Parsed<Option<&'a str>> {
    match record.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => string(value, key).map(Some),
    }
}

/// `tools` as a list of `{"type":"function","function":{...}}` schemas. Accepts a JSON string
/// (ShareGPT files store it so), a list of bare function schemas, or already-wrapped ones.
fn tools(record: &Map<String, Value>) -> Parsed<Option<Value>> {
    let value = match record.get("tools") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => return Ok(None),
        Some(Value::String(text)) => serde_json::from_str::<Value>(text)
            .map_err(|e| Problem::new("invalid_tools", "tools", format!("not valid JSON: {e}")))?,
        Some(other) => other.clone(),
    };
    let Value::Array(list) = value else {
        return Err(Problem::new(
            "invalid_tools",
            "tools",
            format!("expected a list of tools, found {}", json_kind(&value)),
        ));
    };
    if list.is_empty() {
        return Ok(None);
    }
    let wrapped = list
        .into_iter()
        .map(|tool| match tool {
            Value::Object(map) if map.contains_key("function") => Ok(Value::Object(map)),
            Value::Object(map) if map.contains_key("name") => {
                Ok(json!({"type": "function", "function": Value::Object(map)}))
            }
            other => Err(Problem::new(
                "invalid_tools",
                "tools",
                format!(
                    "a tool must be an object with a name, found {}",
                    json_kind(&other)
                ),
            )),
        })
        .collect::<Parsed<Vec<Value>>>()?;
    Ok(Some(Value::Array(wrapped)))
}

/// A ShareGPT `function_call` value (`{"name","arguments"}` or a list of them, as JSON text)
/// as OpenAI `tool_calls`.
fn tool_calls(text: &str, at: &str) -> Parsed<Value> {
    let bad = |message: String| Problem::new("invalid_function_call", at, message);
    let value: Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let calls = match value {
        Value::Array(calls) => calls,
        single => vec![single],
    };
    let mut out = Vec::with_capacity(calls.len());
    for call in calls {
        let Value::Object(mut call) = call else {
            return Err(bad("a function call must be an object".into()));
        };
        if !call.get("name").is_some_and(Value::is_string) {
            return Err(bad("a function call needs a string 'name'".into()));
        }
        // Arguments stay an object (templates `tojson` them); a JSON string is parsed.
        if let Some(Value::String(arguments)) = call.get("arguments") {
            if let Ok(parsed @ Value::Object(_)) = serde_json::from_str::<Value>(arguments) {
                call.insert("arguments".into(), parsed);
            }
        }
        out.push(json!({"type": "function", "function": Value::Object(call)}));
    }
    Ok(Value::Array(out))
}

/// Maps a ShareGPT `from` to an OpenAI role.
fn sharegpt_role(from: &str) -> Option<&'static str> {
    match from {
        "human" | "user" => Some("user"),
        "gpt" | "assistant" | "model" => Some("assistant"),
        "system" => Some("system"),
        "function_call" => Some("function_call"),
        "observation" | "tool" | "function" => Some("tool"),
        _ => None,
    }
}

/// ShareGPT turns (`[{"from","value"}]`) as messages. `key` names the field for errors.
fn sharegpt_turns(turns: &Value, key: &str) -> Parsed<Vec<Value>> {
    let Value::Array(turns) = turns else {
        return Err(Problem::new(
            "wrong_type",
            key,
            format!("expected a list of turns, found {}", json_kind(turns)),
        ));
    };
    let mut messages = Vec::with_capacity(turns.len());
    for (index, turn) in turns.iter().enumerate() {
        let at = format!("{key}[{index}]");
        let Value::Object(turn) = turn else {
            return Err(Problem::new(
                "wrong_type",
                at,
                format!("expected a turn object, found {}", json_kind(turn)),
            ));
        };
        let from = nested_string(turn, "from", &at)?;
        let value = nested_string(turn, "value", &at)?;
        let role = sharegpt_role(from).ok_or_else(|| {
            Problem::new(
                "unknown_role",
                format!("{at}.from"),
                format!(
                    "unknown role '{from}' (expected human, user, gpt, assistant, system, function_call or observation)"
                ),
            )
        })?;
        if role == "function_call" {
            let calls = tool_calls(value, &format!("{at}.value"))?;
            messages.push(json!({"role": "assistant", "content": "", "tool_calls": calls}));
        } else {
            messages.push(message(role, value));
        }
    }
    Ok(messages)
}

/// OpenAI messages (`[{"role","content", ...}]`), checked; extra keys are kept.
fn openai_messages(value: &Value, key: &str) -> Parsed<Vec<Value>> {
    let Value::Array(list) = value else {
        return Err(Problem::new(
            "wrong_type",
            key,
            format!("expected a list of messages, found {}", json_kind(value)),
        ));
    };
    let mut messages = Vec::with_capacity(list.len());
    for (index, item) in list.iter().enumerate() {
        let at = format!("{key}[{index}]");
        let Value::Object(map) = item else {
            return Err(Problem::new(
                "wrong_type",
                at,
                format!("expected a message object, found {}", json_kind(item)),
            ));
        };
        let role = nested_string(map, "role", &at)?;
        if !matches!(role, "system" | "user" | "assistant" | "tool" | "developer") {
            return Err(Problem::new(
                "unknown_role",
                format!("{at}.role"),
                format!("unknown role '{role}' (expected system, user, assistant or tool)"),
            ));
        }
        match map.get("content") {
            Some(Value::String(_)) => {}
            None | Some(Value::Null) if map.contains_key("tool_calls") => {}
            Some(other) => {
                return Err(Problem::new(
                    "wrong_type",
                    format!("{at}.content"),
                    format!("expected a string, found {}", json_kind(other)),
                ))
            }
            None => {
                return Err(Problem::new(
                    "missing_field",
                    format!("{at}.content"),
                    "no field 'content'",
                ))
            }
        }
        messages.push(item.clone());
    }
    Ok(messages)
}

/// Alpaca `history` (`[[question, answer], ...]`) as messages.
fn history(record: &Map<String, Value>) -> Parsed<Vec<Value>> {
    let Some(value) = record.get("history").filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Value::Array(pairs) = value else {
        return Err(Problem::new(
            "wrong_type",
            "history",
            format!(
                "expected a list of [question, answer] pairs, found {}",
                json_kind(value)
            ),
        ));
    };
    let mut messages = Vec::with_capacity(pairs.len() * 2);
    for (index, pair) in pairs.iter().enumerate() {
        let at = format!("history[{index}]");
        match pair.as_array().map(Vec::as_slice) {
            Some([Value::String(q), Value::String(a)]) => {
                messages.push(message("user", q.as_str()));
                messages.push(message("assistant", a.as_str()));
            }
            _ => {
                return Err(Problem::new(
                    "wrong_type",
                    at,
                    "expected a [question, answer] pair of strings",
                ))
            }
        }
    }
    Ok(messages)
}

/// Puts a system message first when the record has a non-empty `system` string and the
/// messages do not start with one.
fn with_system(system: Option<&str>, mut messages: Vec<Value>) -> Vec<Value> {
    if let Some(system) = system.filter(|s| !s.is_empty()) {
        let has_system = messages.first().is_some_and(|m| m["role"] == "system");
        if !has_system {
            messages.insert(0, message("system", system));
        }
    }
    messages
}

/// Checks roles and contents, merging or rejecting same-role neighbours.
///
/// Rules: a system message only first; no empty content (except an assistant message that
/// carries tool calls); no two user or two assistant turns in a row (tool results may follow
/// each other, and an assistant tool call may follow an assistant answer only through a tool
/// result).
pub fn check_turns(messages: Vec<Value>, same_role: SameRole, key: &str) -> Parsed<Vec<Value>> {
    let mut out: Vec<Value> = Vec::with_capacity(messages.len());
    for (index, mut current) in messages.into_iter().enumerate() {
        let at = format!("{key}[{index}]");
        let role = current["role"].as_str().unwrap_or("").to_string();
        let has_calls = current.get("tool_calls").is_some_and(|c| !c.is_null());
        let content = current["content"].as_str().unwrap_or("");
        if content.trim().is_empty() && !has_calls {
            return Err(Problem::new(
                "empty_content",
                at,
                format!("empty {role} message"),
            ));
        }
        if role == "system" && !out.is_empty() {
            return Err(Problem::new(
                "misplaced_system",
                at,
                "a system message may only come first",
            ));
        }
        let previous = out.last_mut();
        let repeats = previous.as_ref().is_some_and(|p| {
            p["role"] == role.as_str()
                && role != "tool"
                && !has_calls
                && p.get("tool_calls").is_none()
        });
        if repeats {
            match same_role {
                SameRole::Reject => {
                    return Err(Problem::new(
                        "consecutive_roles",
                        at,
                        format!("two {role} turns in a row (use --same-role merge to join them)"),
                    ))
                }
                SameRole::Merge => {
                    let previous = previous.expect("repeats implies a previous message");
                    let joined = format!(
                        "{}\n\n{}",
                        previous["content"].as_str().unwrap_or(""),
                        content
                    );
                    previous["content"] = Value::String(joined);
                    continue;
                }
            }
        }
        if let Value::Object(map) = &mut current {
            map.retain(|_, v| !v.is_null());
        }
        out.push(current);
    }
    Ok(out)
}

/// A conversation for SFT (or a prompt source for PPO) from any conversation layout.
pub fn conversation(
    record: &Map<String, Value>,
    layout: Layout,
    same_role: SameRole,
) -> Parsed<Conversation> {
    let (messages, key) = match layout {
        Layout::ShareGpt => (
            with_system(
                optional_string(record, "system")?,
                sharegpt_turns(field(record, "conversations")?, "conversations")?,
            ),
            "conversations",
        ),
        Layout::OpenAi => (
            openai_messages(field(record, "messages")?, "messages")?,
            "messages",
        ),
        Layout::Alpaca => {
            let instruction = string(field(record, "instruction")?, "instruction")?;
            let input = optional_string(record, "input")?.unwrap_or("");
            let output = string(field(record, "output")?, "output")?;
            let question = if input.is_empty() {
                instruction.to_string()
            } else {
                format!("{instruction}\n{input}")
            };
            let mut messages = history(record)?;
            messages.push(message("user", question));
            messages.push(message("assistant", output));
            (
                with_system(optional_string(record, "system")?, messages),
                "instruction",
            )
        }
        other => {
            return Err(Problem {
                reason: "wrong_layout",
                field: None,
                message: format!(
                    "a {} record is not a conversation (expected {})",
                    other.name(),
                    "conversations, messages or instruction + output"
                ),
            })
        }
    };
    Ok(Conversation {
        messages: check_turns(messages, same_role, key)?,
        tools: tools(record)?,
    })
}

/// An answer (`chosen` or `rejected`): a string, one message, or a list of messages.
fn answer(value: &Value, key: &str) -> Parsed<Vec<Value>> {
    let messages = match value {
        Value::String(text) => vec![message("assistant", text.as_str())],
        Value::Object(_) => openai_messages(&Value::Array(vec![value.clone()]), key)?,
        Value::Array(_) => openai_messages(value, key)?,
        other => {
            return Err(Problem::new(
                "wrong_type",
                key,
                format!("expected a string or messages, found {}", json_kind(other)),
            ))
        }
    };
    check_answer(messages, key)
}

/// Checks an answer's messages: they start with an assistant turn and pass [`check_turns`].
fn check_answer(messages: Vec<Value>, key: &str) -> Parsed<Vec<Value>> {
    if messages.first().is_none_or(|m| m["role"] != "assistant") {
        return Err(Problem::new(
            "wrong_type",
            key,
            "an answer must start with an assistant message",
        ));
    }
    check_turns(messages, SameRole::Reject, key)
}

/// A preference pair from any preference layout.
pub fn preference(
    record: &Map<String, Value>,
    layout: Layout,
    same_role: SameRole,
) -> Parsed<Preference> {
    let (prompt_messages, chosen, rejected) = match layout {
        Layout::MedicalGptPreference => (
            with_system(
                optional_string(record, "system")?,
                sharegpt_turns(field(record, "conversations")?, "conversations")?,
            ),
            answer(field(record, "chosen")?, "chosen")?,
            answer(field(record, "rejected")?, "rejected")?,
        ),
        Layout::LegacyPreference => {
            let mut messages = history(record)?;
            messages.push(message(
                "user",
                string(field(record, "question")?, "question")?,
            ));
            (
                with_system(optional_string(record, "system")?, messages),
                answer(field(record, "response_chosen")?, "response_chosen")?,
                answer(field(record, "response_rejected")?, "response_rejected")?,
            )
        }
        Layout::TrlPreference => match record.get("prompt") {
            Some(Value::String(prompt)) => (
                vec![message("user", prompt.as_str())],
                answer(field(record, "chosen")?, "chosen")?,
                answer(field(record, "rejected")?, "rejected")?,
            ),
            Some(prompt @ Value::Array(_)) => (
                openai_messages(prompt, "prompt")?,
                answer(field(record, "chosen")?, "chosen")?,
                answer(field(record, "rejected")?, "rejected")?,
            ),
            Some(other) => {
                return Err(Problem::new(
                    "wrong_type",
                    "prompt",
                    format!("expected a string or messages, found {}", json_kind(other)),
                ))
            }
            None => implicit_prompt(record)?,
        },
        other => {
            return Err(Problem {
                reason: "wrong_layout",
                field: None,
                message: format!(
                    "a {} record is not a preference pair (expected {})",
                    other.name(),
                    "conversations + chosen + rejected, prompt + chosen + rejected, or question + response_chosen + response_rejected"
                ),
            })
        }
    };
    let prompt = check_turns(prompt_messages, same_role, "prompt")?;
    if prompt
        .last()
        .is_none_or(|m| !matches!(m["role"].as_str(), Some("user" | "tool")))
    {
        return Err(Problem::new(
            "prompt_not_open",
            "conversations",
            "the prompt must end with a user or tool turn, for the answers to follow",
        ));
    }
    Ok(Preference {
        prompt: Conversation {
            messages: prompt,
            tools: tools(record)?,
        },
        chosen,
        rejected,
    })
}

/// TRL's implicit prompt: `chosen` and `rejected` are whole conversations sharing all but their
/// final assistant turns.
fn implicit_prompt(record: &Map<String, Value>) -> Parsed<(Vec<Value>, Vec<Value>, Vec<Value>)> {
    let chosen = openai_messages(field(record, "chosen")?, "chosen")?;
    let rejected = openai_messages(field(record, "rejected")?, "rejected")?;
    let shared = chosen
        .iter()
        .zip(&rejected)
        .take_while(|(a, b)| a == b)
        .count();
    // The answers start at the first assistant turn after the shared part's last user turn.
    let start = chosen[..shared]
        .iter()
        .rposition(|m| m["role"] != "assistant")
        .map_or(0, |i| i + 1);
    if start == 0 {
        return Err(Problem::new(
            "missing_field",
            "prompt",
            "no 'prompt', and chosen/rejected share no prompt turns",
        ));
    }
    // The answers are checked as explicit ones are: what follows the shared prompt may be
    // empty, start with a user turn, or hold an empty message.
    Ok((
        chosen[..start].to_vec(),
        check_answer(chosen[start..].to_vec(), "chosen")?,
        check_answer(rejected[start..].to_vec(), "rejected")?,
    ))
}

/// A PPO prompt from any layout: conversations lose a final assistant turn (kept as the
/// reference answer), prompt-only records become one user turn.
pub fn prompt(
    record: &Map<String, Value>,
    layout: Layout,
    same_role: SameRole,
) -> Parsed<PromptRecord> {
    match layout {
        Layout::Prompt => {
            // Detection guarantees one of these keys; a forced `--format prompt` does not.
            let Some((key, text)) = ["prompt", "query", "question"]
                .iter()
                .find_map(|key| record.get(*key).map(|v| (*key, v)))
            else {
                return Err(Problem::new(
                    "missing_field",
                    "prompt",
                    "no field 'prompt', 'query' or 'question'",
                ));
            };
            let turns = match text {
                Value::Array(_) => openai_messages(text, key)?,
                other => vec![message("user", string(other, key)?)],
            };
            // The system message is checked with the turns, as in every other layout.
            let system = optional_string(record, "system")?;
            let messages = check_turns(with_system(system, turns), same_role, key)?;
            if messages.is_empty() {
                return Err(no_messages());
            }
            if messages.iter().all(|m| m["role"] == "system") {
                return Err(no_user_turn());
            }
            let reference = ["answer", "reference", "response"]
                .iter()
                .find_map(|key| optional_string(record, key).transpose())
                .transpose()?
                .map(str::to_string);
            Ok(PromptRecord {
                prompt: Conversation {
                    messages,
                    tools: tools(record)?,
                },
                reference,
            })
        }
        layout if layout.is_preference() => {
            let pair = preference(record, layout, same_role)?;
            let reference = pair
                .chosen
                .first()
                .and_then(|m| m["content"].as_str())
                .map(str::to_string);
            Ok(PromptRecord {
                prompt: pair.prompt,
                reference,
            })
        }
        layout => {
            let mut conversation = conversation(record, layout, same_role)?;
            if conversation.messages.is_empty() {
                return Err(no_messages());
            }
            let mut reference = None;
            if conversation.last_role() == Some("assistant") {
                let last = conversation.messages.pop().expect("has a last message");
                reference = last["content"].as_str().map(str::to_string);
            }
            if conversation.messages.iter().all(|m| m["role"] == "system") {
                return Err(no_user_turn());
            }
            Ok(PromptRecord {
                prompt: conversation,
                reference,
            })
        }
    }
}

/// A prompt record without messages.
fn no_messages() -> Problem {
    Problem {
        reason: "empty",
        field: None,
        message: "no messages".into(),
    }
}

/// A prompt of system messages only: nothing for the model to answer.
fn no_user_turn() -> Problem {
    Problem::new("no_prompt", "messages", "no user turn to prompt with")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(text: &str) -> Map<String, Value> {
        serde_json::from_str(text).unwrap()
    }

    fn roles(messages: &[Value]) -> Vec<&str> {
        messages
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn layouts_are_told_apart_by_their_keys() {
        let cases = [
            (r#"{"conversations": []}"#, Layout::ShareGpt),
            (r#"{"messages": []}"#, Layout::OpenAi),
            (r#"{"instruction": "", "output": ""}"#, Layout::Alpaca),
            (
                r#"{"conversations": [], "chosen": "", "rejected": ""}"#,
                Layout::MedicalGptPreference,
            ),
            (
                r#"{"question": "", "response_chosen": "", "response_rejected": ""}"#,
                Layout::LegacyPreference,
            ),
            (
                r#"{"prompt": "", "chosen": "", "rejected": ""}"#,
                Layout::TrlPreference,
            ),
            (r#"{"question": "", "answer": ""}"#, Layout::Prompt),
        ];
        for (text, layout) in cases {
            assert_eq!(Layout::detect(&record(text)), Some(layout), "{text}");
        }
        assert_eq!(Layout::detect(&record(r#"{"text": "x"}"#)), None);
    }

    #[test]
    fn sharegpt_with_tools_function_calls_and_observations() {
        let r = record(
            r#"{"conversations": [
                {"from": "human", "value": "weather?"},
                {"from": "function_call", "value": "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}"},
                {"from": "observation", "value": "{\"temp\": 21}"},
                {"from": "gpt", "value": "21 degrees"}],
              "system": "be brief",
              "tools": "[{\"name\": \"get_weather\", \"parameters\": {}}]"}"#,
        );
        let c = conversation(&r, Layout::ShareGpt, SameRole::Reject).unwrap();
        assert_eq!(
            roles(&c.messages),
            ["system", "user", "assistant", "tool", "assistant"]
        );
        assert_eq!(
            c.messages[2]["tool_calls"][0]["function"]["arguments"]["city"],
            "Paris"
        );
        assert_eq!(c.tools.unwrap()[0]["type"], "function");
    }

    #[test]
    fn bad_turns_name_their_field() {
        let r = record(
            r#"{"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]}"#,
        );
        let p = conversation(&r, Layout::ShareGpt, SameRole::Reject).unwrap_err();
        assert_eq!(
            (p.reason, p.field.as_deref()),
            ("unknown_role", Some("conversations[1].from"))
        );

        let r = record(
            r#"{"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}, {"from": "gpt", "value": "c"}]}"#,
        );
        let p = conversation(&r, Layout::ShareGpt, SameRole::Reject).unwrap_err();
        assert_eq!(
            (p.reason, p.field.as_deref()),
            ("consecutive_roles", Some("conversations[1]"))
        );
        let merged = conversation(&r, Layout::ShareGpt, SameRole::Merge).unwrap();
        assert_eq!(merged.messages[0]["content"], "a\n\nb");
        assert_eq!(merged.messages.len(), 2);

        let r = record(r#"{"conversations": [{"from": "human", "value": " "}]}"#);
        let p = conversation(&r, Layout::ShareGpt, SameRole::Reject).unwrap_err();
        assert_eq!(p.reason, "empty_content");

        let r = record(r#"{"conversations": [{"from": "human"}]}"#);
        let p = conversation(&r, Layout::ShareGpt, SameRole::Reject).unwrap_err();
        assert_eq!(
            (p.reason, p.field.as_deref()),
            ("missing_field", Some("conversations[0].value"))
        );
    }

    #[test]
    fn alpaca_with_history_and_system() {
        let r = record(
            r#"{"instruction": "Sum", "input": "1 2", "output": "3", "system": "math", "history": [["hi", "hello"]]}"#,
        );
        let c = conversation(&r, Layout::Alpaca, SameRole::Reject).unwrap();
        assert_eq!(
            roles(&c.messages),
            ["system", "user", "assistant", "user", "assistant"]
        );
        assert_eq!(c.messages[3]["content"], "Sum\n1 2");
    }

    #[test]
    fn preferences_in_every_layout_share_one_prompt() {
        let medical = record(
            r#"{"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}], "chosen": "good", "rejected": "bad"}"#,
        );
        let legacy = record(
            r#"{"system": "s", "history": [], "question": "q", "response_chosen": "good", "response_rejected": "bad"}"#,
        );
        let trl = record(
            r#"{"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "good"}], "rejected": "bad"}"#,
        );
        let implicit = record(
            r#"{"chosen": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}], "rejected": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]}"#,
        );
        let expected =
            preference(&medical, Layout::MedicalGptPreference, SameRole::Reject).unwrap();
        assert_eq!(roles(&expected.prompt.messages), ["system", "user"]);
        for (r, layout) in [
            (legacy, Layout::LegacyPreference),
            (trl, Layout::TrlPreference),
            (implicit, Layout::TrlPreference),
        ] {
            assert_eq!(preference(&r, layout, SameRole::Reject).unwrap(), expected);
        }
        let missing =
            record(r#"{"conversations": [{"from": "human", "value": "q"}], "chosen": "x"}"#);
        assert_eq!(Layout::detect(&missing), Some(Layout::ShareGpt));
        let p = preference(&missing, Layout::MedicalGptPreference, SameRole::Reject).unwrap_err();
        assert_eq!(
            (p.reason, p.field.as_deref()),
            ("missing_field", Some("rejected"))
        );
    }

    #[test]
    fn prompts_drop_a_final_answer_and_keep_it_as_reference() {
        let r = record(r#"{"question": "q?", "answer": "a."}"#);
        let p = prompt(&r, Layout::Prompt, SameRole::Reject).unwrap();
        assert_eq!(roles(&p.prompt.messages), ["user"]);
        assert_eq!(p.reference.as_deref(), Some("a."));
        let r = record(
            r#"{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}"#,
        );
        let p = prompt(&r, Layout::ShareGpt, SameRole::Reject).unwrap();
        assert_eq!(roles(&p.prompt.messages), ["user"]);
        assert_eq!(p.reference.as_deref(), Some("a"));
    }
}
