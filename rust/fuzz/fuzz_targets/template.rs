//! Any template assembled from Jinja fragments: renders or fails, quickly, reading no file.
#![no_main]

// The checks are the ones tests/fuzz.rs runs; each target uses only its own.
#[allow(dead_code)]
#[path = "../../core/tests/fuzz_checks/mod.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::template(data));
