//! `prep pt`: plain-text corpora → tokenized, packed pretraining blocks.
//!
//! Runs on the shared [`StageRun`]: workers pull each record's text and tokenize it with EOS
//! appended; the consumer, in input order, feeds the [`Packer`], whose blocks are batched into
//! Arrow record batches for the [`ShardWriter`].

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arrow_array::{ArrayRef, FixedSizeListArray, Int32Array, Int8Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde_json::{json, Value};

use crate::encoder::Encoder;
use crate::error::{CoreError, RecordError, Result};
use crate::input::Format;
use crate::manifest::Manifest;
use crate::pack::{BlockSink, LastBlock, LastBlockOutcome, Packer};
use crate::pipeline::{EmptyPolicy, Outcome, Stage};
use crate::reader::{json_kind, Body, DocSep, RawRecord, ReadOptions};
use crate::rows::{Cell, RowBatcher};
use crate::run::{load_tokenizer, CommonOptions, Output, StageReport, StageRun, Written};
use crate::shard::ShardWriter;
use crate::tokenizer::LoadedTokenizer;

/// Everything `prep pt` takes. The CLI and the Python API both fill this in.
#[derive(Debug, Clone)]
pub struct PtOptions {
    pub common: CommonOptions,
    pub block_size: usize,
    /// JSON field (or Parquet column) holding the text.
    pub text_field: String,
    pub doc_sep: DocSep,
    pub last_block: LastBlock,
    /// Append EOS after each document.
    pub eos: bool,
    /// Use this token as EOS instead of the tokenizer config's.
    pub eos_token: Option<String>,
    pub empty: EmptyPolicy,
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
            common: CommonOptions::new(tokenizer, inputs, out),
            block_size: 1024,
            text_field: "text".into(),
            doc_sep: DocSep::Line,
            last_block: LastBlock::Pad,
            eos: true,
            eos_token: None,
            empty: EmptyPolicy::Skip,
            format: None,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.block_size == 0 {
            return Err(CoreError::config("block-size", "must be at least 1"));
        }
        if self.text_field.is_empty() {
            return Err(CoreError::config("text-field", "is empty"));
        }
        Ok(())
    }
}

/// Rows per Arrow record batch at most (what `datasets.save_to_disk` uses); fewer when a
/// shard holds fewer, so that shards roll over close to `--shard-size`.
const BATCH_ROWS: usize = 1000;

/// Rows per batch of `block_size` blocks for shards of `shard_size` bytes.
pub(crate) fn block_batch_rows(block_size: usize, shard_size: u64) -> usize {
    let row_bytes = block_size as u64 * 13; // 4 + 1 + 4 + 4 bytes per token
    (shard_size / row_bytes).clamp(1, BATCH_ROWS as u64) as usize
}

/// Every input format PT reads.
const FORMATS: [Format; 4] = [Format::Txt, Format::Jsonl, Format::Json, Format::Parquet];

/// Runs `prep pt` and returns the manifest it wrote. `cancel` stops the run cleanly (no output).
pub fn prep_pt(options: &PtOptions, cancel: &AtomicBool) -> Result<Manifest> {
    options.validate()?;
    let common = &options.common;
    common.validate()?;
    let tokenizer = load_tokenizer(common, options.eos_token.as_deref())?;
    let run = StageRun::open("pt", common, tokenizer, options.format, &FORMATS)?;
    let (eos_id, pad_id) = eos_and_pad(&run.tokenizer, options)?;

    let schema = pt_schema(options.block_size);
    let writer = run.shard_writer(schema.clone(), common)?;
    let batch_rows = block_batch_rows(options.block_size, common.shard_size);
    let mut sink = BlockBatcher::new(options.block_size, batch_rows, writer, schema.clone());
    let mut packer = Packer::new(options.block_size)?;
    let read = ReadOptions {
        doc_sep: options.doc_sep,
        text_column: options.text_field.clone(),
    };
    let stage = PtStage {
        encoder: run.tokenizer.encoder(),
        eos_id,
        text_field: &options.text_field,
    };
    let mut document_tokens = 0u64;
    // A sharded run records each document's length, so merge can unpack and repack them.
    let mut lengths = (common.num_shards > 1).then(Vec::new);
    let ran = run.run(
        common,
        read,
        options.empty,
        &stage,
        cancel,
        |tokens: Vec<u32>| {
            document_tokens += tokens.len() as u64;
            if let Some(lengths) = &mut lengths {
                lengths.push(tokens.len() as u32);
            }
            packer.push_document(&tokens, &mut sink)?;
            Ok(tokens.len() as u64)
        },
    )?;

    let last_block = packer.finish(options.last_block, pad_id, &mut sink)?;
    let dropped_tokens = match last_block {
        LastBlockOutcome::Dropped { tokens } => tokens as u64,
        _ => 0,
    };
    let (written, blocks) = sink.finish(schema)?;
    let report = StageReport {
        options: pt_options_json(options, eos_id, pad_id),
        template: Value::Null,
        tokens: json!({
            "documents": document_tokens,
            "written": blocks.real_tokens,
            "labels": blocks.real_tokens,
            "padding": blocks.padding,
            "dropped": dropped_tokens,
        }),
        stage_info: json!({
            "block_size": options.block_size,
            "last_block": last_block,
        }),
        document_tokens: lengths,
    };
    Ok(run.finish(common, ran, written, report, cancel)?.manifest)
}

/// The EOS id appended after each document (none when not asked for, or when the tokenizer's
/// post-processor adds it already) and the id that pads the last block.
fn eos_and_pad(tokenizer: &LoadedTokenizer, options: &PtOptions) -> Result<(Option<u32>, u32)> {
    let info = &tokenizer.info;
    let eos_id = match (&info.eos, options.eos) {
        (_, false) => None,
        (_, true) if info.post_processor_adds_eos => None,
        (Some(eos), true) => Some(eos.id),
        (None, true) => {
            return Err(CoreError::config(
                "eos",
                format!(
                    "the tokenizer at '{}' names no eos token: pass --eos-token TOKEN or --no-eos",
                    options.common.tokenizer.display()
                ),
            ))
        }
    };
    let pad_id = info.pad.as_ref().or(info.eos.as_ref()).map_or(0, |t| t.id);
    Ok((eos_id, pad_id))
}

/// The batch transform's PT: each record tokenized (EOS appended) into one `input_ids` row.
/// Packing is left to the writer, which packs the documents of all batches in input order
/// ([`pack_documents`]), so the blocks are those of one `prep pt` run.
pub fn pt_documents(run: StageRun, options: &PtOptions, cancel: &AtomicBool) -> Result<Output> {
    options.validate()?;
    let common = &options.common;
    let (eos_id, pad_id) = eos_and_pad(&run.tokenizer, options)?;
    let schema = crate::rows::list_schema(&[("input_ids", crate::rows::Item::Int32)]);
    let writer = run.shard_writer(schema.clone(), common)?;
    let mut batcher = RowBatcher::new(schema.clone(), vec![crate::rows::Item::Int32], writer, 1000);
    let read = ReadOptions {
        doc_sep: options.doc_sep,
        text_column: options.text_field.clone(),
    };
    let stage = PtStage {
        encoder: run.tokenizer.encoder(),
        eos_id,
        text_field: &options.text_field,
    };
    let mut document_tokens = 0u64;
    let mut ids = Vec::new();
    let ran = run.run(
        common,
        read,
        options.empty,
        &stage,
        cancel,
        |tokens: Vec<u32>| {
            document_tokens += tokens.len() as u64;
            ids.clear();
            ids.extend(tokens.iter().map(|&t| t as i32));
            batcher.push(&[Cell::Ints(&ids)])?;
            Ok(tokens.len() as u64)
        },
    )?;
    let (shards, rows) = batcher.finish()?;
    let written = Written {
        schema,
        rows,
        shards,
    };
    let report = StageReport {
        options: pt_options_json(options, eos_id, pad_id),
        template: Value::Null,
        tokens: json!({"documents": document_tokens}),
        stage_info: json!({"block_size": options.block_size, "packed": false}),
        document_tokens: None,
    };
    run.finish(common, ran, written, report, cancel)
}

/// PT's own options, as the manifest records them.
fn pt_options_json(options: &PtOptions, eos_id: Option<u32>, pad_id: u32) -> Value {
    json!({
        "block_size": options.block_size,
        "text_field": options.text_field,
        "doc_sep": match options.doc_sep { DocSep::Line => "line", DocSep::BlankLine => "blank-line" },
        "last_block": options.last_block,
        "eos": options.eos,
        "eos_id_appended": eos_id,
        "pad_id": pad_id,
        "empty": options.empty.name(),
        "add_special_tokens": true,
    })
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
    encoder: &'a dyn Encoder,
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
        let mut ids = self.encoder.encode(&text, true)?;
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

/// The values of `column`, leaving an empty buffer of `capacity` in their place.
fn refill<T>(column: &mut Vec<T>, capacity: usize) -> Vec<T> {
    std::mem::replace(column, Vec::with_capacity(capacity))
}

/// Token totals of the blocks the batcher wrote.
pub(crate) struct BlockTokens {
    pub real_tokens: u64,
    pub padding: u64,
}

/// Gathers blocks into record batches of `batch_rows` rows for the shard writer.
pub(crate) struct BlockBatcher {
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
    pub(crate) fn new(
        block_size: usize,
        batch_rows: usize,
        writer: ShardWriter,
        schema: SchemaRef,
    ) -> BlockBatcher {
        let capacity = batch_rows * block_size;
        BlockBatcher {
            block_size,
            batch_rows,
            schema,
            writer,
            ids: Vec::with_capacity(capacity),
            mask: Vec::with_capacity(capacity),
            labels: Vec::with_capacity(capacity),
            positions: Vec::with_capacity(capacity),
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
        // Each column leaves with its values and a buffer of a full batch takes its place, so
        // the next batch fills without regrowing (reallocation was ~8% of a prep's CPU).
        let capacity = self.batch_rows * self.block_size;
        let columns = vec![
            list(Arc::new(Int32Array::from(refill(&mut self.ids, capacity)))),
            list(Arc::new(Int8Array::from(refill(&mut self.mask, capacity)))),
            list(Arc::new(Int32Array::from(refill(
                &mut self.labels,
                capacity,
            )))),
            list(Arc::new(Int32Array::from(refill(
                &mut self.positions,
                capacity,
            )))),
        ];
        let batch =
            RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| CoreError::Arrow {
                path: PathBuf::from("<batch>"),
                message: e.to_string(),
            })?;
        self.writer.write(&batch)
    }

    pub(crate) fn finish(mut self, schema: SchemaRef) -> Result<(Written, BlockTokens)> {
        self.flush()?;
        let written = Written {
            schema,
            rows: self.rows,
            shards: self.writer.finish()?,
        };
        let tokens = BlockTokens {
            real_tokens: self.real_tokens,
            padding: self.padding,
        };
        Ok((written, tokens))
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
        if self.rows.is_multiple_of(self.batch_rows as u64) {
            self.flush()?;
        }
        Ok(())
    }
}
