//! Python's `str()` and `repr()` of template values, and Python's whitespace rules.
//!
//! Jinja2 turns values into text with Python's `str()`: `{{ true }}` prints `True`, `{{ none }}`
//! prints `None`, a list prints as `['a', 1]`, a float as `1e-05`. minijinja prints `true`,
//! `none`, `["a", 1]` and `0.00001`, and its string methods use Rust's idea of whitespace
//! (which lacks `\x1c`..`\x1f`, whitespace to Python). Chat templates print tool-call arguments
//! and `|string` values, so these differences show up in real renderings; this module is the
//! one place that knows Python's rules.

use std::fmt::Write;

use minijinja::value::{Value, ValueKind};

/// Python's `str(value)`, the text Jinja2 writes for `{{ value }}`.
pub fn py_str(value: &Value) -> String {
    let mut out = String::new();
    write_str(&mut out, value);
    out
}

/// Appends Python's `str(value)` to `out`.
pub fn write_str(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::String => out.push_str(value.as_str().unwrap_or_default()),
        ValueKind::Undefined => {}
        _ => write_repr(out, value),
    }
}

/// Appends Python's `repr(value)` to `out`: how values print inside lists and dicts.
pub fn write_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => write_number(out, value),
        ValueKind::String => write_str_repr(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq => {
            let tuple = value.is_tuple();
            out.push(if tuple { '(' } else { '[' });
            let items: Vec<Value> = value.try_iter().map(|it| it.collect()).unwrap_or_default();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, item);
            }
            if tuple && items.len() == 1 {
                out.push(',');
            }
            out.push(if tuple { ')' } else { ']' });
        }
        ValueKind::Map if is_plain_map(value) => {
            out.push('{');
            if let Some(pairs) = value.as_object().and_then(|o| o.try_iter_pairs()) {
                for (i, (key, item)) in pairs.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_repr(out, &key);
                    out.push_str(": ");
                    write_repr(out, &item);
                }
            }
            out.push('}');
        }
        // Namespaces, loop objects, macros, iterators: no Python equivalent worth imitating.
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

/// Whether a map value is a plain dict (JSON data, `dict(...)`, a dict literal) rather than
/// an engine object that merely looks like a map (a namespace, the loop variable).
fn is_plain_map(value: &Value) -> bool {
    value
        .as_object()
        .is_some_and(|o| o.try_iter_pairs().is_some())
}

/// Integers print as digits; floats as Python's `repr(float)`.
fn write_number(out: &mut String, value: &Value) {
    if value.is_integer() {
        let _ = write!(out, "{value}");
    } else {
        match f64::try_from(value.clone()) {
            Ok(f) => out.push_str(&py_float_repr(f)),
            Err(_) => {
                let _ = write!(out, "{value}");
            }
        }
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, in fixed notation for decimal
/// exponents from -4 to 15 and in scientific notation (`1e-05`, `1.5e+16`) outside.
pub fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits, like Python's repr: "-1.2345e-5".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::from(sign);
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    out
}

/// Python's `repr(str)`: single quotes unless the text has a single quote and no double quote;
/// escapes for backslashes, the quote, control characters and characters Python does not
/// consider printable.
pub fn write_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if is_py_printable(c) => out.push(c),
            c if (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable()` for one character, without Unicode tables: control characters,
/// separators other than the space, format characters, private-use characters and
/// noncharacters are not printable. Unassigned code points (also unprintable to Python) are
/// not known here and print as themselves.
fn is_py_printable(c: char) -> bool {
    let u = c as u32;
    !(u < 0x20
        || (0x7f..=0xa0).contains(&u)
        || u == 0xad
        || u == 0x061c
        || u == 0x1680
        || u == 0x180e
        || (0x2000..=0x200f).contains(&u)
        || (0x2028..=0x202f).contains(&u)
        || (0x205f..=0x206f).contains(&u)
        || u == 0x3000
        || (0xd800..=0xf8ff).contains(&u)
        || (0xfdd0..=0xfdef).contains(&u)
        || u == 0xfeff
        || (0xfff9..=0xfffb).contains(&u)
        || (u & 0xfffe) == 0xfffe
        || (0xe0000..=0xe007f).contains(&u)
        || u >= 0xf0000)
}

/// Python's `str.isspace()` for one character (what `strip()` and `split()` remove).
pub fn is_py_space(c: char) -> bool {
    matches!(c, '\t'..='\r' | '\x1c'..='\x1f' | ' ' | '\u{85}' | '\u{a0}' | '\u{1680}')
        || ('\u{2000}'..='\u{200a}').contains(&c)
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}'
        )
}

/// Which ends `py_strip` strips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ends {
    Both,
    Left,
    Right,
}

/// Python's `str.strip(chars)` / `lstrip` / `rstrip`: `chars=None` strips Python whitespace.
pub fn py_strip<'a>(s: &'a str, chars: Option<&str>, ends: Ends) -> &'a str {
    let strip = |c: char| match chars {
        Some(set) => set.contains(c),
        None => is_py_space(c),
    };
    let s = if ends == Ends::Right {
        s
    } else {
        s.trim_start_matches(strip)
    };
    if ends == Ends::Left {
        s
    } else {
        s.trim_end_matches(strip)
    }
}

/// Python's `str.split(sep, maxsplit)`. `None` splits on runs of Python whitespace and drops
/// empty pieces; a negative `maxsplit` means no limit. An empty separator is an error in
/// Python, reported here as `None`.
pub fn py_split(s: &str, sep: Option<&str>, maxsplit: i64) -> Option<Vec<String>> {
    let limit = usize::try_from(maxsplit).ok();
    match sep {
        Some("") => None,
        Some(sep) => Some(match limit {
            Some(n) => s.splitn(n + 1, sep).map(String::from).collect(),
            None => s.split(sep).map(String::from).collect(),
        }),
        None => {
            let mut parts = Vec::new();
            let mut rest = s.trim_start_matches(is_py_space);
            while !rest.is_empty() {
                if limit.is_some_and(|n| parts.len() == n) {
                    parts.push(rest.to_string());
                    break;
                }
                let end = rest.find(is_py_space).unwrap_or(rest.len());
                parts.push(rest[..end].to_string());
                rest = rest[end..].trim_start_matches(is_py_space);
            }
            Some(parts)
        }
    }
}

/// Python's `str.rsplit(sep, maxsplit)`: like [`py_split`], counting splits from the right.
pub fn py_rsplit(s: &str, sep: Option<&str>, maxsplit: i64) -> Option<Vec<String>> {
    let Ok(limit) = usize::try_from(maxsplit) else {
        return py_split(s, sep, -1);
    };
    let mut parts: Vec<String> = match sep {
        Some("") => return None,
        Some(sep) => s.rsplitn(limit + 1, sep).map(String::from).collect(),
        None => {
            let mut parts = Vec::new();
            let mut rest = s.trim_end_matches(is_py_space);
            while !rest.is_empty() {
                if parts.len() == limit {
                    parts.push(rest.to_string());
                    break;
                }
                let start = rest.rfind(is_py_space).map_or(0, |i| {
                    i + rest[i..].chars().next().map_or(1, char::len_utf8)
                });
                parts.push(rest[start..].to_string());
                rest = rest[..start].trim_end_matches(is_py_space);
            }
            parts
        }
    };
    parts.reverse();
    Some(parts)
}

/// Python's `str.title()`: a cased character after an uncased one (or at the start) is
/// title-cased, every other cased character lower-cased — so `"they're 1st".title()` is
/// `"They'Re 1St"` (Jinja's `|title` filter, by contrast, capitalizes words).
pub fn py_title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut previous_cased = false;
    for c in s.chars() {
        let cased = c.is_uppercase() || c.is_lowercase() || titlecase(c).is_some();
        if cased && !previous_cased {
            match titlecase(c) {
                Some(t) => out.push(t),
                None => out.extend(c.to_uppercase()),
            }
        } else if cased {
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
        previous_cased = cased;
    }
    out
}

/// The title case of the Latin digraphs, the only common letters whose title case is not
/// their upper case (`ǆ` → `ǅ`, not `Ǆ`).
fn titlecase(c: char) -> Option<char> {
    match c {
        'Ǆ' | 'ǅ' | 'ǆ' => Some('ǅ'),
        'Ǉ' | 'ǈ' | 'ǉ' => Some('ǈ'),
        'Ǌ' | 'ǋ' | 'ǌ' => Some('ǋ'),
        'Ǳ' | 'ǲ' | 'ǳ' => Some('ǲ'),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python() {
        for (f, want) in [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-2.25, "-2.25"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (0.1 + 0.2, "0.30000000000000004"),
            (123456.789, "123456.789"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1e300, "1e+300"),
        ] {
            assert_eq!(py_float_repr(f), want, "{f:e}");
        }
    }

    #[test]
    fn values_print_like_python() {
        let v = crate::template::to_jinja(&serde_json::json!(
            {"a": [1, "it's", null, true, 1.5], "b": {"c": "x\ny"}}
        ));
        assert_eq!(
            py_str(&v),
            r#"{'a': [1, "it's", None, True, 1.5], 'b': {'c': 'x\ny'}}"#
        );
        assert_eq!(py_str(&Value::from(false)), "False");
        assert_eq!(py_str(&Value::UNDEFINED), "");
    }

    #[test]
    fn strip_and_split_use_python_whitespace() {
        assert_eq!(py_strip("\x1f a \u{3000}", None, Ends::Both), "a");
        assert_eq!(py_strip("xxaxx", Some("x"), Ends::Left), "axx");
        assert_eq!(py_strip(" a ", None, Ends::Right), " a");
        assert_eq!(py_split(" a  b\x1cc ", None, -1).unwrap(), ["a", "b", "c"]);
        assert_eq!(py_split("a b c", None, 1).unwrap(), ["a", "b c"]);
        assert_eq!(
            py_split("a,b,,c", Some(","), -1).unwrap(),
            ["a", "b", "", "c"]
        );
        assert_eq!(py_split("a,b,c", Some(","), 1).unwrap(), ["a", "b,c"]);
        assert!(py_split("abc", Some(""), -1).is_none());
        assert_eq!(py_rsplit("a,b,c", Some(","), 1).unwrap(), ["a,b", "c"]);
        assert_eq!(py_rsplit(" a b  c ", None, 1).unwrap(), [" a b", "c"]);
        assert_eq!(py_rsplit("a b c", None, -1).unwrap(), ["a", "b", "c"]);
    }

    #[test]
    fn title_like_python() {
        assert_eq!(py_title("they're bill's 1st"), "They'Re Bill'S 1St");
        assert_eq!(py_title("ǆx HELLO"), "ǅx Hello");
    }
}
