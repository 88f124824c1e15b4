//! What every conversation stage (`prep sft|rm|dpo|ppo`) shares: the options, opening the
//! tokenizer, template, inputs and output folder, running the pipeline into list-column shards,
//! and writing the manifest.
//!
//! Options arrive as one JSON object (from the CLI or the Python API) so each stage's options
//! live in one place and unknown keys are refused by name.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use arrow_schema::SchemaRef;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::chat::{self, TemplateInfo};
use crate::conversation::{Layout, SameRole};
use crate::error::{CoreError, RecordError, Result};
use crate::input::{resolve_inputs, Format, InputFile};
use crate::manifest::{input_entries, Manifest, FORMAT_VERSION};
use crate::mask::Learn;
use crate::output::{publish, Staging};
use crate::pipeline::{self, EmptyPolicy, Outcome, Policy, Rejects, Source, Stage, Totals};
use crate::progress::Progress;
use crate::reader::{Body, DocSep, RawRecord, ReadOptions};
use crate::rows::{self, Item, RowBatcher};
use crate::shard::{parse_size, ShardWriter};
use crate::template::{ChatTemplate, RenderOptions};
use crate::tokenizer::LoadedTokenizer;

/// What to do with a sequence longer than its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlong {
    /// Keep what fits (prompts keep their end, answers their start); counted as truncated.
    Truncate,
    /// Leave the record out; counted as dropped (`too_long`).
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

/// The options of the conversation stages, as the CLI and Python spell them. Each stage reads
/// the ones it uses; `pack` and `learn` are SFT's, `max_prompt_length` is RM/DPO/PPO's,
/// `margin_field` RM's.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawOptions {
    tokenizer: PathBuf,
    inputs: Vec<String>,
    out: PathBuf,
    template: String,
    system: Option<String>,
    max_length: usize,
    max_prompt_length: usize,
    margin_field: Option<String>,
    overlong: String,
    learn: String,
    same_role: String,
    format: String,
    pack: bool,
    workers: usize,
    skip_bad: bool,
    overwrite: bool,
    quiet: bool,
    num_shards: usize,
    shard_index: usize,
    shard_size: String,
}

impl Default for RawOptions {
    fn default() -> Self {
        RawOptions {
            tokenizer: PathBuf::new(),
            inputs: Vec::new(),
            out: PathBuf::new(),
            template: "auto".into(),
            system: None,
            max_length: 2048,
            max_prompt_length: 1024,
            margin_field: None,
            overlong: "truncate".into(),
            learn: "all".into(),
            same_role: "reject".into(),
            format: "auto".into(),
            pack: false,
            workers: 0,
            skip_bad: false,
            overwrite: false,
            quiet: true,
            num_shards: 1,
            shard_index: 0,
            shard_size: "500MB".into(),
        }
    }
}

/// Options of a conversation stage, checked.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    pub tokenizer: PathBuf,
    pub inputs: Vec<String>,
    pub out: PathBuf,
    /// `auto` (the tokenizer's own), a built-in name, or a `.jinja` file.
    pub template: String,
    /// A system prompt for conversations that have none.
    pub system: Option<String>,
    pub max_length: usize,
    pub max_prompt_length: usize,
    /// RM: the numeric record field written to a `margin` column (TRL's RewardTrainer reads it).
    pub margin_field: Option<String>,
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

impl ChatOptions {
    /// The defaults, for the required arguments.
    pub fn new(
        tokenizer: impl Into<PathBuf>,
        inputs: Vec<String>,
        out: impl Into<PathBuf>,
    ) -> Self {
        let raw = RawOptions {
            tokenizer: tokenizer.into(),
            inputs,
            out: out.into(),
            ..RawOptions::default()
        };
        ChatOptions::check(raw).expect("the defaults are valid")
    }

    /// Parses the JSON object the CLI and Python API send.
    pub fn from_json(text: &str) -> Result<ChatOptions> {
        let raw: RawOptions = serde_json::from_str(text).map_err(|e| {
            let message = e.to_string();
            let option = message
                .split('`')
                .nth(1)
                .unwrap_or("options")
                .replace('_', "-");
            CoreError::config(&option, message)
        })?;
        ChatOptions::check(raw)
    }

    fn check(raw: RawOptions) -> Result<ChatOptions> {
        if raw.max_length == 0 {
            return Err(CoreError::config("max-length", "must be at least 1"));
        }
        if raw.max_prompt_length == 0 {
            return Err(CoreError::config("max-prompt-length", "must be at least 1"));
        }
        pipeline::check_sharding(raw.num_shards, raw.shard_index)?;
        Ok(ChatOptions {
            overlong: Overlong::parse(&raw.overlong)?,
            learn: Learn::parse(&raw.learn)?,
            same_role: SameRole::parse(&raw.same_role)?,
            layout: Layout::parse_option(&raw.format)?,
            shard_size: parse_size(&raw.shard_size)?,
            tokenizer: raw.tokenizer,
            inputs: raw.inputs,
            out: raw.out,
            template: raw.template,
            system: raw.system,
            max_length: raw.max_length,
            max_prompt_length: raw.max_prompt_length,
            margin_field: raw.margin_field,
            pack: raw.pack,
            workers: raw.workers,
            skip_bad: raw.skip_bad,
            overwrite: raw.overwrite,
            quiet: raw.quiet,
            num_shards: raw.num_shards,
            shard_index: raw.shard_index,
        })
    }

    /// The options every conversation stage records in its manifest.
    fn to_json(&self) -> Map<String, Value> {
        let value = json!({
            "template": self.template,
            "system": self.system,
            "max_length": self.max_length,
            "overlong": self.overlong.name(),
            "same_role": self.same_role.name(),
            "format": self.layout.map_or("auto", Layout::name),
            "skip_bad": self.skip_bad,
            "num_shards": self.num_shards,
            "shard_index": self.shard_index,
            "shard_size": self.shard_size,
            "workers": pipeline::resolve_workers(self.workers),
        });
        match value {
            Value::Object(map) => map,
            _ => unreachable!("a JSON object"),
        }
    }
}

/// A conversation stage's run: the tokenizer, template and inputs opened, the output staged.
pub struct ChatRun {
    pub tokenizer: LoadedTokenizer,
    pub template: ChatTemplate,
    pub template_info: TemplateInfo,
    /// Special tokens for the template, as transformers passes them.
    pub render: RenderOptions,
    files: Vec<InputFile>,
    staging: Staging,
    started: Instant,
}

/// What [`ChatRun::run`] left open: the batcher (a stage may still add rows, e.g. a packing
/// window) and the rejects file. [`Pending::close`] finishes both.
pub struct Pending {
    pub totals: Totals,
    pub batcher: RowBatcher,
    rejects: Rejects,
    schema: SchemaRef,
}

impl Pending {
    pub fn close(self) -> Result<Written> {
        let (shards, rows) = self.batcher.finish()?;
        Ok(Written {
            totals: self.totals,
            shards,
            rows,
            rejects_file: self.rejects.finish()?,
            schema: self.schema,
        })
    }
}

/// What a run wrote, for the manifest.
pub struct Written {
    pub totals: Totals,
    pub shards: Vec<crate::shard::ShardInfo>,
    pub rows: u64,
    pub rejects_file: Option<&'static str>,
    pub schema: SchemaRef,
}

impl ChatRun {
    pub fn open(options: &ChatOptions) -> Result<ChatRun> {
        let started = Instant::now();
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
        let render = RenderOptions {
            special_tokens: tokenizer.special_tokens_map(),
            ..RenderOptions::default()
        };
        Ok(ChatRun {
            tokenizer,
            template,
            template_info,
            render,
            files,
            staging,
            started,
        })
    }

    /// Runs `stage` over the inputs; `write` turns each row into shard rows of `columns`.
    pub fn run<S: Stage>(
        &self,
        options: &ChatOptions,
        label: &str,
        stage: &S,
        columns: &[(&str, Item)],
        cancel: &AtomicBool,
        mut write: impl FnMut(S::Row, &mut RowBatcher) -> Result<u64>,
    ) -> Result<Pending> {
        let schema = rows::list_schema(columns);
        let writer = ShardWriter::new(self.staging.path(), schema.clone(), options.shard_size)?;
        let items = columns.iter().map(|(_, item)| *item).collect();
        let mut batcher = RowBatcher::new(schema.clone(), items, writer, 1000);
        let mut rejects = Rejects::new(self.staging.path(), options.skip_bad);
        let total_bytes: u64 = self.files.iter().map(|f| f.bytes).sum();
        let mut progress = Progress::new(label, total_bytes, options.quiet);
        let source = Source {
            files: &self.files,
            read: ReadOptions {
                doc_sep: DocSep::Line,
                text_column: String::new(),
            },
            num_shards: options.num_shards,
            shard_index: options.shard_index,
        };
        let policy = Policy {
            empty: EmptyPolicy::Skip,
            rejects: &mut rejects,
        };
        let totals = pipeline::run(
            &source,
            stage,
            pipeline::resolve_workers(options.workers),
            policy,
            cancel,
            &mut progress,
            |row| write(row, &mut batcher),
        )?;
        Ok(Pending {
            totals,
            batcher,
            rejects,
            schema,
        })
    }

    /// Writes the manifest and publishes the output folder.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        self,
        stage: &'static str,
        options: &ChatOptions,
        stage_options: Value,
        written: Written,
        tokens: Value,
        mut stage_info: Value,
        cancel: &AtomicBool,
    ) -> Result<Manifest> {
        let mut all_options = options.to_json();
        if let Value::Object(extra) = stage_options {
            all_options.extend(extra);
        }
        stage_info["rejects_file"] = json!(written.rejects_file);
        let manifest = Manifest {
            format: "ferrotune.shards",
            format_version: FORMAT_VERSION,
            ferrotune_version: env!("CARGO_PKG_VERSION"),
            stage,
            inputs: input_entries(&self.files, &written.totals.summaries),
            tokenizer: self.tokenizer.info.clone(),
            template: serde_json::to_value(&self.template_info).expect("serializable"),
            options: Value::Object(all_options),
            counts: written.totals.counts,
            tokens,
            columns: rows::describe(&written.schema),
            rows: written.rows,
            shards: written.shards,
            stage_info,
            elapsed_seconds: self.started.elapsed().as_secs_f64(),
        };
        let description = format!("ferrotune {stage} data (see manifest.json)");
        publish(self.staging, &manifest, &description, cancel)?;
        Ok(manifest)
    }
}

/// A record being processed: where it came from, for error reports.
pub struct RecordAt<'a> {
    pub path: &'a Path,
    pub line: u64,
    pub map: Map<String, Value>,
}

impl RecordAt<'_> {
    /// A problem with this record. The record is serialised for `rejects.jsonl` only here,
    /// never on the hot path.
    pub fn problem(
        &self,
        reason: &'static str,
        field: Option<String>,
        message: String,
    ) -> RecordError {
        RecordError {
            path: self.path.to_path_buf(),
            line: self.line,
            field,
            reason,
            message,
            raw: Value::Object(self.map.clone()).to_string(),
        }
    }
}

/// Parses a raw record into a JSON object, or the outcome that rejects it.
pub fn json_object<R>(
    record: RawRecord,
    path: &Path,
) -> std::result::Result<RecordAt<'_>, Outcome<R>> {
    let line = record.line;
    let reject = |raw: String| {
        Outcome::Bad(RecordError {
            path: path.to_path_buf(),
            line,
            field: None,
            reason: "wrong_type",
            message: "expected a JSON object".into(),
            raw,
        })
    };
    match record.parse(path, "") {
        Ok(Body::Json(Value::Object(map))) => Ok(RecordAt { path, line, map }),
        Ok(Body::Json(other)) => Err(reject(other.to_string())),
        Ok(Body::Text(text)) => Err(reject(text)),
        Err(error) => Err(Outcome::Bad(error)),
    }
}

/// The record's layout: forced, or detected from its keys among `allowed`.
pub fn layout_of<R>(
    record: &RecordAt<'_>,
    forced: Option<Layout>,
    allowed: &[Layout],
) -> std::result::Result<Layout, Outcome<R>> {
    // A preference record missing one of its answers is detected as something else: say which
    // field is missing rather than that no layout fits.
    let has = |key: &str| record.map.contains_key(key);
    if forced.is_none()
        && allowed.iter().any(|l| l.is_preference())
        && has("chosen") != has("rejected")
    {
        let missing = if has("chosen") { "rejected" } else { "chosen" };
        let message = format!("no field '{missing}'");
        return Err(Outcome::Bad(record.problem(
            "missing_field",
            Some(missing.into()),
            message,
        )));
    }
    let detected = forced.or_else(|| Layout::detect(&record.map));
    match detected {
        Some(layout) if allowed.contains(&layout) => Ok(layout),
        _ => {
            let expected: Vec<&str> = allowed.iter().map(|l| l.signature()).collect();
            let keys: Vec<&str> = record.map.keys().map(String::as_str).collect();
            Err(Outcome::Bad(record.problem(
                "unknown_layout",
                None,
                format!(
                    "no usable layout fits the fields [{}] (expected {})",
                    keys.join(", "),
                    expected.join("; ")
                ),
            )))
        }
    }
}

/// Puts the default system prompt first when the messages have none.
pub fn with_default_system(messages: &mut Vec<Value>, system: Option<&str>) {
    if let Some(system) = system {
        if messages.first().is_none_or(|m| m["role"] != "system") {
            messages.insert(0, json!({"role": "system", "content": system}));
        }
    }
}
