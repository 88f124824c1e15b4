//! The per-text guard of `--engine auto`: does a text hold a character on which the fast engine
//! (HF `tokenizers` 1.0) may disagree with the reference (0.23)?
//!
//! The two differ only in their Unicode tables, never in their rules (measured: identical ids on
//! every line of MedicalGPT's text and CPython's sources, and on 200,000 random strings once
//! these characters are set aside):
//!
//! - **NFC**: 0.23 normalises with Unicode 9.0 tables (`unicode-normalization-alignments`),
//!   1.0 with Unicode 17.0 (`unicode-normalization`). Combining marks added since are starters
//!   in the old tables, so 1.0 reorders or composes around them where 0.23 does not
//!   (`"\u{302}\u{1df9}"`: the same bytes in swapped order).
//! - **Letters and digits**: 0.23 splits with Oniguruma (Unicode 16.0), 1.0 with its own SIMD
//!   classifier (Unicode 17.0): a character assigned in Unicode 17 is a letter to one and
//!   unassigned to the other (`"\u{326f2}'S"`).
//!
//! So the guard's set is every character whose canonical combining class, canonical
//! decomposition or composition differs between the two NFC tables, plus every character
//! Oniguruma calls unassigned (`\p{Cn}`). By Unicode's normalisation stability policy, text
//! without them normalises and classifies the same under both. The set is a table generated from
//! the engines' own crates (`guard_table.rs`); `tests/guard_table.rs` regenerates it and fails
//! when a pinned crate's tables move.
//!
//! Checking costs next to nothing (a [`CharSet`]: ASCII 8 bytes at a time, common scripts
//! without decoding).

use std::sync::OnceLock;

use super::charset::CharSet;
use super::guard_table::RANGES;

/// The characters on which the engines may disagree, built once per process from the table.
pub fn guard() -> &'static CharSet {
    static GUARD: OnceLock<CharSet> = OnceLock::new();
    GUARD.get_or_init(|| CharSet::from_ranges(RANGES))
}

/// Whether `text` must go to the reference engine.
pub fn needs_reference(text: &str) -> bool {
    guard().any_in(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_text_passes() {
        for text in [
            "",
            "plain ASCII, digits 12345 and punctuation!?",
            "中文医学文本：发热是什么？",
            "Ελληνικά, кириллица, עברית, العربية, हिन्दी, ไทย",
            "emoji 👩‍👩‍👧 and flags 🇫🇷",
            "combining: e\u{301} a\u{308} (Unicode 1.1 marks)",
        ] {
            assert!(!needs_reference(text), "{text:?}");
        }
    }

    #[test]
    fn the_known_divergences_are_caught() {
        // A mark added after Unicode 9 (NFC), a Unicode 17 letter (classes), anywhere in a text.
        for text in [
            "\u{302}\u{1df9}",
            "A\u{1dfa}\u{301}",
            "\u{9fe}\u{323}",
            "\u{326f2}'S",
            "\u{16ec1}'I",
            "long ASCII prefix well past eight bytes \u{1df9}",
            "中文\u{326f2}",
        ] {
            assert!(needs_reference(text), "{text:?}");
        }
    }

    #[test]
    fn a_safe_lead_byte_starts_no_guarded_character() {
        let guard = guard();
        for code in 0..0x110000u32 {
            let Some(c) = char::from_u32(code) else {
                continue;
            };
            let mut buf = [0u8; 4];
            let lead = c.encode_utf8(&mut buf).as_bytes()[0];
            if guard.contains(c) {
                assert!(!guard.lead_is_safe(lead), "U+{code:04X}");
            }
        }
    }
}
