//! What transformers does to a conversation before the template sees it.
//!
//! `apply_chat_template` does not hand the messages to Jinja as given:
//! 1. keys whose value is `None` are dropped from each message (`_normalize_chat_messages`:
//!    OpenAI-style `"tool_calls": null` would otherwise print as `None` in many templates), and
//! 2. reasoning is aliased (`_alias_reasoning_fields`): the first non-null of
//!    `reasoning_content`, `thinking`, `reasoning` is copied to `reasoning_content` and to
//!    `thinking` (gpt-oss templates read the latter), as
//!    `{"thinking": r, **message, "reasoning_content": r}` — so key order follows Python's
//!    dict-merge rules, which matters to templates that loop over a message's items.
//!
//! Rendering the raw messages would differ from transformers on exactly these records.

use serde_json::{Map, Value};

/// The names reasoning travels under; the first is the one chat templates read.
const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];

/// The messages as transformers passes them to the template, or why they are not a
/// conversation (the sentences are transformers' own).
pub fn prepare(messages: &Value) -> Result<Value, String> {
    let list = match messages {
        Value::Array(list) => list,
        other => {
            return Err(format!(
                "Chat messages should be a list of dicts, but got {other}."
            ))
        }
    };
    if list.is_empty() {
        return Err(
            "Cannot apply chat template to an empty conversation. Provide at least one message."
                .into(),
        );
    }
    list.iter()
        .map(|message| match message {
            Value::Object(fields) => Ok(Value::Object(alias_reasoning(drop_nulls(fields)))),
            other => Err(format!(
                "Chat messages should be dicts, dataclasses or pydantic models, but got {other}."
            )),
        })
        .collect()
}

fn drop_nulls(fields: &Map<String, Value>) -> Map<String, Value> {
    fields
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

fn alias_reasoning(message: Map<String, Value>) -> Map<String, Value> {
    let Some(reasoning) = REASONING_FIELDS
        .iter()
        .find_map(|field| message.get(*field))
        .cloned()
    else {
        return message;
    };
    // {"thinking": r, **message, "reasoning_content": r}: "thinking" comes first unless the
    // message has it (then it keeps its place and its value); "reasoning_content" keeps its
    // place if present, else goes last, and always holds r.
    let mut aliased = Map::with_capacity(message.len() + 2);
    aliased.insert("thinking".into(), reasoning.clone());
    for (key, value) in message {
        aliased.insert(key, value);
    }
    aliased.insert("reasoning_content".into(), reasoning);
    aliased
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drops_nulls_and_aliases_reasoning_like_transformers() {
        let messages = json!([
            {"role": "user", "content": "hi", "tool_calls": null},
            {"role": "assistant", "content": "a", "reasoning": "r"},
            {"role": "assistant", "reasoning_content": "x", "thinking": "t", "content": "b"},
        ]);
        let prepared = prepare(&messages).unwrap();
        let keys = |i: usize| -> Vec<String> {
            prepared[i].as_object().unwrap().keys().cloned().collect()
        };
        assert_eq!(keys(0), ["role", "content"]);
        assert_eq!(
            keys(1),
            [
                "thinking",
                "role",
                "content",
                "reasoning",
                "reasoning_content"
            ]
        );
        assert_eq!(prepared[1]["thinking"], "r");
        assert_eq!(
            keys(2),
            ["thinking", "role", "reasoning_content", "content"]
        );
        assert_eq!(prepared[2]["thinking"], "t");
        assert_eq!(prepared[2]["reasoning_content"], "x");
    }

    #[test]
    fn refuses_what_transformers_refuses() {
        assert!(prepare(&json!([]))
            .unwrap_err()
            .contains("empty conversation"));
        assert!(prepare(&json!(["hi"]))
            .unwrap_err()
            .contains("should be dicts"));
    }
}
