//! `prep sft`: conversations → rendered with the chat template, tokenized once, labels -100
//! everywhere but the assistant answers, optionally packed.
//!
//! Per record, on a worker thread: parse → normalise the layout ([`conversation`]) → render
//! with the template → locate the answers ([`mask`]) → tokenize the rendering once without
//! added special tokens → labels → length policy. Conversations that end on a user turn, have
//! nothing to learn, or are too long (with `--overlong drop`) are dropped and counted by reason.
//! With `--pack`, rows are filled best-fit-decreasing up to `--max-length` tokens with
//! `position_ids` restarting at each conversation.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use serde_json::{json, Map, Value};

use crate::chat_prep::{
    json_object, layout_of, prep_chat, with_default_system, ChatOptions, ChatRun, ChatStage,
    Overlong,
};
use crate::conversation::{self, Layout};
use crate::encoder::Encoder;
use crate::error::Result;
use crate::manifest::Manifest;
use crate::mask;
use crate::pack::BestFit;
use crate::pipeline::{Outcome, Stage};
use crate::reader::RawRecord;
use crate::rows::{Cell, Item, RowBatcher};
use crate::run::Output;
use crate::template::{ChatTemplate, RenderOptions};

/// Conversations per packing window: bounded memory, and large enough that best-fit finds
/// good fits (rows come out over 98% full on MedicalGPT's SFT files).
const PACK_WINDOW: usize = 8192;

/// The layouts SFT reads.
const LAYOUTS: [Layout; 3] = [Layout::ShareGpt, Layout::OpenAi, Layout::Alpaca];

/// One tokenized conversation.
pub struct SftRow {
    ids: Vec<i32>,
    labels: Vec<i32>,
    truncated: bool,
}

/// Runs `prep sft` and returns the manifest it wrote.
pub fn prep_sft(options: &ChatOptions, cancel: &AtomicBool) -> Result<Manifest> {
    prep_chat(ChatStage::Sft, options, cancel)
}

/// Runs `prep sft` over `run`'s records.
pub fn sft(run: ChatRun<'_>, options: &ChatOptions, cancel: &AtomicBool) -> Result<Output> {
    let stage = SftStage {
        encoder: run.tokenizer().encoder(),
        template: run.template,
        render: run.render,
        end_tokens: run.tokenizer().special_token_strings(),
        options,
    };
    let mut columns = vec![
        ("input_ids", Item::Int32),
        ("attention_mask", Item::Int8),
        ("labels", Item::Int32),
    ];
    if options.pack {
        columns.push(("position_ids", Item::Int32));
    }
    let mut stats = Stats::default();
    let mut packer: BestFit<SftRow> = BestFit::new(options.max_length, PACK_WINDOW);
    let write_packed = |row: Vec<SftRow>, batcher: &mut RowBatcher| -> Result<()> {
        let mut ids = Vec::new();
        let mut labels = Vec::new();
        let mut positions = Vec::new();
        for sequence in &row {
            ids.extend_from_slice(&sequence.ids);
            labels.extend_from_slice(&sequence.labels);
            positions.extend(0..sequence.ids.len() as i32);
        }
        let mask = vec![1; ids.len()];
        batcher.push(&[
            Cell::Ints(&ids),
            Cell::Ints(&mask),
            Cell::Ints(&labels),
            Cell::Ints(&positions),
        ])
    };
    let mut pending = run.run(options, &stage, &columns, cancel, |row, batcher| {
        stats.add(&row);
        let len = row.ids.len();
        if options.pack {
            packer.push(len, row, &mut |packed| write_packed(packed, batcher))?;
        } else {
            let mask = vec![1; len];
            batcher.push(&[
                Cell::Ints(&row.ids),
                Cell::Ints(&mask),
                Cell::Ints(&row.labels),
            ])?;
        }
        Ok(len as u64)
    })?;
    if options.pack {
        packer.flush(&mut |packed| write_packed(packed, &mut pending.batcher))?;
    }
    let written = pending.close()?;
    let capacity = written.1.rows * options.max_length as u64;
    let stage_options = json!({"learn": options.learn.name(), "pack": options.pack});
    let tokens = json!({
        "written": stats.tokens,
        "labels": stats.label_tokens,
        "label_share": stats.label_tokens as f64 / stats.tokens.max(1) as f64,
        "padding": 0,
    });
    let stage_info = json!({
        "conversations": stats.conversations,
        "truncated": stats.truncated,
        "packed": options.pack,
        "packing_efficiency": if options.pack && capacity > 0 {
            json!(stats.tokens as f64 / capacity as f64)
        } else {
            Value::Null
        },
        "length_histogram": stats.histogram(),
    });
    run.finish(options, written, stage_options, tokens, stage_info, cancel)
}

/// Token and length totals of the written conversations.
#[derive(Default)]
struct Stats {
    conversations: u64,
    tokens: u64,
    label_tokens: u64,
    truncated: u64,
    /// Conversations per length bucket (powers of two).
    buckets: std::collections::BTreeMap<u32, u64>,
}

impl Stats {
    fn add(&mut self, row: &SftRow) {
        self.conversations += 1;
        self.tokens += row.ids.len() as u64;
        self.label_tokens += row.labels.iter().filter(|&&l| l != -100).count() as u64;
        self.truncated += u64::from(row.truncated);
        let bucket = (row.ids.len().max(1) as u64).next_power_of_two() as u32;
        *self.buckets.entry(bucket).or_default() += 1;
    }

    /// `{"≤64": n, "≤128": n, ...}`.
    fn histogram(&self) -> Value {
        let map: Map<String, Value> = self
            .buckets
            .iter()
            .map(|(bucket, count)| (format!("<={bucket}"), json!(count)))
            .collect();
        Value::Object(map)
    }
}

struct SftStage<'a> {
    encoder: &'a dyn Encoder,
    template: &'a ChatTemplate,
    render: &'a RenderOptions,
    end_tokens: Vec<String>,
    options: &'a ChatOptions,
}

impl Stage for SftStage<'_> {
    type Row = SftRow;

    fn process(&self, record: RawRecord, path: &Path) -> Result<Outcome<SftRow>> {
        let record = match json_object(record, path) {
            Ok(record) => record,
            Err(outcome) => return Ok(outcome),
        };
        let layout = match layout_of(&record, self.options.layout, &LAYOUTS) {
            Ok(layout) => layout,
            Err(outcome) => return Ok(outcome),
        };
        let problem = |reason, field, message| record.problem(reason, field, message);
        let mut conversation =
            match conversation::conversation(&record.map, layout, self.options.same_role) {
                Ok(conversation) => conversation,
                Err(p) => return Ok(record.unusable(p)),
            };
        if conversation.messages.is_empty() {
            return Ok(Outcome::Empty(problem("empty", None, "no messages".into())));
        }
        with_default_system(&mut conversation.messages, self.options.system.as_deref());
        if conversation.last_role() != Some("assistant") {
            return Ok(Outcome::Dropped(problem(
                "ends_without_answer",
                None,
                "the conversation does not end with an assistant turn".into(),
            )));
        }
        let render = RenderOptions {
            tools: conversation.tools.clone(),
            ..self.render.clone()
        };
        let messages = Value::Array(conversation.messages.clone());
        let rendered = match self.template.render(&messages, &render) {
            Ok(rendered) => rendered,
            Err(e) => return Ok(Outcome::Bad(problem("template_error", None, e.to_string()))),
        };
        let spans = match mask::learned_spans(
            self.template,
            &conversation.messages,
            &render,
            &rendered.text,
            &rendered.generation_spans,
            &self.end_tokens,
            self.options.learn,
        ) {
            Ok(spans) => spans,
            Err(e) => {
                let field = e.turn.map(|t| format!("turn {t}"));
                let message = format!("template '{}': {}", self.template.name(), e.message);
                return Ok(Outcome::Bad(problem("answer_not_found", field, message)));
            }
        };
        let (ids, offsets) = self.encoder.encode_with_offsets(&rendered.text)?;
        let mut labels = mask::labels(&ids, &offsets, &spans);
        let mut ids: Vec<i32> = ids.into_iter().map(|id| id as i32).collect();
        let mut truncated = false;
        if ids.len() > self.options.max_length {
            if self.options.overlong == Overlong::Drop {
                return Ok(Outcome::Dropped(problem(
                    "too_long",
                    None,
                    format!(
                        "{} tokens > --max-length {}",
                        ids.len(),
                        self.options.max_length
                    ),
                )));
            }
            ids.truncate(self.options.max_length);
            labels.truncate(self.options.max_length);
            truncated = true;
        }
        if labels.iter().all(|&l| l == -100) {
            return Ok(Outcome::Dropped(problem(
                "no_learned_tokens",
                None,
                "no assistant token to learn".into(),
            )));
        }
        Ok(Outcome::Row(SftRow {
            ids,
            labels,
            truncated,
        }))
    }
}
