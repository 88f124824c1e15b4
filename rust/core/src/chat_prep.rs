//! What every conversation stage (`prep sft|rm|dpo|ppo`) shares beyond the common [`StageRun`]:
//! the options, the chat template, list-column shards, and record helpers.
//!
//! Options arrive as one JSON object (from the CLI or the Python API) so each stage's options
//! live in one place and unknown keys are refused by name.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arrow_schema::SchemaRef;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::chat::{self, TemplateInfo};
use crate::conversation::{Layout, Problem, SameRole};
use crate::encoder::EngineChoice;
use crate::error::{CoreError, RecordError, Result};
use crate::input::Format;
use crate::manifest::Manifest;
use crate::mask::Learn;
use crate::pipeline::{EmptyPolicy, Outcome, Records, Stage};
use crate::preference::Kind;
use crate::reader::{Body, DocSep, RawRecord, ReadOptions};
use crate::rows::{self, Item, RowBatcher};
use crate::run::{load_tokenizer, CommonOptions, Output, Ran, StageReport, StageRun, Written};
use crate::shard::parse_size;
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
    empty: String,
    format: String,
    pack: bool,
    workers: usize,
    skip_bad: bool,
    overwrite: bool,
    quiet: bool,
    num_shards: usize,
    shard_index: usize,
    shard_size: String,
    engine: String,
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
            empty: "skip".into(),
            format: "auto".into(),
            pack: false,
            workers: 0,
            skip_bad: false,
            overwrite: false,
            quiet: true,
            num_shards: 1,
            shard_index: 0,
            shard_size: "500MB".into(),
            engine: "auto".into(),
        }
    }
}

/// Options of a conversation stage, checked.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    pub common: CommonOptions,
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
    /// A record with nothing to train on for a data reason (an empty message, no messages):
    /// skipped and counted by reason, or a bad record.
    pub empty: EmptyPolicy,
    /// Force one record layout instead of detecting it per record.
    pub layout: Option<Layout>,
    pub pack: bool,
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
        let common = CommonOptions {
            tokenizer: raw.tokenizer,
            inputs: raw.inputs,
            out: raw.out,
            workers: raw.workers,
            skip_bad: raw.skip_bad,
            overwrite: raw.overwrite,
            quiet: raw.quiet,
            num_shards: raw.num_shards,
            shard_index: raw.shard_index,
            shard_size: parse_size(&raw.shard_size)?,
            engine: EngineChoice::parse(&raw.engine)?,
        };
        common.validate()?;
        Ok(ChatOptions {
            common,
            overlong: Overlong::parse(&raw.overlong)?,
            learn: Learn::parse(&raw.learn)?,
            same_role: SameRole::parse(&raw.same_role)?,
            empty: EmptyPolicy::parse(&raw.empty)?,
            layout: Layout::parse_option(&raw.format)?,
            template: raw.template,
            system: raw.system,
            max_length: raw.max_length,
            max_prompt_length: raw.max_prompt_length,
            margin_field: raw.margin_field,
            pack: raw.pack,
        })
    }

    /// The options every conversation stage records in its manifest (besides the common ones).
    fn to_json(&self) -> Map<String, Value> {
        let value = json!({
            "template": self.template,
            "system": self.system,
            "max_length": self.max_length,
            "overlong": self.overlong.name(),
            "same_role": self.same_role.name(),
            "empty": self.empty.name(),
            "format": self.layout.map_or("auto", Layout::name),
        });
        match value {
            Value::Object(map) => map,
            _ => unreachable!("a JSON object"),
        }
    }
}

/// What a conversation stage loads once: the tokenizer and the chat template resolved for it.
/// The batch transform keeps one for all the batches a worker runs.
pub struct ChatEngine {
    pub tokenizer: Arc<LoadedTokenizer>,
    load_seconds: f64,
    pub template: ChatTemplate,
    pub template_info: TemplateInfo,
    /// Special tokens for the template, as transformers passes them.
    pub render: RenderOptions,
}

impl ChatEngine {
    pub fn load(options: &ChatOptions) -> Result<ChatEngine> {
        options.common.validate()?;
        let (tokenizer, load_seconds) = load_tokenizer(&options.common, None)?;
        let (template, template_info) = chat::resolve(&options.template, &tokenizer)?;
        let render = RenderOptions {
            special_tokens: tokenizer.special_tokens_map(),
            ..RenderOptions::default()
        };
        Ok(ChatEngine {
            tokenizer,
            load_seconds,
            template,
            template_info,
            render,
        })
    }
}

/// The conversation stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatStage {
    Sft,
    Pairs(Kind),
    Ppo,
}

impl ChatStage {
    pub fn parse(name: &str) -> Result<ChatStage> {
        match name {
            "sft" => Ok(ChatStage::Sft),
            "rm" => Ok(ChatStage::Pairs(Kind::Rm)),
            "dpo" => Ok(ChatStage::Pairs(Kind::Dpo)),
            "ppo" => Ok(ChatStage::Ppo),
            other => Err(CoreError::config(
                "stage",
                format!("'{other}' is not one of sft, rm, dpo, ppo"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ChatStage::Sft => "sft",
            ChatStage::Pairs(kind) => kind.name(),
            ChatStage::Ppo => "ppo",
        }
    }

    /// Runs the stage over `run`'s records.
    pub fn run(
        self,
        run: ChatRun<'_>,
        options: &ChatOptions,
        cancel: &AtomicBool,
    ) -> Result<Output> {
        match self {
            ChatStage::Sft => crate::sft::sft(run, options, cancel),
            ChatStage::Pairs(kind) => crate::preference::pairs(kind, run, options, cancel),
            ChatStage::Ppo => crate::ppo::ppo(run, options, cancel),
        }
    }
}

/// Runs a conversation stage over its input files and returns the manifest it wrote.
pub fn prep_chat(stage: ChatStage, options: &ChatOptions, cancel: &AtomicBool) -> Result<Manifest> {
    let engine = ChatEngine::load(options)?;
    let run = ChatRun::files(stage.name(), options, &engine)?;
    Ok(stage.run(run, options, cancel)?.manifest)
}

/// A conversation stage's run: a [`StageRun`] with the engine's chat template.
pub struct ChatRun<'e> {
    run: StageRun,
    pub template: &'e ChatTemplate,
    pub template_info: &'e TemplateInfo,
    /// Special tokens for the template, as transformers passes them.
    pub render: &'e RenderOptions,
}

/// What [`ChatRun::run`] left open: the batcher (a stage may still add rows, e.g. a packing
/// window). [`Pending::close`] finishes it.
pub struct Pending {
    pub ran: Ran,
    pub batcher: RowBatcher,
    schema: SchemaRef,
}

impl Pending {
    pub fn close(self) -> Result<(Ran, Written)> {
        let (shards, rows) = self.batcher.finish()?;
        let written = Written {
            schema: self.schema,
            rows,
            shards,
        };
        Ok((self.ran, written))
    }
}

impl<'e> ChatRun<'e> {
    /// A run over the input files of `options`, into its output folder.
    pub fn files(
        stage: &'static str,
        options: &ChatOptions,
        engine: &'e ChatEngine,
    ) -> Result<ChatRun<'e>> {
        let accepts = [Format::Jsonl, Format::Json];
        let tokenizer = (engine.tokenizer.clone(), engine.load_seconds);
        let run = StageRun::open(stage, &options.common, tokenizer, None, &accepts)?;
        Ok(ChatRun::with(run, engine))
    }

    /// A run over records in memory (the batch transform).
    pub fn batch(stage: &'static str, engine: &'e ChatEngine, records: Records) -> ChatRun<'e> {
        ChatRun::with(
            StageRun::batch(stage, engine.tokenizer.clone(), records),
            engine,
        )
    }

    fn with(run: StageRun, engine: &'e ChatEngine) -> ChatRun<'e> {
        ChatRun {
            run,
            template: &engine.template,
            template_info: &engine.template_info,
            render: &engine.render,
        }
    }

    pub fn tokenizer(&self) -> &LoadedTokenizer {
        &self.run.tokenizer
    }

    /// Runs `stage` over the inputs; `write` turns each row into shard rows of `columns`.
    pub fn run<S: Stage>(
        &self,
        options: &ChatOptions,
        stage: &S,
        columns: &[(&str, Item)],
        cancel: &AtomicBool,
        mut write: impl FnMut(S::Row, &mut RowBatcher) -> Result<u64>,
    ) -> Result<Pending> {
        let schema = rows::list_schema(columns);
        let writer = self.run.shard_writer(schema.clone(), &options.common)?;
        let items = columns.iter().map(|(_, item)| *item).collect();
        let mut batcher = RowBatcher::new(schema.clone(), items, writer, 1000);
        let read = ReadOptions {
            doc_sep: DocSep::Line,
            text_column: String::new(),
        };
        let ran = self
            .run
            .run(&options.common, read, options.empty, stage, cancel, |row| {
                write(row, &mut batcher)
            })?;
        Ok(Pending {
            ran,
            batcher,
            schema,
        })
    }

    /// Writes the manifest and publishes the output folder.
    pub fn finish(
        self,
        options: &ChatOptions,
        (ran, written): (Ran, Written),
        stage_options: Value,
        tokens: Value,
        stage_info: Value,
        cancel: &AtomicBool,
    ) -> Result<Output> {
        let mut all_options = options.to_json();
        if let Value::Object(extra) = stage_options {
            all_options.extend(extra);
        }
        let report = StageReport {
            options: Value::Object(all_options),
            template: serde_json::to_value(self.template_info).expect("serializable"),
            tokens,
            stage_info,
            document_tokens: None,
        };
        self.run
            .finish(&options.common, ran, written, report, cancel)
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

impl RecordAt<'_> {
    /// What a conversation problem makes of the record: an empty record (skipped and counted
    /// by reason under `--empty skip`, the default: real data has the odd empty turn) for
    /// [`EMPTY_REASONS`], else a bad record.
    pub fn unusable<R>(&self, p: Problem) -> Outcome<R> {
        let error = self.problem(p.reason, p.field, p.message);
        if EMPTY_REASONS.contains(&p.reason) {
            Outcome::Empty(error)
        } else {
            Outcome::Bad(error)
        }
    }
}

/// Problems of the data, not of its form: the record is well made but has nothing to train
/// on (an empty message, no messages, for PPO no user turn to prompt with). Everything else
/// (wrong types, unknown layouts, broken JSON) stays a bad record.
pub const EMPTY_REASONS: [&str; 3] = ["empty_content", "empty", "no_prompt"];

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
