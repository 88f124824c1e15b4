//! What every `prep` stage's run shares, PT and the conversation stages alike: the options
//! common to all of them, opening the tokenizer, the inputs and the staged output folder,
//! running the [`pipeline`] with the bad-record policy, and writing the manifest as the output
//! is published.
//!
//! A stage brings only what is its own: its [`Stage`] (what a record becomes), the sink its rows
//! go to (PT's block batcher, the conversation stages' row batcher), and the stage-specific
//! parts of the manifest.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use arrow_schema::SchemaRef;
use serde_json::{json, Map, Value};

use crate::encoder::EngineChoice;
use crate::error::{CoreError, Result};
use crate::input::{resolve_inputs, Format, InputFile};
use crate::manifest::{input_entries, Manifest, Timings, FORMAT_VERSION};
use crate::output::{publish, Staging};
use crate::pipeline::{self, EmptyPolicy, Policy, Rejects, Source, Stage, Totals};
use crate::progress::Progress;
use crate::reader::ReadOptions;
use crate::shard::{ShardInfo, ShardWriter};
use crate::tokenizer::LoadedTokenizer;

/// The options every stage takes, as the CLI spells them.
#[derive(Debug, Clone)]
pub struct CommonOptions {
    /// A HF model folder or a `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// Files, folders or globs.
    pub inputs: Vec<String>,
    pub out: PathBuf,
    /// Worker threads; 0 means one per core.
    pub workers: usize,
    pub skip_bad: bool,
    pub overwrite: bool,
    pub quiet: bool,
    pub num_shards: usize,
    pub shard_index: usize,
    /// A shard is closed once it holds this many bytes.
    pub shard_size: u64,
    /// Which encoder encodes the text.
    pub engine: EngineChoice,
}

impl CommonOptions {
    /// The CLI's defaults for the required arguments.
    pub fn new(
        tokenizer: impl Into<PathBuf>,
        inputs: Vec<String>,
        out: impl Into<PathBuf>,
    ) -> Self {
        CommonOptions {
            tokenizer: tokenizer.into(),
            inputs,
            out: out.into(),
            workers: 0,
            skip_bad: false,
            overwrite: false,
            quiet: true,
            num_shards: 1,
            shard_index: 0,
            shard_size: 500_000_000,
            engine: EngineChoice::Auto,
        }
    }

    pub fn validate(&self) -> Result<()> {
        pipeline::check_sharding(self.num_shards, self.shard_index)
    }

    /// What the manifest records of these options (the output does not depend on `workers`,
    /// but a reader of the manifest wants to know how it was made).
    pub fn to_json(&self) -> Map<String, Value> {
        let value = json!({
            "skip_bad": self.skip_bad,
            "num_shards": self.num_shards,
            "shard_index": self.shard_index,
            "shard_size": self.shard_size,
            "workers": pipeline::resolve_workers(self.workers),
            "engine": self.engine.name(),
        });
        match value {
            Value::Object(map) => map,
            _ => unreachable!("a JSON object"),
        }
    }
}

/// A stage's run: the tokenizer and inputs opened, the output staged.
pub struct StageRun {
    pub stage: &'static str,
    pub tokenizer: LoadedTokenizer,
    files: Vec<InputFile>,
    staging: Staging,
    started: Instant,
    /// Seconds loading the tokenizer and its engines took.
    load_seconds: f64,
}

/// What [`StageRun::run`] found besides the rows it handed on.
pub struct Ran {
    pub totals: Totals,
    /// Wall seconds from the first record read to the last row handed on.
    pub seconds: f64,
    /// `rejects.jsonl` when any record was rejected.
    pub rejects_file: Option<&'static str>,
}

/// What a stage's sink wrote.
pub struct Written {
    pub schema: SchemaRef,
    pub rows: u64,
    pub shards: Vec<ShardInfo>,
}

/// The stage's own parts of the manifest.
pub struct StageReport {
    /// The stage's options (merged with the common ones).
    pub options: Value,
    /// The chat template, or null.
    pub template: Value,
    pub tokens: Value,
    pub stage_info: Value,
}

impl StageRun {
    /// Opens the tokenizer (with `eos_override` as its end-of-document token) and the inputs,
    /// read as `format` or detected from their names; every file must be one of `accepts`.
    pub fn open(
        stage: &'static str,
        common: &CommonOptions,
        eos_override: Option<&str>,
        format: Option<Format>,
        accepts: &[Format],
    ) -> Result<StageRun> {
        let started = Instant::now();
        common.validate()?;
        let tokenizer = LoadedTokenizer::load(&common.tokenizer, eos_override, common.engine)?;
        let load_seconds = started.elapsed().as_secs_f64();
        let files = resolve_inputs(&common.inputs, format)?;
        if let Some(file) = files.iter().find(|f| !accepts.contains(&f.format)) {
            let names: Vec<String> = accepts.iter().map(|f| format!(".{}", f.name())).collect();
            return Err(CoreError::Format {
                path: file.path.clone(),
                message: format!("prep {stage} reads {} files", names.join(", ")),
            });
        }
        let staging = Staging::create(&common.out, common.overwrite)?;
        Ok(StageRun {
            stage,
            tokenizer,
            files,
            staging,
            started,
            load_seconds,
        })
    }

    /// A shard writer into the staged output.
    pub fn shard_writer(&self, schema: SchemaRef, common: &CommonOptions) -> Result<ShardWriter> {
        ShardWriter::new(self.staging.path(), schema, common.shard_size)
    }

    /// Runs `stage` over the inputs, handing each row to `consume` in input order (it returns
    /// the tokens the row added, for progress).
    pub fn run<S: Stage>(
        &self,
        common: &CommonOptions,
        read: ReadOptions,
        empty: EmptyPolicy,
        stage: &S,
        cancel: &AtomicBool,
        consume: impl FnMut(S::Row) -> Result<u64>,
    ) -> Result<Ran> {
        let mut rejects = Rejects::new(self.staging.path(), common.skip_bad);
        let total_bytes: u64 = self.files.iter().map(|f| f.bytes).sum();
        let label = format!("prep {}", self.stage);
        let mut progress = Progress::new(&label, total_bytes, common.quiet);
        let source = Source {
            files: &self.files,
            read,
            num_shards: common.num_shards,
            shard_index: common.shard_index,
        };
        let policy = Policy {
            empty,
            rejects: &mut rejects,
        };
        let started = Instant::now();
        let totals = pipeline::run(
            &source,
            stage,
            pipeline::resolve_workers(common.workers),
            policy,
            cancel,
            &mut progress,
            consume,
        )?;
        Ok(Ran {
            totals,
            seconds: started.elapsed().as_secs_f64(),
            rejects_file: rejects.finish()?,
        })
    }

    /// Writes the manifest and publishes the output folder.
    pub fn finish(
        self,
        common: &CommonOptions,
        ran: Ran,
        written: Written,
        report: StageReport,
        cancel: &AtomicBool,
    ) -> Result<Manifest> {
        let mut options = common.to_json();
        if let Value::Object(own) = report.options {
            options.extend(own);
        }
        let mut stage_info = report.stage_info;
        stage_info["rejects_file"] = json!(ran.rejects_file);
        let busy = ran.totals.busy;
        let timings = Timings {
            tokenizer: self.load_seconds,
            pipeline: ran.seconds,
            read: busy.read,
            process: busy.process,
            write: busy.write,
        };
        let manifest = Manifest {
            format: "ferrotune.shards",
            format_version: FORMAT_VERSION,
            ferrotune_version: env!("CARGO_PKG_VERSION"),
            stage: self.stage,
            inputs: input_entries(&self.files, &ran.totals.summaries),
            tokenizer: self.tokenizer.info.clone(),
            engine: self.tokenizer.engine_report(),
            template: report.template,
            options: Value::Object(options),
            counts: ran.totals.counts,
            tokens: report.tokens,
            columns: crate::rows::describe(&written.schema),
            rows: written.rows,
            shards: written.shards,
            stage_info,
            timings,
            elapsed_seconds: self.started.elapsed().as_secs_f64(),
        };
        let description = format!("ferrotune {} data (see manifest.json)", self.stage);
        publish(self.staging, &manifest, &description, cancel)?;
        Ok(manifest)
    }
}
