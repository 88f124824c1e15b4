//! Variable-length rows (SFT, RM, DPO, PPO): list columns gathered into Arrow record batches.
//!
//! Every list column is held as `i32` while a batch fills (ids, labels, masks alike) and written
//! as `List<int32>` or `List<int8>` (masks) when the batch is flushed to the [`ShardWriter`];
//! text columns (PPO's query and reference answer) are nullable strings, float columns (RM's
//! margin) plain `float32`.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, Float32Array, Int32Array, Int8Array, ListArray, RecordBatch, StringArray,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::error::{CoreError, Result};
use crate::manifest::Column;
use crate::shard::{ShardWriter, Shards};

/// The Arrow type of a column: a list of int32 or int8, a string, or a float32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    Int32,
    Int8,
    Text,
    Float32,
}

/// One cell of a row.
#[derive(Debug, Clone, Copy)]
pub enum Cell<'a> {
    Ints(&'a [i32]),
    Text(Option<&'a str>),
    Float(f32),
}

/// A schema of list columns. Item fields are named `item` and nullable, as pyarrow's defaults.
pub fn list_schema(columns: &[(&str, Item)]) -> SchemaRef {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, item)| Field::new(*name, list_type(*item), true))
        .collect();
    Arc::new(Schema::new(fields))
}

fn list_type(item: Item) -> DataType {
    let item = match item {
        Item::Int32 => DataType::Int32,
        Item::Int8 => DataType::Int8,
        Item::Text => return DataType::Utf8,
        Item::Float32 => return DataType::Float32,
    };
    DataType::List(Arc::new(Field::new("item", item, true)))
}

/// The manifest's description of a schema.
pub fn describe(schema: &SchemaRef) -> Vec<Column> {
    schema
        .fields()
        .iter()
        .map(|f| Column {
            name: f.name().clone(),
            dtype: f.data_type().to_string(),
        })
        .collect()
}

/// Gathers rows into batches of at most `batch_rows` rows.
pub struct RowBatcher {
    schema: SchemaRef,
    items: Vec<Item>,
    values: Vec<Vec<i32>>,
    offsets: Vec<Vec<i32>>,
    texts: Vec<Vec<Option<String>>>,
    floats: Vec<Vec<f32>>,
    batch_rows: usize,
    pending: usize,
    writer: ShardWriter,
    pub rows: u64,
}

impl RowBatcher {
    pub fn new(
        schema: SchemaRef,
        items: Vec<Item>,
        writer: ShardWriter,
        batch_rows: usize,
    ) -> RowBatcher {
        let columns = items.len();
        RowBatcher {
            schema,
            items,
            values: vec![Vec::new(); columns],
            offsets: vec![vec![0]; columns],
            texts: vec![Vec::new(); columns],
            floats: vec![Vec::new(); columns],
            batch_rows: batch_rows.max(1),
            pending: 0,
            writer,
            rows: 0,
        }
    }

    /// Appends one row: one cell per column, in schema order.
    pub fn push(&mut self, row: &[Cell<'_>]) -> Result<()> {
        debug_assert_eq!(row.len(), self.items.len());
        for (column, cell) in row.iter().enumerate() {
            match cell {
                Cell::Ints(values) => {
                    self.values[column].extend_from_slice(values);
                    let end = self.values[column].len() as i32;
                    self.offsets[column].push(end);
                }
                Cell::Text(text) => self.texts[column].push(text.map(str::to_string)),
                Cell::Float(value) => self.floats[column].push(*value),
            }
        }
        self.pending += 1;
        self.rows += 1;
        if self.pending >= self.batch_rows {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.items.len());
        for (column, item) in self.items.iter().enumerate() {
            if *item == Item::Text {
                let texts = std::mem::take(&mut self.texts[column]);
                arrays.push(Arc::new(StringArray::from(texts)));
                continue;
            }
            if *item == Item::Float32 {
                let floats = std::mem::take(&mut self.floats[column]);
                arrays.push(Arc::new(Float32Array::from(floats)));
                continue;
            }
            let values = std::mem::take(&mut self.values[column]);
            let offsets = std::mem::replace(&mut self.offsets[column], vec![0]);
            let values: ArrayRef = match item {
                Item::Int32 => Arc::new(Int32Array::from(values)),
                Item::Int8 => {
                    Arc::new(Int8Array::from_iter_values(values.iter().map(|&v| v as i8)))
                }
                Item::Text | Item::Float32 => unreachable!("built above"),
            };
            let field = Arc::new(Field::new("item", values.data_type().clone(), true));
            let offsets = OffsetBuffer::new(offsets.into());
            arrays.push(Arc::new(ListArray::new(field, offsets, values, None)));
        }
        self.pending = 0;
        let batch =
            RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| CoreError::Arrow {
                path: "<batch>".into(),
                message: e.to_string(),
            })?;
        self.writer.write(&batch)
    }

    /// Flushes and closes the shards.
    pub fn finish(mut self) -> Result<(Shards, u64)> {
        self.flush()?;
        let rows = self.rows;
        Ok((self.writer.finish()?, rows))
    }
}
