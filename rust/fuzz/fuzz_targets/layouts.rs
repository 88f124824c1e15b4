//! Any record with every layout, and what comes out with every built-in template.
#![no_main]

// The checks are the ones tests/fuzz.rs runs; each target uses only its own.
#[allow(dead_code)]
#[path = "../../core/tests/fuzz_checks/mod.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::layouts(data));
