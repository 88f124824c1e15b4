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
//! Checking costs next to nothing: ASCII text is passed at once, ASCII runs 8 bytes at a time,
//! and characters whose UTF-8 lead byte starts a range with no member (Latin, Greek, Cyrillic,
//! the CJK ideographs) without decoding them.

use std::sync::OnceLock;

use super::guard_table::RANGES;

/// Characters on which the engines may disagree, as a bitmap, and the lead bytes that start no
/// such character.
pub struct Guard {
    bits: Vec<u64>,
    safe_lead: [bool; 256],
}

/// The guard, built once per process from the table (a few milliseconds).
pub fn guard() -> &'static Guard {
    static GUARD: OnceLock<Guard> = OnceLock::new();
    GUARD.get_or_init(Guard::new)
}

impl Guard {
    fn new() -> Guard {
        let mut bits = vec![0u64; 0x110000 / 64];
        for &(low, high) in RANGES {
            for code in low..=high {
                bits[code as usize / 64] |= 1 << (code % 64);
            }
        }
        let mut guard = Guard {
            bits,
            safe_lead: [false; 256],
        };
        for lead in 0..256usize {
            // The code points whose UTF-8 encoding starts with this byte.
            let (low, count) = match lead {
                0x00..=0x7F => (lead as u32, 1),
                0xC2..=0xDF => (((lead as u32) & 0x1F) << 6, 1 << 6),
                0xE0..=0xEF => (((lead as u32) & 0x0F) << 12, 1 << 12),
                0xF0..=0xF4 => (((lead as u32) & 0x07) << 18, 1 << 18),
                _ => continue,
            };
            guard.safe_lead[lead] = (low..low + count).all(|code| !guard.has(code));
        }
        guard
    }

    fn has(&self, code: u32) -> bool {
        let code = code as usize;
        code < 0x110000 && self.bits[code / 64] >> (code % 64) & 1 != 0
    }

    /// Whether `c` is one of the characters the engines may disagree on.
    pub fn contains(&self, c: char) -> bool {
        self.has(c as u32)
    }

    /// Whether `text` must go to the reference engine.
    pub fn needs_reference(&self, text: &str) -> bool {
        let bytes = text.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            while at + 8 <= bytes.len() {
                let word = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
                if word & 0x8080_8080_8080_8080 != 0 {
                    break;
                }
                at += 8;
            }
            let Some(&lead) = bytes.get(at) else { break };
            let width = match lead {
                0x00..=0x7F => 1,
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                _ => 4,
            };
            if !self.safe_lead[lead as usize] {
                let c = text[at..].chars().next().expect("at a character boundary");
                if self.contains(c) {
                    return true;
                }
            }
            at += width;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_text_passes() {
        let guard = guard();
        for text in [
            "",
            "plain ASCII, digits 12345 and punctuation!?",
            "中文医学文本：发热是什么？",
            "Ελληνικά, кириллица, עברית, العربية, हिन्दी, ไทย",
            "emoji 👩‍👩‍👧 and flags 🇫🇷",
            "combining: e\u{301} a\u{308} (Unicode 1.1 marks)",
        ] {
            assert!(!guard.needs_reference(text), "{text:?}");
        }
    }

    #[test]
    fn the_known_divergences_are_caught() {
        let guard = guard();
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
            assert!(guard.needs_reference(text), "{text:?}");
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
                assert!(!guard.safe_lead[lead as usize], "U+{code:04X}");
            }
        }
    }
}
