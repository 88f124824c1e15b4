//! Chat templates: any template source, with any messages, compiles and renders or fails as a
//! [`CoreError::Template`] — quickly, and without reading a file.
//!
//! Sources are assembled from Jinja fragments that stress the sandbox: loops over the messages
//! and over huge ranges, nested loops, macros that call themselves without end, self-includes,
//! huge string and list repetitions, `{% generation %}` blocks (balanced, nested, inside
//! captures), unbalanced tags, `raise_exception`, Python attribute tricks (`self`, `cycler`,
//! `__class__`) and `include`/`import`/`extends` of files. minijinja's fuel
//! (`template::environment::FUEL`) and recursion limit are what end the runaway ones; the
//! check measures that they do within [`TIME_LIMIT`].

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::{Result, Unstructured};
use ferrotune_core::{ChatTemplate, CoreError, RenderOptions, Rendered};
use serde_json::{json, Value};

use super::{layouts, pick};

/// The longest one compile-and-render may take before it counts as a hang. A real template
/// renders a conversation in microseconds and most runaway ones burn their fuel in under a
/// second, but fuel prices a byte at 1/64 of an instruction, so byte-heavy work stretches it:
/// the slowest fuel-bound renders measured (release, this 2-core machine) take 1-6 s (`title()`
/// or `|batch(1)` over a 20 MB string in a loop). Past this limit the fuel did not bound it.
pub const TIME_LIMIT: Duration = Duration::from_secs(10);

/// The name templates are compiled under (and can try to include themselves by).
const NAME: &str = "fuzz.jinja";

/// What the secret file holds: a rendering or error that contains it read the file.
const SECRET: &str = "ferrotune-fuzz-secret-3f9c";

/// The path of a file that templates try to include; written once per process.
fn secret_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::temp_dir().join("ferrotune-fuzz-secret.txt");
        std::fs::write(&path, SECRET).expect("the secret file writes");
        path
    })
}

/// Fragments with nothing inside: text, expressions, statements, broken tags.
const LEAVES: [&str; 80] = [
    "hello",
    "\n",
    "  ",
    "<|im_start|>",
    "\u{FDD0}",
    "\u{FDD1}",
    "{{ message['content'] }}",
    "{{ message.role }}",
    "{{ messages[0]['content'] }}",
    "{{ messages[-1].content|trim }}",
    "{{ messages|length }}",
    "{{ messages|tojson }}",
    "{{ bos_token }}{{ eos_token }}",
    "{{ tools|tojson(indent=2) }}",
    "{{ loop.index }}",
    "{{ 'a' * 1000000000 }}",
    "{{ ('ab' * 10000000)|length }}",
    "{{ ('ab' * 10000000).split('a')|length }}",
    "{{ [0] * 1000000000 }}",
    "{{ range(1000000000)|list|length }}",
    "{{ range(100000)|join(',')|length }}",
    "{{ self }}",
    "{{ self.__class__ }}",
    "{{ cycler }}",
    "{{ cycler(1, 2).next() }}",
    "{{ namespace }}",
    "{{ namespace(a=1).a }}",
    "{{ joiner }}",
    "{{ lipsum(1000000) }}",
    "{{ config }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{{ raise_exception('refused by the template') }}",
    "{{ strftime_now('%Y-%m-%d') }}",
    "{{ strftime_now('%') }}",
    "{{ 1 / 0 }}",
    "{{ 1 // 0 }}",
    "{{ 2 ** 100000 }}",
    "{{ 10 ** 10 ** 10 }}",
    "{{ messages[1000000000] }}",
    "{{ 'abc'[::-1] }}{{ 'abc'[1000000000:] }}",
    "{{ 'x'|indent(100000) }}",
    "{{ 'a b c'|wordwrap(1) }}",
    "{{ 'abc'|replace('', '-') }}",
    "{{ messages|map(attribute='content')|join(', ') }}",
    "{{ messages|selectattr('role', 'equalto', 'user')|list }}",
    "{{ (messages|first).items()|list }}",
    "{{ dict(a=1) }}{{ {'b': [1, 2]}|dictsort }}",
    "{{ 'a,b'.split(',') }}{{ 'a'.split('') }}",
    "{{ '%s-%s'|format(1) }}",
    "{{ 'x' ~ none }}{{ none + 1 }}",
    "{{ undefined_name.attribute }}",
    "{{ message['content'] + 1 }}",
    "{{ range(3)|batch(1000000000)|list }}",
    "{{ 'ab'.center(1000000000) }}",
    "{{ 'é'|upper }}{{ 'x'.startswith('x') }}",
    "{% set x = messages[0] %}{{ x }}",
    "{% set ns = namespace(n=0) %}{% set ns.n = ns.n + 1 %}{{ ns.n }}",
    "{% include '/etc/passwd' %}",
    "{% include 'SECRET' %}",
    "{% include 'fuzz.jinja' %}",
    "{% include 'fuzz.jinja' %}{% include 'fuzz.jinja' %}",
    "{% import 'x' as y %}",
    "{% from 'fuzz.jinja' import m %}",
    "{% extends 'fuzz.jinja' %}",
    "{% extends 'SECRET' %}",
    "{% break %}{% continue %}",
    "{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}",
    "{% macro t() %}{{ t() }}{{ t() }}{% endmacro %}{{ t() }}",
    "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}",
    "{% generation %}",
    "{% endgeneration %}",
    "{% generation %}{% generation %}x{% endgeneration %}{% endgeneration %}",
    "{%",
    "{{",
    "}}",
    "{# unterminated",
    "{% endfor %}",
    "{% if %}",
    "{% raw %}",
];

/// Fragments with a hole (between the two halves): loops, conditions, captures, generation.
const WRAPPERS: [(&str, &str); 20] = [
    ("{% for message in messages %}", "{% endfor %}"),
    ("{%- for message in messages -%}", "{%- endfor -%}"),
    ("{% for i in range(100000) %}", "{% endfor %}"),
    ("{% for i in range(1000000000) %}", "{% endfor %}"),
    (
        "{% for m in messages %}{% for i in range(100000) %}",
        "{% endfor %}{% endfor %}",
    ),
    (
        "{% if message is defined and message['role'] == 'assistant' %}",
        "{% endif %}",
    ),
    ("{% if add_generation_prompt %}", "{% else %}x{% endif %}"),
    ("{% generation %}", "{% endgeneration %}"),
    ("{%- generation -%}", "{%- endgeneration %}"),
    ("{% set captured %}", "{% endset %}{{ captured|trim }}"),
    ("{% macro m(x) %}", "{% endmacro %}{{ m(1) }}{{ m(2) }}"),
    ("{% filter upper %}", "{% endfilter %}"),
    (
        "{% macro c() %}{{ caller() }}{{ caller() }}{% endmacro %}{% call c() %}",
        "{% endcall %}",
    ),
    ("{% with x = messages %}", "{% endwith %}"),
    ("{% raw %}", "{% endraw %}"),
    ("{% for k, v in (messages|first).items() %}", "{% endfor %}"),
    (
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}",
        "{% endfor %}",
    ),
    ("{% if true %}", ""),
    ("", "{% endif %}"),
    (
        "{% set ns = namespace(s='a') %}{% for i in range(40) %}",
        "{% endfor %}",
    ),
];

/// One template to compile and render.
#[derive(Debug, Clone)]
pub struct Case {
    pub source: String,
    pub messages: Value,
    pub options: RenderOptions,
}

/// A case drawn from `u`: a source of fragments nested up to three deep, messages (usually a
/// list of message objects) and render options.
pub fn case(u: &mut Unstructured<'_>) -> Result<Case> {
    let source = block(u, 3)?;
    let source = source.replace("SECRET", &secret_path().display().to_string());
    let messages = if u.ratio(3, 4)? {
        layouts::messages(u, 1)?
    } else {
        layouts::value(u, 2)?
    };
    let mut options = RenderOptions {
        add_generation_prompt: u.arbitrary()?,
        ..RenderOptions::default()
    };
    if u.arbitrary()? {
        options.special_tokens = object(json!({"bos_token": "<s>", "eos_token": "</s>"}));
    }
    if u.ratio(1, 4)? {
        options.tools = Some(json!([{"type": "function", "function": {"name": "f"}}]));
    }
    if u.ratio(1, 4)? {
        let kwargs = pick(
            u,
            &[json!({"enable_thinking": false}), json!({"messages": []})],
        )?;
        options.kwargs = object(kwargs);
    }
    Ok(Case {
        source,
        messages,
        options,
    })
}

fn object(value: Value) -> serde_json::Map<String, Value> {
    value.as_object().expect("an object").clone()
}

fn block(u: &mut Unstructured<'_>, depth: u32) -> Result<String> {
    let mut out = String::new();
    for _ in 0..u.int_in_range(1..=4)? {
        if depth == 0 || u.ratio(1, 2)? {
            if u.ratio(1, 16)? {
                out.push_str(&u.arbitrary::<String>()?);
            } else {
                out.push_str(pick(u, &LEAVES)?);
            }
        } else {
            let (open, close) = pick(u, &WRAPPERS)?;
            out.push_str(open);
            out.push_str(&block(u, depth - 1)?);
            out.push_str(close);
        }
    }
    Ok(out)
}

/// Compiles and renders `case`, within [`TIME_LIMIT`], to a well-formed rendering or a template
/// error, neither holding the secret file's text.
pub fn check(case: &Case) {
    let start = Instant::now();
    let outcome = ChatTemplate::new(&case.source, NAME).and_then(|template| {
        let rendered = template.render(&case.messages, &case.options)?;
        Ok((rendered, template.has_generation_blocks()))
    });
    let elapsed = start.elapsed();
    assert!(
        elapsed < TIME_LIMIT,
        "{elapsed:?} to render {:?} with {}",
        case.source,
        case.messages
    );
    match outcome {
        Ok((rendered, has_generation)) => {
            check_rendered(&rendered);
            assert!(!rendered.text.contains(SECRET), "a template read a file");
            if has_generation {
                let markers = ['\u{FDD0}', '\u{FDD1}'];
                assert!(
                    !rendered.text.contains(markers),
                    "a generation marker was left"
                );
            }
        }
        Err(CoreError::Template { template, message }) => {
            assert_eq!(template, NAME);
            assert!(!message.contains(SECRET), "a template read a file");
        }
        Err(other) => panic!("not a template error: {other:?}"),
    }
}

/// A rendering's generation spans are ordered by start (nested blocks give nested spans),
/// inside the text and on character boundaries.
pub fn check_rendered(rendered: &Rendered) {
    let text = &rendered.text;
    let mut previous_start = 0;
    for &(start, end) in &rendered.generation_spans {
        assert!(
            previous_start <= start && start <= end && end <= text.len(),
            "span {start}..{end}"
        );
        assert!(text.is_char_boundary(start) && text.is_char_boundary(end));
        previous_start = start;
    }
}
