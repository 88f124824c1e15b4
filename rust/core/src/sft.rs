//! `prep sft`: conversations → rendered with the chat template, tokenized once, labels -100
//! everywhere but the assistant answers, optionally packed.
//!
//! Per record, on a worker thread: parse → normalise the layout ([`conversation`]) → render
//! with the template → locate the answers ([`mask`]) → tokenize the rendering once without
//! added special tokens → labels → length policy. Conversations that end on a user turn, have
//! nothing to learn, or are too long (with `--overlong drop`) are dropped and counted by reason.
//! With `--pack`, rows are filled best-fit-decreasing up to `--max-length` tokens with
//! `position_ids` restarting at each conversation.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::chat;
use crate::conversation::{self, Layout, SameRole};
use crate::error::{CoreError, RecordError, Result};
use crate::input::{resolve_inputs, Format};
use crate::manifest::{input_entries, Manifest, FORMAT_VERSION};
use crate::mask::{self, Learn};
use crate::output::{publish, Staging};
use crate::pack::BestFit;
use crate::pipeline::{self, EmptyPolicy, Outcome, Policy, Rejects, Source, Stage, Totals};
use crate::progress::Progress;
use crate::reader::{Body, DocSep, RawRecord, ReadOptions};
use crate::rows::{self, Item, RowBatcher};
use crate::shard::ShardWriter;
use crate::template::{ChatTemplate, RenderOptions};
use crate::tokenizer::LoadedTokenizer;

/// What to do with a conversation longer than `--max-length` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlong {
    /// Keep its first `max_length` tokens (as TRL's `max_length` does); counted as truncated.
    Truncate,
    /// Leave it out; counted as dropped (`too_long`).
    Drop,
}

impl Overlong {
    pub fn parse(name: &str) -> Result<Overlong> {
        match name {
            "truncate" => Ok(Overlong::Truncate),
            "drop" => Ok(Overlong::Drop),
            other => Err(CoreError::config(
                "overlong",
                format!("'{other}' is not one of truncate, drop"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Overlong::Truncate => "truncate",
            Overlong::Drop => "drop",
        }
    }
}

/// Everything `prep sft` takes.
#[derive(Debug, Clone)]
pub struct SftOptions {
    pub tokenizer: PathBuf,
    pub inputs: Vec<String>,
    pub out: PathBuf,
    /// `auto` (the tokenizer's own), a built-in name, or a `.jinja` file.
    pub template: String,
    /// A system prompt for conversations that have none.
    pub system: Option<String>,
    pub max_length: usize,
    pub overlong: Overlong,
    pub learn: Learn,
    pub same_role: SameRole,
    /// Force one record layout instead of detecting it per record.
    pub layout: Option<Layout>,
    pub pack: bool,
    pub workers: usize,
    pub skip_bad: bool,
    pub overwrite: bool,
    pub quiet: bool,
    pub num_shards: usize,
    pub shard_index: usize,
    pub shard_size: u64,
}

impl SftOptions {
    pub fn new(
        tokenizer: impl Into<PathBuf>,
        inputs: Vec<String>,
        out: impl Into<PathBuf>,
    ) -> Self {
        SftOptions {
            tokenizer: tokenizer.into(),
            inputs,
            out: out.into(),
            template: "auto".into(),
            system: None,
            max_length: 2048,
            overlong: Overlong::Truncate,
            learn: Learn::All,
            same_role: SameRole::Reject,
            layout: None,
            pack: false,
            workers: 0,
            skip_bad: false,
            overwrite: false,
            quiet: true,
            num_shards: 1,
            shard_index: 0,
            shard_size: 500_000_000,
        }
    }
}

/// Conversations per packing window: bounded memory, and large enough that best-fit finds
/// good fits (rows come out over 98% full on MedicalGPT's SFT files).
const PACK_WINDOW: usize = 8192;

/// One tokenized conversation.
pub struct SftRow {
    ids: Vec<i32>,
    labels: Vec<i32>,
    truncated: bool,
}

/// Runs `prep sft` and returns the manifest it wrote.
pub fn prep_sft(options: &SftOptions, cancel: &AtomicBool) -> Result<Manifest> {
    let started = Instant::now();
    if options.max_length == 0 {
        return Err(CoreError::config("max-length", "must be at least 1"));
    }
    pipeline::check_sharding(options.num_shards, options.shard_index)?;
    let tokenizer = LoadedTokenizer::load(&options.tokenizer, None)?;
    let (template, template_info) = chat::resolve(&options.template, &tokenizer)?;
    let files = resolve_inputs(&options.inputs, None)?;
    if let Some(file) = files
        .iter()
        .find(|f| !matches!(f.format, Format::Jsonl | Format::Json))
    {
        return Err(CoreError::Format {
            path: file.path.clone(),
            message: "conversation stages read .jsonl and .json records".into(),
        });
    }
    let staging = Staging::create(&options.out, options.overwrite)?;

    let mut columns = vec![
        ("input_ids", Item::Int32),
        ("attention_mask", Item::Int8),
        ("labels", Item::Int32),
    ];
    if options.pack {
        columns.push(("position_ids", Item::Int32));
    }
    let schema = rows::list_schema(&columns);
    let writer = ShardWriter::new(staging.path(), schema.clone(), options.shard_size)?;
    let items = columns.iter().map(|(_, item)| *item).collect();
    let mut batcher = RowBatcher::new(schema.clone(), items, writer, 1000);
    let mut rejects = Rejects::new(staging.path(), options.skip_bad);
    let total_bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let mut progress = Progress::new("prep sft", total_bytes, options.quiet);
    let source = Source {
        files: &files,
        read: ReadOptions {
            doc_sep: DocSep::Line,
            text_column: String::new(),
        },
        num_shards: options.num_shards,
        shard_index: options.shard_index,
    };
    let workers = pipeline::resolve_workers(options.workers);
    let stage = SftStage {
        tokenizer: &tokenizer,
        template: &template,
        render: RenderOptions {
            special_tokens: tokenizer.special_tokens_map(),
            ..RenderOptions::default()
        },
        end_tokens: tokenizer.special_token_strings(),
        options,
    };
    let policy = Policy {
        empty: EmptyPolicy::Skip,
        rejects: &mut rejects,
    };
    let mut stats = Stats::default();
    let mut packer: BestFit<SftRow> = BestFit::new(options.max_length, PACK_WINDOW);
    let write_packed = |row: Vec<SftRow>, batcher: &mut RowBatcher| -> Result<()> {
        let mut ids = Vec::new();
        let mut labels = Vec::new();
        let mut positions = Vec::new();
        for sequence in &row {
            ids.extend_from_slice(&sequence.ids);
            labels.extend_from_slice(&sequence.labels);
            positions.extend(0..sequence.ids.len() as i32);
        }
        let mask = vec![1; ids.len()];
        batcher.push(&[&ids, &mask, &labels, &positions])
    };
    let Totals { counts, summaries } = pipeline::run(
        &source,
        &stage,
        workers,
        policy,
        cancel,
        &mut progress,
        |row: SftRow| {
            stats.add(&row);
            let len = row.ids.len();
            if options.pack {
                packer.push(len, row, &mut |packed| write_packed(packed, &mut batcher))?;
            } else {
                let mask = vec![1; len];
                batcher.push(&[&row.ids, &mask, &row.labels])?;
            }
            Ok(len as u64)
        },
    )?;
    if options.pack {
        packer.flush(&mut |packed| write_packed(packed, &mut batcher))?;
    }
    let (shards, rows) = batcher.finish()?;
    let rejects_file = rejects.finish()?;
    let capacity = rows * options.max_length as u64;
    let manifest = Manifest {
        format: "ferrotune.shards",
        format_version: FORMAT_VERSION,
        ferrotune_version: env!("CARGO_PKG_VERSION"),
        stage: "sft",
        inputs: input_entries(&files, &summaries),
        tokenizer: tokenizer.info.clone(),
        template: serde_json::to_value(&template_info).expect("serializable"),
        options: json!({
            "template": options.template,
            "system": options.system,
            "max_length": options.max_length,
            "overlong": options.overlong.name(),
            "learn": options.learn.name(),
            "same_role": options.same_role.name(),
            "layout": options.layout.map(Layout::name),
            "pack": options.pack,
            "skip_bad": options.skip_bad,
            "num_shards": options.num_shards,
            "shard_index": options.shard_index,
            "shard_size": options.shard_size,
            "workers": workers,
        }),
        counts,
        tokens: json!({
            "written": stats.tokens,
            "labels": stats.label_tokens,
            "label_share": stats.label_tokens as f64 / stats.tokens.max(1) as f64,
            "padding": 0,
        }),
        columns: rows::describe(&schema),
        rows,
        shards,
        stage_info: json!({
            "conversations": stats.conversations,
            "truncated": stats.truncated,
            "packed": options.pack,
            "packing_efficiency": if options.pack && capacity > 0 {
                json!(stats.tokens as f64 / capacity as f64)
            } else {
                Value::Null
            },
            "length_histogram": stats.histogram(),
            "rejects_file": rejects_file,
        }),
        elapsed_seconds: started.elapsed().as_secs_f64(),
    };
    let description = "ferrotune SFT conversations (see manifest.json)";
    publish(staging, &manifest, description, cancel)?;
    Ok(manifest)
}

/// Token and length totals of the written conversations.
#[derive(Default)]
struct Stats {
    conversations: u64,
    tokens: u64,
    label_tokens: u64,
    truncated: u64,
    /// Conversations per length bucket (powers of two).
    buckets: std::collections::BTreeMap<u32, u64>,
}

impl Stats {
    fn add(&mut self, row: &SftRow) {
        self.conversations += 1;
        self.tokens += row.ids.len() as u64;
        self.label_tokens += row.labels.iter().filter(|&&l| l != -100).count() as u64;
        self.truncated += u64::from(row.truncated);
        let bucket = (row.ids.len().max(1) as u64).next_power_of_two() as u32;
        *self.buckets.entry(bucket).or_default() += 1;
    }

    /// `{"≤64": n, "≤128": n, ...}`.
    fn histogram(&self) -> Value {
        let map: Map<String, Value> = self
            .buckets
            .iter()
            .map(|(bucket, count)| (format!("<={bucket}"), json!(count)))
            .collect();
        Value::Object(map)
    }
}

struct SftStage<'a> {
    tokenizer: &'a LoadedTokenizer,
    template: &'a ChatTemplate,
    render: RenderOptions,
    end_tokens: Vec<String>,
    options: &'a SftOptions,
}

impl Stage for SftStage<'_> {
    type Row = SftRow;

    fn process(&self, record: RawRecord, path: &Path) -> Result<Outcome<SftRow>> {
        let line = record.line;
        let body = match record.parse(path, "") {
            Ok(body) => body,
            Err(error) => return Ok(Outcome::Bad(error)),
        };
        let record_error = |raw: String, reason: &'static str, field, message| RecordError {
            path: path.to_path_buf(),
            line,
            field,
            reason,
            message,
            raw,
        };
        let map = match body {
            Body::Json(Value::Object(map)) => map,
            Body::Json(other) => {
                let message = "expected a JSON object".to_string();
                return Ok(Outcome::Bad(record_error(
                    other.to_string(),
                    "wrong_type",
                    None,
                    message,
                )));
            }
            Body::Text(text) => {
                let message = "expected a JSON object".to_string();
                return Ok(Outcome::Bad(record_error(
                    text,
                    "wrong_type",
                    None,
                    message,
                )));
            }
        };
        // The record is serialised for rejects.jsonl only when there is a problem: not on the
        // hot path.
        let problem = |reason: &'static str, field: Option<String>, message: String| {
            record_error(
                Value::Object(map.clone()).to_string(),
                reason,
                field,
                message,
            )
        };
        let Some(layout) = self.options.layout.or_else(|| Layout::detect(&map)) else {
            let expected: Vec<&str> = [Layout::ShareGpt, Layout::OpenAi, Layout::Alpaca]
                .iter()
                .map(|l| l.signature())
                .collect();
            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
            return Ok(Outcome::Bad(problem(
                "unknown_layout",
                None,
                format!(
                    "no conversation layout fits the fields [{}] (expected {})",
                    keys.join(", "),
                    expected.join("; ")
                ),
            )));
        };
        let mut conversation =
            match conversation::conversation(&map, layout, self.options.same_role) {
                Ok(conversation) => conversation,
                Err(p) => return Ok(Outcome::Bad(problem(p.reason, p.field, p.message))),
            };
        if conversation.messages.is_empty() {
            return Ok(Outcome::Empty(problem("empty", None, "no messages".into())));
        }
        if let Some(system) = &self.options.system {
            if conversation.role(0) != "system" {
                conversation
                    .messages
                    .insert(0, json!({"role": "system", "content": system}));
            }
        }
        if conversation.last_role() != Some("assistant") {
            return Ok(Outcome::Dropped(problem(
                "ends_without_answer",
                None,
                "the conversation does not end with an assistant turn".into(),
            )));
        }
        let render = RenderOptions {
            tools: conversation.tools.clone(),
            ..self.render.clone()
        };
        let messages = Value::Array(conversation.messages.clone());
        let rendered = match self.template.render(&messages, &render) {
            Ok(rendered) => rendered,
            Err(e) => return Ok(Outcome::Bad(problem("template_error", None, e.to_string()))),
        };
        let spans = match mask::learned_spans(
            self.template,
            &conversation.messages,
            &render,
            &rendered.text,
            &rendered.generation_spans,
            &self.end_tokens,
            self.options.learn,
        ) {
            Ok(spans) => spans,
            Err(e) => {
                let field = e.turn.map(|t| format!("turn {t}"));
                let message = format!("template '{}': {}", self.template.name(), e.message);
                return Ok(Outcome::Bad(problem("answer_not_found", field, message)));
            }
        };
        let (ids, offsets) =
            self.tokenizer
                .encode_with_offsets(&rendered.text)
                .map_err(|message| CoreError::Tokenizer {
                    path: self.tokenizer.info.path.clone(),
                    message: format!("encoding failed: {message}"),
                })?;
        let mut labels = mask::labels(&ids, &offsets, &spans);
        let mut ids: Vec<i32> = ids.into_iter().map(|id| id as i32).collect();
        let mut truncated = false;
        if ids.len() > self.options.max_length {
            if self.options.overlong == Overlong::Drop {
                return Ok(Outcome::Dropped(problem(
                    "too_long",
                    None,
                    format!(
                        "{} tokens > --max-length {}",
                        ids.len(),
                        self.options.max_length
                    ),
                )));
            }
            ids.truncate(self.options.max_length);
            labels.truncate(self.options.max_length);
            truncated = true;
        }
        if labels.iter().all(|&l| l == -100) {
            return Ok(Outcome::Dropped(problem(
                "no_learned_tokens",
                None,
                "no assistant token to learn".into(),
            )));
        }
        Ok(Outcome::Row(SftRow {
            ids,
            labels,
            truncated,
        }))
    }
}
