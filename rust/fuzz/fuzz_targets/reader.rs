//! Any bytes as a .txt, .jsonl, .json or .parquet file: records or a named error.
#![no_main]

// The checks are the ones tests/fuzz.rs runs; each target uses only its own.
#[allow(dead_code)]
#[path = "../../core/tests/fuzz_checks/mod.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::reader(data));
