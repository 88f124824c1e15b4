//! The fast engine: HF `tokenizers` 1.0 (its release candidate, with SIMD pre-tokenisation),
//! 20–50× the reference's tokens per second on this project's corpora.
//!
//! It gives ids only. The masks need byte offsets, so they are derived here: in a byte-level
//! BPE each id stands for a known number of bytes, and when normalisation leaves the text as it
//! is, the tokens' bytes laid end to end are the text. Each token's offsets are then its byte
//! range widened to whole characters, which is how the reference reports a token that splits a
//! character. Where that does not hold (NFC changes the text) no offsets are given and the
//! caller asks the reference.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tokenizers_fast::pipeline::{EncodeOptions, Override, PipelineToken, PipelineTokenizer};
use unicode_normalization_alignments::char::canonical_combining_class;
use unicode_normalization_alignments::{is_nfc_quick, IsNormalized};

use super::charset::CharSet;

use crate::error::{CoreError, Result};
use crate::tokenizer_file::TokenizerFile;

/// The crate and version of the fast engine (pinned in `rust/core/Cargo.toml`).
pub const VERSION: &str = "tokenizers 1.0.0-rc.3";

/// The fast engine with what it needs to derive offsets.
pub struct FastEncoder {
    tokenizer: PipelineTokenizer,
    /// Bytes per id, when offsets can be derived for this tokenizer.
    token_bytes: Option<Vec<u32>>,
    /// Whether the tokenizer normalises (NFC, the only normaliser offsets are derived under).
    normalizes: bool,
    path: PathBuf,
}

thread_local! {
    /// The engine's output buffer, one per worker thread (it allocates nothing per call).
    static TOKENS: RefCell<Vec<PipelineToken>> = const { RefCell::new(Vec::new()) };
}

impl FastEncoder {
    /// Builds the engine from `tokenizer.json`, converted to the 1.0 format (its small parts
    /// only: the vocabulary and merges pass through as written). `token_bytes`: bytes per id,
    /// when offsets can be derived.
    pub fn load(
        file: &TokenizerFile<'_>,
        token_bytes: Option<Vec<u32>>,
        path: &Path,
    ) -> Result<FastEncoder> {
        let failed = |message: String| CoreError::Tokenizer {
            path: path.to_path_buf(),
            message: format!("{VERSION} cannot load it: {message}"),
        };
        let mut skeleton = file.skeleton.clone();
        tokenizers_fast::canonicalize_value(&mut skeleton).map_err(|e| failed(e.to_string()))?;
        let text = file.assemble(&skeleton).map_err(failed)?;
        let tokenizer = tokenizers_fast::from_json(&text).map_err(|e| failed(e.to_string()))?;
        Ok(FastEncoder {
            tokenizer,
            token_bytes,
            normalizes: !file.skeleton["normalizer"].is_null(),
            path: path.to_path_buf(),
        })
    }

    /// The ids of `text`, truncation and padding off (as the reference is run).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let options = EncodeOptions {
            add_special_tokens,
            padding: Override::Off,
            truncation: Override::Off,
            ..EncodeOptions::default()
        };
        TOKENS.with(|tokens| {
            let mut tokens = tokens.borrow_mut();
            tokens.clear();
            self.tokenizer
                .encode_into(text, &options, &mut tokens)
                .map_err(|e| CoreError::Tokenizer {
                    path: self.path.clone(),
                    message: format!("encoding failed: {e}"),
                })?;
            Ok(tokens.iter().map(|&token| u32::from(token)).collect())
        })
    }

    /// The byte offsets of `ids`, the encoding of `text` without added special tokens, exactly
    /// as the reference gives them; `None` where they cannot be derived.
    pub fn offsets(&self, text: &str, ids: &[u32]) -> Option<Vec<(usize, usize)>> {
        let token_bytes = self.token_bytes.as_ref()?;
        if self.normalizes && !is_nfc(text) {
            return None;
        }
        let mut at = 0usize;
        let mut offsets = Vec::with_capacity(ids.len());
        for &id in ids {
            let end = at + *token_bytes.get(id as usize)? as usize;
            if end > text.len() {
                return None;
            }
            offsets.push((floor_char_boundary(text, at), ceil_char_boundary(text, end)));
            at = end;
        }
        (at == text.len()).then_some(offsets)
    }
}

/// Whether NFC leaves `text` as it is, by the reference's (Unicode 9) tables: at once when it
/// holds no character that NFC may touch, else by the tables' quick check.
fn is_nfc(text: &str) -> bool {
    static TOUCHED: OnceLock<CharSet> = OnceLock::new();
    let touched = TOUCHED.get_or_init(|| {
        // A text whose every character is a starter with quick-check "yes" is in NFC.
        CharSet::new(|code| {
            char::from_u32(code).is_some_and(|c| {
                canonical_combining_class(c) != 0
                    || is_nfc_quick(std::iter::once(c)) != IsNormalized::Yes
            })
        })
    });
    !touched.any_in(text) || is_nfc_quick(text.chars()) == IsNormalized::Yes
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn ceil_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}
