//! Fuzzing of the readers, the conversation layouts and the chat templates (issue 13): no
//! panic, no hang, and every input becomes records or a reject with a known reason.
//!
//! The checks live in `fuzz_checks/` (one copy, see its module docs); this file drives them
//! with proptest, and `rust/fuzz` drives the same checks with libFuzzer.
//!
//! - CI, short and deterministic (a fixed seed, so a failure reproduces on rerun):
//!   `cargo test --release --test fuzz`
//! - Long, random runs: `PROPTEST_CASES=100000 PROPTEST_RNG_SEED=$RANDOM cargo test --release
//!   --test fuzz` (the seed makes a failure reproducible; proptest prints the shrunk input).
//! - Coverage-guided runs on nightly: `cd rust/fuzz && cargo +nightly fuzz run reader`
//!   (also `layouts`, `template`; see rust/fuzz/README.md).
//!
//! A failure found either way becomes a named test below, with the input spelled out.

mod fuzz_checks;

use arbitrary::Unstructured;
use ferrotune_core::conversation::{self, Layout, SameRole};
use ferrotune_core::{CoreError, RenderOptions};
use fuzz_checks::{layouts, reader, template};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::{json, Map, Value};

/// The seed of CI's runs.
const SEED: u64 = 13;

/// `cases` cases from a fixed seed, unless `PROPTEST_CASES` or `PROPTEST_RNG_SEED` say
/// otherwise. The counts are sized for the whole file to run in well under 30 s on CI's
/// 2-core machine.
fn config(cases: u32) -> Config {
    let from_env = Config::default(); // proptest's defaults with the PROPTEST_* variables applied
    let set = |name: &str| std::env::var_os(name).is_some();
    Config {
        cases: if set("PROPTEST_CASES") {
            from_env.cases
        } else {
            cases
        },
        rng_seed: if set("PROPTEST_RNG_SEED") {
            from_env.rng_seed
        } else {
            RngSeed::Fixed(SEED)
        },
        // A failure is reproduced from its seed and reported as its shrunk input: no
        // regression files written into the source tree.
        failure_persistence: None,
        ..from_env
    }
}

/// The bytes a check decodes its case from, as libFuzzer would hand them out.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..4096)
}

proptest! {
    #![proptest_config(config(2000))]
    #[test]
    fn readers_turn_any_file_into_records_or_a_named_error(data in bytes()) {
        fuzz_checks::reader(&data);
    }
}

proptest! {
    #![proptest_config(config(5000))]
    #[test]
    fn layouts_turn_any_record_into_messages_or_a_known_reason(data in bytes()) {
        fuzz_checks::layouts(&data);
    }
}

proptest! {
    #![proptest_config(config(500))]
    #[test]
    fn templates_render_or_fail_quickly_without_reading_files(data in bytes()) {
        fuzz_checks::template(&data);
    }
}

// Regressions: what the fuzzing found, one test each, with the input spelled out.

fn record(value: Value) -> Map<String, Value> {
    value.as_object().expect("an object").clone()
}

/// A forced `--format prompt` on a record without `prompt`, `query` or `question` panicked
/// ("detected by one of these keys").
#[test]
fn a_forced_prompt_layout_without_a_prompt_is_a_missing_field() {
    let r = record(json!({"text": "x"}));
    let problem = conversation::prompt(&r, Layout::Prompt, SameRole::Reject).unwrap_err();
    assert_eq!(
        (problem.reason, problem.field.as_deref()),
        ("missing_field", Some("prompt"))
    );
    layouts::check_record(&r);
}

/// Prompt records skipped the checks every other layout makes: a blank `system` became a
/// blank system message, and `[]` or a lone system message made a prompt with nothing to answer.
#[test]
fn prompt_records_are_checked_like_conversations() {
    for (r, reason) in [
        (json!({"prompt": "q", "system": "\t"}), "empty_content"),
        (json!({"prompt": []}), "empty"),
        (
            json!({"prompt": [{"role": "system", "content": "s"}]}),
            "no_prompt",
        ),
    ] {
        let r = record(r);
        let problem = conversation::prompt(&r, Layout::Prompt, SameRole::Reject).unwrap_err();
        assert_eq!(problem.reason, reason, "{r:?}");
        layouts::check_record(&r);
    }
}

/// A preference prompt of one system message passed ("the prompt must end with a user or tool
/// turn" only refused an assistant one).
#[test]
fn a_preference_prompt_of_a_system_message_is_not_open() {
    let r = record(json!({
        "prompt": [{"role": "system", "content": "s"}], "chosen": "a", "rejected": "b"
    }));
    let problem = conversation::preference(&r, Layout::TrlPreference, SameRole::Reject);
    assert_eq!(problem.unwrap_err().reason, "prompt_not_open");
    layouts::check_record(&r);
}

/// TRL's implicit prompt handed its answers on unchecked: empty, starting with a user turn, or
/// with an empty message.
#[test]
fn implicit_prompt_answers_are_checked_like_explicit_ones() {
    let q = json!({"role": "user", "content": "q"});
    for answer in [
        json!({"role": "assistant", "content": ""}),
        json!({"role": "user", "content": "again"}),
    ] {
        let r = record(json!({
            "chosen": [q, answer],
            "rejected": [q, {"role": "assistant", "content": "b"}],
        }));
        let problem = conversation::preference(&r, Layout::TrlPreference, SameRole::Reject);
        assert!(problem.is_err(), "{r:?}");
        layouts::check_record(&r);
    }
    let r = record(json!({"chosen": [q], "rejected": [q, {"role": "assistant", "content": "b"}]}));
    assert!(conversation::preference(&r, Layout::TrlPreference, SameRole::Reject).is_err());
}

/// A text file holding only a byte-order mark read as one empty line.
#[test]
fn a_file_holding_only_a_bom_has_no_lines() {
    for kind in [
        reader::Kind::TxtLines,
        reader::Kind::TxtParagraphs,
        reader::Kind::Jsonl,
    ] {
        let case = reader::Case {
            kind,
            bytes: b"\xef\xbb\xbf".to_vec(),
            parquet: None,
        };
        assert_eq!(reader::check(&case).unwrap().unwrap().records, 0);
    }
}

/// A Parquet `text` column of numbers read as fine when empty, and as rows of nulls
/// (`missing_field`) while its values were null; it is refused from the schema now.
#[test]
fn a_parquet_column_of_numbers_is_refused_even_when_empty() {
    let case = fuzz_case(reader::case, "90055d1f090000000013000048");
    assert_eq!(case.parquet, Some(reader::ParquetExpect::NotStrings));
    let error = reader::check(&case).unwrap_err();
    assert!(
        error.to_string().contains("expected a string column"),
        "{error}"
    );
}

/// Damaged Parquet files on which the parquet and arrow crates panic: a negative column offset
/// in the footer (`ColumnChunkMetaData::byte_range`), bad definition levels in a page
/// (arrow-buffer's "slice must not be empty"). The inputs are fuzz bytes, decoded by
/// `reader::case` into the damaged file: if the decoder changes, refresh them from a run.
#[test]
fn a_parquet_file_the_decoder_panics_on_is_an_error() {
    for input in [
        "d635d85114a80170700f06bb8390ee0114e70b20bf0b584301927e0108a70b030a00801b00018092020104c2\
         5f01330001068003804780907b061bb4016b02820154d01f145d371ffc75011f009141004158325d0003b824\
         0187380000000000000000000000000000000000000000000000000000000000000000000000000000000000\
         000000000000000000010100000001020200",
        "04011d06dbd20658f10154e3061405063e271566c801b618101396103ce579b3804810054601204f018e6e01\
         b435015840013b83c8850194c601581e06560541063e682e13a5016ebe04214b1468006a7a55c70000000000",
    ] {
        let case = fuzz_case(reader::case, input);
        assert_eq!(case.kind, reader::Kind::Parquet);
        match reader::check(&case) {
            Err(CoreError::Arrow { message, .. }) => {
                assert!(message.contains("the decoder failed"), "{message}")
            }
            other => panic!("expected the decoder's failure, got {other:?}"),
        }
    }
}

/// Our Python methods and filters were charged less fuel than the time they take, so a loop
/// ran for seconds within its fuel: `split` made its parts before any was charged (10M parts
/// in 0.8 s; half a minute in a loop), `tojson` and `|string` were charged as plain strings
/// (5 s in a loop). Each of these rendered within its fuel before (in 0.5-0.7 s, 130 MB for
/// the loops); each runs out of fuel now.
#[test]
fn python_methods_and_filters_pay_for_their_work() {
    let big = json!([{"role": "user", "content": "a".repeat(6400)}]);
    for (source, messages) in [
        ("{{ ('ab' * 10000000).split('a')|length }}", json!([{}])),
        (
            "{% for i in range(20000) %}{{ messages|tojson }}{% endfor %}",
            big.clone(),
        ),
        (
            "{% for i in range(20000) %}{{ messages|string }}{% endfor %}",
            big,
        ),
    ] {
        let template = ferrotune_core::ChatTemplate::new(source, "t.jinja").unwrap();
        let error = template
            .render(&messages, &RenderOptions::default())
            .unwrap_err();
        assert!(
            error.to_string().contains("out of fuel"),
            "{source}: {error}"
        );
    }
}

/// Templates that never end on their own: each stops within the time limit.
#[test]
fn runaway_templates_stop_quickly() {
    for source in [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}",
        "{% macro t() %}{{ t() }}{{ t() }}{% endmacro %}{{ t() }}",
        "{% include 'fuzz.jinja' %}{% include 'fuzz.jinja' %}",
        "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}",
        "{{ 'a' * 1000000000 }}",
    ] {
        let case = template::Case {
            source: source.into(),
            messages: json!([{"role": "user", "content": "hi"}]),
            options: RenderOptions::default(),
        };
        template::check(&case);
    }
}

/// Decodes a fuzz input, given in hex as proptest's failing `data` was turned into.
fn fuzz_case<T>(decode: fn(&mut Unstructured<'_>) -> arbitrary::Result<T>, hex: &str) -> T {
    let hex: String = hex.split_whitespace().collect();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    decode(&mut Unstructured::new(&bytes)).expect("a case")
}

/// libFuzzer's `reader` crash-7aade48d: a damaged Parquet file on which the parquet crate
/// panicked ("column start and length should not be negative") while reading pages.
#[test]
fn fuzz_reader_crash_7aade48d() {
    fuzz_checks::reader(&[
        0x27, 0xbb, 0xbf, 0x00, 0x00, 0x00, 0x00, 0xbc, 0x02, 0x5a, 0x40, 0x27, 0x3b, 0xff, 0xff,
        0xff, 0x5a, 0xbf, 0x3b,
    ]);
}
