//! `{% generation %}` … `{% endgeneration %}`: transformers' tag for "the model writes this".
//!
//! Training templates wrap each assistant answer in these tags and transformers records the
//! character span of every block (`return_assistant_tokens_mask=True`). minijinja has no custom
//! tags, so [`rewrite`] turns each tag into a plain `if` block that prints a marker character,
//! and [`extract_spans`] removes the markers from the rendering and returns the spans.
//!
//! Why an `if` block and not `{{ marker }}`: in Jinja2 the generation tag is a *block* tag, so
//! `lstrip_blocks` strips the indentation before it and `trim_blocks` eats the newline after it,
//! and `-`/`+` modifiers act on its two sides. `{%L if true %}MARK{% endif R%}` is a pair of
//! block tags with the same outer whitespace behaviour: the left modifier and `lstrip_blocks`
//! act on the `if`, the right modifier and `trim_blocks` on the `endif`, and nothing can be
//! stripped between them (the marker sits in the way). The rewrite adds no newline, so error
//! line numbers stay those of the original source.
//!
//! The markers are the Unicode noncharacters U+FDD0 and U+FDD1, "permanently reserved for
//! internal use": they are never in tokenizer vocabularies or real text. A record that does
//! contain one is refused rather than given wrong spans ([`contains_marker`]).
//!
//! Markers written straight to the output cannot change anything else: templates cannot read
//! their own output. They can read *captured* output, though — a `{% set x %}` block, a macro's
//! return value, a `{% filter %}` or `{% call %}` body — and `x|trim` does not strip spaces
//! that a marker shields. So when a generation tag sits inside such a construct, the renderer
//! also renders the template without markers ([`Rewrite::plain`]) as the authoritative text,
//! and uses the spans only if the marked rendering, markers removed, is the same text.

use std::ops::Range;

/// Printed where a generation block starts.
pub const START: char = '\u{FDD0}';
/// Printed where a generation block ends.
pub const END: char = '\u{FDD1}';

/// A template source with its generation tags rewritten.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// Each generation tag replaced by an `if` block printing a marker.
    pub marked: String,
    /// Each generation tag replaced by an empty `if` block (same whitespace, no output); only
    /// when a generation tag sits inside a capturing block (see the module docs).
    pub plain: Option<String>,
    /// Whether the source has any generation tag.
    pub has_generation: bool,
}

/// Rewrites the generation tags of `source`; see the module docs.
pub fn rewrite(source: &str) -> Rewrite {
    let mut marked = String::with_capacity(source.len() + 64);
    let mut plain = String::with_capacity(source.len() + 64);
    let mut has_generation = false;
    let mut captured = false;
    // Open blocks whose output the template can capture (set/macro/call/filter).
    let mut capture_depth = 0usize;
    let mut pos = 0;
    while let Some(tag) = next_tag(source, pos) {
        marked.push_str(&source[pos..tag.start]);
        plain.push_str(&source[pos..tag.start]);
        let text = &source[tag.clone()];
        pos = tag.end;
        if let Some(block) = text.strip_prefix("{%").and_then(|t| t.strip_suffix("%}")) {
            let (left, body, right) = split_modifiers(block);
            let body = body.trim();
            let keyword = body
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .next();
            let marker = match keyword.unwrap_or("") {
                "generation" if body == "generation" => Some(START),
                "endgeneration" if body == "endgeneration" => Some(END),
                "raw" if body == "raw" => {
                    // Copy a raw block verbatim: a generation tag inside it is text.
                    let end = find_endraw(source, pos).unwrap_or(source.len());
                    for out in [&mut marked, &mut plain] {
                        out.push_str(text);
                        out.push_str(&source[pos..end]);
                    }
                    pos = end;
                    continue;
                }
                "macro" | "call" | "filter" => {
                    capture_depth += 1;
                    None
                }
                "set" if is_block_set(body) => {
                    capture_depth += 1;
                    None
                }
                "endmacro" | "endcall" | "endfilter" | "endset" => {
                    capture_depth = capture_depth.saturating_sub(1);
                    None
                }
                _ => None,
            };
            if let Some(marker) = marker {
                has_generation = true;
                captured |= capture_depth > 0;
                marked.push_str(&format!(
                    "{{%{left} if true %}}{marker}{{% endif {right}%}}"
                ));
                plain.push_str(&format!("{{%{left} if true %}}{{% endif {right}%}}"));
                continue;
            }
        }
        marked.push_str(text);
        plain.push_str(text);
    }
    marked.push_str(&source[pos..]);
    plain.push_str(&source[pos..]);
    Rewrite {
        marked,
        plain: captured.then_some(plain),
        has_generation,
    }
}

/// Whether a `set` tag's body opens a block (`set x`, `set x | trim`) rather than assigning
/// (`set x = 1`): it has no `=` outside string literals other than in `==`, `!=`, `<=`, `>=`.
fn is_block_set(body: &str) -> bool {
    let bytes = body.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'=' => {
                let prev = i.checked_sub(1).map(|j| bytes[j]);
                let next = bytes.get(i + 1).copied();
                let comparison =
                    matches!(prev, Some(b'=' | b'!' | b'<' | b'>')) || next == Some(b'=');
                if !comparison {
                    return false;
                }
            }
            None => {}
        }
        i += 1;
    }
    true
}

/// Splits a block tag's inside (between `{%` and `%}`) into its whitespace modifiers and body.
fn split_modifiers(block: &str) -> (&str, &str, &str) {
    let is_modifier = |c: char| c == '-' || c == '+';
    let left = if block.starts_with(is_modifier) {
        &block[..1]
    } else {
        ""
    };
    let rest = &block[left.len()..];
    let right = if rest.ends_with(is_modifier) {
        &rest[rest.len() - 1..]
    } else {
        ""
    };
    (left, &rest[..rest.len() - right.len()], right)
}

/// The byte range of the next `{% … %}`, `{{ … }}` or `{# … #}` at or after `from`, string
/// literals inside tags skipped (a `%}` inside a string does not end the tag). An unclosed tag
/// runs to the end of the source; the compiler reports it.
fn next_tag(source: &str, from: usize) -> Option<Range<usize>> {
    let bytes = source.as_bytes();
    let mut i = from;
    while i + 1 < bytes.len() {
        if bytes[i] == b'{' && matches!(bytes[i + 1], b'{' | b'%' | b'#') {
            let close = match bytes[i + 1] {
                b'{' => b'}',
                b'%' => b'%',
                _ => b'#',
            };
            let mut j = i + 2;
            let mut quote: Option<u8> = None;
            while j < bytes.len() {
                let b = bytes[j];
                match quote {
                    Some(_) if b == b'\\' => j += 1,
                    Some(q) if b == q => quote = None,
                    Some(_) => {}
                    None if close != b'#' && (b == b'"' || b == b'\'') => quote = Some(b),
                    None if b == close && bytes.get(j + 1) == Some(&b'}') => {
                        return Some(i..j + 2);
                    }
                    None => {}
                }
                j += 1;
            }
            return Some(i..bytes.len());
        }
        i += 1;
    }
    None
}

/// Where the `{% endraw %}` tag closing a raw block that ends at `from` starts.
fn find_endraw(source: &str, from: usize) -> Option<usize> {
    let mut pos = from;
    while let Some(tag) = next_tag(source, pos) {
        let text = &source[tag.clone()];
        if let Some(block) = text.strip_prefix("{%").and_then(|t| t.strip_suffix("%}")) {
            if split_modifiers(block).1.trim() == "endraw" {
                return Some(tag.start);
            }
        }
        pos = tag.start + 1;
    }
    None
}

/// Whether `text` holds a marker character (input that would corrupt the spans).
pub fn contains_marker(text: &str) -> bool {
    text.contains([START, END])
}

/// Removes the markers from a rendering; returns the clean text and the byte span of each
/// generation block in it, ordered by start. `Err` names what is wrong with the markers.
pub fn extract_spans(rendered: &str) -> Result<(String, Vec<(usize, usize)>), String> {
    let mut text = String::with_capacity(rendered.len());
    let mut spans = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    let mut rest = rendered;
    while let Some(at) = rest.find([START, END]) {
        text.push_str(&rest[..at]);
        let marker = rest[at..].chars().next().expect("found a marker");
        if marker == START {
            open.push(spans.len());
            spans.push((text.len(), usize::MAX));
        } else {
            let index = open
                .pop()
                .ok_or("{% endgeneration %} rendered without a matching {% generation %}")?;
            spans[index].1 = text.len();
        }
        rest = &rest[at + marker.len_utf8()..];
    }
    text.push_str(rest);
    if !open.is_empty() {
        return Err("{% generation %} rendered without a matching {% endgeneration %}".into());
    }
    Ok((text, spans))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_tags_with_their_modifiers() {
        let out = rewrite("a{%- generation %}b{% endgeneration -%}c{%+generation+%}");
        assert!(out.has_generation);
        assert!(out.plain.is_none());
        assert_eq!(
            out.marked,
            "a{%- if true %}\u{FDD0}{% endif %}b{% if true %}\u{FDD1}{% endif -%}c\
             {%+ if true %}\u{FDD0}{% endif +%}"
        );
    }

    #[test]
    fn leaves_strings_comments_and_raw_alone() {
        for source in [
            "{{ '{% generation %}' }}",
            "{# {% generation %} #}",
            "{% raw %}{% generation %}{% endraw %}",
            "{% set x = '%}{% generation %}' %}",
            "{% generations %}",
        ] {
            let out = rewrite(source);
            assert_eq!(
                (out.marked.as_str(), out.has_generation),
                (source, false),
                "{source}"
            );
        }
        let out = rewrite("{% raw %}x{% endraw %}{% generation %}");
        assert!(out.has_generation);
        assert!(out.marked.ends_with("{% if true %}\u{FDD0}{% endif %}"));
    }

    #[test]
    fn notices_generation_inside_captured_output() {
        for (source, captured) in [
            (
                "{% set x %}{% generation %}a{% endgeneration %}{% endset %}{{ x }}",
                true,
            ),
            (
                "{% set x | trim %}{% generation %}a{% endgeneration %}{% endset %}",
                true,
            ),
            (
                "{% macro m() %}{% generation %}a{% endgeneration %}{% endmacro %}",
                true,
            ),
            (
                "{% filter upper %}{% generation %}a{% endgeneration %}{% endfilter %}",
                true,
            ),
            ("{% set x = 1 %}{% generation %}a{% endgeneration %}", false),
            (
                "{% set x = a == '=' %}{% generation %}a{% endgeneration %}",
                false,
            ),
            (
                "{% set x %}{% endset %}{% generation %}a{% endgeneration %}",
                false,
            ),
        ] {
            let out = rewrite(source);
            assert_eq!(out.plain.is_some(), captured, "{source}");
            if let Some(plain) = out.plain {
                assert!(!plain.contains([START, END]));
            }
        }
        assert!(is_block_set("set x"));
        assert!(is_block_set("set x | replace('=', '')"));
        assert!(!is_block_set("set ns.x = y <= 2"));
    }

    #[test]
    fn extracts_byte_spans() {
        let rendered = "é\u{FDD0}ab\u{FDD1}c\u{FDD0}\u{FDD1}d\u{FDD0}日\u{FDD1}";
        let (text, spans) = extract_spans(rendered).unwrap();
        assert_eq!(text, "éabcd日");
        assert_eq!(spans, [(2, 4), (5, 5), (6, 9)]);
        assert!(extract_spans("\u{FDD0}x").is_err());
        assert!(extract_spans("x\u{FDD1}").is_err());
    }

    /// The rewrite must not change whitespace handling. Expected texts and spans are what
    /// transformers (Jinja2 3.1.6, trim_blocks + lstrip_blocks) gives for the same sources.
    #[test]
    fn whitespace_control_matches_jinja2() {
        let mut env = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .unwrap();
        env.set_syntax(syntax);
        type Case = (&'static str, &'static str, &'static [(usize, usize)]);
        let cases: [Case; 5] = [
            (
                "a\n  {% generation %}\n  x\n  {% endgeneration %}\nb",
                "a\n  x\nb",
                &[(2, 6)],
            ),
            (
                "a\n  {%- generation -%}\n  x\n  {%- endgeneration -%}\n  b",
                "axb",
                &[(1, 2)],
            ),
            (
                "a\n  {%+ generation +%}\n  x\n  {%+ endgeneration +%}\nb",
                "a\n  \n  x\n  \nb",
                &[(4, 11)],
            ),
            ("a {% generation %} x {% endgeneration %} b\n", "a  x  b", &[(2, 5)]),
            (
                "{% for i in [1, 2] %}\n    {% generation %}\n    {{ i }}\n    {% endgeneration %}\n{% endfor %}",
                "    1\n    2\n",
                &[(0, 6), (6, 12)],
            ),
        ];
        for (source, want_text, want_spans) in cases {
            let rendered = env.render_str(&rewrite(source).marked, ()).unwrap();
            let (text, spans) = extract_spans(&rendered).unwrap();
            assert_eq!(text, want_text, "{source:?}");
            assert_eq!(spans, want_spans, "{source:?}");
        }
    }
}
