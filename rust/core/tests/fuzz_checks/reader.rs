//! The readers: any bytes, in any format, become records or a file-level error, never a panic.
//!
//! Promises checked (reader.rs): every record the reader hands out parses to a [`Body`] or a
//! [`RecordError`] with one of [`REASONS`], on the file's path and the record's own line; the
//! summary counts exactly the records handed out and hashes exactly the file's bytes; a file
//! that cannot be read as a whole is a [`CoreError`] naming the path. Where an independent
//! reference exists the records must also be the right ones: the lines or paragraphs of a text
//! file split here without the reader's code, the elements of a `.json` array that serde_json
//! parses whole, the cells of a Parquet file written here and left intact.

use std::path::Path;

use arbitrary::{Result, Unstructured};
use arrow_array::{ArrayRef, Int64Array, LargeStringArray, RecordBatch, StringArray};
use arrow_array::{StringViewArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use ferrotune_core::input::{resolve_inputs, Format};
use ferrotune_core::reader::{read_file, Body, DocSep, FileSummary, Flow, RawKind, ReadOptions};
use ferrotune_core::{CoreError, RecordError};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{layouts, pick};

/// Every reason a reader's record may be refused for (`RawRecord::parse`; the `.json` array
/// scanner also reports a broken array as `invalid_json`).
pub const REASONS: [&str; 4] = ["invalid_utf8", "invalid_json", "too_large", "missing_field"];

/// The UTF-8 byte-order mark, which every text reader skips at the start of a file.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// An input format, with the text reader's two ways of splitting documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    TxtLines,
    TxtParagraphs,
    Jsonl,
    Json,
    Parquet,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::TxtLines,
        Kind::TxtParagraphs,
        Kind::Jsonl,
        Kind::Json,
        Kind::Parquet,
    ];

    fn format(self) -> Format {
        match self {
            Kind::TxtLines | Kind::TxtParagraphs => Format::Txt,
            Kind::Jsonl => Format::Jsonl,
            Kind::Json => Format::Json,
            Kind::Parquet => Format::Parquet,
        }
    }

    fn doc_sep(self) -> DocSep {
        match self {
            Kind::TxtParagraphs => DocSep::BlankLine,
            _ => DocSep::Line,
        }
    }
}

/// What an intact Parquet file written by [`parquet_file`] must read as.
#[derive(Debug, Clone, PartialEq)]
pub enum ParquetExpect {
    /// The `text` column's cells, in order (`None`: null).
    Cells(Vec<Option<String>>),
    /// A `text` column that is not a string column.
    NotStrings,
    /// No `text` column.
    NoTextColumn,
}

/// One input file.
#[derive(Debug, Clone)]
pub struct Case {
    pub kind: Kind,
    pub bytes: Vec<u8>,
    /// For a Parquet file written here and not damaged after: what it must read as.
    pub parquet: Option<ParquetExpect>,
}

/// A case drawn from `u`: raw bytes, near-valid JSON or text lines, a `.json` array, or a real
/// Parquet file, damaged or not.
pub fn case(u: &mut Unstructured<'_>) -> Result<Case> {
    let kind = pick(u, &Kind::ALL)?;
    let mut parquet = None;
    let bytes = match (kind, u.choose_index(4)?) {
        (_, 0) => u.bytes(u.len())?.to_vec(),
        (Kind::Parquet, _) => {
            let (bytes, expect) = parquet_file(u)?;
            parquet = expect;
            bytes
        }
        (Kind::Json, 1 | 2) => json_array(u)?,
        _ => lines(u)?,
    };
    Ok(Case {
        kind,
        bytes,
        parquet,
    })
}

/// Lines of near-valid JSON and text, with the usual damage: a BOM, CRLF, NUL bytes, invalid
/// UTF-8, truncation, whitespace-only lines, deep nesting.
fn lines(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if u.ratio(1, 4)? {
        out.extend_from_slice(BOM);
    }
    for _ in 0..u.int_in_range(0..=10)? {
        out.extend(line(u)?);
        let ending: &[u8] = pick(u, &[&b"\n"[..], b"\r\n", b"\n\n", b"\r\n \r\n", b"\x0c\n"])?;
        out.extend_from_slice(ending);
    }
    if u.ratio(1, 3)? {
        while out.last().is_some_and(|b| b"\r\n".contains(b)) {
            out.pop(); // the last line without its line end
        }
    }
    Ok(out)
}

/// One line (or `.json` array element): JSON, damaged JSON, or text.
fn line(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(&layouts::value(u, 3)?).expect("a JSON value serializes");
    let at = |u: &mut Unstructured<'_>, len: usize| u.int_in_range(0..=len);
    Ok(match u.choose_index(9)? {
        0 | 1 => json,
        2 => {
            let cut = at(u, json.len())?; // may split a UTF-8 sequence
            json[..cut].to_vec()
        }
        3 => {
            let bad: &[u8] = pick(u, &[&b"\xff"[..], b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf"])?;
            splice(json.clone(), at(u, json.len())?, bad)
        }
        4 => {
            let splice_in: &[u8] = pick(u, &[&b"\0"[..], BOM, b"\r", b"\"", b"\\"])?;
            splice(json.clone(), at(u, json.len())?, splice_in)
        }
        5 => {
            let depth = pick(u, &[1, 127, 128, 129, 1000, 100_000])?;
            let open: &[u8] = pick(u, &[&b"["[..], b"{\"a\":"])?;
            let mut out = open.repeat(depth);
            if u.arbitrary()? {
                let close: &[u8] = if open == b"[" { b"]" } else { b"}" };
                out.extend(close.repeat(depth));
            }
            out
        }
        6 => pick(u, &[&b""[..], b" ", b"\t", b"\x0c", b"\r", BOM])?.to_vec(),
        7 => u.arbitrary::<String>()?.into_bytes(),
        _ => u.arbitrary::<Vec<u8>>()?,
    })
}

fn splice(mut bytes: Vec<u8>, at: usize, insert: &[u8]) -> Vec<u8> {
    bytes.splice(at..at, insert.iter().copied());
    bytes
}

/// A `.json` top-level array of near-valid elements, with broken punctuation now and then.
fn json_array(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let space = |u: &mut Unstructured<'_>| pick(u, &[&b""[..], b" ", b"\n", b"\r\n  ", b"\t"]);
    let mut out = Vec::new();
    if u.ratio(1, 4)? {
        out.extend_from_slice(BOM);
    }
    out.extend_from_slice(space(u)?);
    out.push(b'[');
    for i in 0..u.int_in_range(0..=8)? {
        if i > 0 {
            out.extend_from_slice(pick(u, &[&b","[..], b",", b",", b"", b",,"])?);
        }
        out.extend_from_slice(space(u)?);
        if u.ratio(3, 4)? {
            let value = layouts::value(u, 3)?;
            let pretty = u.arbitrary::<bool>()?;
            let text = if pretty {
                serde_json::to_vec_pretty(&value)
            } else {
                serde_json::to_vec(&value)
            };
            out.extend(text.expect("a JSON value serializes"));
        } else {
            out.extend(line(u)?);
        }
        out.extend_from_slice(space(u)?);
    }
    let end: &[u8] = pick(
        u,
        &[&b"]"[..], b"]", b"]\n", b",]", b"", b"]]", b"] x", b"}"],
    )?;
    out.extend_from_slice(end);
    Ok(out)
}

/// A real Parquet file with a nullable `text` column (of several string types, or not a string
/// column, or named otherwise), then maybe truncated, bit-flipped or overwritten somewhere.
fn parquet_file(u: &mut Unstructured<'_>) -> Result<(Vec<u8>, Option<ParquetExpect>)> {
    let rows = u.int_in_range(0..=30)?;
    let mut cells = Vec::with_capacity(rows);
    for _ in 0..rows {
        cells.push(if u.ratio(1, 5)? {
            None
        } else {
            Some(layouts::string(u)?)
        });
    }
    let text_type = pick(
        u,
        &[
            DataType::Utf8,
            DataType::LargeUtf8,
            DataType::Utf8View,
            DataType::Int64,
        ],
    )?;
    let text: ArrayRef = match text_type {
        DataType::Utf8 => std::sync::Arc::new(StringArray::from(cells.clone())),
        DataType::LargeUtf8 => std::sync::Arc::new(LargeStringArray::from(cells.clone())),
        DataType::Utf8View => std::sync::Arc::new(StringViewArray::from(cells.clone())),
        _ => {
            let numbers: Vec<Option<i64>> = cells
                .iter()
                .map(|c| c.as_ref().map(|t| t.len() as i64))
                .collect();
            std::sync::Arc::new(Int64Array::from(numbers))
        }
    };
    let name = if u.ratio(1, 8)? { "body" } else { "text" };
    let ids: ArrayRef = std::sync::Arc::new(UInt32Array::from_iter_values(0..rows as u32));
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("id", DataType::UInt32, false),
        Field::new(name, text_type.clone(), true),
    ]));
    let batch = RecordBatch::try_new(schema.clone(), vec![ids, text]).expect("columns fit");
    let compression = pick(
        u,
        &[
            Compression::UNCOMPRESSED,
            Compression::SNAPPY,
            Compression::ZSTD(ZstdLevel::default()),
            Compression::LZ4_RAW,
            Compression::GZIP(GzipLevel::default()),
        ],
    )?;
    let properties = WriterProperties::builder()
        .set_compression(compression)
        .set_dictionary_enabled(u.arbitrary()?)
        .set_max_row_group_row_count(Some(u.int_in_range(1..=32)?))
        .set_data_page_row_count_limit(u.int_in_range(1..=32)?)
        .build();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, schema, Some(properties)).expect("a writer");
    writer.write(&batch).expect("a batch writes");
    writer.close().expect("the file closes");

    let written = bytes.clone();
    match u.choose_index(4)? {
        0 => {}
        1 => bytes.truncate(u.int_in_range(0..=bytes.len())?),
        2 => {
            let at = u.choose_index(bytes.len())?;
            bytes[at] ^= 1 << u.int_in_range(0..=7)?;
        }
        _ => {
            let at = u.choose_index(bytes.len())?;
            let patch: Vec<u8> = u.arbitrary()?;
            let end = (at + patch.len()).min(bytes.len());
            bytes[at..end].copy_from_slice(&patch[..end - at]);
        }
    }
    let intact = bytes == written;
    let expect = match (name, text_type) {
        ("text", DataType::Int64) => ParquetExpect::NotStrings,
        ("text", _) => ParquetExpect::Cells(cells),
        _ => ParquetExpect::NoTextColumn,
    };
    Ok((bytes, intact.then_some(expect)))
}

/// A record as the reader handed it out, before parsing.
#[derive(Debug, Clone, PartialEq)]
enum Raw {
    Text(Vec<u8>),
    Json(Vec<u8>),
    Cell(Option<String>),
    TooLarge(u64),
}

impl Raw {
    fn of(kind: &RawKind) -> Raw {
        match kind {
            RawKind::Text(bytes) => Raw::Text(bytes.clone()),
            RawKind::Json(bytes) => Raw::Json(bytes.clone()),
            RawKind::Cell(cell) => Raw::Cell(cell.clone()),
            RawKind::TooLarge(bytes) => Raw::TooLarge(*bytes),
        }
    }

    fn bytes(&self) -> Option<&[u8]> {
        match self {
            Raw::Text(bytes) | Raw::Json(bytes) => Some(bytes),
            _ => None,
        }
    }
}

/// One record seen by the visitor: its line, as read, and as parsed.
struct Seen {
    line: u64,
    raw: Raw,
    parsed: std::result::Result<Body, RecordError>,
}

/// Reads `case` through `resolve_inputs` and `read_file` and checks everything the reader
/// promises; returns what `read_file` returned, for regression tests to look closer.
pub fn check(case: &Case) -> ferrotune_core::Result<Option<FileSummary>> {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir
        .path()
        .join(format!("input.{}", case.kind.format().name()));
    std::fs::write(&path, &case.bytes).expect("the input writes");
    let files = resolve_inputs(&[path.to_string_lossy().into_owned()], None)
        .expect("an existing file with a known extension resolves");
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].format, case.kind.format());
    let options = ReadOptions {
        doc_sep: case.kind.doc_sep(),
        text_column: "text".into(),
    };

    let mut seen: Vec<Seen> = Vec::new();
    let mut progress = 0u64;
    let result = read_file(&files[0], &options, &mut |record, consumed| {
        assert!(
            consumed >= progress,
            "progress went back: {consumed} < {progress}"
        );
        assert!(
            consumed <= case.bytes.len() as u64,
            "progress {consumed} past the file's end"
        );
        progress = consumed;
        let (line, raw) = (record.line, Raw::of(&record.kind));
        let parsed = record.parse(&path, "text");
        check_record(&path, line, &raw, &parsed, seen.last().map(|s| s.line));
        seen.push(Seen { line, raw, parsed });
        Ok(Flow::Continue)
    });

    match &result {
        Ok(Some(summary)) => {
            assert_eq!(summary.records, seen.len() as u64, "records counted");
            assert_eq!(summary.sha256, sha256_hex(&case.bytes), "the file's hash");
        }
        Ok(None) => panic!("the visitor never stops the reader"),
        Err(error) => check_file_error(&path, error),
    }

    if let Some(expected) = reference_records(case.kind, &case.bytes) {
        assert!(result.is_ok(), "a text file always reads: {result:?}");
        let got: Vec<(u64, &[u8])> = seen
            .iter()
            .map(|s| (s.line, s.raw.bytes().unwrap()))
            .collect();
        let expected: Vec<(u64, &[u8])> =
            expected.iter().map(|(n, b)| (*n, b.as_slice())).collect();
        assert_eq!(got, expected, "the records of a {:?} file", case.kind);
    }
    if let Some(elements) = json_array_elements(case.kind, &case.bytes) {
        assert!(result.is_ok(), "a valid JSON array reads: {result:?}");
        let got: Vec<&Value> = seen
            .iter()
            .map(|s| match &s.parsed {
                Ok(Body::Json(value)) => value,
                other => panic!("an element of a valid array is JSON, got {other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            elements.iter().collect::<Vec<_>>(),
            "the array's elements"
        );
    }
    match &case.parquet {
        None => {}
        Some(ParquetExpect::Cells(cells)) => {
            assert!(result.is_ok(), "an intact Parquet file reads: {result:?}");
            let got: Vec<&Raw> = seen.iter().map(|s| &s.raw).collect();
            let expected: Vec<Raw> = cells.iter().cloned().map(Raw::Cell).collect();
            assert_eq!(
                got,
                expected.iter().collect::<Vec<_>>(),
                "the Parquet cells"
            );
        }
        Some(expect) => {
            let words = match expect {
                ParquetExpect::NotStrings => "expected a string column",
                _ => "no such column",
            };
            match &result {
                Err(CoreError::Format { message, .. }) if message.contains(words) => {}
                other => panic!("expected a format error '{words}', got {other:?}"),
            }
        }
    }
    result
}

/// Checks one record: its line, and that parsing gave a body of its kind or a known reason.
fn check_record(
    path: &Path,
    line: u64,
    raw: &Raw,
    parsed: &std::result::Result<Body, RecordError>,
    previous_line: Option<u64>,
) {
    assert!(line >= 1, "lines are 1-based");
    assert!(
        previous_line.is_none_or(|p| p <= line),
        "lines go forward: {previous_line:?}, {line}"
    );
    match (raw, parsed) {
        (Raw::Text(_) | Raw::Cell(Some(_)), Ok(Body::Text(_))) => {}
        (Raw::Json(_), Ok(Body::Json(_))) => {}
        (_, Ok(body)) => panic!("{raw:?} parsed as {body:?}"),
        (_, Err(error)) => {
            assert!(
                REASONS.contains(&error.reason),
                "unknown reason {:?}",
                error.reason
            );
            assert_eq!(
                (error.path.as_path(), error.line),
                (path, line),
                "where the error is"
            );
            let expected: &[&str] = match raw {
                Raw::Text(_) => &["invalid_utf8"],
                Raw::Json(_) => &["invalid_utf8", "invalid_json"],
                Raw::TooLarge(_) => &["too_large"],
                Raw::Cell(_) => &["missing_field"],
            };
            assert!(
                expected.contains(&error.reason),
                "{raw:?} refused as {}",
                error.reason
            );
            assert!(error.to_string().contains(&path.display().to_string()));
        }
    }
}

/// A file-level error: of a kind a broken file can cause, naming the file.
fn check_file_error(path: &Path, error: &CoreError) {
    match error {
        CoreError::Record(record) => {
            assert!(
                REASONS.contains(&record.reason),
                "unknown reason {:?}",
                record.reason
            );
            assert_eq!(record.path, path);
        }
        CoreError::Format { .. } | CoreError::Arrow { .. } => {}
        other => panic!("a broken file gave {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "the error names the file: {message}"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The lines of a text file, split here independently of the reader: `\n` ends a line (a final
/// one starts none), a `\r` before it is dropped, a BOM at the start of the file is skipped.
fn split_lines(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
    let mut pieces: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if pieces.last().is_some_and(|p| p.is_empty()) {
        pieces.pop();
    }
    let mut lines: Vec<(u64, Vec<u8>)> = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let has_newline = i + 1 < pieces.len() || bytes.ends_with(b"\n");
        let piece = match piece.strip_suffix(b"\r") {
            Some(stripped) if has_newline => stripped,
            _ => piece,
        };
        lines.push((i as u64 + 1, piece.to_vec()));
    }
    lines
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// What a text-like file must read as; `None` for Parquet and for `.json` arrays.
fn reference_records(kind: Kind, bytes: &[u8]) -> Option<Vec<(u64, Vec<u8>)>> {
    let lines = split_lines(bytes);
    match kind {
        Kind::Parquet => None,
        Kind::Json if starts_with_array(bytes) => None,
        Kind::TxtLines => Some(lines),
        Kind::Jsonl | Kind::Json => Some(lines.into_iter().filter(|(_, l)| !is_blank(l)).collect()),
        Kind::TxtParagraphs => {
            let mut paragraphs: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut open = false;
            for (number, line) in lines {
                if is_blank(&line) {
                    open = false;
                } else if open {
                    let text = &mut paragraphs.last_mut().expect("an open paragraph").1;
                    text.push(b'\n');
                    text.extend(line);
                } else {
                    paragraphs.push((number, line));
                    open = true;
                }
            }
            Some(paragraphs)
        }
    }
}

/// Whether a `.json` file is a top-level array (its first byte past a BOM and whitespace is `[`).
fn starts_with_array(bytes: &[u8]) -> bool {
    let bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// The elements of a `.json` file that serde_json parses whole as an array.
fn json_array_elements(kind: Kind, bytes: &[u8]) -> Option<Vec<Value>> {
    if kind != Kind::Json || !starts_with_array(bytes) {
        return None;
    }
    match serde_json::from_slice(bytes.strip_prefix(BOM).unwrap_or(bytes)) {
        Ok(Value::Array(elements)) => Some(elements),
        _ => None,
    }
}
