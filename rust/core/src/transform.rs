//! The batch transform: a stage run over records already in memory — an Arrow batch that Ray
//! Data or Spark hands a worker — with the rows returned instead of written.
//!
//! A [`Transform`] loads the tokenizer and chat template once; each [`Transform::run`] turns one
//! batch of input records into output rows through the very [`Stage`](crate::pipeline::Stage)
//! code `prep` runs, so a record becomes the same row either way. Two input shapes:
//!
//! - **raw records** (columns `file`, `line`, `kind`, `record`, as [`read_records`] writes
//!   them): records split from their files exactly as `prep` splits them, with their place, so
//!   errors name file and line and the rows can be ordered as one run orders them;
//! - **any table**: for PT the `text_field` column; for the conversation stages each row as a
//!   JSON object of its non-null columns (Arrow cannot tell a missing key from a null one).
//!
//! Every output batch carries two more columns, `file` and `line`, the written record's place.
//! PT rows are tokenized documents, not blocks: a block spans documents, so packing waits for
//! the writer, which packs all documents in input order and so writes the blocks of one run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::Deserialize;
use serde_json::Value;

use crate::chat_prep::{ChatEngine, ChatOptions, ChatRun, ChatStage};
use crate::error::{CoreError, Result};
use crate::input::InputFile;
use crate::pack::LastBlock;
use crate::pipeline::{EmptyPolicy, Records};
use crate::pt::{pt_documents, PtOptions};
use crate::reader::{read_file, DocSep, Flow, RawKind, RawRecord, ReadOptions};
use crate::run::{load_tokenizer, CommonOptions, Output, StageRun};
use crate::tokenizer::LoadedTokenizer;

/// The columns of a raw-records table.
pub const RAW_COLUMNS: [&str; 4] = ["file", "line", "kind", "record"];

/// A stage loaded once, run on batch after batch.
pub struct Transform {
    loaded: Loaded,
}

enum Loaded {
    Pt {
        options: PtOptions,
        tokenizer: Arc<LoadedTokenizer>,
    },
    Chat {
        stage: ChatStage,
        options: ChatOptions,
        engine: Box<ChatEngine>,
    },
}

/// PT's options as the transform takes them (the `prep_pt` keywords that shape rows).
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawPtOptions {
    tokenizer: PathBuf,
    block_size: usize,
    text_field: String,
    doc_sep: String,
    last_block: String,
    eos: bool,
    eos_token: Option<String>,
    empty: String,
    skip_bad: bool,
    workers: usize,
    engine: String,
}

impl Default for RawPtOptions {
    fn default() -> Self {
        let defaults = PtOptions::new("", Vec::new(), "");
        RawPtOptions {
            tokenizer: PathBuf::new(),
            block_size: defaults.block_size,
            text_field: defaults.text_field,
            doc_sep: "line".into(),
            last_block: "pad".into(),
            eos: defaults.eos,
            eos_token: None,
            empty: "skip".into(),
            skip_bad: false,
            workers: 1,
            engine: "auto".into(),
        }
    }
}

fn config_error(error: serde_json::Error) -> CoreError {
    let message = error.to_string();
    let option = message
        .split('`')
        .nth(1)
        .unwrap_or("options")
        .replace('_', "-");
    CoreError::config(&option, message)
}

impl Transform {
    /// Loads `stage` (`pt`, `sft`, `rm`, `dpo`, `ppo`) with its options as one JSON object (the
    /// `prep_*` keywords; `tokenizer` required; no inputs, output or sharding: the engine
    /// around the transform decides those).
    pub fn new(stage: &str, options_json: &str) -> Result<Transform> {
        let loaded = if stage == "pt" {
            let raw: RawPtOptions = serde_json::from_str(options_json).map_err(config_error)?;
            let common = CommonOptions {
                workers: raw.workers,
                skip_bad: raw.skip_bad,
                engine: crate::encoder::EngineChoice::parse(&raw.engine)?,
                ..CommonOptions::new(raw.tokenizer, Vec::new(), "")
            };
            let options = PtOptions {
                common,
                block_size: raw.block_size,
                text_field: raw.text_field,
                doc_sep: DocSep::parse(&raw.doc_sep)?,
                last_block: LastBlock::parse(&raw.last_block)?,
                eos: raw.eos,
                eos_token: raw.eos_token,
                empty: EmptyPolicy::parse(&raw.empty)?,
                format: None,
            };
            let (tokenizer, _) = load_tokenizer(&options.common, options.eos_token.as_deref())?;
            Loaded::Pt { options, tokenizer }
        } else {
            let stage = ChatStage::parse(stage)?;
            let mut value: Value = serde_json::from_str(options_json).map_err(config_error)?;
            if let Some(map) = value.as_object_mut() {
                map.entry("workers").or_insert(Value::from(1));
            }
            let options = ChatOptions::from_json(&value.to_string())?;
            if options.pack {
                return Err(CoreError::config(
                    "pack",
                    "the batch transform does not pack SFT rows (a packed row spans batches): \
                     prep with `ferrotune prep sft --pack`, or train with packing off",
                ));
            }
            let engine = Box::new(ChatEngine::load(&options)?);
            Loaded::Chat {
                stage,
                options,
                engine,
            }
        };
        Ok(Transform { loaded })
    }

    /// The stage's name.
    pub fn stage(&self) -> &'static str {
        match &self.loaded {
            Loaded::Pt { .. } => "pt",
            Loaded::Chat { stage, .. } => stage.name(),
        }
    }

    /// Runs the stage over `batches` (one input table); returns its rows, with the `file` and
    /// `line` of each written record appended, the manifest of the batch (counts, tokens,
    /// stage info; no inputs or shards) and its rejects.
    pub fn run(&self, batches: &[RecordBatch], cancel: &AtomicBool) -> Result<Output> {
        let (stage, text_field) = match &self.loaded {
            Loaded::Pt { options, .. } => (None, options.text_field.as_str()),
            Loaded::Chat { stage, .. } => (Some(*stage), ""),
        };
        let records = to_records(batches, stage.is_none(), text_field)?;
        let paths = records.paths.clone();
        let mut output = match &self.loaded {
            Loaded::Pt { options, tokenizer } => {
                let run = StageRun::batch("pt", tokenizer.clone(), records);
                pt_documents(run, options, cancel)?
            }
            Loaded::Chat {
                stage,
                options,
                engine,
            } => {
                let run = ChatRun::batch(stage.name(), engine, records);
                stage.run(run, options, cancel)?
            }
        };
        output.batches = with_places(&output.batches, &output.written_at, &paths)?;
        output.schema = with_place_fields(&output.schema);
        Ok(output)
    }
}

/// The records of an input table: raw records when it has the raw columns, else its rows.
fn to_records(batches: &[RecordBatch], pt: bool, text_field: &str) -> Result<Records> {
    let Some(first) = batches.first() else {
        return Ok(Records {
            paths: Vec::new(),
            items: Mutex::new(Vec::new()),
        });
    };
    let schema = first.schema();
    let raw = RAW_COLUMNS
        .iter()
        .all(|name| schema.column_with_name(name).is_some());
    if raw {
        raw_records(batches)
    } else if pt {
        text_cells(batches, text_field)
    } else {
        json_rows(batches)
    }
}

fn arrow_error(message: impl std::fmt::Display) -> CoreError {
    CoreError::Arrow {
        path: "<input batch>".into(),
        message: message.to_string(),
    }
}

/// A column of `batch` as strings (utf8 or large utf8), or an error naming it.
fn strings<'a>(batch: &'a RecordBatch, name: &str) -> Result<Vec<Option<&'a str>>> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| arrow_error(format!("no column '{name}'")))?;
    match column.data_type() {
        DataType::Utf8 => Ok(column.as_string::<i32>().iter().collect()),
        DataType::LargeUtf8 => Ok(column.as_string::<i64>().iter().collect()),
        DataType::Utf8View => Ok(column.as_string_view().iter().collect()),
        other => Err(arrow_error(format!(
            "column '{name}' is {other}, expected a string column"
        ))),
    }
}

/// Raw records (`file`, `line`, `kind`, `record`) back into the reader's records.
fn raw_records(batches: &[RecordBatch]) -> Result<Records> {
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut items = Vec::new();
    for batch in batches {
        let files = strings(batch, "file")?;
        let kinds = strings(batch, "kind")?;
        let lines = batch.column_by_name("line").expect("checked");
        let lines: Vec<Option<u64>> = match lines.data_type() {
            DataType::UInt64 => lines.as_primitive::<UInt64Type>().iter().collect(),
            DataType::Int64 => lines
                .as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.map(|v| v.max(0) as u64))
                .collect(),
            other => {
                return Err(arrow_error(format!(
                    "column 'line' is {other}, expected an integer"
                )))
            }
        };
        let record = batch.column_by_name("record").expect("checked");
        let bytes = |row: usize| -> Option<&[u8]> {
            if record.is_null(row) {
                return None;
            }
            Some(match record.data_type() {
                DataType::Binary => record.as_binary::<i32>().value(row),
                DataType::LargeBinary => record.as_binary::<i64>().value(row),
                DataType::Utf8 => record.as_string::<i32>().value(row).as_bytes(),
                DataType::LargeUtf8 => record.as_string::<i64>().value(row).as_bytes(),
                _ => return None,
            })
        };
        if !matches!(
            record.data_type(),
            DataType::Binary | DataType::LargeBinary | DataType::Utf8 | DataType::LargeUtf8
        ) {
            return Err(arrow_error(format!(
                "column 'record' is {}, expected binary or string",
                record.data_type()
            )));
        }
        for row in 0..batch.num_rows() {
            let file = files[row].unwrap_or("<unknown>");
            let file_index = *index.entry(file.to_string()).or_insert_with(|| {
                paths.push(PathBuf::from(file));
                paths.len() - 1
            });
            let line = lines[row].unwrap_or(0);
            let body = bytes(row);
            let kind = match kinds[row] {
                Some("text") => RawKind::Text(body.unwrap_or_default().to_vec()),
                Some("json") => RawKind::Json(body.unwrap_or_default().to_vec()),
                Some("cell") => {
                    RawKind::Cell(body.map(|b| String::from_utf8_lossy(b).into_owned()))
                }
                Some("too_large") => RawKind::TooLarge(
                    body.and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
                        .unwrap_or(0),
                ),
                other => {
                    return Err(arrow_error(format!(
                        "row {row}: kind {other:?} is not one of text, json, cell, too_large"
                    )))
                }
            };
            items.push((file_index, RawRecord { line, kind }));
        }
    }
    Ok(Records {
        paths,
        items: Mutex::new(items),
    })
}

/// PT from any table: its `text_field` column, one document per row (a null is a bad record,
/// as a null Parquet cell is).
fn text_cells(batches: &[RecordBatch], text_field: &str) -> Result<Records> {
    let mut items = Vec::new();
    for batch in batches {
        for text in strings(batch, text_field)? {
            let line = items.len() as u64 + 1;
            items.push((
                0,
                RawRecord {
                    line,
                    kind: RawKind::Cell(text.map(str::to_string)),
                },
            ));
        }
    }
    Ok(Records {
        paths: vec![PathBuf::from("<arrow>")],
        items: Mutex::new(items),
    })
}

/// The conversation stages from any table: each row a JSON object of its non-null columns.
fn json_rows(batches: &[RecordBatch]) -> Result<Records> {
    let mut items = Vec::new();
    for batch in batches {
        let mut writer = arrow_json::LineDelimitedWriter::new(Vec::new());
        writer.write(batch).map_err(arrow_error)?;
        writer.finish().map_err(arrow_error)?;
        let text = writer.into_inner();
        for row in text.split(|&b| b == b'\n').filter(|row| !row.is_empty()) {
            let line = items.len() as u64 + 1;
            items.push((
                0,
                RawRecord {
                    line,
                    kind: RawKind::Json(row.to_vec()),
                },
            ));
        }
    }
    Ok(Records {
        paths: vec![PathBuf::from("<arrow>")],
        items: Mutex::new(items),
    })
}

/// The rows with each written record's `file` and `line` appended.
fn with_places(
    batches: &[RecordBatch],
    places: &[(usize, u64)],
    paths: &[PathBuf],
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::with_capacity(batches.len());
    let mut at = 0usize;
    for batch in batches {
        let rows = batch.num_rows();
        let mine = places
            .get(at..at + rows)
            .ok_or_else(|| CoreError::Internal("rows and records disagree".into()))?;
        at += rows;
        let files: StringArray = mine
            .iter()
            .map(|(file, _)| Some(paths[*file].to_string_lossy().into_owned()))
            .collect();
        let lines: UInt64Array = mine.iter().map(|(_, line)| Some(*line)).collect();
        out.push(append_columns(batch, files, lines)?);
    }
    Ok(out)
}

/// `schema` with the `file` and `line` columns appended.
fn with_place_fields(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    // Nullable: the Python side appends the batch's accounting as a row with no place.
    fields.push(Field::new("file", DataType::Utf8, true));
    fields.push(Field::new("line", DataType::UInt64, true));
    Arc::new(Schema::new(fields))
}

fn append_columns(
    batch: &RecordBatch,
    files: StringArray,
    lines: UInt64Array,
) -> Result<RecordBatch> {
    let schema = with_place_fields(&batch.schema());
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(Arc::new(files));
    columns.push(Arc::new(lines));
    RecordBatch::try_new(schema, columns).map_err(arrow_error)
}

/// The raw records of one file, as `prep` splits them, in batches of about `batch_rows`
/// records: columns `file`, `line` (uint64), `kind` and `record` (large binary; for a
/// too-large record its size in bytes as text). `text_column` is the Parquet column of text.
pub fn read_records(
    path: &Path,
    read: &ReadOptions,
    batch_rows: usize,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let files = crate::input::resolve_inputs(&[path.to_string_lossy().into_owned()], None)?;
    let schema = raw_schema();
    let mut batches = Vec::new();
    for file in &files {
        read_file_records(file, read, batch_rows.max(1), &schema, &mut batches)?;
    }
    Ok((schema, batches))
}

/// The schema of raw-records tables.
pub fn raw_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("file", DataType::Utf8, false),
        Field::new("line", DataType::UInt64, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("record", DataType::LargeBinary, true),
    ]))
}

fn read_file_records(
    file: &InputFile,
    read: &ReadOptions,
    batch_rows: usize,
    schema: &SchemaRef,
    batches: &mut Vec<RecordBatch>,
) -> Result<()> {
    let name = file.path.to_string_lossy().into_owned();
    let mut lines: Vec<u64> = Vec::new();
    let mut kinds: Vec<&'static str> = Vec::new();
    let mut bodies: Vec<Option<Vec<u8>>> = Vec::new();
    let flush = |lines: &mut Vec<u64>,
                 kinds: &mut Vec<&'static str>,
                 bodies: &mut Vec<Option<Vec<u8>>>,
                 batches: &mut Vec<RecordBatch>|
     -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let files = StringArray::from(vec![name.as_str(); lines.len()]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(files),
            Arc::new(UInt64Array::from(std::mem::take(lines))),
            Arc::new(StringArray::from(std::mem::take(kinds))),
            Arc::new(arrow_array::LargeBinaryArray::from_iter(std::mem::take(
                bodies,
            ))),
        ];
        batches.push(RecordBatch::try_new(schema.clone(), columns).map_err(arrow_error)?);
        Ok(())
    };
    let mut visit = |record: RawRecord, _consumed: u64| -> Result<Flow> {
        lines.push(record.line);
        let (kind, body) = match record.kind {
            RawKind::Text(bytes) => ("text", Some(bytes)),
            RawKind::Json(bytes) => ("json", Some(bytes)),
            RawKind::Cell(text) => ("cell", text.map(String::into_bytes)),
            RawKind::TooLarge(size) => ("too_large", Some(size.to_string().into_bytes())),
        };
        kinds.push(kind);
        bodies.push(body);
        if lines.len() >= batch_rows {
            flush(&mut lines, &mut kinds, &mut bodies, batches)?;
        }
        Ok(Flow::Continue)
    };
    read_file(file, read, &mut visit)?;
    flush(&mut lines, &mut kinds, &mut bodies, batches)
}
