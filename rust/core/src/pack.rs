//! Cutting a stream of tokenized documents into fixed `block_size` blocks for pretraining.
//!
//! Documents are concatenated (each followed by EOS when asked) and cut into blocks, as the
//! `group_texts` step of HF's pretraining scripts does. Unlike that step we keep document
//! boundaries: `position_ids` restart at 0 where a document starts *and* where a block starts
//! (a document continuing from the previous block starts a new segment), so a trainer can keep
//! attention inside each segment and positions never exceed `block_size - 1`.
//!
//! The last partial block is padded (attention 0, labels -100, its own position segment) or
//! dropped, by an explicit policy, and reported either way.

use serde::Serialize;

use crate::error::{CoreError, Result};

/// What to do with the tokens left after the last full block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LastBlock {
    Pad,
    Drop,
}

impl LastBlock {
    pub fn parse(name: &str) -> Result<LastBlock> {
        match name {
            "pad" => Ok(LastBlock::Pad),
            "drop" => Ok(LastBlock::Drop),
            other => Err(CoreError::config(
                "last-block",
                format!("'{other}' is not one of pad, drop"),
            )),
        }
    }
}

/// What happened to the tail after the last full block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum LastBlockOutcome {
    /// The tokens filled the last block exactly.
    None,
    /// `tokens` real tokens were kept and `padding` pad tokens added.
    Padded { tokens: usize, padding: usize },
    /// `tokens` real tokens were dropped.
    Dropped { tokens: usize },
}

/// Receives each finished block: `ids` and `positions` of length `block_size`, of which the
/// first `real` tokens are real and the rest padding.
pub trait BlockSink {
    fn push_block(&mut self, ids: &[i32], positions: &[i32], real: usize) -> Result<()>;
}

/// Accumulates documents into blocks.
pub struct Packer {
    block_size: usize,
    ids: Vec<i32>,
    positions: Vec<i32>,
    /// Position of the next token inside its segment.
    next_position: i32,
}

impl Packer {
    pub fn new(block_size: usize) -> Result<Packer> {
        if block_size == 0 {
            return Err(CoreError::config("block-size", "must be at least 1"));
        }
        if block_size > i32::MAX as usize {
            return Err(CoreError::config("block-size", "is too large"));
        }
        Ok(Packer {
            block_size,
            ids: Vec::with_capacity(block_size),
            positions: Vec::with_capacity(block_size),
            next_position: 0,
        })
    }

    /// Appends one document's tokens (already followed by EOS when the caller wants one),
    /// handing each block that fills to `sink`.
    pub fn push_document(&mut self, tokens: &[u32], sink: &mut dyn BlockSink) -> Result<()> {
        self.next_position = 0;
        let mut rest = tokens;
        while !rest.is_empty() {
            let room = self.block_size - self.ids.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            let start = self.next_position;
            self.ids.extend(now.iter().map(|&t| t as i32));
            self.positions
                .extend((0..now.len() as i32).map(|offset| start + offset));
            self.next_position += now.len() as i32;
            if self.ids.len() == self.block_size {
                sink.push_block(&self.ids, &self.positions, self.block_size)?;
                self.ids.clear();
                self.positions.clear();
                self.next_position = 0;
            }
            rest = later;
        }
        Ok(())
    }

    /// Handles the tail by `policy`, padding with `pad_id`.
    pub fn finish(
        mut self,
        policy: LastBlock,
        pad_id: u32,
        sink: &mut dyn BlockSink,
    ) -> Result<LastBlockOutcome> {
        let tokens = self.ids.len();
        if tokens == 0 {
            return Ok(LastBlockOutcome::None);
        }
        match policy {
            LastBlock::Drop => Ok(LastBlockOutcome::Dropped { tokens }),
            LastBlock::Pad => {
                let padding = self.block_size - tokens;
                self.ids.resize(self.block_size, pad_id as i32);
                self.positions.extend(0..padding as i32);
                sink.push_block(&self.ids, &self.positions, tokens)?;
                Ok(LastBlockOutcome::Padded { tokens, padding })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Vec<(Vec<i32>, Vec<i32>, usize)>);

    impl BlockSink for Collect {
        fn push_block(&mut self, ids: &[i32], positions: &[i32], real: usize) -> Result<()> {
            self.0.push((ids.to_vec(), positions.to_vec(), real));
            Ok(())
        }
    }

    #[test]
    fn documents_are_cut_and_positions_restart_per_document_and_block() {
        let mut packer = Packer::new(4).unwrap();
        let mut sink = Collect::default();
        packer.push_document(&[1, 2, 3], &mut sink).unwrap();
        packer.push_document(&[4, 5, 6, 7, 8], &mut sink).unwrap();
        packer.push_document(&[9], &mut sink).unwrap();
        let outcome = packer.finish(LastBlock::Pad, 0, &mut sink).unwrap();
        assert_eq!(
            sink.0,
            [
                (vec![1, 2, 3, 4], vec![0, 1, 2, 0], 4),
                (vec![5, 6, 7, 8], vec![0, 1, 2, 3], 4),
                (vec![9, 0, 0, 0], vec![0, 0, 1, 2], 1),
            ]
        );
        assert_eq!(
            outcome,
            LastBlockOutcome::Padded {
                tokens: 1,
                padding: 3
            }
        );
    }

    #[test]
    fn a_long_document_spans_blocks_and_the_tail_can_be_dropped() {
        let mut packer = Packer::new(3).unwrap();
        let mut sink = Collect::default();
        packer
            .push_document(&[1, 2, 3, 4, 5, 6, 7], &mut sink)
            .unwrap();
        assert_eq!(sink.0.len(), 2);
        assert_eq!(sink.0[1].1, [0, 1, 2]);
        let outcome = packer.finish(LastBlock::Drop, 0, &mut sink).unwrap();
        assert_eq!(outcome, LastBlockOutcome::Dropped { tokens: 1 });
        assert_eq!(sink.0.len(), 2);
    }

    #[test]
    fn an_exact_fit_leaves_no_tail_and_zero_block_size_is_refused() {
        let mut packer = Packer::new(2).unwrap();
        let mut sink = Collect::default();
        packer.push_document(&[1, 2], &mut sink).unwrap();
        assert_eq!(
            packer.finish(LastBlock::Pad, 0, &mut sink).unwrap(),
            LastBlockOutcome::None
        );
        assert!(Packer::new(0).is_err());
    }
}

/// Best-fit-decreasing packing of variable-length sequences into rows of `capacity` tokens.
///
/// Sequences are gathered in windows of `window` sequences (bounded memory, streaming), each
/// window packed longest first into the fullest row it fits. Rows come out in the order they
/// were opened, sequences inside a row in the order they were placed: deterministic.
pub struct BestFit<T> {
    capacity: usize,
    window: usize,
    pending: Vec<(usize, T)>,
}

impl<T> BestFit<T> {
    pub fn new(capacity: usize, window: usize) -> BestFit<T> {
        BestFit {
            capacity,
            window: window.max(1),
            pending: Vec::new(),
        }
    }

    /// Adds a sequence of `len` tokens (at most `capacity`); hands out rows when a window fills.
    pub fn push(
        &mut self,
        len: usize,
        item: T,
        sink: &mut dyn FnMut(Vec<T>) -> Result<()>,
    ) -> Result<()> {
        debug_assert!(len <= self.capacity);
        self.pending.push((len, item));
        if self.pending.len() >= self.window {
            self.flush(sink)?;
        }
        Ok(())
    }

    /// Packs what is pending.
    pub fn flush(&mut self, sink: &mut dyn FnMut(Vec<T>) -> Result<()>) -> Result<()> {
        let mut items: Vec<(usize, Option<T>)> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(len, item)| (len, Some(item)))
            .collect();
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by(|&a, &b| items[b].0.cmp(&items[a].0).then(a.cmp(&b)));
        let mut bins: Vec<Vec<usize>> = Vec::new();
        // (room left, bin index): the best fit is the first entry with room >= len.
        let mut rooms = std::collections::BTreeSet::new();
        for index in order {
            let len = items[index].0;
            let fit = rooms.range((len, 0)..).next().copied();
            match fit {
                Some((room, bin)) => {
                    rooms.remove(&(room, bin));
                    rooms.insert((room - len, bin));
                    bins[bin].push(index);
                }
                None => {
                    rooms.insert((self.capacity - len, bins.len()));
                    bins.push(vec![index]);
                }
            }
        }
        for bin in bins {
            let row = bin
                .into_iter()
                .map(|i| items[i].1.take().expect("each item is placed once"))
                .collect();
            sink(row)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod best_fit_tests {
    use super::*;

    #[test]
    fn best_fit_decreasing_fills_rows_and_keeps_every_sequence() {
        let mut packer = BestFit::new(10, 100);
        let mut rows: Vec<Vec<usize>> = Vec::new();
        let mut sink = |row: Vec<usize>| {
            rows.push(row);
            Ok(())
        };
        for (i, len) in [6, 5, 4, 3, 2, 7, 1].into_iter().enumerate() {
            packer.push(len, i, &mut sink).unwrap();
        }
        packer.flush(&mut sink).unwrap();
        // Longest first: 7 → row0 (3 left), 6 → row1 (4), 5 → row2 (5), 4 → row1 (0),
        // 3 → row0 (0), 2 → row2 (3), 1 → row2 (2).
        assert_eq!(rows, vec![vec![5, 3], vec![0, 2], vec![1, 4, 6]]);
    }
}
