//! The reference engine: HF `tokenizers` 0.23, the library `transformers` runs, so its ids are
//! `transformers`' ids by construction.
//!
//! `transformers`' fast tokenizers switch off any truncation or padding stored in
//! `tokenizer.json` before encoding, so this does too: otherwise a corpus tokenized here could
//! be cut at a length nobody asked for.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use super::IdsAndOffsets;
use crate::error::{CoreError, Result};

/// The crate and version of the reference engine (pinned in `rust/core/Cargo.toml`).
pub const VERSION: &str = "tokenizers 0.23.2";

/// HF `tokenizers` 0.23 with truncation and padding off.
pub struct ReferenceEncoder {
    tokenizer: Tokenizer,
    /// The `tokenizer.json` it came from, for errors.
    path: PathBuf,
}

impl ReferenceEncoder {
    pub fn load(path: &Path) -> Result<ReferenceEncoder> {
        let bad = |message: String| CoreError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|e| bad(format!("not a HuggingFace tokenizer.json: {e}")))?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| bad(format!("cannot disable truncation: {e}")))?;
        tokenizer.with_padding(None);
        Ok(ReferenceEncoder {
            tokenizer,
            path: path.to_path_buf(),
        })
    }

    fn failed(&self, error: tokenizers::Error) -> CoreError {
        CoreError::Tokenizer {
            path: self.path.clone(),
            message: format!("encoding failed: {error}"),
        }
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode_fast(text, add_special_tokens)
            .map_err(|e| self.failed(e))?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn encode_with_offsets(&self, text: &str) -> Result<IdsAndOffsets> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| self.failed(e))?;
        Ok((encoding.get_ids().to_vec(), encoding.get_offsets().to_vec()))
    }
}
