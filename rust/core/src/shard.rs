//! Writing record batches into Arrow IPC *stream* shards, the layout `datasets.save_to_disk` uses.
//!
//! Shards are uncompressed (`datasets` memory-maps them; compressed IPC would be decompressed into
//! memory) and roll over once they pass a size limit. Their final names
//! (`data-00000-of-00003.arrow`) need the total, which a streaming writer only knows at the end,
//! so shards are written under provisional names and renamed by [`ShardWriter::finish`].

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::SchemaRef;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{CoreError, Result};
use crate::reader::hex;

/// One finished shard, as the manifest records it.
#[derive(Debug, Clone, Serialize)]
pub struct ShardInfo {
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter {
    inner: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct OpenShard {
    path: PathBuf,
    writer: StreamWriter<HashingWriter>,
    rows: u64,
}

/// What a [`ShardWriter`] wrote: shard files, or (in memory) the batches themselves.
pub struct Shards {
    pub files: Vec<ShardInfo>,
    pub batches: Vec<RecordBatch>,
}

/// Streams batches into size-limited shards inside `dir`, or keeps them in memory (the batch
/// transform's output: the rows go back to the caller, not to files).
pub struct ShardWriter {
    dir: PathBuf,
    /// `Some` for a writer that keeps its batches instead of writing files.
    memory: Option<Vec<RecordBatch>>,
    schema: SchemaRef,
    max_shard_bytes: u64,
    current: Option<OpenShard>,
    done: Vec<(PathBuf, ShardInfo)>,
}

impl ShardWriter {
    /// `max_shard_bytes`: a shard is closed once it holds at least this many bytes.
    pub fn new(dir: &Path, schema: SchemaRef, max_shard_bytes: u64) -> Result<ShardWriter> {
        if max_shard_bytes == 0 {
            return Err(CoreError::config("shard-size", "must be positive"));
        }
        Ok(ShardWriter {
            dir: dir.to_path_buf(),
            memory: None,
            schema,
            max_shard_bytes,
            current: None,
            done: Vec::new(),
        })
    }

    /// A writer that keeps the batches it is given, for [`ShardWriter::finish`] to return.
    pub fn in_memory(schema: SchemaRef) -> ShardWriter {
        ShardWriter {
            dir: PathBuf::new(),
            memory: Some(Vec::new()),
            schema,
            max_shard_bytes: u64::MAX,
            current: None,
            done: Vec::new(),
        }
    }

    fn arrow_error(path: &Path, e: impl std::fmt::Display) -> CoreError {
        CoreError::Arrow {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }

    /// Starts the next shard under a provisional name.
    fn open(&self) -> Result<OpenShard> {
        let path = self
            .dir
            .join(format!("data-{:05}.arrow.partial", self.done.len()));
        let file = File::create(&path).map_err(|e| CoreError::io(&path, e))?;
        let sink = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            bytes: 0,
        };
        let writer =
            StreamWriter::try_new(sink, &self.schema).map_err(|e| Self::arrow_error(&path, e))?;
        Ok(OpenShard {
            path,
            writer,
            rows: 0,
        })
    }

    /// Appends one batch, opening a new shard when needed.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if let Some(batches) = &mut self.memory {
            batches.push(batch.clone());
            return Ok(());
        }
        if self.current.is_none() {
            self.current = Some(self.open()?);
        }
        let shard = self.current.as_mut().expect("opened above");
        shard
            .writer
            .write(batch)
            .map_err(|e| Self::arrow_error(&shard.path, e))?;
        shard.rows += batch.num_rows() as u64;
        if shard.writer.get_ref().bytes >= self.max_shard_bytes {
            self.close_current()?;
        }
        Ok(())
    }

    fn close_current(&mut self) -> Result<()> {
        let Some(mut shard) = self.current.take() else {
            return Ok(());
        };
        shard
            .writer
            .finish()
            .map_err(|e| Self::arrow_error(&shard.path, e))?;
        let sink = shard
            .writer
            .into_inner()
            .map_err(|e| Self::arrow_error(&shard.path, e))?;
        let HashingWriter {
            inner,
            hasher,
            bytes,
        } = sink;
        let file = inner
            .into_inner()
            .map_err(|e| CoreError::io(&shard.path, e.into_error()))?;
        file.sync_all().map_err(|e| CoreError::io(&shard.path, e))?;
        let info = ShardInfo {
            file: String::new(),
            rows: shard.rows,
            bytes,
            sha256: hex(&hasher.finalize()),
        };
        self.done.push((shard.path, info));
        Ok(())
    }

    /// Closes the last shard and gives every shard its final name. With no rows at all, one
    /// empty shard is written so that readers still find the schema.
    pub fn finish(mut self) -> Result<Shards> {
        if let Some(batches) = self.memory.take() {
            return Ok(Shards {
                files: Vec::new(),
                batches,
            });
        }
        self.close_current()?;
        if self.done.is_empty() {
            let mut shard = self.open()?;
            let batch = RecordBatch::new_empty(self.schema.clone());
            shard
                .writer
                .write(&batch)
                .map_err(|e| Self::arrow_error(&shard.path, e))?;
            self.current = Some(shard);
            self.close_current()?;
        }
        let total = self.done.len();
        let mut shards = Vec::with_capacity(total);
        for (index, (partial, mut info)) in self.done.into_iter().enumerate() {
            info.file = format!("data-{index:05}-of-{total:05}.arrow");
            let target = self.dir.join(&info.file);
            std::fs::rename(&partial, &target).map_err(|e| CoreError::io(&partial, e))?;
            shards.push(info);
        }
        Ok(Shards {
            files: shards,
            batches: Vec::new(),
        })
    }
}

/// Parses a size such as `500MB`, `2GiB`, `1000000` (bytes) — the spelling of `datasets`'
/// `max_shard_size`.
pub fn parse_size(text: &str) -> Result<u64> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        _ => 0,
    };
    match number.parse::<f64>() {
        Ok(value) if scale > 0 && value > 0.0 => Ok((value * scale as f64) as u64),
        _ => Err(CoreError::config(
            "shard-size",
            format!("'{text}' is not a size like 500MB, 2GiB or 1000000"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_datasets_max_shard_size() {
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5kb").unwrap(), 1500);
        assert_eq!(parse_size("123").unwrap(), 123);
        assert!(parse_size("0").is_err());
        assert!(parse_size("ten MB").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}
