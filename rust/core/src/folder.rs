//! An output folder written from batches made elsewhere: the rows a batch transform returned
//! inside Ray Data or Spark, or the shards of several `prep` runs being merged.
//!
//! The folder is staged and published atomically like `prep`'s, with the `datasets` metadata
//! and a manifest the caller assembled (summed over the batches or the merged folders) and this
//! writer completes with what it wrote: rows, shards with their sha256, and columns. PT
//! documents are packed here, in the order they arrive, so documents written in input order
//! give the blocks of one `prep pt` run.

use std::sync::atomic::AtomicBool;

use arrow_array::cast::AsArray;
use arrow_array::RecordBatch;
use arrow_schema::{DataType, SchemaRef};
use serde_json::{json, Value};

use crate::error::{CoreError, Result};
use crate::output::{publish, write_file, Staging};
use crate::pack::{LastBlock, LastBlockOutcome, Packer};
use crate::pt::{block_batch_rows, pt_schema, BlockBatcher};
use crate::rows::describe;
use crate::shard::{ShardInfo, ShardWriter};

/// A folder being written.
pub struct FolderWriter {
    staging: Staging,
    shard_size: u64,
    body: Body,
}

enum Body {
    /// Rows written as they come; the first batch sets the schema.
    Rows {
        writer: Option<Box<(SchemaRef, ShardWriter)>>,
        rows: u64,
    },
    /// PT documents packed into blocks.
    Blocks {
        packer: Packer,
        batcher: Box<BlockBatcher>,
        last_block: LastBlock,
        pad_id: u32,
        documents: u64,
        tokens: u64,
    },
}

impl FolderWriter {
    /// A folder of rows written as they come.
    pub fn rows(out: &std::path::Path, overwrite: bool, shard_size: u64) -> Result<Self> {
        Ok(FolderWriter {
            staging: Staging::create(out, overwrite)?,
            shard_size,
            body: Body::Rows {
                writer: None,
                rows: 0,
            },
        })
    }

    /// A PT folder: documents (an `input_ids` list column, EOS included) packed into blocks.
    pub fn blocks(
        out: &std::path::Path,
        overwrite: bool,
        shard_size: u64,
        block_size: usize,
        last_block: LastBlock,
        pad_id: u32,
    ) -> Result<Self> {
        let staging = Staging::create(out, overwrite)?;
        let schema = pt_schema(block_size);
        let writer = ShardWriter::new(staging.path(), schema.clone(), shard_size)?;
        let batch_rows = block_batch_rows(block_size, shard_size);
        Ok(FolderWriter {
            staging,
            shard_size,
            body: Body::Blocks {
                packer: Packer::new(block_size)?,
                batcher: Box::new(BlockBatcher::new(block_size, batch_rows, writer, schema)),
                last_block,
                pad_id,
                documents: 0,
                tokens: 0,
            },
        })
    }

    /// Appends one batch: rows as they are (their schema must be the first batch's), or PT
    /// documents to pack.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        match &mut self.body {
            Body::Rows { writer, rows } => {
                if writer.is_none() {
                    let schema = batch.schema();
                    let shards =
                        ShardWriter::new(self.staging.path(), schema.clone(), self.shard_size)?;
                    *writer = Some(Box::new((schema, shards)));
                }
                let (schema, shards) = &mut **writer.as_mut().expect("opened above");
                if batch.schema().fields() != schema.fields() {
                    return Err(CoreError::Arrow {
                        path: self.staging.path().to_path_buf(),
                        message: format!(
                            "a batch's columns differ from the first batch's: [{}] vs [{}]",
                            columns(&batch.schema()),
                            columns(schema)
                        ),
                    });
                }
                *rows += batch.num_rows() as u64;
                shards.write(batch)
            }
            Body::Blocks {
                packer,
                batcher,
                documents,
                tokens,
                ..
            } => {
                let column = batch
                    .column_by_name("input_ids")
                    .ok_or_else(|| CoreError::Arrow {
                        path: "<documents>".into(),
                        message: "PT documents need an input_ids column".into(),
                    })?;
                let lists = match column.data_type() {
                    DataType::List(_) => column.as_list::<i32>(),
                    other => {
                        return Err(CoreError::Arrow {
                            path: "<documents>".into(),
                            message: format!("input_ids is {other}, expected list<int32>"),
                        })
                    }
                };
                let mut ids: Vec<u32> = Vec::new();
                for document in lists.iter().flatten() {
                    let values = document.as_primitive::<arrow_array::types::Int32Type>();
                    ids.clear();
                    ids.extend(values.values().iter().map(|&v| v as u32));
                    *documents += 1;
                    *tokens += ids.len() as u64;
                    packer.push_document(&ids, batcher.as_mut())?;
                }
                Ok(())
            }
        }
    }

    /// Writes a file beside the shards (`rejects.jsonl`).
    pub fn write_file(&self, name: &str, contents: &[u8]) -> Result<()> {
        write_file(self.staging.path(), name, contents)
    }

    /// Completes `manifest` with what was written (rows, shards, columns; for PT the blocks'
    /// tokens and the last block's fate) and publishes the folder. Returns the manifest.
    pub fn finish(
        self,
        mut manifest: Value,
        description: &str,
        cancel: &AtomicBool,
    ) -> Result<Value> {
        let (schema, rows, shards): (SchemaRef, u64, Vec<ShardInfo>) = match self.body {
            Body::Rows { writer, rows } => match writer.map(|boxed| *boxed) {
                Some((schema, shards)) => (schema, rows, shards.finish()?.files),
                None => {
                    return Err(CoreError::config(
                        "columns",
                        "no batch arrived, so the folder's columns are unknown",
                    ))
                }
            },
            Body::Blocks {
                packer,
                mut batcher,
                last_block,
                pad_id,
                documents: _,
                tokens,
            } => {
                let outcome = packer.finish(last_block, pad_id, batcher.as_mut())?;
                let dropped = match outcome {
                    LastBlockOutcome::Dropped { tokens } => tokens as u64,
                    _ => 0,
                };
                let schema = batcher_schema(&manifest)?;
                let (written, blocks) = batcher.finish(schema.clone())?;
                manifest["tokens"] = json!({
                    "documents": tokens,
                    "written": blocks.real_tokens,
                    "labels": blocks.real_tokens,
                    "padding": blocks.padding,
                    "dropped": dropped,
                });
                manifest["stage_info"]["last_block"] = json!(outcome);
                if let Some(info) = manifest["stage_info"].as_object_mut() {
                    info.remove("packed");
                }
                (schema, written.rows, written.shards.files)
            }
        };
        manifest["rows"] = json!(rows);
        manifest["options"]["shard_size"] = json!(self.shard_size);
        manifest["shards"] = serde_json::to_value(&shards).expect("serializable");
        manifest["columns"] = serde_json::to_value(describe(&schema)).expect("serializable");
        publish(self.staging, &manifest, &shards, description, cancel)?;
        Ok(manifest)
    }
}

/// The PT shard schema for the manifest's block size.
fn batcher_schema(manifest: &Value) -> Result<SchemaRef> {
    let block_size = manifest["options"]["block_size"]
        .as_u64()
        .ok_or_else(|| CoreError::config("block-size", "the manifest has no block_size"))?;
    Ok(pt_schema(block_size as usize))
}

fn columns(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}
