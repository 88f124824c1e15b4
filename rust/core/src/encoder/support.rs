//! Which tokenizers the fast engine is proven on: `--engine auto` uses it only for these, and
//! the reference for every other (SentencePiece, WordPiece, other normalisers, pre-tokenisers or
//! added-token flags).
//!
//! Proven means the parity tests compare both engines on them, id for id and offset for offset
//! (`tests/data/test_engine_parity.py`): the byte-level BPE families whose pre-tokenisers the
//! fast engine implements natively — GPT-2's, and the cl100k pattern with single digits (Qwen2)
//! or runs of up to three (Llama 3) — with no normaliser or NFC, added tokens matched as
//! written (no `normalized`, `lstrip`, `rstrip` or `single_word`), and a byte-level, template
//! or no post-processor.

use serde_json::Value;

use crate::vocabulary::Vocabulary;

/// The Split patterns of the proven families (Qwen2's single digits; cl100k and Llama 3's runs
/// of up to three), exactly as their `tokenizer.json` files spell them.
const PATTERNS: [&str; 2] = [
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];

/// What the fast engine may do for a tokenizer it is proven on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Support {
    /// Offsets can be derived from the ids: the tokens' bytes laid end to end are the text
    /// (no prefix space is added and the post-processor trims no offsets).
    pub offsets: bool,
}

/// Whether the fast engine is proven on this `tokenizer.json`; if not, why.
pub fn check(json: &Value, vocabulary: &Vocabulary) -> Result<Support, String> {
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(format!("a {} model, not BPE", kind(model)));
    }
    let unset = |key: &str| match &model[key] {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    };
    for key in [
        "dropout",
        "unk_token",
        "continuing_subword_prefix",
        "end_of_word_suffix",
        "fuse_unk",
        "byte_fallback",
        "ignore_merges",
    ] {
        if !unset(key) {
            return Err(format!("BPE with {key} = {}", model[key]));
        }
    }
    match &json["normalizer"] {
        Value::Null => {}
        normalizer if normalizer["type"] == "NFC" => {}
        other => return Err(format!("a {} normaliser", kind(other))),
    }
    let mut offsets = byte_level_pre_tokenizer(&json["pre_tokenizer"])?;
    offsets &= post_processor_keeps_offsets(&json["post_processor"])?;
    if let Some(token) = vocabulary
        .added
        .iter()
        .find(|t| t.normalized || t.lstrip || t.rstrip || t.single_word)
    {
        return Err(format!(
            "added token '{}' with normalized, lstrip, rstrip or single_word",
            token.content
        ));
    }
    Ok(Support { offsets })
}

/// GPT-2's byte-level pre-tokeniser, or a proven Split pattern then a plain byte-level one.
/// Returns whether offsets can be derived (no prefix space added).
fn byte_level_pre_tokenizer(pre: &Value) -> Result<bool, String> {
    let no_prefix_space = |byte_level: &Value| byte_level["add_prefix_space"] != true;
    match pre["type"].as_str() {
        Some("ByteLevel") if pre["use_regex"] != false => Ok(no_prefix_space(pre)),
        Some("Sequence") => {
            let steps = pre["pretokenizers"]
                .as_array()
                .map_or(&[][..], Vec::as_slice);
            match steps {
                [split, byte_level]
                    if split["type"] == "Split"
                        && split["behavior"] == "Isolated"
                        && split["invert"] == false
                        && byte_level["type"] == "ByteLevel"
                        && byte_level["use_regex"] == false =>
                {
                    let pattern = split["pattern"]["Regex"].as_str().unwrap_or_default();
                    if !PATTERNS.contains(&pattern) {
                        return Err(format!("a Split pattern not proven: {pattern}"));
                    }
                    Ok(no_prefix_space(byte_level))
                }
                _ => Err("a pre-tokeniser sequence other than Split + ByteLevel".into()),
            }
        }
        _ => Err(format!("a {} pre-tokeniser", kind(pre))),
    }
}

/// Byte-level, template or no post-processing; whether the byte-level one keeps offsets as
/// they are (`trim_offsets: false`).
fn post_processor_keeps_offsets(post: &Value) -> Result<bool, String> {
    match post["type"].as_str() {
        None if post.is_null() => Ok(true),
        Some("ByteLevel") => Ok(post["trim_offsets"] == false),
        Some("TemplateProcessing") => Ok(true),
        Some("Sequence") => {
            let mut keeps = true;
            for step in post["processors"].as_array().into_iter().flatten() {
                keeps &= post_processor_keeps_offsets(step)?;
            }
            Ok(keeps)
        }
        _ => Err(format!("a {} post-processor", kind(post))),
    }
}

fn kind(component: &Value) -> String {
    component["type"]
        .as_str()
        .map_or_else(|| component.to_string(), str::to_string)
}
