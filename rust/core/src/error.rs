//! The one error type of the data engine.
//!
//! Every variant carries what a user needs to fix the problem: the file, the line (or row, for
//! Parquet) and the field. The Python bindings map each variant to an exception of
//! `ferrotune.errors` with the same attributes, so nothing is flattened into one generic message.

use std::path::PathBuf;

use thiserror::Error;

/// Why one input record could not be used. Kept separate from [`CoreError`] because with
/// `--skip-bad` a bad record is not an error: it is written to `rejects.jsonl` and counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// The input file the record came from.
    pub path: PathBuf,
    /// 1-based line of the record (its first line for multi-line documents; the row for Parquet).
    pub line: u64,
    /// The field that is wrong, when one is (`text`, or a column name).
    pub field: Option<String>,
    /// A short stable key for counting (`invalid_json`, `invalid_utf8`, `missing_field`, ...).
    pub reason: &'static str,
    /// A human sentence with the details.
    pub message: String,
    /// The record as read (lossy UTF-8), for `rejects.jsonl`.
    pub raw: String,
}

impl RecordError {
    /// The word for where a record sits in its file: Parquet has rows, text files have lines.
    pub fn unit(&self) -> &'static str {
        let is_parquet = self
            .path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("parquet"));
        if is_parquet {
            "row"
        } else {
            "line"
        }
    }
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{} {}", self.path.display(), self.unit(), self.line)?;
        if let Some(field) = &self.field {
            write!(f, ", field '{field}'")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Everything that stops a run.
#[derive(Debug, Error)]
pub enum CoreError {
    /// A bad record, and the run was not asked to skip bad records.
    #[error("{0} (use --skip-bad to write such records to rejects.jsonl and go on)")]
    Record(RecordError),

    /// An input path or glob that matched no readable file.
    #[error("input '{pattern}' matches no file{hint}")]
    NoInput { pattern: String, hint: String },

    /// A file whose format could not be told from its name, or that is not in any supported format.
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },

    /// The tokenizer path is missing or does not hold a usable tokenizer.
    #[error("tokenizer '{path}': {message}")]
    Tokenizer { path: PathBuf, message: String },

    /// An option value that cannot work (block size 0, shard index out of range, ...).
    #[error("invalid option --{option}: {message}")]
    Config { option: String, message: String },

    /// The output folder exists and `--overwrite` was not given.
    #[error("output folder '{0}' already exists (pass --overwrite to replace it)")]
    OutputExists(PathBuf),

    /// A file system error, with the path it happened on.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An Arrow or Parquet error, with the file it happened on.
    #[error("{path}: {message}")]
    Arrow { path: PathBuf, message: String },

    /// A chat template that does not compile, or that fails on a conversation. `message` is
    /// the template's own text when it called `raise_exception`, else the engine's description
    /// (with the line in the template).
    #[error("chat template '{template}': {message}")]
    Template { template: String, message: String },

    /// A bug: a pipeline thread died without reporting why.
    #[error("internal error: {0}")]
    Internal(String),

    /// The run was cancelled (Ctrl-C from Python).
    #[error("cancelled")]
    Cancelled,
}

impl CoreError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }

    /// An invalid option value.
    pub fn config(option: &str, message: impl Into<String>) -> Self {
        CoreError::Config {
            option: option.to_string(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
