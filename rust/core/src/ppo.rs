//! `prep ppo`: prompts for rollouts, rendered with the generation prompt.
//!
//! Any conversation or preference layout gives a prompt (a final assistant turn is dropped
//! and kept as the reference answer), as do `{"prompt"}`, `{"query"}` and
//! `{"question","answer"?}` records. Columns: `input_ids`, `attention_mask`, `query` (the
//! rendered prompt text) and `reference` (null where the record has no answer). Prompts longer
//! than `--max-prompt-length` keep their end, or are dropped with `--overlong drop`.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use serde_json::{json, Value};

use crate::chat_prep::{
    json_object, layout_of, prep_chat, with_default_system, ChatOptions, ChatRun, ChatStage,
    Overlong,
};
use crate::conversation::{self, Layout};
use crate::encoder::Encoder;
use crate::error::Result;
use crate::manifest::Manifest;
use crate::pipeline::{Outcome, Stage};
use crate::reader::RawRecord;
use crate::rows::{Cell, Item};
use crate::run::Output;
use crate::template::{ChatTemplate, RenderOptions};

/// One prompt.
pub struct PromptRow {
    ids: Vec<i32>,
    query: String,
    reference: Option<String>,
    truncated: bool,
}

/// Runs `prep ppo` and returns the manifest it wrote.
pub fn prep_ppo(options: &ChatOptions, cancel: &AtomicBool) -> Result<Manifest> {
    prep_chat(ChatStage::Ppo, options, cancel)
}

/// Runs `prep ppo` over `run`'s records.
pub fn ppo(run: ChatRun<'_>, options: &ChatOptions, cancel: &AtomicBool) -> Result<Output> {
    let stage = PromptStage {
        encoder: run.tokenizer().encoder(),
        template: run.template,
        render: run.render,
        options,
    };
    let columns = [
        ("input_ids", Item::Int32),
        ("attention_mask", Item::Int8),
        ("query", Item::Text),
        ("reference", Item::Text),
    ];
    let (mut tokens, mut truncated, mut references) = (0u64, 0u64, 0u64);
    let pending = run.run(options, &stage, &columns, cancel, |row, batcher| {
        tokens += row.ids.len() as u64;
        truncated += u64::from(row.truncated);
        references += u64::from(row.reference.is_some());
        batcher.push(&[
            Cell::Ints(&row.ids),
            Cell::Ints(&vec![1; row.ids.len()]),
            Cell::Text(Some(&row.query)),
            Cell::Text(row.reference.as_deref()),
        ])?;
        Ok(row.ids.len() as u64)
    })?;
    let written = pending.close()?;
    let stage_options = json!({"max_prompt_length": options.max_prompt_length});
    let stage_info = json!({
        "prompts": written.0.totals.counts.written,
        "with_reference": references,
        "truncated": truncated,
    });
    let tokens = json!({"written": tokens});
    run.finish(options, written, stage_options, tokens, stage_info, cancel)
}

struct PromptStage<'a> {
    encoder: &'a dyn Encoder,
    template: &'a ChatTemplate,
    render: &'a RenderOptions,
    options: &'a ChatOptions,
}

impl Stage for PromptStage<'_> {
    type Row = PromptRow;

    fn process(&self, record: RawRecord, path: &Path) -> Result<Outcome<PromptRow>> {
        let record = match json_object(record, path) {
            Ok(record) => record,
            Err(outcome) => return Ok(outcome),
        };
        let layout = match layout_of(&record, self.options.layout, &Layout::ALL) {
            Ok(layout) => layout,
            Err(outcome) => return Ok(outcome),
        };
        let problem = |reason, field, message| record.problem(reason, field, message);
        let mut prompt = match conversation::prompt(&record.map, layout, self.options.same_role) {
            Ok(prompt) => prompt,
            Err(p) => return Ok(record.unusable(p)),
        };
        with_default_system(&mut prompt.prompt.messages, self.options.system.as_deref());
        let options = RenderOptions {
            tools: prompt.prompt.tools.clone(),
            add_generation_prompt: true,
            ..self.render.clone()
        };
        let messages = Value::Array(prompt.prompt.messages);
        let query = match self.template.render(&messages, &options) {
            Ok(rendered) => rendered.text,
            Err(e) => return Ok(Outcome::Bad(problem("template_error", None, e.to_string()))),
        };
        let ids = self.encoder.encode(&query, false)?;
        let mut ids: Vec<i32> = ids.into_iter().map(|id| id as i32).collect();
        let limit = self.options.max_prompt_length;
        let mut truncated = false;
        if ids.len() > limit {
            if self.options.overlong == Overlong::Drop {
                let message = format!("prompt of {} tokens > {limit}", ids.len());
                return Ok(Outcome::Dropped(problem("prompt_too_long", None, message)));
            }
            ids.drain(..ids.len() - limit);
            truncated = true;
        }
        Ok(Outcome::Row(PromptRow {
            ids,
            query,
            reference: prompt.reference,
            truncated,
        }))
    }
}
