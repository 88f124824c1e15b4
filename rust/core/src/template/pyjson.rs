//! The `tojson` filter as transformers defines it: Python's `json.dumps`.
//!
//! transformers replaces Jinja2's own `tojson` (which HTML-escapes `<`, `>`, `&`, `'`) with
//! `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, and
//! chat templates put its output straight into the prompt (tool schemas, tool-call arguments).
//! minijinja's built-in one HTML-escapes and sorts keys, so it is replaced by this exact copy of
//! Python's encoder: `", "`/`": "` separators by default (`","` between items once an indent
//! is given), keys in insertion order, non-ASCII kept, floats as Python's `repr`.

use std::fmt::Write;

use minijinja::value::{from_args, Kwargs, Rest, Value, ValueKind, ValueOrKwargs};
use minijinja::{Error, ErrorKind};

use super::pystr::py_float_repr;

/// The keyword arguments of `json.dumps` that transformers' filter accepts.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub ensure_ascii: bool,
    /// The text repeated once per nesting level; `None` writes everything on one line.
    pub indent: Option<String>,
    pub item_separator: String,
    pub key_separator: String,
    pub sort_keys: bool,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            ensure_ascii: false,
            indent: None,
            item_separator: ", ".into(),
            key_separator: ": ".into(),
            sort_keys: false,
        }
    }
}

/// The filter: `value|tojson(ensure_ascii=False, indent=None, separators=None, sort_keys=False)`,
/// positionally in that order too (as transformers' Python signature allows).
pub fn tojson_filter(value: &Value, args: Rest<ValueOrKwargs>) -> Result<Value, Error> {
    // minijinja functions take at most five parameters: unpack the rest by hand.
    type Args = (
        Option<Value>,
        Option<Value>,
        Option<Value>,
        Option<Value>,
        Kwargs,
    );
    let (ensure_ascii, indent, separators, sort_keys, kwargs): Args =
        from_args(&args.into_values())?;
    let pick = |positional: Option<Value>, name: &str| -> Result<Option<Value>, Error> {
        let keyword: Option<Value> = kwargs.get(name)?;
        if positional.is_some() && keyword.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson() got multiple values for argument '{name}'"),
            ));
        }
        Ok(positional.or(keyword).filter(|v| !v.is_none()))
    };
    let ensure_ascii = pick(ensure_ascii, "ensure_ascii")?.is_some_and(|v| v.is_true());
    let indent = match pick(indent, "indent")? {
        None => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().into()),
        Some(v) => {
            let n = i64::try_from(v.clone()).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson indent must be an int or a string, not {}", v.kind()),
                )
            })?;
            Some(" ".repeat(n.max(0) as usize))
        }
    };
    let (item_separator, key_separator) = match pick(separators, "separators")? {
        Some(pair) => {
            let parts: Vec<Value> = pair.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] if a.as_str().is_some() && b.as_str().is_some() => {
                    (a.to_string(), b.to_string())
                }
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson separators must be a pair of strings",
                    ))
                }
            }
        }
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let sort_keys = pick(sort_keys, "sort_keys")?.is_some_and(|v| v.is_true());
    kwargs.assert_all_used()?;
    let options = DumpOptions {
        ensure_ascii,
        indent,
        item_separator,
        key_separator,
        sort_keys,
    };
    Ok(Value::from_safe_string(dumps(value, &options)?))
}

/// `json.dumps(value, **options)`.
pub fn dumps(value: &Value, options: &DumpOptions) -> Result<String, Error> {
    let mut out = String::new();
    encode(&mut out, value, options, 0)?;
    Ok(out)
}

fn not_serializable(value: &Value) -> Error {
    let type_name = match value.kind() {
        ValueKind::Undefined => "Undefined".to_string(),
        kind => kind.to_string(),
    };
    Error::new(
        ErrorKind::InvalidOperation,
        format!("Object of type {type_name} is not JSON serializable"),
    )
}

fn newline_indent(out: &mut String, options: &DumpOptions, level: usize) {
    if let Some(indent) = &options.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(indent);
        }
    }
}

fn encode(
    out: &mut String,
    value: &Value,
    options: &DumpOptions,
    level: usize,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => encode_number(out, value),
        ValueKind::String => encode_str(out, value.as_str().unwrap_or_default(), options),
        ValueKind::Seq => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&options.item_separator);
                }
                newline_indent(out, options, level + 1);
                encode(out, item, options, level + 1)?;
            }
            newline_indent(out, options, level);
            out.push(']');
        }
        ValueKind::Map => {
            let Some(pairs) = value.as_object().and_then(|o| o.try_iter_pairs()) else {
                return Err(not_serializable(value));
            };
            let mut pairs: Vec<(String, Value)> = pairs
                .map(|(k, v)| Ok((key_string(&k)?, v)))
                .collect::<Result<_, Error>>()?;
            if pairs.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if options.sort_keys {
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            out.push('{');
            for (i, (key, item)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push_str(&options.item_separator);
                }
                newline_indent(out, options, level + 1);
                encode_str(out, key, options);
                out.push_str(&options.key_separator);
                encode(out, item, options, level + 1)?;
            }
            newline_indent(out, options, level);
            out.push('}');
        }
        _ => return Err(not_serializable(value)),
    }
    Ok(())
}

/// JSON object keys: Python converts int, float, bool and None keys to strings.
fn key_string(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::None => Ok("null".into()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::Number => {
            let mut s = String::new();
            encode_number(&mut s, key);
            Ok(s)
        }
        kind => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("keys must be str, int, float, bool or None, not {kind}"),
        )),
    }
}

fn encode_number(out: &mut String, value: &Value) {
    if value.is_integer() {
        let _ = write!(out, "{value}");
        return;
    }
    let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        out.push_str(&py_float_repr(f));
    }
}

/// Python's `encode_basestring` (or `encode_basestring_ascii` with `ensure_ascii`).
fn encode_str(out: &mut String, s: &str, options: &DumpOptions) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' || (options.ensure_ascii && c > '~') => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dump(v: serde_json::Value, options: &DumpOptions) -> String {
        dumps(&crate::template::to_jinja(&v), options).unwrap()
    }

    #[test]
    fn matches_python_json_dumps() {
        let data = json!({"b": [1, 2.5, null, true], "a": "é<>&'\"\n\u{1}", "c": {}, "d": []});
        // json.dumps(data, ensure_ascii=False)
        assert_eq!(
            dump(data.clone(), &DumpOptions::default()),
            r#"{"b": [1, 2.5, null, true], "a": "é<>&'\"\n\u0001", "c": {}, "d": []}"#
        );
        // json.dumps(data, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
        let compact = DumpOptions {
            ensure_ascii: true,
            item_separator: ",".into(),
            key_separator: ":".into(),
            sort_keys: true,
            ..DumpOptions::default()
        };
        assert_eq!(
            dump(data, &compact),
            r#"{"a":"\u00e9<>&'\"\n\u0001","b":[1,2.5,null,true],"c":{},"d":[]}"#
        );
        assert_eq!(dump(json!("😀"), &compact), r#""\ud83d\ude00""#);
    }

    #[test]
    fn indents_like_python() {
        // json.dumps({"a": [1, {"b": 2}], "c": []}, indent=2)
        let options = DumpOptions {
            indent: Some("  ".into()),
            item_separator: ",".into(),
            ..DumpOptions::default()
        };
        assert_eq!(
            dump(json!({"a": [1, {"b": 2}], "c": []}), &options),
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": 2\n    }\n  ],\n  \"c\": []\n}"
        );
    }

    #[test]
    fn filter_arguments() {
        let mut env = minijinja::Environment::new();
        env.add_filter("tojson", tojson_filter);
        let render = |src: &str| {
            let x = crate::template::to_jinja(&json!({"k": "ü", "n": [1]}));
            env.render_str(src, minijinja::context! { x }).unwrap()
        };
        assert_eq!(render("{{ x|tojson }}"), r#"{"k": "ü", "n": [1]}"#);
        assert_eq!(
            render("{{ x|tojson(indent=1) }}"),
            "{\n \"k\": \"ü\",\n \"n\": [\n  1\n ]\n}"
        );
        assert_eq!(
            render("{{ x|tojson(true) }}"),
            r#"{"k": "\u00fc", "n": [1]}"#
        );
        assert_eq!(
            render("{{ x|tojson(separators=(',', ':'), sort_keys=true) }}"),
            r#"{"k":"ü","n":[1]}"#
        );
        assert!(env
            .render_str("{{ y|tojson }}", minijinja::context! {})
            .unwrap_err()
            .to_string()
            .contains("Object of type Undefined is not JSON serializable"));
    }
}
