//! `manifest.json`: ferrotune's record of what a prep run read, how, and what it wrote.
//!
//! Its counts always add up — `read = written + empty + rejected + dropped` — so nothing is
//! lost silently,
//! and it pins the inputs and the tokenizer by SHA-256 so a later stage can tell whether its data
//! still matches.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use crate::input::{Format, InputFile};
use crate::reader::FileSummary;
use crate::shard::ShardInfo;
use crate::tokenizer::TokenizerInfo;

/// Bumped when the folder layout or a column changes meaning.
pub const FORMAT_VERSION: u32 = 1;

/// One input file as read.
#[derive(Debug, Clone, Serialize)]
pub struct InputEntry {
    pub path: PathBuf,
    pub format: Format,
    pub bytes: u64,
    pub sha256: String,
    /// Records found in the file (all of them, also those left to other `--shard-index` runs).
    pub records: u64,
}

/// The manifest's inputs: each file with what reading it found.
pub fn input_entries(files: &[InputFile], summaries: &[FileSummary]) -> Vec<InputEntry> {
    files
        .iter()
        .zip(summaries)
        .map(|(file, summary)| InputEntry {
            path: file.path.clone(),
            format: file.format,
            bytes: file.bytes,
            sha256: summary.sha256.clone(),
            records: summary.records,
        })
        .collect()
}

/// What happened to each record this run owns.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Records this run owns (with `--num-shards`, those of its `--shard-index`).
    pub read: u64,
    /// Records whose tokens went into the output.
    pub written: u64,
    /// Records with nothing to train on (an empty document, an empty message), skipped.
    pub empty: u64,
    pub empty_by_reason: BTreeMap<String, u64>,
    /// Bad records (with `--skip-bad`; they are in `rejects.jsonl`).
    pub rejected: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Valid records a stage's policy left out (too long, nothing to learn), by reason.
    pub dropped: u64,
    pub dropped_by_reason: BTreeMap<String, u64>,
    /// Records left to the other `--shard-index` runs.
    pub other_shards: u64,
}

impl Counts {
    /// The invariant every manifest satisfies.
    pub fn adds_up(&self) -> bool {
        self.read == self.written + self.empty + self.rejected + self.dropped
            && self.empty == self.empty_by_reason.values().sum::<u64>()
            && self.rejected == self.rejected_by_reason.values().sum::<u64>()
            && self.dropped == self.dropped_by_reason.values().sum::<u64>()
    }
}

/// The manifest. Stage-specific sections are JSON values so each stage says what it needs.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub format: &'static str,
    pub format_version: u32,
    pub ferrotune_version: &'static str,
    pub stage: &'static str,
    pub inputs: Vec<InputEntry>,
    pub tokenizer: TokenizerInfo,
    /// The encoder engines used, their versions, and how many texts each encoded.
    pub engine: Value,
    /// The chat template used (conversation stages); null for pretraining.
    pub template: Value,
    /// Every option that shapes the output.
    pub options: Value,
    pub counts: Counts,
    /// Token totals (stage-specific keys).
    pub tokens: Value,
    /// Column names and Arrow types of the shards.
    pub columns: Vec<Column>,
    pub rows: u64,
    pub shards: Vec<ShardInfo>,
    /// Stage-specific extras (PT: blocks and the last block's fate).
    pub stage_info: Value,
    /// Where the time went (like `elapsed_seconds`, it differs between identical runs).
    pub timings: Timings,
    /// Wall time of the run. With `timings`, the only fields that differ between identical runs.
    pub elapsed_seconds: f64,
}

/// Where a run's time went: the tokenizer's load and the pipeline (wall seconds), then the CPU
/// seconds of each part of the pipeline. The reader, the workers and the writer run at once, so their times
/// overlap; `process` is summed over the workers.
#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    /// Loading the tokenizer and its engines.
    pub tokenizer: f64,
    /// The pipeline, wall seconds from the first record read to the last row written (the rest
    /// of `elapsed_seconds` is opening the inputs and closing the shards: flush and fsync).
    pub pipeline: f64,
    /// Reading, hashing and splitting the input.
    pub read: f64,
    /// Parsing, rendering and encoding records, summed over the workers.
    pub process: f64,
    /// Packing rows and writing shards.
    pub write: f64,
}

/// A column of the shards.
#[derive(Debug, Clone, Serialize)]
pub struct Column {
    pub name: String,
    pub dtype: String,
}
