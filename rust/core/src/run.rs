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
use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use serde_json::{json, Map, Value};

use crate::encoder::EngineChoice;
use crate::error::{CoreError, Result};
use crate::input::{resolve_inputs, Format, InputFile};
use crate::manifest::{input_entries, Manifest, Timings, FORMAT_VERSION};
use crate::output::{publish, Staging};
use crate::pipeline::{self, EmptyPolicy, Input, Policy, Records, Rejects, Source, Stage, Totals};
use crate::progress::Progress;
use crate::reader::ReadOptions;
use crate::shard::{ShardWriter, Shards};
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
    pub tokenizer: Arc<LoadedTokenizer>,
    target: Target,
    started: Instant,
    /// Seconds loading the tokenizer and its engines took.
    load_seconds: f64,
}

/// What a run reads and where its rows go.
enum Target {
    /// `prep`: input files, rows written to shards in a staged output folder.
    Files {
        files: Vec<InputFile>,
        staging: Staging,
    },
    /// The batch transform: records in memory, rows kept as record batches for the caller.
    Batch {
        records: Records,
        /// The engine's text counts before the batch, so the report counts this batch's only.
        texts_before: Value,
    },
}

/// What [`StageRun::run`] found besides the rows it handed on.
pub struct Ran {
    pub totals: Totals,
    /// Wall seconds from the first record read to the last row handed on.
    pub seconds: f64,
    /// `rejects.jsonl` when any record was rejected into it.
    pub rejects_file: Option<&'static str>,
    /// The rejects' lines, for a batch run (they go back to the caller).
    pub reject_lines: Vec<String>,
}

/// What a stage's sink wrote.
pub struct Written {
    pub schema: SchemaRef,
    pub rows: u64,
    pub shards: Shards,
}

/// What a finished run leaves: the manifest and, for a batch run, its rows and rejects.
pub struct Output {
    pub manifest: Manifest,
    /// The rows' schema.
    pub schema: SchemaRef,
    /// A batch run's rows (empty for a run that wrote shards).
    pub batches: Vec<RecordBatch>,
    /// A batch run's rejects, one `rejects.jsonl` line each.
    pub rejects: Vec<String>,
    /// A batch run's written records, in row order: file index and line.
    pub written_at: Vec<(usize, u64)>,
}

/// The stage's own parts of the manifest.
pub struct StageReport {
    /// The stage's options (merged with the common ones).
    pub options: Value,
    /// The chat template, or null.
    pub template: Value,
    pub tokens: Value,
    pub stage_info: Value,
    /// PT: the tokens of each written document, for `places.arrow` (a sharded run's).
    pub document_tokens: Option<Vec<u32>>,
}

/// The file a sharded run (`--num-shards N`) writes beside its shards: the place (input file
/// index, line) of each written record, and for PT its document's tokens, in output order. It
/// lets `ferrotune merge` put N shard runs back into the order of one run.
pub const PLACES_FILE: &str = "places.arrow";

fn write_places(
    dir: &std::path::Path,
    places: &[(usize, u64)],
    document_tokens: Option<&[u32]>,
) -> Result<()> {
    use arrow_array::{ArrayRef, UInt32Array, UInt64Array};
    use arrow_schema::{DataType, Field, Schema};
    let mut fields = vec![
        Field::new("file", DataType::UInt32, false),
        Field::new("line", DataType::UInt64, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(places.iter().map(|p| p.0 as u32).collect::<UInt32Array>()),
        Arc::new(places.iter().map(|p| p.1).collect::<UInt64Array>()),
    ];
    if let Some(tokens) = document_tokens {
        fields.push(Field::new("tokens", DataType::UInt32, false));
        columns.push(Arc::new(UInt32Array::from(tokens.to_vec())));
    }
    let schema = Arc::new(Schema::new(fields));
    let path = dir.join(PLACES_FILE);
    let arrow = |e: arrow_schema::ArrowError| CoreError::Arrow {
        path: path.clone(),
        message: e.to_string(),
    };
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(arrow)?;
    let file = std::fs::File::create(&path).map_err(|e| CoreError::io(&path, e))?;
    let mut writer = arrow_ipc::writer::StreamWriter::try_new(file, &schema).map_err(arrow)?;
    writer.write(&batch).map_err(arrow)?;
    writer.finish().map_err(arrow)?;
    let file = writer.into_inner().map_err(arrow)?;
    file.sync_all().map_err(|e| CoreError::io(&path, e))
}

/// Loads the tokenizer of `common` (with `eos_override` as its end-of-document token); returns
/// it with the seconds it took.
pub fn load_tokenizer(
    common: &CommonOptions,
    eos_override: Option<&str>,
) -> Result<(Arc<LoadedTokenizer>, f64)> {
    let started = Instant::now();
    let tokenizer = LoadedTokenizer::load(&common.tokenizer, eos_override, common.engine)?;
    Ok((Arc::new(tokenizer), started.elapsed().as_secs_f64()))
}

impl StageRun {
    /// Opens the inputs, read as `format` or detected from their names (every file must be one
    /// of `accepts`), and stages the output; `tokenizer` took `load_seconds` to load.
    pub fn open(
        stage: &'static str,
        common: &CommonOptions,
        (tokenizer, load_seconds): (Arc<LoadedTokenizer>, f64),
        format: Option<Format>,
        accepts: &[Format],
    ) -> Result<StageRun> {
        let started = Instant::now();
        common.validate()?;
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
            target: Target::Files { files, staging },
            started,
            load_seconds,
        })
    }

    /// A run over records in memory with a tokenizer already loaded (the batch transform).
    pub fn batch(stage: &'static str, tokenizer: Arc<LoadedTokenizer>, records: Records) -> Self {
        let texts_before = tokenizer.engine_report()["texts"].clone();
        StageRun {
            stage,
            tokenizer,
            target: Target::Batch {
                records,
                texts_before,
            },
            started: Instant::now(),
            load_seconds: 0.0,
        }
    }

    /// A shard writer into the staged output (in memory for a batch run).
    pub fn shard_writer(&self, schema: SchemaRef, common: &CommonOptions) -> Result<ShardWriter> {
        match &self.target {
            Target::Files { staging, .. } => {
                ShardWriter::new(staging.path(), schema, common.shard_size)
            }
            Target::Batch { .. } => Ok(ShardWriter::in_memory(schema)),
        }
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
        let (mut rejects, input, total_bytes, quiet) = match &self.target {
            Target::Files { files, staging } => (
                Rejects::new(staging.path(), common.skip_bad),
                Input::Files(files, read),
                files.iter().map(|f| f.bytes).sum(),
                common.quiet,
            ),
            Target::Batch { records, .. } => (
                Rejects::in_memory(common.skip_bad),
                Input::Records(records),
                0,
                true,
            ),
        };
        let label = format!("prep {}", self.stage);
        let mut progress = Progress::new(&label, total_bytes, quiet);
        let source = Source {
            input,
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
        let rejects = rejects.finish()?;
        Ok(Ran {
            totals,
            seconds: started.elapsed().as_secs_f64(),
            rejects_file: rejects.file,
            reject_lines: rejects.lines,
        })
    }

    /// Writes the manifest and publishes the output folder (a batch run returns its rows).
    pub fn finish(
        self,
        common: &CommonOptions,
        ran: Ran,
        written: Written,
        report: StageReport,
        cancel: &AtomicBool,
    ) -> Result<Output> {
        let mut options = common.to_json();
        if let Value::Object(own) = report.options {
            options.extend(own);
        }
        let mut stage_info = report.stage_info;
        stage_info["rejects_file"] = json!(ran.rejects_file);
        if let Target::Files { staging, .. } = &self.target {
            if common.num_shards > 1 {
                write_places(
                    staging.path(),
                    &ran.totals.written_at,
                    report.document_tokens.as_deref(),
                )?;
                stage_info["places_file"] = json!(PLACES_FILE);
            }
        }
        let busy = ran.totals.busy;
        let timings = Timings {
            tokenizer: self.load_seconds,
            pipeline: ran.seconds,
            read: busy.read,
            process: busy.process,
            write: busy.write,
        };
        let mut engine = self.tokenizer.engine_report();
        let inputs = match &self.target {
            Target::Files { files, .. } => input_entries(files, &ran.totals.summaries),
            Target::Batch { texts_before, .. } => {
                for name in ["fast", "reference"] {
                    let before = texts_before[name].as_u64().unwrap_or(0);
                    let after = engine["texts"][name].as_u64().unwrap_or(0);
                    engine["texts"][name] = json!(after.saturating_sub(before));
                }
                Vec::new()
            }
        };
        let manifest = Manifest {
            format: "ferrotune.shards",
            format_version: FORMAT_VERSION,
            ferrotune_version: env!("CARGO_PKG_VERSION"),
            stage: self.stage,
            inputs,
            tokenizer: self.tokenizer.info.clone(),
            engine,
            template: report.template,
            options: Value::Object(options),
            counts: ran.totals.counts,
            tokens: report.tokens,
            columns: crate::rows::describe(&written.schema),
            rows: written.rows,
            shards: written.shards.files,
            stage_info,
            timings,
            elapsed_seconds: self.started.elapsed().as_secs_f64(),
        };
        match self.target {
            Target::Files { staging, .. } => {
                let description = format!("ferrotune {} data (see manifest.json)", self.stage);
                publish(staging, &manifest, &manifest.shards, &description, cancel)?;
                Ok(Output {
                    manifest,
                    schema: written.schema,
                    batches: Vec::new(),
                    rejects: Vec::new(),
                    written_at: Vec::new(),
                })
            }
            Target::Batch { .. } => Ok(Output {
                manifest,
                schema: written.schema,
                batches: written.shards.batches,
                rejects: ran.reject_lines,
                written_at: ran.totals.written_at,
            }),
        }
    }
}
