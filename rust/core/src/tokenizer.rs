//! Loading a HuggingFace tokenizer (`tokenizer.json`, plus `tokenizer_config.json` for the
//! special tokens and the chat template): the facts the manifest records, and the [`Engines`]
//! that encode exactly as Python `transformers` does.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::encoder::{Encoder, EngineChoice, Engines};
use crate::error::{CoreError, Result};
use crate::fingerprint::fingerprint;
use crate::reader::hex;
use crate::tokenizer_file::TokenizerFile;
use crate::vocabulary::Vocabulary;

/// A special token and its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecialToken {
    pub token: String,
    pub id: u32,
}

/// A tokenizer ready to encode, with the facts the manifest records.
pub struct LoadedTokenizer {
    /// The engines behind [`LoadedTokenizer::encoder`].
    engines: Engines,
    /// Special added tokens, longest first.
    special_tokens: Vec<String>,
    pub info: TokenizerInfo,
    /// `tokenizer_config.json`, when there is one (chat template, special tokens).
    pub config: Option<Value>,
    /// The folder holding the tokenizer (for `chat_template.jinja`).
    pub dir: PathBuf,
}

/// What the manifest says about the tokenizer, so a later stage can check it uses the same one.
#[derive(Debug, Clone, Serialize)]
pub struct TokenizerInfo {
    /// The `tokenizer.json` that was loaded.
    pub path: PathBuf,
    /// The file's bytes: changes whenever it is re-saved.
    pub sha256: String,
    /// What decides the ids ([`crate::fingerprint`]): the same for a `tokenizer.json` that
    /// `save_pretrained` re-serialised, so later stages compare this.
    pub fingerprint: String,
    /// Vocabulary size including added tokens.
    pub vocab_size: usize,
    pub bos: Option<SpecialToken>,
    pub eos: Option<SpecialToken>,
    pub pad: Option<SpecialToken>,
    /// Where eos came from: `tokenizer_config.json`, `option`, or `guessed` (a bare tokenizer.json).
    pub eos_source: &'static str,
    /// Whether encoding with special tokens already ends with eos (then none is appended).
    pub post_processor_adds_eos: bool,
}

/// Tokens that end documents in common tokenizers, tried in order when no config names one.
const EOS_GUESSES: [&str; 6] = [
    "<|endoftext|>",
    "</s>",
    "<|end_of_text|>",
    "<eos>",
    "<|im_end|>",
    "<|eot_id|>",
];

impl LoadedTokenizer {
    /// Loads from a model folder (`tokenizer.json` + optional `tokenizer_config.json`) or a
    /// `tokenizer.json` file. `eos_override` names the end-of-document token explicitly.
    pub fn load(path: &Path, eos_override: Option<&str>, engine: EngineChoice) -> Result<Self> {
        let bad = |message: String| CoreError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        let json_path = tokenizer_json(path)?;
        let config_path = json_path.with_file_name("tokenizer_config.json");
        let bytes = std::fs::read(&json_path).map_err(|e| CoreError::io(&json_path, e))?;
        let not_hf = |message: String| bad(format!("not a HuggingFace tokenizer.json: {message}"));
        let text = std::str::from_utf8(&bytes).map_err(|e| not_hf(e.to_string()))?;
        let file = TokenizerFile::parse(text).map_err(not_hf)?;
        let fingerprint = fingerprint(&file).map_err(not_hf)?;
        let vocabulary = Vocabulary::from_file(&file.skeleton, file.vocab).map_err(not_hf)?;
        let engines = Engines::load(engine, &file, &vocabulary, &json_path)?;

        let config = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path)
                .map_err(|e| CoreError::io(&config_path, e))?;
            let value: Value = serde_json::from_str(&text).map_err(|e| CoreError::Tokenizer {
                path: config_path.clone(),
                message: format!("malformed JSON: {e}"),
            })?;
            Some(value)
        } else {
            None
        };
        let special = |key: &str| -> Result<Option<SpecialToken>> {
            let Some(name) = config.as_ref().and_then(|c| token_name(c.get(key)?)) else {
                return Ok(None);
            };
            match vocabulary.token_to_id(&name) {
                Some(id) => Ok(Some(SpecialToken { token: name, id })),
                None => Err(CoreError::Tokenizer {
                    path: config_path.clone(),
                    message: format!("{key} '{name}' is not in the vocabulary"),
                }),
            }
        };
        let bos = special("bos_token")?;
        let pad = special("pad_token")?;
        let (eos, eos_source) = if let Some(name) = eos_override {
            let id = vocabulary
                .token_to_id(name)
                .ok_or_else(|| bad(format!("eos token '{name}' is not in the vocabulary")))?;
            let token = SpecialToken {
                token: name.to_string(),
                id,
            };
            (Some(token), "option")
        } else if let Some(token) = special("eos_token")? {
            (Some(token), "tokenizer_config.json")
        } else {
            let guess = EOS_GUESSES.iter().find_map(|name| {
                vocabulary.token_to_id(name).map(|id| SpecialToken {
                    token: name.to_string(),
                    id,
                })
            });
            (guess, "guessed")
        };
        let post_processor_adds_eos = match &eos {
            Some(eos) => engines.probe("a")?.last() == Some(&eos.id),
            None => false,
        };
        let info = TokenizerInfo {
            sha256: hex(&Sha256::digest(&bytes)),
            fingerprint,
            path: json_path,
            vocab_size: vocabulary.size(),
            bos,
            eos,
            pad,
            eos_source,
            post_processor_adds_eos,
        };
        let dir = info
            .path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Ok(LoadedTokenizer {
            engines,
            special_tokens: vocabulary.special_tokens(),
            info,
            config,
            dir,
        })
    }

    /// The encoder every stage calls.
    pub fn encoder(&self) -> &dyn Encoder {
        &self.engines
    }

    /// What the manifest records of the engines: which was asked for, which ran, their
    /// versions, and how many texts each encoded.
    pub fn engine_report(&self) -> Value {
        self.engines.report()
    }

    /// The special tokens `transformers` passes to chat templates (`special_tokens_map`):
    /// `bos_token`, `eos_token`, ... as strings, and `additional_special_tokens`.
    pub fn special_tokens_map(&self) -> serde_json::Map<String, Value> {
        let mut map = serde_json::Map::new();
        let Some(config) = &self.config else {
            return map;
        };
        for key in [
            "bos_token",
            "eos_token",
            "unk_token",
            "sep_token",
            "pad_token",
            "cls_token",
            "mask_token",
        ] {
            if let Some(name) = config.get(key).and_then(token_name) {
                map.insert(key.to_string(), Value::String(name));
            }
        }
        if let Some(Value::Array(list)) = config.get("additional_special_tokens") {
            let names: Vec<Value> = list
                .iter()
                .filter_map(token_name)
                .map(Value::String)
                .collect();
            map.insert("additional_special_tokens".into(), Value::Array(names));
        }
        map
    }

    /// Every special added token's text, longest first (end-of-turn candidates for masks).
    pub fn special_token_strings(&self) -> Vec<String> {
        self.special_tokens.clone()
    }

    /// The tokenizer's own chat template: `chat_template` of `tokenizer_config.json` (a string,
    /// or the `default` of a named list), else a `chat_template.jinja` beside it.
    pub fn chat_template(&self) -> Result<Option<(String, String)>> {
        if let Some(value) = self.config.as_ref().and_then(|c| c.get("chat_template")) {
            match value {
                Value::String(source) => {
                    return Ok(Some((source.clone(), "tokenizer_config.json".into())))
                }
                Value::Array(named) => {
                    let default = named.iter().find(|t| t["name"] == "default");
                    if let Some(source) = default.and_then(|t| t["template"].as_str()) {
                        return Ok(Some((source.to_string(), "tokenizer_config.json".into())));
                    }
                }
                _ => {}
            }
        }
        let file = self.dir.join("chat_template.jinja");
        if file.is_file() {
            let source = std::fs::read_to_string(&file).map_err(|e| CoreError::io(&file, e))?;
            return Ok(Some((source, file.display().to_string())));
        }
        Ok(None)
    }
}

/// The `tokenizer.json` of `path`: the file itself, or the one in a model folder.
pub fn tokenizer_json(path: &Path) -> Result<PathBuf> {
    let bad = |message: &str| CoreError::Tokenizer {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    if path.is_dir() {
        let json = path.join("tokenizer.json");
        if !json.is_file() {
            return Err(bad(
                "folder has no tokenizer.json (a HF model folder or a tokenizer.json file is expected)",
            ));
        }
        Ok(json)
    } else if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(bad("no such file or folder"))
    }
}

/// A special token in `tokenizer_config.json` is a string or an `AddedToken` object.
fn token_name(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => map.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}
