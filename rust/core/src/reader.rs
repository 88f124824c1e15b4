//! Streaming record readers for `.txt`, `.jsonl`, `.json` and `.parquet`.
//!
//! A reader hands out *raw* records (bytes plus the line they start on) and leaves parsing to
//! [`RawRecord::parse`], so a run that owns only some records (`--num-shards`) skips the JSON
//! parsing of the others. Memory stays bounded by the largest record: nothing holds a whole file,
//! except the Parquet reader, which holds one record batch.
//!
//! While reading, each file is hashed (SHA-256) so the manifest can pin exactly what was read.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use arrow_array::{Array, LargeStringArray, StringArray, StringViewArray};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use sha2::{Digest, Sha256};

use crate::error::{CoreError, RecordError, Result};
use crate::input::{Format, InputFile};

/// How a plain-text file is split into documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocSep {
    /// One document per line (what `datasets.load_dataset("text")` does).
    Line,
    /// Documents are paragraphs separated by one or more blank lines; lines inside are kept
    /// joined with `\n`.
    BlankLine,
}

impl DocSep {
    pub fn parse(name: &str) -> Result<DocSep> {
        match name {
            "line" => Ok(DocSep::Line),
            "blank-line" => Ok(DocSep::BlankLine),
            other => Err(CoreError::config(
                "doc-sep",
                format!("'{other}' is not one of line, blank-line"),
            )),
        }
    }
}

/// What a reader needs to know beyond the file itself.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    pub doc_sep: DocSep,
    /// The column holding the text, for Parquet (JSON fields are picked by the stage).
    pub text_column: String,
}

/// One record as read, not yet parsed.
#[derive(Debug)]
pub struct RawRecord {
    /// 1-based line (row for Parquet) where the record starts.
    pub line: u64,
    pub kind: RawKind,
}

#[derive(Debug)]
pub enum RawKind {
    /// A text document: must be valid UTF-8.
    Text(Vec<u8>),
    /// One JSON value (a JSON Lines line or an element of a top-level array).
    Json(Vec<u8>),
    /// A Parquet cell of the text column (`None` when null).
    Cell(Option<String>),
    /// A line, paragraph or JSON element longer than [`MAX_RECORD_BYTES`]: its length. Its bytes
    /// were read past, not kept, so a 2 GB line costs no more memory than a short one.
    TooLarge(u64),
}

/// The largest record a reader hands on (64 MiB, a dozen novels): beyond any training document
/// or conversation, small enough that a corrupt file (a 2 GB line) cannot exhaust memory. The
/// buffer that finds a line too long grows to twice this at most.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// A parsed record.
#[derive(Debug)]
pub enum Body {
    Text(String),
    Json(serde_json::Value),
}

impl RawRecord {
    /// Parses the record: checks UTF-8 and JSON syntax. Errors name `path` and the line.
    pub fn parse(self, path: &Path, text_column: &str) -> Result<Body, RecordError> {
        let line = self.line;
        let bad =
            |reason: &'static str, field: Option<&str>, message: String, raw: String| RecordError {
                path: path.to_path_buf(),
                line,
                field: field.map(str::to_string),
                reason,
                message,
                raw,
            };
        match self.kind {
            RawKind::Text(bytes) => String::from_utf8(bytes).map(Body::Text).map_err(|e| {
                let at = e.utf8_error().valid_up_to();
                let raw = String::from_utf8_lossy(e.as_bytes()).into_owned();
                bad(
                    "invalid_utf8",
                    None,
                    format!("invalid UTF-8 at byte {at} of the document"),
                    raw,
                )
            }),
            RawKind::Json(bytes) => {
                let text = match String::from_utf8(bytes) {
                    Ok(text) => text,
                    Err(e) => {
                        let at = e.utf8_error().valid_up_to();
                        let raw = String::from_utf8_lossy(e.as_bytes()).into_owned();
                        return Err(bad(
                            "invalid_utf8",
                            None,
                            format!("invalid UTF-8 at byte {at} of the record"),
                            raw,
                        ));
                    }
                };
                serde_json::from_str(&text).map(Body::Json).map_err(|e| {
                    bad(
                        "invalid_json",
                        None,
                        format!("malformed JSON: {e}"),
                        text.clone(),
                    )
                })
            }
            RawKind::TooLarge(bytes) => Err(bad(
                "too_large",
                None,
                format!(
                    "a record of {bytes} bytes, larger than the {} MiB a record may be",
                    MAX_RECORD_BYTES >> 20
                ),
                String::new(),
            )),
            RawKind::Cell(Some(text)) => Ok(Body::Text(text)),
            RawKind::Cell(None) => Err(bad(
                "missing_field",
                Some(text_column),
                format!("column '{text_column}' is null"),
                "null".to_string(),
            )),
        }
    }
}

/// What reading one file found.
#[derive(Debug, Clone)]
pub struct FileSummary {
    pub sha256: String,
    pub records: u64,
}

/// Whether the visitor wants more records.
pub enum Flow {
    Continue,
    Stop,
}

/// Reads `file` from start to end, calling `visit(record, bytes_read_so_far)` for each record in
/// order. Returns `None` when the visitor stopped early.
pub fn read_file(
    file: &InputFile,
    options: &ReadOptions,
    visit: &mut dyn FnMut(RawRecord, u64) -> Result<Flow>,
) -> Result<Option<FileSummary>> {
    let summary = match file.format {
        Format::Txt => read_lines(file, options.doc_sep, false, visit),
        Format::Jsonl => read_lines(file, DocSep::Line, true, visit),
        Format::Json => {
            if starts_with_array(&file.path)? {
                read_json_array(file, visit)
            } else {
                read_lines(file, DocSep::Line, true, visit)
            }
        }
        Format::Parquet => read_parquet(file, &options.text_column, visit),
    }?;
    if summary.is_some() {
        check_unchanged(file)?;
    }
    Ok(summary)
}

/// Fails when `file` is not as it was when the run started (another program still writing
/// it, a sync replacing it): its records and hash would describe no version of the file.
fn check_unchanged(file: &InputFile) -> Result<()> {
    let now = std::fs::metadata(&file.path).map_err(|e| CoreError::io(&file.path, e))?;
    let modified = now.modified().ok();
    if now.len() == file.bytes && (modified == file.modified || file.modified.is_none()) {
        return Ok(());
    }
    Err(CoreError::Format {
        path: file.path.clone(),
        message: format!(
            "changed while it was read ({} bytes when the run started, {} now): rerun once it \
             is complete",
            file.bytes,
            now.len()
        ),
    })
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn open_hashing(path: &Path) -> Result<BufReader<Hashing<File>>> {
    let file = File::open(path).map_err(|e| CoreError::io(path, e))?;
    Ok(BufReader::with_capacity(
        1 << 20,
        Hashing {
            inner: file,
            hasher: Sha256::new(),
            bytes: 0,
        },
    ))
}

fn finish_hash(reader: BufReader<Hashing<File>>) -> String {
    hex(&reader.into_inner().hasher.finalize())
}

/// "a string", "an object", ...: the JSON type of a value, for error messages.
pub fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a whole file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut reader = open_hashing(path)?;
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| CoreError::io(path, e))?;
    Ok(finish_hash(reader))
}

/// The UTF-8 byte-order mark: skipped at the start of every text input (txt, jsonl, json), as
/// `datasets` and Python's `utf-8-sig` do.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// Strips one trailing `\n` or `\r\n`.
fn strip_newline(buf: &mut Vec<u8>) {
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
}

/// Reads one line into `buf` (its `\n` included), keeping at most [`MAX_RECORD_BYTES`] + 1
/// bytes: a longer line is read to its end without being kept (`buf` left empty). Returns the
/// bytes read (for a line not kept, without its line end) and whether they were kept.
fn read_line<R: BufRead>(reader: &mut R, buf: &mut Vec<u8>) -> std::io::Result<(u64, bool)> {
    let limit = MAX_RECORD_BYTES as u64 + 1;
    let n = reader.take(limit).read_until(b'\n', buf)? as u64;
    if n < limit || buf.last() == Some(&b'\n') {
        return Ok((n, true));
    }
    let mut total = n;
    loop {
        buf.clear();
        let more = reader.take(1 << 20).read_until(b'\n', buf)? as u64;
        total += more;
        if more == 0 || buf.last() == Some(&b'\n') {
            let ending = if buf.ends_with(b"\r\n") {
                2
            } else {
                u64::from(more > 0)
            };
            buf.clear();
            return Ok((total - ending, false)); // the record's bytes, without its line end
        }
    }
}

/// A blank-line paragraph being gathered: from its first line, its bytes, or only their count
/// once it is larger than a record may be.
enum Paragraph {
    Closed,
    Open { start: u64, text: Vec<u8> },
    TooLarge { start: u64, bytes: u64 },
}

impl Paragraph {
    /// Adds a non-blank line (`None`: one too long to have been kept, of `bytes` bytes).
    fn add(&mut self, line_no: u64, line: Option<&[u8]>, bytes: u64) {
        *self = match std::mem::replace(self, Paragraph::Closed) {
            Paragraph::Closed => Paragraph::Open {
                start: line_no,
                text: Vec::new(),
            },
            open => open,
        }
        .with(line, bytes);
    }

    fn with(self, line: Option<&[u8]>, bytes: u64) -> Paragraph {
        match (self, line) {
            (Paragraph::Open { start, mut text }, Some(line))
                if text.len() + line.len() < MAX_RECORD_BYTES =>
            {
                if !text.is_empty() {
                    text.push(b'\n');
                }
                text.extend_from_slice(line);
                Paragraph::Open { start, text }
            }
            (Paragraph::Open { start, text }, _) => Paragraph::TooLarge {
                start,
                bytes: text.len() as u64 + bytes,
            },
            (
                Paragraph::TooLarge {
                    start,
                    bytes: so_far,
                },
                _,
            ) => Paragraph::TooLarge {
                start,
                bytes: so_far + bytes,
            },
            (Paragraph::Closed, _) => unreachable!("add opens the paragraph first"),
        }
    }

    /// The record of the paragraph that a blank line (or the end of the file) closes.
    fn close(&mut self) -> Option<RawRecord> {
        match std::mem::replace(self, Paragraph::Closed) {
            Paragraph::Closed => None,
            Paragraph::Open { start, text } => Some(RawRecord {
                line: start,
                kind: RawKind::Text(text),
            }),
            Paragraph::TooLarge { start, bytes } => Some(RawRecord {
                line: start,
                kind: RawKind::TooLarge(bytes),
            }),
        }
    }
}

fn read_lines(
    file: &InputFile,
    doc_sep: DocSep,
    json: bool,
    visit: &mut dyn FnMut(RawRecord, u64) -> Result<Flow>,
) -> Result<Option<FileSummary>> {
    let path = &file.path;
    let mut reader = open_hashing(path)?;
    let mut records = 0u64;
    let mut line_no = 0u64;
    let mut paragraph = Paragraph::Closed;
    loop {
        let mut buf = Vec::new();
        let (n, kept) = read_line(&mut reader, &mut buf).map_err(|e| CoreError::io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if line_no == 1 && buf.starts_with(BOM) {
            buf.drain(..BOM.len()); // Windows editors and Excel exports write one
            if buf.is_empty() {
                break; // a file holding only a BOM is empty: no line, not one empty line
            }
        }
        strip_newline(&mut buf);
        let consumed = reader.get_ref().bytes - reader.buffer().len() as u64;
        let blank = kept && buf.iter().all(u8::is_ascii_whitespace);
        let record = match (doc_sep, json, kept) {
            // JSON Lines: blank lines are allowed and skipped, as `datasets` does.
            (_, true, true) if blank => None,
            (_, true, true) => Some(RawRecord {
                line: line_no,
                kind: RawKind::Json(buf),
            }),
            (DocSep::Line, false, true) => Some(RawRecord {
                line: line_no,
                kind: RawKind::Text(buf),
            }),
            (DocSep::BlankLine, false, _) if blank => paragraph.close(),
            (DocSep::BlankLine, false, _) => {
                paragraph.add(line_no, kept.then_some(buf.as_slice()), n);
                None
            }
            (_, _, false) => Some(RawRecord {
                line: line_no,
                kind: RawKind::TooLarge(n),
            }),
        };
        if let Some(record) = record {
            records += 1;
            if let Flow::Stop = visit(record, consumed)? {
                return Ok(None);
            }
        }
    }
    if let Some(record) = paragraph.close() {
        records += 1;
        if let Flow::Stop = visit(record, file.bytes)? {
            return Ok(None);
        }
    }
    Ok(Some(FileSummary {
        sha256: finish_hash(reader),
        records,
    }))
}

/// Whether the first non-whitespace byte of the file, after a byte-order mark, is `[`.
fn starts_with_array(path: &Path) -> Result<bool> {
    let mut reader = BufReader::new(File::open(path).map_err(|e| CoreError::io(path, e))?);
    let mut start = true;
    loop {
        let buf = reader.fill_buf().map_err(|e| CoreError::io(path, e))?;
        if buf.is_empty() {
            return Ok(false);
        }
        let bom = if start && buf.starts_with(BOM) {
            BOM.len()
        } else {
            0
        };
        start = false;
        let skip = bom
            + buf[bom..]
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
        if skip < buf.len() {
            return Ok(buf[skip] == b'[');
        }
        let len = buf.len();
        reader.consume(len);
    }
}

/// Scans a top-level JSON array, handing out each element's bytes without parsing them,
/// so elements are parsed (and fail) one by one with their own line numbers.
struct ArrayScanner<R> {
    reader: R,
    line: u64,
}

impl<R: BufRead> ArrayScanner<R> {
    fn peek(&mut self) -> std::io::Result<Option<u8>> {
        Ok(self.reader.fill_buf()?.first().copied())
    }

    fn bump(&mut self) -> std::io::Result<Option<u8>> {
        let byte = self.peek()?;
        if let Some(b) = byte {
            self.reader.consume(1);
            if b == b'\n' {
                self.line += 1;
            }
        }
        Ok(byte)
    }

    fn skip_whitespace(&mut self) -> std::io::Result<Option<u8>> {
        loop {
            match self.peek()? {
                Some(b) if b.is_ascii_whitespace() => {
                    self.bump()?;
                }
                other => return Ok(other),
            }
        }
    }

    /// Reads one element up to (not including) the `,` or `]` that ends it at depth 0: its
    /// bytes, or only their count past [`MAX_RECORD_BYTES`].
    fn element(&mut self) -> std::io::Result<RawKind> {
        let mut out = Vec::new();
        let mut len = 0u64;
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        while let Some(b) = self.peek()? {
            let at_top = !in_string && depth == 0;
            if at_top && (b == b',' || b == b']' || b.is_ascii_whitespace()) {
                break;
            }
            self.bump()?;
            len += 1;
            if out.len() < MAX_RECORD_BYTES {
                out.push(b);
            }
            let closed = if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                !in_string
            } else {
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => depth = depth.saturating_sub(1),
                    _ => {}
                }
                matches!(b, b'}' | b']')
            };
            // A string or container that closes at depth 0 ends the element.
            if closed && depth == 0 {
                break;
            }
        }
        Ok(if len > out.len() as u64 {
            RawKind::TooLarge(len)
        } else {
            RawKind::Json(out)
        })
    }
}

fn read_json_array(
    file: &InputFile,
    visit: &mut dyn FnMut(RawRecord, u64) -> Result<Flow>,
) -> Result<Option<FileSummary>> {
    let path = &file.path;
    let io = |e| CoreError::io(path, e);
    let mut scanner = ArrayScanner {
        reader: open_hashing(path)?,
        line: 1,
    };
    let structure = |line: u64, message: &str| {
        CoreError::Record(RecordError {
            path: path.to_path_buf(),
            line,
            field: None,
            reason: "invalid_json",
            message: message.to_string(),
            raw: String::new(),
        })
    };
    // Skip a byte-order mark and whitespace, then expect '['.
    if scanner.reader.fill_buf().map_err(io)?.starts_with(BOM) {
        scanner.reader.consume(BOM.len());
    }
    scanner.skip_whitespace().map_err(io)?;
    if scanner.bump().map_err(io)? != Some(b'[') {
        return Err(structure(scanner.line, "expected a JSON array"));
    }
    let mut records = 0u64;
    let mut expect_element = true;
    loop {
        match scanner.skip_whitespace().map_err(io)? {
            None => return Err(structure(scanner.line, "unterminated JSON array")),
            Some(b']') if expect_element && records > 0 => {
                return Err(structure(scanner.line, "trailing comma in JSON array"))
            }
            Some(b']') => {
                scanner.bump().map_err(io)?;
                break;
            }
            Some(b',') if !expect_element => {
                scanner.bump().map_err(io)?;
                expect_element = true;
            }
            Some(_) if expect_element => {
                let line = scanner.line;
                let kind = scanner.element().map_err(io)?;
                records += 1;
                expect_element = false;
                let hashing = scanner.reader.get_ref();
                let consumed = hashing.bytes - scanner.reader.buffer().len() as u64;
                let record = RawRecord { line, kind };
                if let Flow::Stop = visit(record, consumed)? {
                    return Ok(None);
                }
            }
            Some(_) => return Err(structure(scanner.line, "expected ',' or ']' in JSON array")),
        }
    }
    if scanner.skip_whitespace().map_err(io)?.is_some() {
        return Err(structure(
            scanner.line,
            "unexpected data after the JSON array",
        ));
    }
    // Hash what the scanner did not consume (nothing, normally) by draining the reader.
    let mut reader = scanner.reader;
    std::io::copy(&mut reader, &mut std::io::sink()).map_err(io)?;
    Ok(Some(FileSummary {
        sha256: finish_hash(reader),
        records,
    }))
}

fn read_parquet(
    file: &InputFile,
    column: &str,
    visit: &mut dyn FnMut(RawRecord, u64) -> Result<Flow>,
) -> Result<Option<FileSummary>> {
    let path = &file.path;
    let arrow_err = |e: &dyn std::fmt::Display| CoreError::Arrow {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let handle = File::open(path).map_err(|e| CoreError::io(path, e))?;
    let builder = decoding(path, || ParquetRecordBatchReaderBuilder::try_new(handle))?
        .map_err(|e| arrow_err(&e))?;
    let schema = builder.schema().clone();
    let Some(index) = schema.fields().iter().position(|f| f.name() == column) else {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(CoreError::Format {
            path: path.to_path_buf(),
            message: format!(
                "field '{column}': no such column (columns: {}; pick one with --text-field)",
                names.join(", ")
            ),
        });
    };
    // Checked on the schema, not on the first non-null cell: a column of numbers must not
    // read as rows of nulls (`missing_field`), nor an empty one as fine.
    let data_type = schema.field(index).data_type();
    if !matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return Err(CoreError::Format {
            path: path.to_path_buf(),
            message: format!("field '{column}': expected a string column, found {data_type}"),
        });
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    let total_rows = builder.metadata().file_metadata().num_rows().max(1) as u64;
    let builder = builder.with_projection(mask).with_batch_size(1024);
    let mut batches = decoding(path, || builder.build())?.map_err(|e| arrow_err(&e))?;
    let mut row = 0u64;
    while let Some(batch) = decoding(path, || batches.next())? {
        let batch = batch.map_err(|e| arrow_err(&e))?;
        let array = batch.column(0);
        let cell = |i: usize| -> Result<Option<String>> {
            if array.is_null(i) {
                return Ok(None);
            }
            let any = array.as_any();
            if let Some(a) = any.downcast_ref::<StringArray>() {
                Ok(Some(a.value(i).to_string()))
            } else if let Some(a) = any.downcast_ref::<LargeStringArray>() {
                Ok(Some(a.value(i).to_string()))
            } else if let Some(a) = any.downcast_ref::<StringViewArray>() {
                Ok(Some(a.value(i).to_string()))
            } else {
                Err(CoreError::Format {
                    path: path.to_path_buf(),
                    message: format!(
                        "field '{column}': expected a string column, found {}",
                        array.data_type()
                    ),
                })
            }
        };
        for i in 0..batch.num_rows() {
            row += 1;
            let record = RawRecord {
                line: row,
                kind: RawKind::Cell(cell(i)?),
            };
            // Parquet is columnar and compressed: report progress by rows (of the row count the
            // footer gives, which a corrupt one understates).
            let consumed = (file.bytes * row / total_rows).min(file.bytes);
            if let Flow::Stop = visit(record, consumed)? {
                return Ok(None);
            }
        }
    }
    Ok(Some(FileSummary {
        sha256: sha256_file(path)?,
        records: row,
    }))
}

/// Runs a step of the Parquet decoder, turning a panic into an error naming the file: on
/// corrupt input the parquet and arrow crates sometimes assert instead of failing (a negative
/// column offset in the footer, `ColumnChunkMetaData::byte_range`; bad definition levels in a
/// page, arrow-buffer's "slice must not be empty"). Nothing of the decoder is used after its
/// panic, so its state does not matter (hence `AssertUnwindSafe`).
fn decoding<T>(path: &Path, step: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).map_err(|panic| {
        let detail = (panic.downcast_ref::<&str>().copied())
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("no message");
        CoreError::Arrow {
            path: path.to_path_buf(),
            message: format!("corrupt Parquet file: the decoder failed ({detail})"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(path: &Path, format: Format, doc_sep: DocSep) -> Result<Vec<(u64, Body)>> {
        let file = InputFile {
            path: path.to_path_buf(),
            format,
            bytes: std::fs::metadata(path).unwrap().len(),
            modified: std::fs::metadata(path).unwrap().modified().ok(),
        };
        let options = ReadOptions {
            doc_sep,
            text_column: "text".into(),
        };
        let mut out = Vec::new();
        let mut visit = |record: RawRecord, _: u64| {
            let line = record.line;
            out.push((line, record.parse(path, "text").map_err(CoreError::Record)?));
            Ok(Flow::Continue)
        };
        let summary = read_file(&file, &options, &mut visit)?.unwrap();
        assert_eq!(summary.records as usize, out.len());
        assert_eq!(summary.sha256, sha256_file(path).unwrap());
        Ok(out)
    }

    fn texts(records: &[(u64, Body)]) -> Vec<(u64, String)> {
        records
            .iter()
            .map(|(line, body)| match body {
                Body::Text(t) => (*line, t.clone()),
                Body::Json(v) => (*line, v.to_string()),
            })
            .collect()
    }

    #[test]
    fn text_lines_keep_empty_lines_and_strip_crlf() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, "one\r\n\ntwo  \nthree").unwrap();
        let records = collect(&path, Format::Txt, DocSep::Line).unwrap();
        assert_eq!(
            texts(&records),
            [
                (1, "one".into()),
                (2, "".into()),
                (3, "two  ".into()),
                (4, "three".into())
            ]
        );
    }

    #[test]
    fn blank_line_paragraphs_start_at_their_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, "\n\na\nb\n\n \nc\n").unwrap();
        let records = collect(&path, Format::Txt, DocSep::BlankLine).unwrap();
        assert_eq!(texts(&records), [(3, "a\nb".into()), (7, "c".into())]);
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, b"ok\nbad \xff here\n").unwrap();
        let err = collect(&path, Format::Txt, DocSep::Line).unwrap_err();
        let CoreError::Record(record) = err else {
            panic!("{err}")
        };
        assert_eq!((record.line, record.reason), (2, "invalid_utf8"));
        assert!(record.raw.contains("bad"));
    }

    #[test]
    fn jsonl_skips_blank_lines_and_reports_malformed_json_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(
            &path,
            "{\"text\": \"a\"}\n\n{\"text\": \"b\"}\n{\"text\": \n",
        )
        .unwrap();
        let err = collect(&path, Format::Jsonl, DocSep::Line).unwrap_err();
        let CoreError::Record(record) = err else {
            panic!("{err}")
        };
        assert_eq!((record.line, record.reason), (4, "invalid_json"));
    }

    #[test]
    fn json_array_elements_carry_their_start_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        std::fs::write(
            &path,
            "[\n  {\"text\": \"a, [b]\"},\n  {\"text\":\n    \"c\\\"}\"}\n]\n",
        )
        .unwrap();
        let records = collect(&path, Format::Json, DocSep::Line).unwrap();
        assert_eq!(
            texts(&records),
            [
                (2, r#"{"text":"a, [b]"}"#.into()),
                (3, r#"{"text":"c\"}"}"#.into())
            ]
        );
        // A .json file that is really JSON Lines is read as such.
        std::fs::write(&path, "{\"text\": \"a\"}\n{\"text\": \"b\"}\n").unwrap();
        assert_eq!(collect(&path, Format::Json, DocSep::Line).unwrap().len(), 2);
    }

    #[test]
    fn broken_json_arrays_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        for (text, message) in [
            ("[{\"text\": \"a\"}", "unterminated"),
            ("[{\"text\": \"a\"},]", "trailing comma"),
            ("[{\"text\": \"a\"} {\"text\": \"b\"}]", "expected ','"),
            ("[{\"text\": \"a\"}] x", "after the JSON array"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = collect(&path, Format::Json, DocSep::Line).unwrap_err();
            assert!(err.to_string().contains(message), "{text}: {err}");
        }
    }

    #[test]
    fn a_byte_order_mark_is_skipped_and_crlf_ends_lines_in_every_text_format() {
        let dir = tempfile::tempdir().unwrap();
        let bom = "\u{feff}";
        let cases: [(&str, Format, DocSep, String); 6] = [
            (
                "a.txt",
                Format::Txt,
                DocSep::Line,
                format!("{bom}one\r\ntwo\r\n"),
            ),
            (
                "b.txt",
                Format::Txt,
                DocSep::BlankLine,
                format!("{bom}one\r\n\r\ntwo\r\n"),
            ),
            (
                "a.jsonl",
                Format::Jsonl,
                DocSep::Line,
                format!("{bom}{{\"text\": \"one\"}}\r\n\r\n{{\"text\": \"two\"}}\r\n"),
            ),
            (
                "lines.json",
                Format::Json,
                DocSep::Line,
                format!("{bom}{{\"text\": \"one\"}}\r\n{{\"text\": \"two\"}}\r\n"),
            ),
            (
                "array.json",
                Format::Json,
                DocSep::Line,
                format!("{bom}[{{\"text\": \"one\"}},\r\n{{\"text\": \"two\"}}]\r\n"),
            ),
            (
                "spaced.json",
                Format::Json,
                DocSep::Line,
                format!("{bom}\r\n  [{{\"text\": \"one\"}},\r\n{{\"text\": \"two\"}}]"),
            ),
        ];
        for (name, format, doc_sep, content) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, &content).unwrap();
            let records = collect(&path, format, doc_sep).unwrap();
            let got: Vec<String> = texts(&records)
                .into_iter()
                .map(|(_, text)| text.replace(r#"{"text":"#, "").replace(['"', '}'], ""))
                .collect();
            assert_eq!(got, ["one", "two"], "{name}");
        }
    }

    #[test]
    fn a_file_that_changes_while_it_is_read_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, "{\"text\": \"a\"}\n").unwrap();
        let metadata = std::fs::metadata(&path).unwrap();
        let file = InputFile {
            path: path.clone(),
            format: Format::Jsonl,
            bytes: metadata.len(),
            modified: metadata.modified().ok(),
        };
        // Another program appends after the run took stock of its inputs.
        std::fs::write(&path, "{\"text\": \"a\"}\n{\"text\": \"b\"}\n").unwrap();
        let options = ReadOptions {
            doc_sep: DocSep::Line,
            text_column: "text".into(),
        };
        let err = read_file(&file, &options, &mut |_, _| Ok(Flow::Continue)).unwrap_err();
        assert!(
            err.to_string().contains("changed while it was read"),
            "{err}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}
