//! `prep pt`: plain-text corpora → tokenized, packed pretraining blocks.
//!
//! Three kinds of thread, connected by bounded channels so memory stays flat however large the
//! corpus is:
//!
//! ```text
//! reader (1) ──chunks of documents──▶ tokenizers (workers) ──token ids──▶ packer + writer (1)
//! ```
//!
//! Chunks carry a sequence number and the packer consumes them strictly in order, so the output
//! is byte-identical whatever the number of workers. Bad records travel through the same stream,
//! in order, so the first error reported is always the first bad record of the input.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{ArrayRef, FixedSizeListArray, Int32Array, Int8Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use crossbeam_channel::{bounded, Receiver, Sender};
use serde_json::{json, Value};

use crate::error::{CoreError, RecordError, Result};
use crate::input::{resolve_inputs, Format, InputFile};
use crate::manifest::{Column, Counts, InputEntry, Manifest, FORMAT_VERSION};
use crate::output::{to_pretty, write_datasets_metadata, write_file, Staging};
use crate::pack::{BlockSink, LastBlock, LastBlockOutcome, Packer};
use crate::progress::Progress;
use crate::reader::{
    json_kind, read_file, Body, DocSep, FileSummary, Flow, RawRecord, ReadOptions,
};
use crate::shard::{ShardInfo, ShardWriter};
use crate::tokenizer::LoadedTokenizer;

/// What to do with a document that has no text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyPolicy {
    /// Skip it and count it under `counts.empty` (blank lines in text files are normal).
    Skip,
    /// Treat it as a bad record (an error, or a reject with `--skip-bad`).
    Error,
}

impl EmptyPolicy {
    pub fn parse(name: &str) -> Result<EmptyPolicy> {
        match name {
            "skip" => Ok(EmptyPolicy::Skip),
            "error" => Ok(EmptyPolicy::Error),
            other => Err(CoreError::config(
                "empty",
                format!("'{other}' is not one of skip, error"),
            )),
        }
    }
}

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
        if self.num_shards == 0 {
            return Err(CoreError::config("num-shards", "must be at least 1"));
        }
        if self.shard_index >= self.num_shards {
            return Err(CoreError::config(
                "shard-index",
                format!(
                    "{} is out of range for --num-shards {} (0..{})",
                    self.shard_index, self.num_shards, self.num_shards
                ),
            ));
        }
        if self.text_field.is_empty() {
            return Err(CoreError::config("text-field", "is empty"));
        }
        Ok(())
    }

    fn workers(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// Documents per chunk and text bytes per chunk: large enough to amortise channel traffic,
/// small enough that `2 × workers` chunks in flight stay a few MB.
const CHUNK_DOCS: usize = 2048;
const CHUNK_BYTES: usize = 1 << 20;
/// Rows per Arrow record batch at most (what `datasets.save_to_disk` uses); fewer when a
/// shard holds fewer, so that shards roll over close to `--shard-size`.
const BATCH_ROWS: usize = 1000;

/// One record on its way through the pipeline.
enum Item {
    Doc(String),
    Tokens(Vec<u32>),
    Empty(RecordError),
    Bad(RecordError),
    FileDone(usize, FileSummary),
}

enum Payload {
    Items(Vec<Item>),
    Failed(CoreError),
}

struct Chunk {
    seq: u64,
    /// Input bytes read when the chunk was cut, over all files.
    bytes_read: u64,
    payload: Payload,
}

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
    let mut counts = Counts::default();
    let mut summaries: HashMap<usize, FileSummary> = HashMap::new();
    let mut document_tokens = 0u64;
    let total_bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let mut progress = Progress::new("prep pt", total_bytes, options.quiet);

    let workers = options.workers();
    let (work_tx, work_rx) = bounded::<Chunk>(2 * workers);
    let (done_tx, done_rx) = bounded::<Chunk>(2 * workers);
    let stop = Arc::new(AtomicBool::new(false));

    std::thread::scope(|scope| -> Result<()> {
        {
            let stop = stop.clone();
            let files = &files;
            scope.spawn(move || read_all(files, options, work_tx, &stop));
        }
        for _ in 0..workers {
            let work_rx = work_rx.clone();
            let done_tx = done_tx.clone();
            let tokenizer = &tokenizer;
            scope.spawn(move || tokenize_chunks(tokenizer, eos_id, work_rx, done_tx));
        }
        drop(work_rx);
        drop(done_tx);

        let result = (|| -> Result<()> {
            let mut pending: BTreeMap<u64, Chunk> = BTreeMap::new();
            let mut next = 0u64;
            for chunk in done_rx.iter() {
                if cancel.load(Ordering::Relaxed) {
                    return Err(CoreError::Cancelled);
                }
                pending.insert(chunk.seq, chunk);
                while let Some(chunk) = pending.remove(&next) {
                    next += 1;
                    let items = match chunk.payload {
                        Payload::Items(items) => items,
                        Payload::Failed(error) => return Err(error),
                    };
                    for item in items {
                        match item {
                            Item::Tokens(tokens) => {
                                counts.read += 1;
                                counts.written += 1;
                                document_tokens += tokens.len() as u64;
                                packer.push_document(&tokens, &mut sink)?;
                            }
                            Item::Empty(record) => {
                                counts.read += 1;
                                match options.empty {
                                    EmptyPolicy::Skip => counts.empty += 1,
                                    EmptyPolicy::Error => rejects.reject(record, &mut counts)?,
                                }
                            }
                            Item::Bad(record) => {
                                counts.read += 1;
                                rejects.reject(record, &mut counts)?;
                            }
                            Item::FileDone(index, summary) => {
                                counts.other_shards += summary.records;
                                summaries.insert(index, summary);
                            }
                            Item::Doc(_) => unreachable!("workers tokenize every document"),
                        }
                    }
                    progress.update(chunk.bytes_read, document_tokens);
                }
            }
            if summaries.len() != files.len() {
                return Err(CoreError::Internal(
                    "a reader or tokenizer thread stopped without reporting".into(),
                ));
            }
            Ok(())
        })();
        if result.is_err() {
            // Unblock the reader and the workers so the scope can end.
            stop.store(true, Ordering::Relaxed);
            drop(done_rx);
        }
        result
    })?;
    progress.finish();
    // `other_shards` gathered every file's record count; keep only the others' share.
    counts.other_shards -= counts.read;

    let last_block = packer.finish(options.last_block, pad_id, &mut sink)?;
    let dropped_tokens = match last_block {
        LastBlockOutcome::Dropped { tokens } => tokens as u64,
        _ => 0,
    };
    let written = sink.finish()?;
    let rejected_file = rejects.finish()?;

    let inputs: Vec<InputEntry> = files
        .iter()
        .enumerate()
        .map(|(index, file)| {
            let summary = &summaries[&index];
            InputEntry {
                path: file.path.clone(),
                format: file.format,
                bytes: file.bytes,
                sha256: summary.sha256.clone(),
                records: summary.records,
            }
        })
        .collect();
    debug_assert!(counts.adds_up());
    let manifest = Manifest {
        format: "ferrotune.shards",
        format_version: FORMAT_VERSION,
        ferrotune_version: env!("CARGO_PKG_VERSION"),
        stage: "pt",
        inputs,
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
            "empty": match options.empty { EmptyPolicy::Skip => "skip", EmptyPolicy::Error => "error" },
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
        columns: schema
            .fields()
            .iter()
            .map(|f| Column {
                name: f.name().clone(),
                dtype: f.data_type().to_string(),
            })
            .collect(),
        rows: written.rows,
        shards: written.shards,
        stage_info: json!({
            "block_size": options.block_size,
            "last_block": last_block,
            "rejects_file": rejected_file,
        }),
        elapsed_seconds: started.elapsed().as_secs_f64(),
    };
    write_datasets_metadata(
        staging.path(),
        &manifest.shards,
        "ferrotune pretraining blocks (see manifest.json)",
    )?;
    write_file(staging.path(), "manifest.json", &to_pretty(&manifest))?;
    if cancel.load(Ordering::Relaxed) {
        return Err(CoreError::Cancelled);
    }
    staging.commit()?;
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

/// The reader thread: walks the files in order, keeps this run's records, parses them and pulls
/// out the text, and sends chunks of documents downstream.
fn read_all(files: &[InputFile], options: &PtOptions, tx: Sender<Chunk>, stop: &AtomicBool) {
    let read_options = ReadOptions {
        doc_sep: options.doc_sep,
        text_column: options.text_field.clone(),
    };
    let mut seq = 0u64;
    let mut items: Vec<Item> = Vec::with_capacity(CHUNK_DOCS);
    let mut chunk_bytes = 0usize;
    let mut record_index = 0u64;
    let mut bytes_before = 0u64;
    let mut bytes_read = 0u64;
    let send = |seq: &mut u64, payload: Payload, bytes_read: u64| -> bool {
        let chunk = Chunk {
            seq: *seq,
            bytes_read,
            payload,
        };
        *seq += 1;
        !stop.load(Ordering::Relaxed) && tx.send(chunk).is_ok()
    };
    for (index, file) in files.iter().enumerate() {
        let path = &file.path;
        let mut visit = |record: RawRecord, consumed: u64| -> Result<Flow> {
            let mine = record_index % options.num_shards as u64 == options.shard_index as u64;
            record_index += 1;
            if !mine {
                return Ok(Flow::Continue);
            }
            bytes_read = bytes_before + consumed;
            let item = document(record, path, &options.text_field);
            if let Item::Doc(text) = &item {
                chunk_bytes += text.len();
            }
            items.push(item);
            if items.len() >= CHUNK_DOCS || chunk_bytes >= CHUNK_BYTES {
                chunk_bytes = 0;
                let full = std::mem::replace(&mut items, Vec::with_capacity(CHUNK_DOCS));
                if !send(&mut seq, Payload::Items(full), bytes_read) {
                    return Ok(Flow::Stop);
                }
            }
            Ok(Flow::Continue)
        };
        match read_file(file, &read_options, &mut visit) {
            Ok(Some(summary)) => items.push(Item::FileDone(index, summary)),
            Ok(None) => return,
            Err(error) => {
                // Hand over what came before the failure first, so its records are still
                // processed (and an earlier bad record still reported first).
                let before = std::mem::take(&mut items);
                if send(&mut seq, Payload::Items(before), bytes_read) {
                    send(&mut seq, Payload::Failed(error), bytes_read);
                }
                return;
            }
        }
        bytes_before += file.bytes;
    }
    send(&mut seq, Payload::Items(items), bytes_before);
}

/// Parses a raw record and pulls out its text.
fn document(record: RawRecord, path: &Path, text_field: &str) -> Item {
    let line = record.line;
    let body = match record.parse(path, text_field) {
        Ok(body) => body,
        Err(error) => return Item::Bad(error),
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
                return Item::Bad(bad(
                    "wrong_type",
                    format!("expected a string, found {kind}"),
                    raw,
                ));
            }
            None => {
                let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
                keys.truncate(8);
                let raw = Value::Object(map.clone()).to_string();
                return Item::Bad(bad(
                    "missing_field",
                    format!(
                        "no field '{text_field}' (fields: {}; pick one with --text-field)",
                        keys.join(", ")
                    ),
                    raw,
                ));
            }
        },
        Body::Json(other) => {
            let kind = json_kind(&other);
            return Item::Bad(RecordError {
                field: None,
                ..bad(
                    "wrong_type",
                    format!("expected a JSON object, found {kind}"),
                    other.to_string(),
                )
            });
        }
    };
    if text.trim().is_empty() {
        return Item::Empty(bad("empty", "empty document".to_string(), text));
    }
    Item::Doc(text)
}

/// A worker thread: tokenizes the documents of each chunk, appending EOS.
fn tokenize_chunks(
    tokenizer: &LoadedTokenizer,
    eos_id: Option<u32>,
    rx: Receiver<Chunk>,
    tx: Sender<Chunk>,
) {
    for mut chunk in rx.iter() {
        if let Payload::Items(items) = &mut chunk.payload {
            let mut failure = None;
            for item in items.iter_mut() {
                if let Item::Doc(text) = item {
                    match tokenizer.encode(text) {
                        Ok(mut ids) => {
                            ids.extend(eos_id);
                            *item = Item::Tokens(ids);
                        }
                        Err(message) => {
                            failure = Some(CoreError::Tokenizer {
                                path: tokenizer.info.path.clone(),
                                message: format!("encoding failed: {message}"),
                            });
                            break;
                        }
                    }
                }
            }
            if let Some(error) = failure {
                chunk.payload = Payload::Failed(error);
            }
        }
        if tx.send(chunk).is_err() {
            return;
        }
    }
}

/// Bad records: an error, or with `--skip-bad` a line in `rejects.jsonl` and a count.
struct Rejects {
    path: PathBuf,
    skip_bad: bool,
    file: Option<BufWriter<File>>,
}

impl Rejects {
    fn new(dir: &Path, skip_bad: bool) -> Rejects {
        Rejects {
            path: dir.join("rejects.jsonl"),
            skip_bad,
            file: None,
        }
    }

    fn reject(&mut self, record: RecordError, counts: &mut Counts) -> Result<()> {
        if !self.skip_bad {
            return Err(CoreError::Record(record));
        }
        counts.rejected += 1;
        *counts
            .rejected_by_reason
            .entry(record.reason.to_string())
            .or_default() += 1;
        if self.file.is_none() {
            let file = File::create(&self.path).map_err(|e| CoreError::io(&self.path, e))?;
            self.file = Some(BufWriter::new(file));
        }
        let line = json!({
            "file": record.path,
            "line": record.line,
            "field": record.field,
            "reason": record.reason,
            "message": record.message,
            "record": record.raw,
        });
        let writer = self.file.as_mut().expect("opened above");
        writeln!(writer, "{line}").map_err(|e| CoreError::io(&self.path, e))
    }

    /// Closes the file; returns its name when any record was rejected.
    fn finish(self) -> Result<Option<&'static str>> {
        match self.file {
            Some(mut writer) => {
                writer.flush().map_err(|e| CoreError::io(&self.path, e))?;
                Ok(Some("rejects.jsonl"))
            }
            None => Ok(None),
        }
    }
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
