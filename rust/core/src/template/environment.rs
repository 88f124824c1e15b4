//! The minijinja environment that renders chat templates as transformers' Jinja2 one does.
//!
//! transformers compiles chat templates in an `ImmutableSandboxedEnvironment(trim_blocks=True,
//! lstrip_blocks=True, extensions=[loopcontrols, generation])` with Jinja2's default (lenient)
//! `Undefined`, `keep_trailing_newline=False`, and the globals `raise_exception`,
//! `strftime_now`, `dict`, `namespace` and its own `tojson` filter. Templates are Python code
//! in disguise: they call string methods (`.strip()`, `.split()`, `.startswith()`), print
//! booleans as `True`, test `is sequence` on strings. Each difference between minijinja's
//! defaults and that behaviour is overridden here, one function per difference.

use std::borrow::Cow;

use minijinja::value::{from_args, Kwargs, Rest, Value, ValueKind, ValueOrKwargs};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior};

use super::pyjson::tojson_filter;
use super::pystr::{is_py_space, py_rsplit, py_split, py_str, py_strip, py_title, write_str, Ends};

/// The error `raise_exception(message)` produces, attached as the source of the minijinja error
/// so the renderer can hand the template's own message to the user unchanged.
#[derive(Debug, Clone)]
pub struct Raised(pub String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// The instructions one render may run. A real template renders a long conversation in tens
/// of thousands; a template that loops (or recurses) without end stops here with an error
/// instead of hanging the run (minijinja also bounds recursion depth and `range`).
pub const FUEL: u64 = 20_000_000;

/// A fresh environment configured like transformers' (templates are added by the caller).
/// Sandboxed as Jinja2's: no loader (no `include`, `import` or `extends` of anything but the
/// template itself), no file, environment or Python object access, and [`FUEL`] per render.
pub fn new_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(false)
        .build()
        .expect("the default delimiters are valid");
    env.set_syntax(syntax);
    // Jinja2's default Undefined: prints as "", iterates as empty, is falsy, and fails on
    // attribute access.
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    // transformers never autoescapes, whatever the template is called.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_formatter(|out, _state, value| {
        let mut text = String::new();
        write_str(&mut text, value);
        out.write_str(&text).map_err(Error::from)
    });
    env.set_unknown_method_callback(python_method);

    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);

    env.add_filter("tojson", tojson_charged);
    env.add_filter("string", string_filter);
    env.add_filter("join", join_filter);
    env.add_filter("trim", trim_filter);
    env.add_filter("int", int_filter);
    env.add_filter("float", float_filter);

    env.add_test("sequence", is_sequence);
    env.add_test("iterable", is_iterable);
    env.add_test("mapping", is_mapping);
    env.add_test("integer", is_integer);
    env.add_test("float", is_float);
    env
}

/// `raise_exception(message)`: the template refuses the conversation.
fn raise_exception(message: Value) -> Result<Value, Error> {
    let message = py_str(&message);
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

/// `strftime_now(format)`: the local time, as Python's `datetime.now().strftime(format)`.
fn strftime_now(format: &str) -> Result<Value, Error> {
    let now = jiff::Zoned::now();
    jiff::fmt::strtime::format(format, &now)
        .map(Value::from)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("strftime_now: {e}")))
}

/// `|string`: Python's `str()` (`True`, `None`, `['a']`), not minijinja's `true`/`none`.
fn string_filter(state: &State, value: &Value) -> Result<Value, Error> {
    if value.kind() == ValueKind::String {
        return Ok(value.clone());
    }
    let text = py_str(value);
    charge_serialized(state, text.len())?;
    Ok(Value::from(text))
}

/// `|tojson`, charged for the bytes it serializes.
fn tojson_charged(state: &State, value: &Value, args: Rest<ValueOrKwargs>) -> Result<Value, Error> {
    let json = tojson_filter(value, args)?;
    charge_serialized(state, json.as_str().map_or(0, str::len))?;
    Ok(json)
}

/// Charges a filter that serialized `bytes` bytes as minijinja charges its own serializing
/// (16 units of the 64 in a fuel per byte; the engine charges the returned string's 1): at
/// its price for a plain string, a loop of `messages|tojson` ran 5 s within the fuel.
fn charge_serialized(state: &State, bytes: usize) -> Result<(), Error> {
    state.consume_fuel((bytes as u64 * 15).div_ceil(64))
}

/// `|join(d="", attribute=None)`: items joined with Python's `str()` of each.
fn join_filter(
    state: &mut State,
    value: &Value,
    joiner: Option<&str>,
    attribute: Option<&str>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let joiner = match joiner {
        Some(joiner) => joiner.to_string(),
        None => kwargs.get::<Option<&str>>("d")?.unwrap_or("").to_string(),
    };
    let attribute = match attribute {
        Some(attribute) => Some(attribute.to_string()),
        None => kwargs.get::<Option<&str>>("attribute")?.map(String::from),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    for (i, item) in value.try_iter()?.enumerate() {
        if i > 0 {
            out.push_str(&joiner);
        }
        let item = match &attribute {
            Some(path) => state.apply_filter("attr", &[item, Value::from(path.as_str())])?,
            None => item,
        };
        write_str(&mut out, &item);
    }
    Ok(Value::from(out))
}

/// `|trim(chars=None)`: Python's `str.strip`, with Python's whitespace.
fn trim_filter(value: &Value, chars: Option<&str>) -> Result<Value, Error> {
    let text = py_str(value);
    Ok(Value::from(py_strip(&text, chars, Ends::Both)))
}

/// `|int(default=0, base=10)` as Jinja2: `int(value)`, else `int(float(value))` (so
/// `"42.9"|int` is 42), else the default — never an error for a bad string or `none`.
fn int_filter(value: &Value, default: Option<Value>, base: Option<u32>) -> Result<Value, Error> {
    let default = default.unwrap_or(Value::from(0));
    Ok(match value.kind() {
        ValueKind::Number if value.is_integer() => value.clone(),
        ValueKind::Bool => Value::from(i64::from(value.is_true())),
        ValueKind::Number => match f64::try_from(value.clone()) {
            Ok(f) if f.is_finite() => Value::from(f.trunc() as i128),
            _ => default,
        },
        ValueKind::String => {
            let text = py_strip(value.as_str().unwrap_or_default(), None, Ends::Both);
            let digits = text.replace('_', "");
            let base = base.unwrap_or(10);
            match i128::from_str_radix(&digits, base) {
                Ok(i) => Value::from(i),
                Err(_) => match digits.parse::<f64>() {
                    Ok(f) if f.is_finite() && base == 10 => Value::from(f.trunc() as i128),
                    _ => default,
                },
            }
        }
        _ => default,
    })
}

/// `|float(default=0.0)` as Jinja2: `float(value)`, else the default.
fn float_filter(value: &Value, default: Option<Value>) -> Value {
    let default = default.unwrap_or(Value::from(0.0));
    match value.kind() {
        ValueKind::Number | ValueKind::Bool => {
            f64::try_from(value.clone()).map_or(default, Value::from)
        }
        ValueKind::String => py_strip(value.as_str().unwrap_or_default(), None, Ends::Both)
            .parse::<f64>()
            .map_or(default, Value::from),
        _ => default,
    }
}

/// `is sequence` in Jinja2 is "has `len()` and `[]`": true for strings and dicts too, and for
/// Undefined (which defines both).
fn is_sequence(value: &Value) -> bool {
    matches!(
        value.kind(),
        ValueKind::Seq | ValueKind::String | ValueKind::Map | ValueKind::Undefined
    )
}

/// `is iterable` in Jinja2 is "`iter()` works": strings, lists, dicts and Undefined (which
/// iterates as empty) yes; None, numbers and booleans no.
fn is_iterable(value: &Value) -> bool {
    matches!(
        value.kind(),
        ValueKind::Seq
            | ValueKind::String
            | ValueKind::Map
            | ValueKind::Iterable
            | ValueKind::Undefined
    )
}

/// `is mapping`: a dict. minijinja's namespaces and loop objects look like maps, Python's don't.
fn is_mapping(value: &Value) -> bool {
    value.kind() == ValueKind::Map
        && value
            .as_object()
            .is_some_and(|o| o.try_iter_pairs().is_some())
}

/// `is integer`: Jinja2 excludes booleans.
fn is_integer(value: &Value) -> bool {
    value.kind() == ValueKind::Number && value.is_integer()
}

/// `is float`.
fn is_float(value: &Value) -> bool {
    value.kind() == ValueKind::Number && !value.is_integer()
}

/// Fuel per part of a `split`: making and freeing one part takes as long as a few
/// instructions (measured in release: 10M parts in 0.77 s, 20M instructions in 0.45 s).
const FUEL_PER_PART: u64 = 4;

/// The fuel a split costs, charged before the parts are made: minijinja charges a method only
/// for what it returns, after the work, so `('ab' * 10000000).split('a')` in a loop would run
/// for half a minute within its fuel.
fn split_fuel(s: &str, sep: Option<&str>, maxsplit: Option<i64>) -> u64 {
    let parts = match sep {
        Some(sep) if !sep.is_empty() => s.matches(sep).count() + 1,
        _ => s.split(is_py_space).filter(|word| !word.is_empty()).count(),
    };
    let limit = maxsplit.and_then(|n| usize::try_from(n).ok());
    let parts = limit.map_or(parts, |n| parts.min(n.saturating_add(1)));
    parts as u64 * FUEL_PER_PART
}

/// Python methods on template values (`str.strip`, `dict.get`, ...). The string methods whose
/// results depend on Python's whitespace or `str()` rules are implemented here; the rest come
/// from `minijinja_contrib::pycompat`.
fn python_method(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        let strip = |ends| -> Result<Value, Error> {
            let (chars,): (Option<Cow<'_, str>>,) = from_args(args)?;
            Ok(Value::from(py_strip(s, chars.as_deref(), ends)))
        };
        match method {
            "strip" => return strip(Ends::Both),
            "lstrip" => return strip(Ends::Left),
            "rstrip" => return strip(Ends::Right),
            "split" | "rsplit" => {
                let (sep, maxsplit): (Option<Cow<'_, str>>, Option<i64>) = from_args(args)?;
                state.consume_fuel(split_fuel(s, sep.as_deref(), maxsplit))?;
                let split = if method == "split" {
                    py_split
                } else {
                    py_rsplit
                };
                let parts = split(s, sep.as_deref(), maxsplit.unwrap_or(-1))
                    .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, "empty separator"))?;
                return Ok(Value::from(parts));
            }
            "title" => {
                let () = from_args(args)?;
                return Ok(Value::from(py_title(s)));
            }
            "join" => {
                let (items,): (&Value,) = from_args(args)?;
                let mut out = String::new();
                for (i, item) in items.try_iter()?.enumerate() {
                    if i > 0 {
                        out.push_str(s);
                    }
                    match item.as_str() {
                        Some(text) => out.push_str(text),
                        None => {
                            return Err(Error::new(
                                ErrorKind::InvalidOperation,
                                format!(
                                    "sequence item {i}: expected str instance, {} found",
                                    item.kind()
                                ),
                            ))
                        }
                    }
                }
                return Ok(Value::from(out));
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}
