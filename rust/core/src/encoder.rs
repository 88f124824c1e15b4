//! The one seam through which every stage encodes text.
//!
//! Stages ask for two things only: the ids of a text — with the special tokens the tokenizer's
//! post-processor adds for a PT document (what `transformers`' `tokenizer(text)` returns), or
//! without for a rendered prompt or pair (the template already wrote them) — and the ids of a
//! rendered conversation with each token's byte offsets, for SFT's masks. [`Encoder`] is that interface;
//! the engines behind it are chosen in one place, [`crate::tokenizer::LoadedTokenizer::load`].
//!
//! The reference engine is HF `tokenizers` 0.23: ids equal to `transformers`' by construction.
//! Any faster engine must give the reference's ids and offsets exactly (see
//! `docs/architecture.md`, "Encoding"), never approximately.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::error::Result;

/// Token ids and their byte offsets `(start, end)` in the encoded text.
pub type IdsAndOffsets = (Vec<u32>, Vec<(usize, usize)>);

/// Encodes text into token ids. Implementations are shared by the worker threads.
pub trait Encoder: Send + Sync {
    /// The ids of `text`; with `add_special_tokens`, those the post-processor adds.
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>>;

    /// The ids of a rendered text and each token's byte offsets, no special tokens added.
    fn encode_with_offsets(&self, text: &str) -> Result<IdsAndOffsets>;
}

/// The `--engine` a user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// The fast engine where it is proven to give the reference's ids, the reference elsewhere.
    Auto,
    /// The fast engine for every document (refused for tokenizers it cannot encode exactly).
    Fast,
    /// HF `tokenizers` 0.23 for every document.
    Reference,
}

impl EngineChoice {
    pub fn parse(name: &str) -> Result<EngineChoice> {
        match name {
            "auto" => Ok(EngineChoice::Auto),
            "fast" => Ok(EngineChoice::Fast),
            "reference" => Ok(EngineChoice::Reference),
            other => Err(crate::error::CoreError::config(
                "engine",
                format!("'{other}' is not one of auto, fast, reference"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EngineChoice::Auto => "auto",
            EngineChoice::Fast => "fast",
            EngineChoice::Reference => "reference",
        }
    }
}

/// How many texts each engine encoded, for the manifest: a run under `auto` says how much of
/// the corpus the fast engine took and how much the guard sent to the reference.
#[derive(Debug, Default)]
pub struct EngineCounts {
    pub fast: AtomicU64,
    pub reference: AtomicU64,
}

impl EngineCounts {
    pub fn count(&self, fast: bool) {
        let counter = if fast { &self.fast } else { &self.reference };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> (u64, u64) {
        (
            self.fast.load(Ordering::Relaxed),
            self.reference.load(Ordering::Relaxed),
        )
    }
}
