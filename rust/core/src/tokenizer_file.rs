//! Reading a `tokenizer.json` once, cheaply.
//!
//! A real file is mostly its vocabulary and merges (Qwen2's: 151,643 tokens and 151,387 merges,
//! 11 MB). Parsed into a `serde_json::Value` they cost half a second and 100 MB of small
//! allocations, to be thrown away: the engines build their own models. So the file is split at
//! its top level and in its model into raw JSON texts borrowed from the file; the small parts (the
//! normaliser, pre-tokeniser, post-processor, the model's settings, the added tokens) are parsed,
//! the vocabulary straight into its facts, and the fast engine gets its canonical text put
//! together from a converted skeleton and the raw vocabulary and merges.

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A `tokenizer.json` split into its small parsed parts and its large raw ones.
pub struct TokenizerFile<'a> {
    /// Every top-level entry, `model` included without its vocabulary and merges.
    pub skeleton: Value,
    /// `model.vocab` as written.
    pub vocab: &'a RawValue,
    /// `model.merges` as written, when the model has merges in the canonical form (pairs).
    merges: Option<&'a RawValue>,
}

type RawMap<'a> = BTreeMap<String, &'a RawValue>;

impl<'a> TokenizerFile<'a> {
    pub fn parse(text: &'a str) -> Result<TokenizerFile<'a>, String> {
        let top: RawMap<'a> =
            serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
        let model_raw = *top.get("model").ok_or("no model")?;
        let model: RawMap<'a> = serde_json::from_str(model_raw.get())
            .map_err(|e| format!("model is not a JSON object: {e}"))?;
        let vocab = *model.get("vocab").ok_or("no model.vocab")?;
        // Merges written as pairs go through untouched; the legacy `"a b"` strings are parsed so
        // that the conversion rewrites them (old files only).
        let merges = model.get("merges").copied().filter(|raw| {
            let rest = raw.get().strip_prefix('[').map(str::trim_start);
            rest.is_some_and(|rest| rest.starts_with(['[', ']']))
        });
        let parse = |raw: &RawValue| serde_json::from_str::<Value>(raw.get());
        let mut model_skeleton = Map::new();
        for (key, raw) in &model {
            let value = match key.as_str() {
                // Placeholders of the same JSON kind, for the conversion's checks.
                "vocab" if raw.get().starts_with('[') => Value::Array(Vec::new()),
                "vocab" => Value::Object(Map::new()),
                "merges" if merges.is_some() => Value::Array(Vec::new()),
                _ => parse(raw).map_err(|e| format!("model.{key}: {e}"))?,
            };
            model_skeleton.insert(key.clone(), value);
        }
        let mut skeleton = Map::new();
        for (key, raw) in &top {
            let value = match key.as_str() {
                "model" => Value::Object(std::mem::take(&mut model_skeleton)),
                _ => parse(raw).map_err(|e| format!("{key}: {e}"))?,
            };
            skeleton.insert(key.clone(), value);
        }
        Ok(TokenizerFile {
            skeleton: Value::Object(skeleton),
            vocab,
            merges,
        })
    }

    /// `model.merges` as written, when it is in the canonical form (pairs); otherwise the
    /// merges are parsed into `skeleton` (legacy `"a b"` strings).
    pub fn raw_merges(&self) -> Option<&'a RawValue> {
        self.merges
    }

    /// The file as JSON text with `skeleton` (converted from this file's) in place of the
    /// small parts and this file's raw vocabulary and merges put back.
    pub fn assemble(&self, skeleton: &Value) -> Result<String, String> {
        let Value::Object(top) = skeleton else {
            return Err("the converted tokenizer is not a JSON object".into());
        };
        let mut out = String::with_capacity(self.vocab.get().len() * 2 + 4096);
        out.push('{');
        for (index, (key, value)) in top.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            push_json(&mut out, key);
            out.push(':');
            match (key.as_str(), value) {
                ("model", Value::Object(model)) => {
                    out.push('{');
                    for (index, (key, value)) in model.iter().enumerate() {
                        if index > 0 {
                            out.push(',');
                        }
                        push_json(&mut out, key);
                        out.push(':');
                        match (key.as_str(), self.merges) {
                            ("vocab", _) => out.push_str(self.vocab.get()),
                            ("merges", Some(merges)) => out.push_str(merges.get()),
                            _ => push_json(&mut out, value),
                        }
                    }
                    out.push('}');
                }
                _ => push_json(&mut out, value),
            }
        }
        out.push('}');
        Ok(out)
    }
}

fn push_json(out: &mut String, value: &(impl serde::Serialize + ?Sized)) {
    out.push_str(&serde_json::to_string(value).expect("JSON values serialize"));
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{"version": "1.0", "added_tokens": [{"id": 3, "content": "<eos>"}],
        "normalizer": {"type": "NFC"}, "pre_tokenizer": null,
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": MERGES,
                  "dropout": null}}"#;

    fn value(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn assembling_the_skeleton_as_parsed_gives_the_file() {
        let text = FILE.replace("MERGES", r#"[["a", "b"]]"#);
        let file = TokenizerFile::parse(&text).unwrap();
        assert_eq!(
            file.skeleton["model"]["merges"],
            value("[]"),
            "merges stay raw"
        );
        assert_eq!(
            file.skeleton["model"]["vocab"],
            value("{}"),
            "the vocabulary stays raw"
        );
        assert_eq!(file.skeleton["normalizer"]["type"], "NFC");
        let assembled = file.assemble(&file.skeleton).unwrap();
        assert_eq!(value(&assembled), value(&text));
    }

    #[test]
    fn legacy_merges_are_parsed_for_the_conversion() {
        let text = FILE.replace("MERGES", r#"["a b"]"#);
        let file = TokenizerFile::parse(&text).unwrap();
        assert_eq!(file.skeleton["model"]["merges"], value(r#"["a b"]"#));
        let mut converted = file.skeleton.clone();
        converted["model"]["merges"] = value(r#"[["a", "b"]]"#);
        let assembled = value(&file.assemble(&converted).unwrap());
        assert_eq!(assembled["model"]["merges"], value(r#"[["a", "b"]]"#));
        assert_eq!(
            assembled["model"]["vocab"],
            value(r#"{"a": 0, "b": 1, "ab": 2}"#)
        );
    }

    #[test]
    fn a_file_without_a_model_is_refused() {
        let error = TokenizerFile::parse(r#"{"version": "1.0"}"#).err().unwrap();
        assert_eq!(error, "no model");
        assert!(TokenizerFile::parse("not json").is_err());
    }
}
