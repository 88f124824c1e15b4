//! The one seam through which every stage encodes text, and the engines behind it.
//!
//! Stages ask for two things only: the ids of a text — with the special tokens the tokenizer's
//! post-processor adds for a PT document (what `transformers`' `tokenizer(text)` returns), or
//! without for a rendered prompt or pair (the template already wrote them) — and the ids of a
//! rendered conversation with each token's byte offsets, for SFT's masks. [`Encoder`] is that
//! interface; [`Engines`] is the one implementation every stage gets, choosing per text between:
//!
//! - the **reference** ([`reference`], HF `tokenizers` 0.23): ids equal to `transformers'`;
//! - the **fast** engine ([`fast`], HF `tokenizers` 1.0), 20–50× faster, used by `--engine
//!   auto` only where it is proven to give the reference's ids and offsets exactly: tokenizers
//!   of the families the parity tests cover ([`support`]), and texts the [`guard`] passes.
//!
//! Exactness is the gate, never a tolerance (docs/architecture.md §4). The reference is loaded
//! only when some text needs it, so a run the fast engine covers pays for one engine.

pub mod charset;
pub mod fast;
pub mod guard;
pub mod guard_table;
pub mod reference;
pub mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{CoreError, Result};
use crate::tokenizer_file::TokenizerFile;
use crate::vocabulary::Vocabulary;
use fast::FastEncoder;
use reference::ReferenceEncoder;

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
    /// The fast engine for every text it can encode (offsets from the reference where they
    /// cannot be derived), for any tokenizer it loads: unproven tokenizers at the user's risk.
    Fast,
    /// HF `tokenizers` 0.23 for every text.
    Reference,
}

impl EngineChoice {
    pub fn parse(name: &str) -> Result<EngineChoice> {
        match name {
            "auto" => Ok(EngineChoice::Auto),
            "fast" => Ok(EngineChoice::Fast),
            "reference" => Ok(EngineChoice::Reference),
            other => Err(CoreError::config(
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

/// The engines of one run and the rule that picks one per text.
pub struct Engines {
    choice: EngineChoice,
    /// The fast engine, when it runs at all.
    fast: Option<FastEncoder>,
    /// Whether the fast engine is proven on this tokenizer (and loaded); if not, why.
    proven: std::result::Result<(), String>,
    /// Loaded on first use.
    reference: OnceLock<std::result::Result<ReferenceEncoder, String>>,
    path: PathBuf,
    fast_texts: AtomicU64,
    reference_texts: AtomicU64,
}

impl Engines {
    /// The engines `choice` calls for on the tokenizer at `path`.
    pub fn load(
        choice: EngineChoice,
        file: &TokenizerFile<'_>,
        vocabulary: &Vocabulary,
        path: &Path,
    ) -> Result<Engines> {
        let support = support::check(&file.skeleton, vocabulary);
        let mut proven = support.as_ref().map(|_| ()).map_err(Clone::clone);
        let token_bytes = |offsets: bool| offsets.then(|| vocabulary.byte_level_lengths());
        let fast = match (choice, &support) {
            (EngineChoice::Reference, _) | (EngineChoice::Auto, Err(_)) => None,
            // A proven tokenizer the fast engine fails to load (a future format, say) is
            // encoded by the reference: `auto` never fails where the reference would not.
            (EngineChoice::Auto, Ok(s)) => {
                match FastEncoder::load(file, token_bytes(s.offsets), path) {
                    Ok(fast) => Some(fast),
                    Err(error) => {
                        proven = Err(error.to_string());
                        None
                    }
                }
            }
            (EngineChoice::Fast, s) => {
                let offsets = s.as_ref().is_ok_and(|s| s.offsets);
                Some(FastEncoder::load(file, token_bytes(offsets), path)?)
            }
        };
        let engines = Engines {
            choice,
            fast,
            proven,
            reference: OnceLock::new(),
            path: path.to_path_buf(),
            fast_texts: AtomicU64::new(0),
            reference_texts: AtomicU64::new(0),
        };
        if engines.fast.is_none() {
            engines.reference()?; // a broken tokenizer.json fails here, not mid-run
        }
        Ok(engines)
    }

    fn reference(&self) -> Result<&ReferenceEncoder> {
        let loaded = self
            .reference
            .get_or_init(|| ReferenceEncoder::load(&self.path).map_err(|e| e.to_string()));
        loaded.as_ref().map_err(|message| CoreError::Tokenizer {
            path: self.path.clone(),
            message: message.clone(),
        })
    }

    /// The ids of a probe text with special tokens, uncounted (what the post-processor adds).
    pub fn probe(&self, text: &str) -> Result<Vec<u32>> {
        match &self.fast {
            Some(fast) => fast.encode(text, true),
            None => self.reference()?.encode(text, true),
        }
    }

    /// The fast engine, if it may encode `text`.
    fn fast_for(&self, text: &str) -> Option<&FastEncoder> {
        let fast = self.fast.as_ref()?;
        let guarded = self.choice == EngineChoice::Auto && guard::needs_reference(text);
        (!guarded).then_some(fast)
    }

    /// What the manifest records: the engine asked for, those that ran with their versions, why
    /// `auto` left the fast one out, and how many texts each encoded.
    pub fn report(&self) -> Value {
        json!({
            "requested": self.choice.name(),
            "fast": self.fast.as_ref().map(|_| fast::VERSION),
            "reference": reference::VERSION,
            "fast_proven": self.proven.is_ok(),
            "why_not_proven": self.proven.as_ref().err(),
            "texts": {
                "fast": self.fast_texts.load(Ordering::Relaxed),
                "reference": self.reference_texts.load(Ordering::Relaxed),
            },
        })
    }
}

impl Encoder for Engines {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        if let Some(fast) = self.fast_for(text) {
            self.fast_texts.fetch_add(1, Ordering::Relaxed);
            return fast.encode(text, add_special_tokens);
        }
        self.reference_texts.fetch_add(1, Ordering::Relaxed);
        self.reference()?.encode(text, add_special_tokens)
    }

    fn encode_with_offsets(&self, text: &str) -> Result<IdsAndOffsets> {
        if let Some(fast) = self.fast_for(text) {
            let ids = fast.encode(text, false)?;
            if let Some(offsets) = fast.offsets(text, &ids) {
                self.fast_texts.fetch_add(1, Ordering::Relaxed);
                return Ok((ids, offsets));
            }
        }
        self.reference_texts.fetch_add(1, Ordering::Relaxed);
        self.reference()?.encode_with_offsets(text)
    }
}
