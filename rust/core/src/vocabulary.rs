//! What a `tokenizer.json` says about its vocabulary, read once from the parsed file: token →
//! id, the added tokens with their flags, and how many bytes each id stands for.
//!
//! The engines each build their own model from the same file; these facts (special-token ids
//! for the manifest, end-of-turn candidates for the masks, byte lengths for the fast engine's
//! offsets) come from here, so that they are the same whichever engine runs and the reference
//! engine need not be loaded to learn them. The lookups follow HF `tokenizers` 0.23: an added
//! token's id first, then the model's.

use std::collections::HashMap;

use serde_json::value::RawValue;
use serde_json::Value;

/// A token added on top of the model's vocabulary (`added_tokens` of `tokenizer.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedToken {
    pub id: u32,
    pub content: String,
    pub special: bool,
    pub single_word: bool,
    pub lstrip: bool,
    pub rstrip: bool,
    pub normalized: bool,
}

/// The vocabulary of a `tokenizer.json`.
#[derive(Debug, Default)]
pub struct Vocabulary {
    /// The model's tokens as written in the file (byte-level BPE: one character per byte).
    model: HashMap<String, u32>,
    pub added: Vec<AddedToken>,
    added_ids: HashMap<String, u32>,
}

impl Vocabulary {
    /// Reads the vocabulary of a `tokenizer.json`: its raw `model.vocab` and the parsed rest
    /// (for `added_tokens`); an error says what is malformed.
    pub fn from_file(json: &Value, vocab: &RawValue) -> Result<Vocabulary, String> {
        let malformed = |e: serde_json::Error| format!("model.vocab: {e}");
        let model: HashMap<String, u32> = if vocab.get().starts_with('[') {
            // Unigram: [[piece, score], ...], the id being the position.
            let pieces: Vec<(String, f64)> =
                serde_json::from_str(vocab.get()).map_err(malformed)?;
            pieces
                .into_iter()
                .enumerate()
                .map(|(id, (piece, _))| (piece, id as u32))
                .collect()
        } else {
            // BPE, WordPiece, WordLevel: {token: id}.
            serde_json::from_str(vocab.get()).map_err(malformed)?
        };
        let mut added = Vec::new();
        let mut added_ids = HashMap::new();
        if let Some(list) = json.get("added_tokens").and_then(Value::as_array) {
            for (index, token) in list.iter().enumerate() {
                let flag = |key: &str| token.get(key).and_then(Value::as_bool).unwrap_or(false);
                let id = token.get("id").and_then(as_id);
                let content = token.get("content").and_then(Value::as_str);
                let (Some(id), Some(content)) = (id, content) else {
                    return Err(format!("added_tokens[{index}] has no id or content"));
                };
                added_ids.insert(content.to_string(), id);
                added.push(AddedToken {
                    id,
                    content: content.to_string(),
                    special: flag("special"),
                    single_word: flag("single_word"),
                    lstrip: flag("lstrip"),
                    rstrip: flag("rstrip"),
                    // transformers writes `normalized: false` for special tokens; a missing flag
                    // means true (tokenizers' default).
                    normalized: token
                        .get("normalized")
                        .and_then(Value::as_bool)
                        .unwrap_or(true),
                });
            }
        }
        Ok(Vocabulary {
            model,
            added,
            added_ids,
        })
    }

    /// The id of `token`: an added token's, else the model's.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.added_ids
            .get(token)
            .or_else(|| self.model.get(token))
            .copied()
    }

    /// The vocabulary size with the added tokens, as HF counts it (an added token that is also
    /// a model token counts once).
    pub fn size(&self) -> usize {
        let overlapping = self
            .added_ids
            .keys()
            .filter(|token| self.model.contains_key(*token))
            .count();
        self.model.len() + self.added_ids.len() - overlapping
    }

    /// The content of every special added token, longest first (end-of-turn candidates).
    pub fn special_tokens(&self) -> Vec<String> {
        let mut tokens: Vec<String> = self
            .added
            .iter()
            .filter(|token| token.special)
            .map(|token| token.content.clone())
            .collect();
        tokens.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        tokens.dedup();
        tokens
    }

    /// For a byte-level model, the number of bytes each id stands for: a model token has one
    /// character per byte, an added token is its UTF-8 content. Ids that are no token get 0.
    pub fn byte_level_lengths(&self) -> Vec<u32> {
        let top = self
            .model
            .values()
            .chain(self.added_ids.values())
            .max()
            .map_or(0, |&id| id as usize + 1);
        let mut lengths = vec![0u32; top];
        for (token, &id) in &self.model {
            lengths[id as usize] = token.chars().count() as u32;
        }
        for token in &self.added {
            lengths[token.id as usize] = token.content.len() as u32;
        }
        lengths
    }
}

fn as_id(value: &Value) -> Option<u32> {
    value.as_u64().and_then(|id| u32::try_from(id).ok())
}
