//! `prep pt`: plain-text corpora → tokenized, packed pretraining blocks.
//!
//! Runs on [`pipeline`]: workers pull each record's text and tokenize it with EOS appended;
//! the consumer, in input order, feeds the [`Packer`], whose blocks are batched into Arrow
//! record batches for the [`ShardWriter`].

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{ArrayRef, FixedSizeListArray, Int32Array, Int8Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde_json::{json, Value};

use crate::error::{CoreError, RecordError, Result};
use crate::input::{resolve_inputs, Format};
use crate::manifest::{input_entries, Manifest, FORMAT_VERSION};
use crate::output::{publish, Staging};
use crate::pack::{BlockSink, LastBlock, LastBlockOutcome, Packer};
use crate::pipeline::{self, EmptyPolicy, Outcome, Policy, Rejects, Source, Stage, Totals};
use crate::progress::Progress;
use crate::reader::{json_kind, Body, DocSep, RawRecord, ReadOptions};
use crate::shard::{ShardInfo, ShardWriter};
use crate::tokenizer::LoadedTokenizer;

/// Everything `prep pt` takes. The CLI and the Python API both fill this in.
#[derive(Debug, Clone)]
pub struct PtOptions {
    pub tokenizer: PathBuf,
    pub inputs: Vec<String>,
    pub out: PathBuf,
    pub block_size: usize,
    /// Tokenizer threads; 0 means one per core.
    pub workers: usize,
    /// JSON field (or Parquet column) holding the text.
    pub text_field: String,
    pub doc_sep: DocSep,
    pub last_block: LastBlock,
    /// Append EOS after each document.
    pub eos: bool,
    /// Use this token as EOS instead of the tokenizer config's.
    pub eos_token: Option<String>,
    pub empty: EmptyPolicy,
    pub skip_bad: bool,
    pub overwrite: bool,
    pub quiet: bool,
    pub num_shards: usize,
    pub shard_index: usize,
    /// A shard is closed once it holds this many bytes.
    pub shard_size: u64,
    /// Force one input format instead of detecting it from file names.
    pub format: Option<Format>,
}

impl PtOptions {
    /// The defaults of the CLI, for the given required arguments.
    pub fn new(
        tokenizer: impl Into<PathBuf>,
        inputs: Vec<String>,
        out: impl Into<PathBuf>,
    ) -> Self {
        PtOptions {
            tokenizer: tokenizer.into(),
            inputs,
            out: out.into(),
            block_size: 1024,
            workers: 0,
            text_field: "text".into(),
            doc_sep: DocSep::Line,
            last_block: LastBlock::Pad,
            eos: true,
            eos_token: None,
            empty: EmptyPolicy::Skip,
            skip_bad: false,
            overwrite: false,
            quiet: true,
            num_shards: 1,
            shard_index: 0,
            shard_size: 500_000_000,
            format: None,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.block_size == 0 {
            return Err(CoreError::config("block-size", "must be at least 1"));
        }
        pipeline::check_sharding(self.num_shards, self.shard_index)?;
        if self.text_field.is_empty() {
            return Err(CoreError::config("text-field", "is empty"));
        }
        Ok(())
    }
}

/// Rows per Arrow record batch at most (what `datasets.save_to_disk` uses); fewer when a
/// shard holds fewer, so that shards roll over close to `--shard-size`.
const BATCH_ROWS: usize = 1000;

/// Runs `prep pt` and returns the manifest it wrote. `cancel` stops the run cleanly (no output).
pub fn prep_pt(options: &PtOptions, cancel: &AtomicBool) -> Result<Manifest> {
    let started = Instant::now();
    options.validate()?;
    let tokenizer = LoadedTokenizer::load(&options.tokenizer, options.eos_token.as_deref())?;
    let eos_id = match (&tokenizer.info.eos, options.eos) {
        (_, false) => None,
        (_, true) if tokenizer.info.post_processor_adds_eos => None,
        (Some(eos), true) => Some(eos.id),
        (None, true) => {
            return Err(CoreError::config(
                "eos",
                format!(
                    "the tokenizer at '{}' names no eos token: pass --eos-token TOKEN or --no-eos",
                    options.tokenizer.display()
                ),
            ))
        }
    };
    let pad_id = tokenizer
        .info
        .pad
        .as_ref()
        .or(tokenizer.info.eos.as_ref())
        .map_or(0, |t| t.id);
    let files = resolve_inputs(&options.inputs, options.format)?;
    let staging = Staging::create(&options.out, options.overwrite)?;

    let schema = pt_schema(options.block_size);
    let writer = ShardWriter::new(staging.path(), schema.clone(), options.shard_size)?;
    let row_bytes = options.block_size as u64 * 13; // 4 + 1 + 4 + 4 bytes per token
    let batch_rows = (options.shard_size / row_bytes).clamp(1, BATCH_ROWS as u64) as usize;
    let mut sink = BlockBatcher::new(options.block_size, batch_rows, writer, schema.clone());
    let mut packer = Packer::new(options.block_size)?;
    let mut rejects = Rejects::new(staging.path(), options.skip_bad);
    let total_bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let mut progress = Progress::new("prep pt", total_bytes, options.quiet);
    let workers = pipeline::resolve_workers(options.workers);
    let source = Source {
        files: &files,
        read: ReadOptions {
            doc_sep: options.doc_sep,
            text_column: options.text_field.clone(),
        },
        num_shards: options.num_shards,
        shard_index: options.shard_index,
    };
    let stage = PtStage {
        tokenizer: &tokenizer,
        eos_id,
        text_field: &options.text_field,
    };
    let policy = Policy {
        empty: options.empty,
        rejects: &mut rejects,
    };
    let mut document_tokens = 0u64;
    let Totals { counts, summaries } = pipeline::run(
        &source,
        &stage,
        workers,
        policy,
        cancel,
        &mut progress,
        |tokens: Vec<u32>| {
            document_tokens += tokens.len() as u64;
            packer.push_document(&tokens, &mut sink)?;
            Ok(tokens.len() as u64)
        },
    )?;

    let last_block = packer.finish(options.last_block, pad_id, &mut sink)?;
    let dropped_tokens = match last_block {
        LastBlockOutcome::Dropped { tokens } => tokens as u64,
        _ => 0,
    };
    let written = sink.finish()?;
    let rejected_file = rejects.finish()?;

    let manifest = Manifest {
        format: "ferrotune.shards",
        format_version: FORMAT_VERSION,
        ferrotune_version: env!("CARGO_PKG_VERSION"),
        stage: "pt",
        inputs: input_entries(&files, &summaries),
        tokenizer: tokenizer.info.clone(),
        template: Value::Null,
        options: json!({
            "block_size": options.block_size,
            "text_field": options.text_field,
            "doc_sep": match options.doc_sep { DocSep::Line => "line", DocSep::BlankLine => "blank-line" },
            "last_block": options.last_block,
            "eos": options.eos,
            "eos_id_appended": eos_id,
            "pad_id": pad_id,
            "empty": options.empty.name(),
            "skip_bad": options.skip_bad,
            "num_shards": options.num_shards,
            "shard_index": options.shard_index,
            "shard_size": options.shard_size,
            "add_special_tokens": true,
            "workers": workers,
        }),
        counts,
        tokens: json!({
            "documents": document_tokens,
            "written": written.real_tokens,
            "labels": written.real_tokens,
            "padding": written.padding,
            "dropped": dropped_tokens,
        }),
        columns: crate::rows::describe(&schema),
        rows: written.rows,
        shards: written.shards,
        stage_info: json!({
            "block_size": options.block_size,
            "last_block": last_block,
            "rejects_file": rejected_file,
        }),
        elapsed_seconds: started.elapsed().as_secs_f64(),
    };
    let description = "ferrotune pretraining blocks (see manifest.json)";
    publish(staging, &manifest, description, cancel)?;
    Ok(manifest)
}

/// The Arrow schema of PT shards: fixed-size lists, so a batch loads as a 2-D tensor.
/// Item fields are named `item` and nullable, as pyarrow's defaults, so the types compare
/// equal to those `datasets` builds.
pub fn pt_schema(block_size: usize) -> SchemaRef {
    let list = |item: DataType| {
        DataType::FixedSizeList(Arc::new(Field::new("item", item, true)), block_size as i32)
    };
    Arc::new(Schema::new(vec![
        Field::new("input_ids", list(DataType::Int32), true),
        Field::new("attention_mask", list(DataType::Int8), true),
        Field::new("labels", list(DataType::Int32), true),
        Field::new("position_ids", list(DataType::Int32), true),
    ]))
}

/// The PT stage: a record's text, tokenized, with EOS appended.
struct PtStage<'a> {
    tokenizer: &'a LoadedTokenizer,
    eos_id: Option<u32>,
    text_field: &'a str,
}

impl Stage for PtStage<'_> {
    type Row = Vec<u32>;

    fn process(&self, record: RawRecord, path: &Path) -> Result<Outcome<Vec<u32>>> {
        let text = match document(record, path, self.text_field) {
            Ok(text) => text,
            Err(outcome) => return Ok(outcome),
        };
        let mut ids = self
            .tokenizer
            .encode(&text)
            .map_err(|message| CoreError::Tokenizer {
                path: self.tokenizer.info.path.clone(),
                message: format!("encoding failed: {message}"),
            })?;
        ids.extend(self.eos_id);
        Ok(Outcome::Row(ids))
    }
}

/// Parses a raw record and pulls out its text; the outcome when there is none.
fn document<R>(record: RawRecord, path: &Path, text_field: &str) -> Result<String, Outcome<R>> {
    let line = record.line;
    let body = match record.parse(path, text_field) {
        Ok(body) => body,
        Err(error) => return Err(Outcome::Bad(error)),
    };
    let bad = |reason: &'static str, message: String, raw: String| RecordError {
        path: path.to_path_buf(),
        line,
        field: Some(text_field.to_string()),
        reason,
        message,
        raw,
    };
    let text = match body {
        Body::Text(text) => text,
        Body::Json(Value::Object(mut map)) => match map.remove(text_field) {
            Some(Value::String(text)) => text,
            Some(other) => {
                let kind = json_kind(&other);
                map.insert(text_field.to_string(), other);
                let raw = Value::Object(map).to_string();
                return Err(Outcome::Bad(bad(
                    "wrong_type",
                    format!("expected a string, found {kind}"),
                    raw,
                )));
            }
            None => {
                let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
                keys.truncate(8);
                let raw = Value::Object(map.clone()).to_string();
                return Err(Outcome::Bad(bad(
                    "missing_field",
                    format!(
                        "no field '{text_field}' (fields: {}; pick one with --text-field)",
                        keys.join(", ")
                    ),
                    raw,
                )));
            }
        },
        Body::Json(other) => {
            let kind = json_kind(&other);
            return Err(Outcome::Bad(RecordError {
                field: None,
                ..bad(
                    "wrong_type",
                    format!("expected a JSON object, found {kind}"),
                    other.to_string(),
                )
            }));
        }
    };
    if text.trim().is_empty() {
        return Err(Outcome::Empty(bad(
            "empty",
            "empty document".to_string(),
            text,
        )));
    }
    Ok(text)
}

/// Totals of what the batcher wrote.
struct Written {
    shards: Vec<ShardInfo>,
    rows: u64,
    real_tokens: u64,
    padding: u64,
}

/// Gathers blocks into record batches of `batch_rows` rows for the shard writer.
struct BlockBatcher {
    block_size: usize,
    batch_rows: usize,
    schema: SchemaRef,
    writer: ShardWriter,
    ids: Vec<i32>,
    mask: Vec<i8>,
    labels: Vec<i32>,
    positions: Vec<i32>,
    rows: u64,
    real_tokens: u64,
    padding: u64,
}

impl BlockBatcher {
    fn new(
        block_size: usize,
        batch_rows: usize,
        writer: ShardWriter,
        schema: SchemaRef,
    ) -> BlockBatcher {
        BlockBatcher {
            block_size,
            batch_rows,
            schema,
            writer,
            ids: Vec::new(),
            mask: Vec::new(),
            labels: Vec::new(),
            positions: Vec::new(),
            rows: 0,
            real_tokens: 0,
            padding: 0,
        }
    }

    fn flush(&mut self) -> Result<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let size = self.block_size as i32;
        let list = |values: ArrayRef| -> ArrayRef {
            let field = Arc::new(Field::new("item", values.data_type().clone(), true));
            Arc::new(FixedSizeListArray::new(field, size, values, None))
        };
        let columns = vec![
            list(Arc::new(Int32Array::from(std::mem::take(&mut self.ids)))),
            list(Arc::new(Int8Array::from(std::mem::take(&mut self.mask)))),
            list(Arc::new(Int32Array::from(std::mem::take(&mut self.labels)))),
            list(Arc::new(Int32Array::from(std::mem::take(
                &mut self.positions,
            )))),
        ];
        let batch =
            RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| CoreError::Arrow {
                path: PathBuf::from("<batch>"),
                message: e.to_string(),
            })?;
        self.writer.write(&batch)
    }

    fn finish(mut self) -> Result<Written> {
        self.flush()?;
        Ok(Written {
            shards: self.writer.finish()?,
            rows: self.rows,
            real_tokens: self.real_tokens,
            padding: self.padding,
        })
    }
}

impl BlockSink for BlockBatcher {
    fn push_block(&mut self, ids: &[i32], positions: &[i32], real: usize) -> Result<()> {
        let pad = ids.len() - real;
        self.ids.extend_from_slice(ids);
        self.positions.extend_from_slice(positions);
        self.mask.extend(std::iter::repeat_n(1i8, real));
        self.mask.extend(std::iter::repeat_n(0i8, pad));
        self.labels.extend_from_slice(&ids[..real]);
        self.labels.extend(std::iter::repeat_n(-100i32, pad));
        self.rows += 1;
        self.real_tokens += real as u64;
        self.padding += pad as u64;
        if self.rows % self.batch_rows as u64 == 0 {
            self.flush()?;
        }
        Ok(())
    }
}
