//! The streaming pipeline every `prep` stage runs on.
//!
//! ```text
//! reader (1) ──chunks of raw records──▶ workers (N): stage.process ──rows──▶ consumer (1)
//! ```
//!
//! The reader walks the files in order and keeps the records this run owns (`--num-shards`);
//! workers parse, render and tokenize them in parallel; the consumer receives the outcomes
//! strictly in input order, so the output is byte-identical for any number of workers and the
//! first error reported is always the first bad record of the input. Channels are bounded, so
//! memory stays flat however large the corpus.
//!
//! Bad, empty and dropped records are counted here, with their reasons, so every stage's
//! manifest adds up the same way: `read = written + empty + rejected + dropped`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, Sender};
use serde::Serialize;
use serde_json::json;

use crate::error::{CoreError, RecordError, Result};
use crate::input::InputFile;
use crate::manifest::Counts;
use crate::progress::Progress;
use crate::reader::{read_file, FileSummary, Flow, RawKind, RawRecord, ReadOptions};

/// What a stage makes of one record.
pub enum Outcome<R> {
    /// A row (or rows) for the consumer.
    Row(R),
    /// A record with no content: skipped and counted, or a bad record, by [`EmptyPolicy`].
    Empty(RecordError),
    /// A malformed record: an error, or with `--skip-bad` a line in `rejects.jsonl`.
    Bad(RecordError),
    /// A valid record the stage's policy leaves out (too long, nothing to learn): counted by
    /// reason, never an error.
    Dropped(RecordError),
}

/// One preparation stage: turns raw records into rows, on worker threads.
pub trait Stage: Sync {
    type Row: Send;

    /// Processes one record of `path`. An `Err` stops the run (a failure of the machinery, not
    /// of the record: those are [`Outcome::Bad`]).
    fn process(&self, record: RawRecord, path: &Path) -> Result<Outcome<Self::Row>>;
}

/// What to do with a document that has no content.
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

    pub fn name(self) -> &'static str {
        match self {
            EmptyPolicy::Skip => "skip",
            EmptyPolicy::Error => "error",
        }
    }
}

/// The number of worker threads for `--workers N`: N, or one per core for 0.
pub fn resolve_workers(workers: usize) -> usize {
    if workers > 0 {
        workers
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Checks `--num-shards N --shard-index I`.
pub fn check_sharding(num_shards: usize, shard_index: usize) -> Result<()> {
    if num_shards == 0 {
        return Err(CoreError::config("num-shards", "must be at least 1"));
    }
    if shard_index >= num_shards {
        return Err(CoreError::config(
            "shard-index",
            format!(
                "{shard_index} is out of range for --num-shards {num_shards} (0..{num_shards})"
            ),
        ));
    }
    Ok(())
}

/// The records to read and which of them this run owns.
pub struct Source<'a> {
    pub input: Input<'a>,
    pub num_shards: usize,
    pub shard_index: usize,
}

/// Where records come from: files read by the reader thread, or records already in memory
/// (the batch transform's, from an Arrow batch).
pub enum Input<'a> {
    Files(&'a [InputFile], ReadOptions),
    Records(&'a Records),
}

/// Records in memory, each with the index of its path in `paths` (for error reports).
pub struct Records {
    pub paths: Vec<PathBuf>,
    /// Taken by the reader thread: a run consumes its records.
    pub items: std::sync::Mutex<Vec<(usize, RawRecord)>>,
}

impl Input<'_> {
    /// The path behind a record's file index.
    fn path(&self, index: usize) -> &Path {
        match self {
            Input::Files(files, _) => &files[index].path,
            Input::Records(records) => &records.paths[index],
        }
    }

    fn file_count(&self) -> usize {
        match self {
            Input::Files(files, _) => files.len(),
            Input::Records(_) => 0,
        }
    }
}

/// How bad and empty records are handled.
pub struct Policy<'a> {
    pub empty: EmptyPolicy,
    pub rejects: &'a mut Rejects,
}

/// What a run read, besides the rows it handed to the consumer.
pub struct Totals {
    pub counts: Counts,
    /// One per input file, in order.
    pub summaries: Vec<FileSummary>,
    pub busy: Busy,
    /// For records in memory and sharded runs: the file index and line of each written record,
    /// in order.
    pub written_at: Vec<(usize, u64)>,
}

/// CPU seconds each part of the pipeline spent (its threads' own CPU time, so waiting on a
/// channel or for a core does not count): where a run's time went, for the manifest and the
/// summary line.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Busy {
    /// The reader: reading, hashing and splitting the input into records.
    pub read: f64,
    /// The workers, summed: parsing, rendering and encoding records.
    pub process: f64,
    /// The consumer: packing rows and writing shards.
    pub write: f64,
}

/// Raw bytes per chunk, and records per chunk: large enough to amortise channel traffic, small
/// enough that the `2 × workers` chunks in flight stay a few MB.
const CHUNK_BYTES: usize = 1 << 20;
const CHUNK_RECORDS: usize = 2048;

enum Item<R> {
    Raw(usize, RawRecord),
    /// A processed record: its file index, its line, and what it became.
    Done(usize, u64, Outcome<R>),
    FileDone(usize, FileSummary),
}

enum Payload<R> {
    Items(Vec<Item<R>>),
    Failed(CoreError),
}

struct Chunk<R> {
    seq: u64,
    /// Input bytes read when the chunk was cut, over all files.
    bytes_read: u64,
    payload: Payload<R>,
}

/// Runs `stage` over `source` with `workers` threads, handing each row to `consume` in input
/// order; `consume` returns the number of tokens the row added (for progress).
pub fn run<S: Stage>(
    source: &Source<'_>,
    stage: &S,
    workers: usize,
    policy: Policy<'_>,
    cancel: &AtomicBool,
    progress: &mut Progress,
    mut consume: impl FnMut(S::Row) -> Result<u64>,
) -> Result<Totals> {
    let workers = workers.max(1);
    let (work_tx, work_rx) = bounded::<Chunk<S::Row>>(2 * workers);
    let (done_tx, done_rx) = bounded::<Chunk<S::Row>>(2 * workers);
    let stop = AtomicBool::new(false);
    let read_nanos = AtomicU64::new(0);
    let process_nanos = AtomicU64::new(0);
    let consumer_started = thread_cpu();
    let mut counts = Counts::default();
    let mut summaries: Vec<Option<FileSummary>> = vec![None; source.input.file_count()];
    // Say which record each row was: records in memory go back to their caller with their
    // rows, and a sharded run writes its rows' places for `ferrotune merge`.
    let track = matches!(source.input, Input::Records(_)) || source.num_shards > 1;
    let mut written_at = Vec::new();

    std::thread::scope(|scope| -> Result<()> {
        let (stop, read_nanos, process_nanos) = (&stop, &read_nanos, &process_nanos);
        scope.spawn(move || {
            match &source.input {
                Input::Files(files, read) => read_all(source, files, read, work_tx, stop),
                Input::Records(records) => read_records(records, work_tx, stop),
            }
            read_nanos.store(nanos(thread_cpu()), Ordering::Relaxed);
        });
        for _ in 0..workers {
            let (work_rx, done_tx) = (work_rx.clone(), done_tx.clone());
            scope.spawn(move || {
                process_chunks(stage, &source.input, work_rx, done_tx);
                process_nanos.fetch_add(nanos(thread_cpu()), Ordering::Relaxed);
            });
        }
        drop(work_rx);
        drop(done_tx);

        let result = (|| -> Result<()> {
            let mut pending = BTreeMap::new();
            let mut next = 0u64;
            let mut tokens = 0u64;
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
                            Item::Done(file, line, outcome) => {
                                counts.read += 1;
                                match outcome {
                                    Outcome::Row(row) => {
                                        counts.written += 1;
                                        if track {
                                            written_at.push((file, line));
                                        }
                                        tokens += consume(row)?;
                                    }
                                    Outcome::Empty(record) => match policy.empty {
                                        EmptyPolicy::Skip => {
                                            counts.empty += 1;
                                            *counts
                                                .empty_by_reason
                                                .entry(record.reason.to_string())
                                                .or_default() += 1;
                                        }
                                        EmptyPolicy::Error => {
                                            policy.rejects.reject(record, &mut counts)?
                                        }
                                    },
                                    Outcome::Bad(record) => {
                                        policy.rejects.reject(record, &mut counts)?
                                    }
                                    Outcome::Dropped(record) => {
                                        counts.dropped += 1;
                                        *counts
                                            .dropped_by_reason
                                            .entry(record.reason.to_string())
                                            .or_default() += 1;
                                    }
                                }
                            }
                            Item::FileDone(index, summary) => {
                                counts.other_shards += summary.records;
                                summaries[index] = Some(summary);
                            }
                            Item::Raw(..) => unreachable!("workers process every record"),
                        }
                    }
                    progress.update(chunk.bytes_read, tokens);
                }
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
    let summaries = summaries
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            CoreError::Internal("a reader or worker thread stopped without reporting".into())
        })?;
    // `other_shards` gathered every file's record count; keep only the others' share.
    if let Input::Files(..) = source.input {
        counts.other_shards -= counts.read;
    }
    debug_assert!(counts.adds_up());
    let seconds = |nanos: &AtomicU64| nanos.load(Ordering::Relaxed) as f64 / 1e9;
    let busy = Busy {
        read: seconds(&read_nanos),
        process: seconds(&process_nanos),
        write: thread_cpu().saturating_sub(consumer_started).as_secs_f64(),
    };
    Ok(Totals {
        counts,
        summaries,
        busy,
        written_at,
    })
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The CPU time the calling thread has used so far (zero where the platform cannot tell).
fn thread_cpu() -> Duration {
    #[cfg(unix)]
    {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec through a valid pointer.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0 {
            return Duration::new(now.tv_sec as u64, now.tv_nsec as u32);
        }
    }
    Duration::ZERO
}

/// The reader thread: walks the files in order and sends chunks of this run's raw records.
fn read_all<R>(
    source: &Source<'_>,
    files: &[InputFile],
    read: &ReadOptions,
    tx: Sender<Chunk<R>>,
    stop: &AtomicBool,
) {
    let mut seq = 0u64;
    let mut items: Vec<Item<R>> = Vec::with_capacity(CHUNK_RECORDS);
    let mut chunk_bytes = 0usize;
    let mut record_index = 0u64;
    let mut bytes_before = 0u64;
    let mut bytes_read = 0u64;
    let send = |seq: &mut u64, payload: Payload<R>, bytes_read: u64| -> bool {
        let chunk = Chunk {
            seq: *seq,
            bytes_read,
            payload,
        };
        *seq += 1;
        !stop.load(Ordering::Relaxed) && tx.send(chunk).is_ok()
    };
    for (index, file) in files.iter().enumerate() {
        let mut visit = |record: RawRecord, consumed: u64| -> Result<Flow> {
            let mine = record_index % source.num_shards as u64 == source.shard_index as u64;
            record_index += 1;
            if !mine {
                return Ok(Flow::Continue);
            }
            bytes_read = bytes_before + consumed;
            chunk_bytes += match &record.kind {
                RawKind::Text(bytes) | RawKind::Json(bytes) => bytes.len(),
                RawKind::Cell(text) => text.as_ref().map_or(0, String::len),
                RawKind::TooLarge(_) => 0,
            };
            items.push(Item::Raw(index, record));
            if items.len() >= CHUNK_RECORDS || chunk_bytes >= CHUNK_BYTES {
                chunk_bytes = 0;
                let full = std::mem::replace(&mut items, Vec::with_capacity(CHUNK_RECORDS));
                if !send(&mut seq, Payload::Items(full), bytes_read) {
                    return Ok(Flow::Stop);
                }
            }
            Ok(Flow::Continue)
        };
        match read_file(file, read, &mut visit) {
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

/// The reader thread of in-memory records: hands them on in chunks, in order.
fn read_records<R>(records: &Records, tx: Sender<Chunk<R>>, stop: &AtomicBool) {
    let all = std::mem::take(&mut *records.items.lock().expect("not poisoned"));
    let mut seq = 0u64;
    let mut items: Vec<Item<R>> = Vec::with_capacity(CHUNK_RECORDS);
    let mut chunk_bytes = 0usize;
    let mut bytes_read = 0u64;
    let last = all.len();
    for (at, (file, record)) in all.into_iter().enumerate() {
        let bytes = match &record.kind {
            RawKind::Text(bytes) | RawKind::Json(bytes) => bytes.len(),
            RawKind::Cell(text) => text.as_ref().map_or(0, String::len),
            RawKind::TooLarge(_) => 0,
        };
        chunk_bytes += bytes;
        bytes_read += bytes as u64;
        items.push(Item::Raw(file, record));
        if items.len() >= CHUNK_RECORDS || chunk_bytes >= CHUNK_BYTES || at + 1 == last {
            chunk_bytes = 0;
            let full = std::mem::replace(&mut items, Vec::with_capacity(CHUNK_RECORDS));
            let chunk = Chunk {
                seq,
                bytes_read,
                payload: Payload::Items(full),
            };
            seq += 1;
            if stop.load(Ordering::Relaxed) || tx.send(chunk).is_err() {
                return;
            }
        }
    }
}

/// A worker thread: runs the stage on each raw record of each chunk.
fn process_chunks<S: Stage>(
    stage: &S,
    input: &Input<'_>,
    rx: Receiver<Chunk<S::Row>>,
    tx: Sender<Chunk<S::Row>>,
) {
    for mut chunk in rx.iter() {
        if let Payload::Items(items) = chunk.payload {
            let mut done = Vec::with_capacity(items.len());
            let mut failure = None;
            for item in items {
                match item {
                    Item::Raw(file, record) => {
                        let line = record.line;
                        match stage.process(record, input.path(file)) {
                            Ok(outcome) => done.push(Item::Done(file, line, outcome)),
                            Err(error) => {
                                failure = Some(error);
                                break;
                            }
                        }
                    }
                    other => done.push(other),
                }
            }
            chunk.payload = match failure {
                Some(error) => Payload::Failed(error),
                None => Payload::Items(done),
            };
        }
        if tx.send(chunk).is_err() {
            return;
        }
    }
}

/// Bad records: an error, or with `--skip-bad` a line in `rejects.jsonl` (or, for the batch
/// transform, in memory for its caller) and a count.
pub struct Rejects {
    path: PathBuf,
    skip_bad: bool,
    file: Option<BufWriter<File>>,
    /// `Some` when rejects are kept in memory rather than written to `path`.
    lines: Option<Vec<String>>,
}

/// What [`Rejects::finish`] leaves.
pub struct RejectsDone {
    /// `rejects.jsonl` when any record was written to it.
    pub file: Option<&'static str>,
    /// The rejects' lines, when they were kept in memory.
    pub lines: Vec<String>,
}

impl Rejects {
    pub fn new(dir: &Path, skip_bad: bool) -> Rejects {
        Rejects {
            path: dir.join("rejects.jsonl"),
            skip_bad,
            file: None,
            lines: None,
        }
    }

    /// Rejects kept in memory, one JSON line each.
    pub fn in_memory(skip_bad: bool) -> Rejects {
        Rejects {
            path: PathBuf::from("rejects.jsonl"),
            skip_bad,
            file: None,
            lines: Some(Vec::new()),
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
        let line = json!({
            "file": record.path,
            "line": record.line,
            "field": record.field,
            "reason": record.reason,
            "message": record.message,
            "record": record.raw,
        });
        if let Some(lines) = &mut self.lines {
            lines.push(line.to_string());
            return Ok(());
        }
        if self.file.is_none() {
            let file = File::create(&self.path).map_err(|e| CoreError::io(&self.path, e))?;
            self.file = Some(BufWriter::new(file));
        }
        let writer = self.file.as_mut().expect("opened above");
        writeln!(writer, "{line}").map_err(|e| CoreError::io(&self.path, e))
    }

    /// Closes the file.
    pub fn finish(self) -> Result<RejectsDone> {
        let lines = self.lines.unwrap_or_default();
        match self.file {
            Some(mut writer) => {
                writer.flush().map_err(|e| CoreError::io(&self.path, e))?;
                Ok(RejectsDone {
                    file: Some("rejects.jsonl"),
                    lines,
                })
            }
            None => Ok(RejectsDone { file: None, lines }),
        }
    }
}
