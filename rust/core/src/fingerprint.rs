//! A tokenizer's identity by meaning: a SHA-256 over what decides its ids, not over the bytes of
//! its `tokenizer.json`.
//!
//! Every fine-tuned checkpoint re-serialises `tokenizer.json` (`save_pretrained`), with another
//! key order, other whitespace, merges written as pairs where an older file had `"a b"` strings,
//! defaults spelled out that the original left implicit. Its sha256 then differs although every
//! text gets the same ids, so the manifest pins the tokenizer by this fingerprint as well, and the
//! trainers, the pipeline and `inspect` compare it (one implementation: the Python side calls
//! [`fingerprint_path`] through `ferrotune._native.tokenizer_fingerprint`).
//!
//! The fingerprint is the SHA-256 of one canonical JSON text (keys sorted, compact) of:
//!
//! - `added_tokens`: each token's content, id and flags (`special`, `single_word`, `lstrip`,
//!   `rstrip`, `normalized`, missing flags filled with HF's defaults), sorted by id;
//! - `normalizer`, `pre_tokenizer`, `post_processor`, `decoder`: each read and written back by
//!   HF `tokenizers` 0.23 (the reference engine), which fills in defaults and rewrites legacy
//!   spellings exactly as a re-save does; then the options that only shape offsets or that the
//!   component ignores are dropped (`trim_offsets` everywhere; a `ByteLevel` post-processor's or
//!   decoder's `add_prefix_space` and `use_regex`; `RobertaProcessing`'s `add_prefix_space`).
//!   `transformers` 5 rebuilds Qwen2's pipeline from its own class and writes other values for
//!   exactly these, ids unchanged;
//! - `model`: its type and options (BPE's `dropout`, `unk_token`, `continuing_subword_prefix`,
//!   `end_of_word_suffix`, `fuse_unk`, `byte_fallback`, `ignore_merges`; WordPiece's, WordLevel's
//!   and Unigram's own; missing ones filled with their defaults, unknown ones dropped as
//!   `tokenizers` drops them), the vocabulary as `[token, id]` pairs in id order (Unigram: its
//!   `[piece, score]` list, whose order is the ids) and the merges as `[left, right]` pairs.
//!
//! Left out, because they do not decide ids: `version`, `truncation` and `padding` (ferrotune
//! encodes with both off, as `transformers` does).
//!
//! The vocabulary and merges (most of a real file: Qwen2's 151,643 tokens and 151,387 merges) are
//! read with their strings borrowed from the file and streamed into the hash, so fingerprinting
//! Qwen2's 7 MB file costs a few tens of milliseconds.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::{CoreError, Result};
use crate::reader::hex;
use crate::tokenizer::tokenizer_json;
use crate::tokenizer_file::TokenizerFile;

/// The fingerprint of the tokenizer at `path` (a model folder or a `tokenizer.json`), as the
/// manifest records it.
pub fn fingerprint_path(path: &Path) -> Result<String> {
    let json_path = tokenizer_json(path)?;
    let bytes = std::fs::read(&json_path).map_err(|e| CoreError::io(&json_path, e))?;
    let not_hf = |message: String| CoreError::Tokenizer {
        path: json_path.clone(),
        message: format!("not a HuggingFace tokenizer.json: {message}"),
    };
    let text = std::str::from_utf8(&bytes).map_err(|e| not_hf(e.to_string()))?;
    let file = TokenizerFile::parse(text).map_err(not_hf)?;
    fingerprint(&file).map_err(not_hf)
}

/// The fingerprint of a parsed `tokenizer.json`: lowercase hex SHA-256 of its canonical form.
pub fn fingerprint(file: &TokenizerFile<'_>) -> std::result::Result<String, String> {
    let mut out = BufWriter::with_capacity(1 << 16, HashWriter(Sha256::new()));
    write_canonical(file, &mut out).map_err(|e| match e {
        Failure::Malformed(message) => message,
        Failure::Io(e) => format!("hashing failed: {e}"),
    })?;
    let HashWriter(hasher) = out
        .into_inner()
        .map_err(|e| format!("hashing failed: {}", e.error()))?;
    Ok(hex(&hasher.finalize()))
}

/// Feeds what is written into a SHA-256 (behind a `BufWriter`: serde writes in small pieces).
struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Why the canonical form could not be written: the file is malformed, or the writer failed.
enum Failure {
    Malformed(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure::Io(error)
    }
}

impl From<serde_json::Error> for Failure {
    fn from(error: serde_json::Error) -> Self {
        Failure::Io(error.into())
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Malformed(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure::Malformed(message.to_string())
    }
}

/// A string of the file, borrowed where it has no escapes (almost every vocabulary entry).
#[derive(Deserialize, Serialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// The canonical JSON text of `file`: an object with its keys in sorted order, every part in
/// its canonical form (see the module's documentation).
pub fn canonical_json(file: &TokenizerFile<'_>) -> std::result::Result<String, String> {
    let mut out = Vec::new();
    write_canonical(file, &mut out).map_err(|e| match e {
        Failure::Malformed(message) => message,
        Failure::Io(e) => e.to_string(),
    })?;
    Ok(String::from_utf8(out).expect("serde_json writes UTF-8"))
}

fn write_canonical(
    file: &TokenizerFile<'_>,
    out: &mut impl Write,
) -> std::result::Result<(), Failure> {
    let skeleton = &file.skeleton;
    let part = |key: &str| skeleton.get(key).cloned().unwrap_or(Value::Null);
    // The top-level keys, written in sorted order.
    out.write_all(b"{\"added_tokens\":")?;
    serde_json::to_writer(&mut *out, &added_tokens(skeleton)?)?;
    out.write_all(b",\"decoder\":")?;
    let decoder = round_trip::<tokenizers::decoders::DecoderWrapper>(part("decoder"));
    serde_json::to_writer(&mut *out, &sorted(drop_unused(decoder, Component::Decoder)))?;
    out.write_all(b",\"model\":")?;
    write_model(file, out)?;
    out.write_all(b",\"normalizer\":")?;
    let normalizer = round_trip::<tokenizers::normalizers::NormalizerWrapper>(part("normalizer"));
    serde_json::to_writer(&mut *out, &sorted(normalizer))?;
    out.write_all(b",\"post_processor\":")?;
    let post = round_trip::<tokenizers::processors::PostProcessorWrapper>(part("post_processor"));
    serde_json::to_writer(
        &mut *out,
        &sorted(drop_unused(post, Component::PostProcessor)),
    )?;
    out.write_all(b",\"pre_tokenizer\":")?;
    let pre = round_trip::<tokenizers::pre_tokenizers::PreTokenizerWrapper>(part("pre_tokenizer"));
    serde_json::to_writer(
        &mut *out,
        &sorted(drop_unused(pre, Component::PreTokenizer)),
    )?;
    out.write_all(b"}")?;
    Ok(())
}

/// An added token as it decides ids; fields in sorted order (serde writes them as declared).
#[derive(Serialize)]
struct AddedToken<'v> {
    content: &'v str,
    id: u64,
    lstrip: bool,
    normalized: bool,
    rstrip: bool,
    single_word: bool,
    special: bool,
}

/// The added tokens with every flag (missing ones as HF defaults them), sorted by id.
fn added_tokens(skeleton: &Value) -> std::result::Result<Vec<AddedToken<'_>>, String> {
    let Some(list) = skeleton.get("added_tokens").filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = list.as_array().ok_or("added_tokens is not a list")?;
    let mut tokens = Vec::with_capacity(list.len());
    for (index, token) in list.iter().enumerate() {
        let flag =
            |key: &str, default: bool| token.get(key).and_then(Value::as_bool).unwrap_or(default);
        let id = token.get("id").and_then(Value::as_u64);
        let content = token.get("content").and_then(Value::as_str);
        let (Some(id), Some(content)) = (id, content) else {
            return Err(format!("added_tokens[{index}] has no id or content"));
        };
        tokens.push(AddedToken {
            content,
            id,
            lstrip: flag("lstrip", false),
            // A missing `normalized` means true (tokenizers' default), as in the vocabulary.
            normalized: flag("normalized", true),
            rstrip: flag("rstrip", false),
            single_word: flag("single_word", false),
            special: flag("special", false),
        });
    }
    tokens.sort_by(|a, b| a.id.cmp(&b.id).then_with(|| a.content.cmp(b.content)));
    Ok(tokens)
}

/// `value` read and written back by HF `tokenizers` 0.23 as `T`: defaults filled in, legacy
/// spellings rewritten, as a re-save writes it. A value it cannot read stays as written (the
/// reference engine would refuse the file anyway; the fingerprint still tells files apart).
fn round_trip<T: serde::de::DeserializeOwned + Serialize>(value: Value) -> Value {
    if value.is_null() {
        return value;
    }
    match serde_json::from_value::<T>(value.clone()) {
        Ok(parsed) => serde_json::to_value(parsed).unwrap_or(value),
        Err(_) => value,
    }
}

/// Where a component sits, for [`drop_unused`].
#[derive(Clone, Copy)]
enum Component {
    PreTokenizer,
    PostProcessor,
    Decoder,
}

/// `value` without the options that do not decide ids: `trim_offsets` (offsets only), and the
/// options a `ByteLevel` post-processor or decoder ignores or uses only to trim offsets
/// (`add_prefix_space`, `use_regex`), and `RobertaProcessing`'s `add_prefix_space` (offsets
/// only). A `ByteLevel` pre-tokeniser's `add_prefix_space` and `use_regex` decide ids and stay.
fn drop_unused(value: Value, component: Component) -> Value {
    match value {
        Value::Object(map) => {
            let kind = map
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let unused: &[&str] = match (component, kind.as_str()) {
                (Component::PreTokenizer, _) => &["trim_offsets"],
                (Component::PostProcessor, "ByteLevel") => {
                    &["trim_offsets", "add_prefix_space", "use_regex"]
                }
                (Component::PostProcessor, "RobertaProcessing") => {
                    &["trim_offsets", "add_prefix_space"]
                }
                (Component::PostProcessor, _) => &["trim_offsets"],
                (Component::Decoder, "ByteLevel") => {
                    &["trim_offsets", "add_prefix_space", "use_regex"]
                }
                (Component::Decoder, _) => &[],
            };
            Value::Object(
                map.into_iter()
                    .filter(|(key, _)| !unused.contains(&key.as_str()))
                    .map(|(key, value)| (key, drop_unused(value, component)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|item| drop_unused(item, component))
                .collect(),
        ),
        other => other,
    }
}

/// `value` with every object's keys in sorted order (the map keeps insertion order).
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (key, sorted(value)))
                    .collect::<Map<_, _>>(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Each model type's options and their defaults in HF `tokenizers` 0.23 (what it writes when
/// the file leaves one out or writes null). Other keys are ignored by `tokenizers`, so dropped.
fn model_options(kind: &str) -> Option<Vec<(&'static str, Value)>> {
    let null = || Value::Null;
    Some(match kind {
        "BPE" => vec![
            ("dropout", null()),
            ("unk_token", null()),
            ("continuing_subword_prefix", null()),
            ("end_of_word_suffix", null()),
            ("fuse_unk", Value::Bool(false)),
            ("byte_fallback", Value::Bool(false)),
            ("ignore_merges", Value::Bool(false)),
        ],
        "WordPiece" => vec![
            ("unk_token", Value::from("[UNK]")),
            ("continuing_subword_prefix", Value::from("##")),
            ("max_input_chars_per_word", Value::from(100)),
        ],
        "WordLevel" => vec![("unk_token", Value::from("<unk>"))],
        "Unigram" => vec![("unk_id", null()), ("byte_fallback", Value::Bool(false))],
        _ => return None,
    })
}

/// What the canonical model object holds under a key: a small value, or one of the large
/// parts streamed from the file.
enum ModelPart {
    Small(Value),
    Vocab,
    Merges,
}

fn write_model(file: &TokenizerFile<'_>, out: &mut impl Write) -> std::result::Result<(), Failure> {
    let model = file
        .skeleton
        .get("model")
        .and_then(Value::as_object)
        .ok_or("model is not a JSON object")?;
    let kind = model.get("type").and_then(Value::as_str);
    let mut parts: Vec<(String, ModelPart)> = Vec::new();
    match kind.and_then(model_options) {
        Some(options) => {
            parts.push(("type".into(), ModelPart::Small(Value::from(kind))));
            for (key, default) in options {
                let mut value = model.get(key).filter(|v| !v.is_null()).cloned();
                // BPE glues a prefix or suffix onto subwords when it has one: "" is none (Qwen2
                // writes ""). WordPiece's "" prefix is no default ("##" is), so it stays.
                let affix = matches!(key, "continuing_subword_prefix" | "end_of_word_suffix");
                if kind == Some("BPE")
                    && affix
                    && value.as_ref().and_then(Value::as_str) == Some("")
                {
                    value = None;
                }
                parts.push((
                    key.into(),
                    ModelPart::Small(sorted(value.unwrap_or(default))),
                ));
            }
        }
        // A model type this version does not know: every option as written.
        None => {
            for (key, value) in model {
                if key != "vocab" && key != "merges" {
                    parts.push((key.clone(), ModelPart::Small(sorted(value.clone()))));
                }
            }
        }
    }
    parts.push(("vocab".into(), ModelPart::Vocab));
    if model.contains_key("merges") {
        parts.push(("merges".into(), ModelPart::Merges));
    }
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    out.write_all(b"{")?;
    for (index, (key, part)) in parts.iter().enumerate() {
        if index > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut *out, key)?;
        out.write_all(b":")?;
        match part {
            ModelPart::Small(value) => serde_json::to_writer(&mut *out, value)?,
            ModelPart::Vocab => write_vocab(file, out)?,
            ModelPart::Merges => write_merges(file, model.get("merges"), out)?,
        }
    }
    out.write_all(b"}")?;
    Ok(())
}

/// The vocabulary: `{token: id}` as `[token, id]` pairs in id order; Unigram's `[piece, score]`
/// list as it is (its order is the ids).
fn write_vocab(file: &TokenizerFile<'_>, out: &mut impl Write) -> std::result::Result<(), Failure> {
    let raw = file.vocab.get();
    let malformed = |e: serde_json::Error| Failure::Malformed(format!("model.vocab: {e}"));
    if raw.starts_with('[') {
        let pieces: Vec<(Text<'_>, f64)> = serde_json::from_str(raw).map_err(malformed)?;
        serde_json::to_writer(&mut *out, &pieces)?;
        return Ok(());
    }
    // Read as a list of entries: 7x faster than into a map, which serde grows as it goes.
    let Entries(entries) = serde_json::from_str(raw).map_err(malformed)?;
    let mut pairs: Vec<(&str, u32)> = entries.iter().map(|(t, id)| (t.0.as_ref(), *id)).collect();
    let mut seen =
        HashSet::with_capacity_and_hasher(pairs.len(), BuildHasherDefault::<Fnv>::default());
    if !pairs.iter().all(|(token, _)| seen.insert(*token)) {
        // A token written twice keeps its last id, as `tokenizers` reads a map.
        let last: HashMap<&str, u32> = pairs.iter().copied().collect();
        pairs = last.into_iter().collect();
    }
    pairs.sort_unstable_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(b.0)));
    serde_json::to_writer(&mut *out, &pairs)?;
    Ok(())
}

/// The entries of a JSON object in the order written (duplicates kept).
struct Entries<'a>(Vec<(Text<'a>, u32)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of token ids")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> std::result::Result<Self::Value, M::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(1 << 12));
                while let Some(entry) = map.next_entry::<Text<'a>, u32>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// FNV-1a, for the duplicate check over the vocabulary's short tokens (SipHash, the default,
/// guards against crafted collisions, which cost here no more than time).
#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &byte in bytes {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }
}

/// The merges as `[left, right]` pairs, whether the file writes pairs (tokenizers 0.20+) or
/// `"left right"` strings (older files), read as `tokenizers` 0.23 reads them.
fn write_merges(
    file: &TokenizerFile<'_>,
    parsed: Option<&Value>,
    out: &mut impl Write,
) -> std::result::Result<(), Failure> {
    if let Some(raw) = file.raw_merges() {
        // Streamed from the file to the hash: Qwen2's 151,387 pairs are never held.
        let mut reader = serde_json::Deserializer::from_str(raw.get());
        let copied = serde::de::DeserializeSeed::deserialize(CopyPairs(&mut *out), &mut reader)
            .and_then(|()| reader.end());
        return copied.map_err(|e| match e.io_error_kind() {
            Some(_) => Failure::Io(e.into()),
            None => Failure::Malformed(format!("model.merges: {e}")),
        });
    }
    let list = match parsed {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(list)) => list,
        Some(_) => return Err("model.merges is not a list".into()),
    };
    let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(list.len());
    for (index, merge) in list.iter().enumerate() {
        let bad = || Failure::Malformed(format!("model.merges[{index}] is not a merge"));
        match merge {
            // `tokenizers` skips a `#version` line and splits the rest at their one space.
            Value::String(line) if line.starts_with("#version") => {}
            Value::String(line) => {
                let mut parts = line.split(' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(left), Some(right), None) => pairs.push((left, right)),
                    _ => return Err(bad()),
                }
            }
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(left), Value::String(right)] => {
                    pairs.push((left.as_str(), right.as_str()))
                }
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        }
    }
    serde_json::to_writer(&mut *out, &pairs)?;
    Ok(())
}

/// Reads a list of `[left, right]` pairs and writes it compact to the writer as it goes.
struct CopyPairs<'w, W>(&'w mut W);

impl<'de, W: Write> serde::de::DeserializeSeed<'de> for CopyPairs<'_, W> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, W: Write> serde::de::Visitor<'de> for CopyPairs<'_, W> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of [left, right] merges")
    }

    fn visit_seq<S: serde::de::SeqAccess<'de>>(
        self,
        mut seq: S,
    ) -> std::result::Result<(), S::Error> {
        let out = self.0;
        let failed = |e: std::io::Error| serde::de::Error::custom(format!("hashing failed: {e}"));
        out.write_all(b"[").map_err(failed)?;
        let mut first = true;
        while let Some(pair) = seq.next_element::<(Text<'de>, Text<'de>)>()? {
            if !first {
                out.write_all(b",").map_err(failed)?;
            }
            first = false;
            serde_json::to_writer(&mut *out, &pair).map_err(serde::de::Error::custom)?;
        }
        out.write_all(b"]").map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A small byte-level BPE tokenizer, as tokenizers 0.23 writes one.
    fn base() -> Value {
        json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{"id": 4, "content": "<eos>", "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}],
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
                              "trim_offsets": false, "use_regex": true},
            "post_processor": {"type": "ByteLevel", "add_prefix_space": false,
                               "trim_offsets": false, "use_regex": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
                        "use_regex": false},
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": {"a": 0, "b": 1, "ab": 2, "abb": 3},
                      "merges": [["a", "b"], ["ab", "b"]]}
        })
    }

    /// `value` with the value at each JSON pointer set (`None`: the key removed).
    fn edited(mut value: Value, edits: &[(&str, Option<Value>)]) -> Value {
        for (pointer, new) in edits {
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            let object = value.pointer_mut(parent).unwrap();
            match new {
                Some(new) if object.is_array() => {
                    *object.pointer_mut(&format!("/{key}")).unwrap() = new.clone()
                }
                Some(new) => {
                    object
                        .as_object_mut()
                        .unwrap()
                        .insert(key.to_string(), new.clone());
                }
                None => {
                    let removed = object.as_object_mut().unwrap().shift_remove(key);
                    assert!(removed.is_some(), "{pointer} is not there");
                }
            }
        }
        value
    }

    fn of_text(text: &str) -> String {
        fingerprint(&TokenizerFile::parse(text).unwrap()).unwrap()
    }

    fn of(value: &Value) -> String {
        of_text(&serde_json::to_string_pretty(value).unwrap())
    }

    fn canonical(value: &Value) -> String {
        let text = serde_json::to_string_pretty(value).unwrap();
        canonical_json(&TokenizerFile::parse(&text).unwrap()).unwrap()
    }

    /// `value` with its keys reversed at every level, as another serialiser might order them.
    fn reversed(value: Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.reverse();
                Value::Object(entries.into_iter().map(|(k, v)| (k, reversed(v))).collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(reversed).collect()),
            other => other,
        }
    }

    #[test]
    fn merges_as_strings_and_as_pairs_are_one_form() {
        let pairs = base();
        let strings = edited(base(), &[("/model/merges", Some(json!(["a b", "ab b"])))]);
        let text = serde_json::to_string_pretty(&strings).unwrap();
        assert!(text.contains("\"ab b\""));
        assert_eq!(of(&pairs), of(&strings));
        assert_eq!(canonical(&pairs), canonical(&strings));
        assert!(canonical(&strings).contains(r#""merges":[["a","b"],["ab","b"]]"#));
        // A merges file's `#version` header is no merge (tokenizers skips it).
        let header = json!(["#version: 0.2", "a b", "ab b"]);
        assert_eq!(
            of(&edited(base(), &[("/model/merges", Some(header))])),
            of(&pairs)
        );
    }

    #[test]
    fn key_order_whitespace_and_what_does_not_decide_ids_do_not_matter() {
        let compact = serde_json::to_string(&reversed(base())).unwrap();
        assert!(compact.starts_with(r#"{"model":{"merges""#), "{compact}");
        assert_eq!(of_text(&compact), of(&base()));
        let vocab: Value = serde_json::from_str(r#"{"abb": 3, "b": 1, "a": 0, "ab": 2}"#).unwrap();
        let truncation = json!({"max_length": 8, "strategy": "LongestFirst", "stride": 0,
                                "direction": "Right"});
        let other = edited(
            base(),
            &[
                ("/model/vocab", Some(vocab)),
                ("/truncation", Some(truncation)),
                ("/version", Some(json!("9.9"))),
            ],
        );
        assert_ne!(canonical(&other), "");
        assert_eq!(of(&other), of(&base()));
    }

    #[test]
    fn defaults_left_out_are_filled_in() {
        // An older writer: no ignore_merges, byte_fallback, use_regex or added-token flags.
        let sparse = edited(
            base(),
            &[
                ("/model/ignore_merges", None),
                ("/model/byte_fallback", None),
                ("/model/dropout", None),
                ("/pre_tokenizer/use_regex", None),
                ("/added_tokens/0/single_word", None),
                ("/added_tokens/0/lstrip", None),
            ],
        );
        assert_eq!(of(&sparse), of(&base()));
    }

    #[test]
    fn an_empty_bpe_affix_is_none_but_an_empty_wordpiece_prefix_is_not_the_default() {
        let empty = edited(
            base(),
            &[
                ("/model/continuing_subword_prefix", Some(json!(""))),
                ("/model/end_of_word_suffix", Some(json!(""))),
            ],
        );
        assert_eq!(of(&empty), of(&base()));
        let wordpiece = json!({"model": {"type": "WordPiece", "unk_token": "[UNK]",
                                         "vocab": {"[UNK]": 0, "a": 1}}});
        let spelled = edited(
            wordpiece.clone(),
            &[
                ("/model/continuing_subword_prefix", Some(json!("##"))),
                ("/model/max_input_chars_per_word", Some(json!(100))),
            ],
        );
        let unprefixed = edited(
            wordpiece.clone(),
            &[("/model/continuing_subword_prefix", Some(json!("")))],
        );
        assert_eq!(of(&spelled), of(&wordpiece));
        assert_ne!(of(&unprefixed), of(&wordpiece));
    }

    #[test]
    fn offset_only_options_do_not_matter_but_the_pre_tokenizers_do() {
        // transformers 5 rebuilds Qwen2's decoder and pre-tokeniser with these values.
        let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                             "use_regex": true});
        let resaved = edited(
            base(),
            &[
                ("/decoder", Some(decoder)),
                ("/pre_tokenizer/trim_offsets", Some(json!(true))),
                ("/post_processor/trim_offsets", Some(json!(true))),
            ],
        );
        assert_eq!(of(&resaved), of(&base()));
        for pointer in [
            "/pre_tokenizer/add_prefix_space",
            "/pre_tokenizer/use_regex",
        ] {
            let flipped = !base().pointer(pointer).unwrap().as_bool().unwrap();
            let changed = edited(base(), &[(pointer, Some(json!(flipped)))]);
            assert_ne!(of(&changed), of(&base()), "{pointer}");
        }
    }

    #[test]
    fn what_decides_ids_changes_the_fingerprint() {
        let changes = [
            ("/model/vocab", json!({"a": 0, "b": 1, "ba": 2, "abb": 3})),
            ("/model/vocab", json!({"a": 0, "b": 1, "ab": 2, "abb": 5})),
            ("/model/merges", json!([["ab", "b"], ["a", "b"]])),
            ("/model/merges", json!([["a", "b"]])),
            ("/added_tokens/0/id", json!(5)),
            ("/added_tokens/0/content", json!("<end>")),
            ("/added_tokens/0/special", json!(false)),
            ("/added_tokens/0/normalized", json!(true)),
            ("/added_tokens/0/lstrip", json!(true)),
            ("/added_tokens/0/rstrip", json!(true)),
            ("/added_tokens/0/single_word", json!(true)),
            ("/normalizer", json!({"type": "NFKC"})),
            ("/normalizer", Value::Null),
            ("/decoder", json!({"type": "Fuse"})),
            ("/model/unk_token", json!("a")),
            ("/model/byte_fallback", json!(true)),
            ("/model/ignore_merges", json!(true)),
            ("/model/fuse_unk", json!(true)),
            ("/model/dropout", json!(0.5)),
            ("/model/continuing_subword_prefix", json!("##")),
            ("/model/type", json!("WordLevel")),
            ("/model/end_of_word_suffix", json!("</w>")),
        ];
        let unchanged = of(&base());
        for (pointer, new) in changes {
            assert_ne!(base().pointer(pointer), Some(&new));
            let changed = edited(base(), &[(pointer, Some(new.clone()))]);
            assert_ne!(
                of(&changed),
                unchanged,
                "{pointer} = {new} left the fingerprint as it was"
            );
        }
    }

    #[test]
    fn the_canonical_form_is_sorted_and_compact() {
        let json = canonical(&edited(base(), &[("/model/merges", Some(json!(["a b"])))]));
        assert!(
            json.starts_with(r#"{"added_tokens":[{"content":"<eos>","id":4,"#),
            "{json}"
        );
        assert!(
            json.contains(r#""vocab":[["a",0],["b",1],["ab",2],["abb",3]]"#),
            "{json}"
        );
        assert!(
            !json.contains("version") && !json.contains("truncation"),
            "{json}"
        );
        let value: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            sorted(value.clone()).to_string(),
            json,
            "keys sorted, no whitespace"
        );
        assert_eq!(value["decoder"], json!({"type": "ByteLevel"}));
        assert_eq!(
            value["pre_tokenizer"],
            json!({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true})
        );
    }

    #[test]
    fn unigram_vocabularies_keep_their_order_and_scores() {
        let unigram = json!({"model": {"type": "Unigram", "unk_id": 0,
                                       "vocab": [["<unk>", 0.0], ["a", -1.5], ["b", -2.25]]}});
        let model: Value = serde_json::from_str(&canonical(&unigram)).unwrap();
        assert_eq!(
            model["model"],
            json!({"byte_fallback": false, "type": "Unigram", "unk_id": 0,
                                         "vocab": [["<unk>", 0.0], ["a", -1.5], ["b", -2.25]]})
        );
        let rescored = json!([["<unk>", 0.0], ["a", -1.25], ["b", -2.25]]);
        let reordered = json!([["<unk>", 0.0], ["b", -2.25], ["a", -1.5]]);
        for vocab in [rescored, reordered] {
            let changed = edited(unigram.clone(), &[("/model/vocab", Some(vocab))]);
            assert_ne!(of(&changed), of(&unigram));
        }
    }

    #[test]
    fn malformed_merges_are_named() {
        let text = serde_json::to_string(&edited(
            base(),
            &[("/model/merges", Some(json!(["a b c"])))],
        ))
        .unwrap();
        let error = fingerprint(&TokenizerFile::parse(&text).unwrap()).unwrap_err();
        assert_eq!(error, "model.merges[0] is not a merge");
    }
}
