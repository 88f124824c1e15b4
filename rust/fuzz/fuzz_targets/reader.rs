//! Any bytes as a .txt, .jsonl, .json or .parquet file: records or a named error.
#![no_main]

// The checks are the ones tests/fuzz.rs runs; each target uses only its own.
#[allow(dead_code)]
#[path = "../../core/tests/fuzz_checks/mod.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(
    // libfuzzer-sys aborts on every panic, even one the engine catches (the Parquet reader
    // turns its decoder's panics into errors). Back to Rust's own hook: a panic that escapes
    // still aborts, through fuzz_target!'s catch_unwind.
    init: drop(std::panic::take_hook()),
    |data: &[u8]| fuzz_checks::reader(data)
);
