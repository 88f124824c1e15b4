//! The fuzz checks of the readers, the conversation layouts and the chat templates, written once
//! and driven twice: by proptest in `tests/fuzz.rs` (short, deterministic runs in CI) and by
//! libFuzzer in `rust/fuzz` (long, coverage-guided runs on nightly).
//!
//! Why here and not in the library behind a `fuzzing` feature: the checks are test code (they
//! assert and panic) and need test-only crates (`arbitrary`, `tempfile`); a feature would put
//! them in the published crate and CI's plain `cargo test` would skip a test that requires it.
//! The fuzz crate includes this folder with `#[path]`, so there is one copy of each check.
//!
//! Each entry point takes raw bytes, as libFuzzer hands them out, and decodes them into a
//! structured case with [`arbitrary::Unstructured`] (a file of near-valid JSON lines, a record
//! built from the layouts' keys, a template assembled from Jinja fragments). The same decoder
//! serves both drivers, so a case is reproduced from its bytes alone. A check panics on the
//! first broken promise: a panic of the engine, an outcome outside the documented ones, or an
//! invariant the engine states.

pub mod layouts;
pub mod reader;
pub mod template;

use arbitrary::Unstructured;

/// Reads one input file (any format, raw or near-valid bytes) and checks every record.
pub fn reader(data: &[u8]) {
    let mut u = Unstructured::new(data);
    if let Ok(case) = reader::case(&mut u) {
        let _ = reader::check(&case); // an error is fine once checked
    }
}

/// Normalises a record built from the layouts' keys with every layout, and renders what comes
/// out with every built-in template.
pub fn layouts(data: &[u8]) {
    let mut u = Unstructured::new(data);
    if let Ok(record) = layouts::record(&mut u) {
        layouts::check_record(&record);
    }
}

/// Compiles and renders a template assembled from Jinja fragments.
pub fn template(data: &[u8]) {
    let mut u = Unstructured::new(data);
    if let Ok(case) = template::case(&mut u) {
        template::check(&case);
    }
}

/// One of `items`, chosen by the input.
fn pick<T: Clone>(u: &mut Unstructured<'_>, items: &[T]) -> arbitrary::Result<T> {
    u.choose(items).cloned()
}
