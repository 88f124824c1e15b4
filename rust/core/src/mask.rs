//! Which bytes of a rendered conversation the model learns: the assistant answers.
//!
//! Four ways, tried in order (docs/architecture.md §5):
//! 1. `{% generation %}` blocks, where the template has them: exactly what transformers'
//!    `return_assistant_tokens_mask` uses.
//! 2. Placeholders: render once more with a unique private-use placeholder in place of each
//!    message's content, find the placeholders, substitute the contents back and check the
//!    result equals the real rendering. Then every content's exact span is known, even where
//!    the template rewrites earlier turns (Qwen3 drops the reasoning of all but the last
//!    assistant turn, so renderings of prefixes are not prefixes of the whole). Searching for
//!    the content text itself would be fragile (a user message "i" is found inside
//!    `<|im_end|>`).
//! 3. Where the template transforms the answers so that substitution does not reproduce the
//!    rendering (Qwen3 splits `<think>` reasoning off an answer and renders it apart, or not
//!    at all), placeholders stand in for the other messages only, and each answer turn runs
//!    from its assistant header to its end-of-turn token: what the model generates there,
//!    reasoning included, is learned.
//! 4. Otherwise each content is located in order after the previous one; failing that, the
//!    record is bad, naming the turn.
//!
//! An answer's span is extended over the end-of-turn token that closes it (`<|im_end|>`,
//! `<|eot_id|>`): the model must learn to stop. Whitespace the template adds after that token
//! is not learned. Assistant turns that only call tools have no content to stand in for: their
//! span runs from the assistant header (what the generation prompt adds) to the end-of-turn
//! token, as in way 3.

use serde_json::Value;

use crate::template::{ChatTemplate, RenderOptions};

/// Which assistant turns are learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    /// Every assistant turn of a multi-turn conversation.
    All,
    /// Only the final assistant turn.
    Last,
}

impl Learn {
    pub fn parse(name: &str) -> crate::error::Result<Learn> {
        match name {
            "all" => Ok(Learn::All),
            "last" => Ok(Learn::Last),
            other => Err(crate::error::CoreError::config(
                "learn",
                format!("'{other}' is not one of all, last"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Learn::All => "all",
            Learn::Last => "last",
        }
    }
}

/// Why the answers could not be located: the reason key and the turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskError {
    pub turn: Option<usize>,
    pub message: String,
}

/// Learned byte spans of `text`, the rendering of `messages`.
pub fn learned_spans(
    template: &ChatTemplate,
    messages: &[Value],
    options: &RenderOptions,
    text: &str,
    generation_spans: &[(usize, usize)],
    end_tokens: &[String],
    learn: Learn,
) -> Result<Vec<(usize, usize)>, MaskError> {
    let assistant: Vec<usize> = (0..messages.len())
        .filter(|&i| messages[i]["role"] == "assistant")
        .collect();
    let wanted: Vec<usize> = match learn {
        Learn::All => assistant.clone(),
        Learn::Last => assistant.last().copied().into_iter().collect(),
    };
    if template.has_generation_blocks() {
        let spans = match learn {
            Learn::All => generation_spans.to_vec(),
            Learn::Last => generation_spans.last().copied().into_iter().collect(),
        };
        return Ok(spans);
    }
    let render = |placeholders: &Placeholders| {
        template
            .render(&Value::Array(placeholders.messages.clone()), options)
            .map(|r| r.text)
            .map_err(|e| MaskError {
                turn: None,
                message: format!("rendering with placeholders failed: {e}"),
            })
    };
    // 1. Every content replaced: exact content spans.
    let placeholders = Placeholders::new(messages, |_| true);
    let rendered = render(&placeholders)?;
    if let Some(content_spans) = placeholders.substitute(&rendered, messages, text) {
        let real = (messages, rendered.as_str());
        return wanted
            .iter()
            .map(|&turn| match content_spans[turn] {
                Some((start, end)) => Ok((start, extend_over_end_token(text, end, end_tokens))),
                None => turn_span(template, &placeholders, options, real, turn, end_tokens),
            })
            .collect();
    }
    // 2. The template rewrites answers (Qwen3 splits off reasoning): keep the answers real,
    // anchor on the other messages, and take each answer turn from its header to its
    // end-of-turn token.
    let anchors = Placeholders::new(messages, |message| message["role"] != "assistant");
    let anchored = render(&anchors)?;
    if anchors.substitute(&anchored, messages, text).is_some() {
        let real = (messages, anchored.as_str());
        return wanted
            .iter()
            .map(|&turn| turn_span(template, &anchors, options, real, turn, end_tokens))
            .collect();
    }
    // 3. Contents located in order, or a clear error.
    let spans = locate_in_order(messages, text, &wanted, end_tokens)?;
    Ok(spans)
}

/// Marks a placeholder: a private-use character, the message index, another one.
const OPEN: char = '\u{F8F0}';
const CLOSE: char = '\u{F8F1}';

/// A copy of the conversation with each non-empty string content replaced by a placeholder.
struct Placeholders {
    messages: Vec<Value>,
    /// Per message, the placeholder that replaced its content (`None`: content kept).
    marks: Vec<Option<String>>,
}

impl Placeholders {
    /// Replaces the contents of the messages `replace` picks.
    fn new(messages: &[Value], replace: impl Fn(&Value) -> bool) -> Placeholders {
        let mut copies = Vec::with_capacity(messages.len());
        let mut marks = Vec::with_capacity(messages.len());
        for (index, message) in messages.iter().enumerate() {
            let mut copy = message.clone();
            let has_content = message["content"].as_str().is_some_and(|c| !c.is_empty());
            let has_content = has_content && replace(message);
            if has_content {
                let mark = format!("{OPEN}{index}{CLOSE}");
                copy["content"] = Value::String(mark.clone());
                marks.push(Some(mark));
            } else {
                marks.push(None);
            }
            copies.push(copy);
        }
        Placeholders {
            messages: copies,
            marks,
        }
    }

    /// Substitutes the contents back into `rendered`; when that reproduces `text` exactly,
    /// returns each message's content span in `text` (`None` for messages without a
    /// placeholder).
    fn substitute(
        &self,
        rendered: &str,
        messages: &[Value],
        text: &str,
    ) -> Option<Vec<Option<(usize, usize)>>> {
        let mut spans = vec![None; messages.len()];
        let mut out = String::with_capacity(text.len());
        let mut rest = rendered;
        loop {
            let Some(open) = rest.find(OPEN) else {
                out.push_str(rest);
                break;
            };
            let close = rest[open..].find(CLOSE)? + open;
            let index: usize = rest[open + OPEN.len_utf8()..close].parse().ok()?;
            if spans.get(index)?.is_some() {
                return None; // a content rendered twice: positions would be ambiguous
            }
            out.push_str(&rest[..open]);
            let content = messages[index]["content"].as_str()?;
            let start = out.len();
            out.push_str(content);
            spans[index] = Some((start, out.len()));
            rest = &rest[close + CLOSE.len_utf8()..];
        }
        let every_content_found = self
            .marks
            .iter()
            .zip(&spans)
            .all(|(mark, span)| mark.is_none() || span.is_some());
        (out == text && every_content_found).then_some(spans)
    }

    /// Maps a byte position of the placeholder rendering to the real rendering.
    fn map_position(&self, rendered: &str, messages: &[Value], position: usize) -> usize {
        let mut shift: isize = 0;
        for (index, mark) in self.marks.iter().enumerate() {
            let Some(mark) = mark else { continue };
            if let Some(at) = rendered.find(mark.as_str()) {
                if at + mark.len() <= position {
                    let content = messages[index]["content"].as_str().unwrap_or("");
                    shift += content.len() as isize - mark.len() as isize;
                }
            }
        }
        (position as isize + shift) as usize
    }
}

/// Extends `end` over whitespace and one end-of-turn token that follow it; without such a
/// token the span ends at the content.
fn extend_over_end_token(text: &str, end: usize, end_tokens: &[String]) -> usize {
    let after = &text[end..];
    let skipped = after.len() - after.trim_start().len();
    let next = &after[skipped..];
    match end_tokens
        .iter()
        .find(|token| next.starts_with(token.as_str()))
    {
        Some(token) => end + skipped + token.len(),
        None => end,
    }
}

/// The span of an assistant turn without a placeholder of its own (it only calls tools, or the
/// template rewrites its content).
///
/// The turn's header is what the generation prompt adds after the turns before it; the span
/// runs from the end of that header, found after the previous placeholder, to the first
/// end-of-turn token. (Rendering the conversation up to the turn would not do: templates such
/// as Qwen3's render a final assistant turn differently from an earlier one.)
fn turn_span(
    template: &ChatTemplate,
    placeholders: &Placeholders,
    options: &RenderOptions,
    (messages, rendered): (&[Value], &str),
    turn: usize,
    end_tokens: &[String],
) -> Result<(usize, usize), MaskError> {
    let fail = |why: String| MaskError {
        turn: Some(turn),
        message: format!("cannot locate the assistant turn: {why}"),
    };
    let render = |generation_prompt: bool| {
        let options = RenderOptions {
            add_generation_prompt: generation_prompt,
            ..options.clone()
        };
        let before = Value::Array(placeholders.messages[..turn].to_vec());
        template
            .render(&before, &options)
            .map(|r| r.text)
            .map_err(|e| fail(e.to_string()))
    };
    let (with_prompt, without) = (render(true)?, render(false)?);
    let header = with_prompt
        .strip_prefix(without.as_str())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| fail("the generation prompt does not extend the conversation".into()))?;
    // Search after the last placeholder of the turns before this one.
    let from = placeholders.marks[..turn]
        .iter()
        .rev()
        .flatten()
        .find_map(|mark| rendered.find(mark.as_str()).map(|at| at + mark.len()))
        .unwrap_or(0);
    let found = [header, header.trim_end()]
        .into_iter()
        .find_map(|h| rendered[from..].find(h).map(|at| from + at + h.len()))
        .ok_or_else(|| fail(format!("its header {header:?} is not in the rendering")))?;
    let end = end_tokens
        .iter()
        .filter_map(|token| {
            rendered[found..]
                .find(token.as_str())
                .map(|at| found + at + token.len())
        })
        .min()
        .ok_or_else(|| fail("no end-of-turn token follows it".into()))?;
    let start = placeholders.map_position(rendered, messages, found);
    let end = placeholders.map_position(rendered, messages, end);
    Ok((start, end))
}

/// Fallback: each wanted assistant content found in order after the previous message.
fn locate_in_order(
    messages: &[Value],
    text: &str,
    wanted: &[usize],
    end_tokens: &[String],
) -> Result<Vec<(usize, usize)>, MaskError> {
    let mut cursor = 0usize;
    let mut spans = Vec::with_capacity(wanted.len());
    for (index, message) in messages.iter().enumerate() {
        let content = message["content"].as_str().unwrap_or("");
        let is_wanted = wanted.contains(&index);
        if content.trim().is_empty() {
            if is_wanted {
                return Err(MaskError {
                    turn: Some(index),
                    message: "the template transforms contents, and this assistant turn has none to locate".into(),
                });
            }
            continue;
        }
        let found = [content, content.trim()].into_iter().find_map(|needle| {
            text[cursor..]
                .find(needle)
                .map(|at| (cursor + at, needle.len()))
        });
        match found {
            Some((start, len)) => {
                cursor = start + len;
                if is_wanted {
                    spans.push((start, extend_over_end_token(text, cursor, end_tokens)));
                }
            }
            None if is_wanted => {
                return Err(MaskError {
                    turn: Some(index),
                    message: "the template rewrites this answer so that it cannot be located in the rendering".into(),
                })
            }
            None => {}
        }
    }
    Ok(spans)
}

/// Labels from learned spans: a token is learned iff its byte range overlaps a span (as
/// transformers marks every token that holds a character of a generation block).
pub fn labels(ids: &[u32], offsets: &[(usize, usize)], spans: &[(usize, usize)]) -> Vec<i32> {
    ids.iter()
        .zip(offsets)
        .map(|(&id, &(start, end))| {
            let learned = spans
                .iter()
                .any(|&(s, e)| start < e && s < end.max(start + 1));
            if learned {
                id as i32
            } else {
                -100
            }
        })
        .collect()
}
