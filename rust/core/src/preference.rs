//! `prep rm` and `prep dpo`: preference pairs → a shared prompt and two answers, tokenized.
//!
//! Per pair: the prompt is rendered once with the generation prompt; prompt + chosen and
//! prompt + rejected are rendered whole; all three are tokenized once. As TRL's DPO trainer
//! does, the prompt is the longest token prefix the prompt shares with both full renderings
//! (templates such as Qwen3's render a final answer with an extra header, and tokens can merge
//! across the boundary), and each answer is the rest of its rendering. So our DPO labels mask
//! the prompt exactly where TRL's `completion_mask` does.
//!
//! Lengths: the prompt keeps its end (`--max-prompt-length`), answers keep their start (the rest
//! of `--max-length`); with `--overlong drop` such pairs are dropped instead. Pairs whose answers
//! are identical are dropped (`identical_pair`): they carry no preference.
//!
//! RM with `--margin-field NAME`: each record's number `NAME` goes to a `margin` column, which the
//! reward loss subtracts (−log σ(r_chosen − r_rejected − margin), as TRL's RewardTrainer); a
//! record without it, or with a non-number, is a bad record naming the field.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use serde_json::{json, Value};

use crate::chat_prep::{
    json_object, layout_of, prep_chat, with_default_system, ChatOptions, ChatRun, ChatStage,
    Overlong, RecordAt,
};
use crate::conversation::{self, Layout};
use crate::encoder::Encoder;
use crate::error::{CoreError, RecordError, Result};
use crate::manifest::Manifest;
use crate::pipeline::{Outcome, Stage};
use crate::reader::RawRecord;
use crate::rows::{Cell, Item};
use crate::run::Output;
use crate::template::{ChatTemplate, RenderOptions};

/// Which preference stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reward modelling: the two full sequences.
    Rm,
    /// DPO: prompt, and each full sequence with labels -100 over the prompt.
    Dpo,
}

const LAYOUTS: [Layout; 3] = [
    Layout::MedicalGptPreference,
    Layout::LegacyPreference,
    Layout::TrlPreference,
];

/// One tokenized pair.
pub struct PairRow {
    prompt: Vec<i32>,
    chosen: Vec<i32>,
    rejected: Vec<i32>,
    prompt_truncated: bool,
    answer_truncated: bool,
    /// The prompt alone tokenized differently from the start of the full rendering.
    prefix_mismatch: bool,
    /// RM's margin, read from `--margin-field`.
    margin: Option<f32>,
}

/// Runs `prep rm` or `prep dpo` and returns the manifest it wrote.
pub fn prep_pairs(kind: Kind, options: &ChatOptions, cancel: &AtomicBool) -> Result<Manifest> {
    prep_chat(ChatStage::Pairs(kind), options, cancel)
}

/// Runs `prep rm` or `prep dpo` over `run`'s records.
pub fn pairs(
    kind: Kind,
    run: ChatRun<'_>,
    options: &ChatOptions,
    cancel: &AtomicBool,
) -> Result<Output> {
    if kind == Kind::Dpo && options.margin_field.is_some() {
        return Err(CoreError::config(
            "margin-field",
            "only `prep rm` writes a margin column",
        ));
    }
    let stage = PairStage {
        encoder: run.tokenizer().encoder(),
        template: run.template,
        render: run.render,
        options,
    };
    let with_margin = options.margin_field.is_some();
    let columns: &[(&str, Item)] = match kind {
        Kind::Rm if with_margin => &[
            ("input_ids_chosen", Item::Int32),
            ("attention_mask_chosen", Item::Int8),
            ("input_ids_rejected", Item::Int32),
            ("attention_mask_rejected", Item::Int8),
            ("margin", Item::Float32),
        ],
        Kind::Rm => &[
            ("input_ids_chosen", Item::Int32),
            ("attention_mask_chosen", Item::Int8),
            ("input_ids_rejected", Item::Int32),
            ("attention_mask_rejected", Item::Int8),
        ],
        Kind::Dpo => &[
            ("prompt_input_ids", Item::Int32),
            ("prompt_attention_mask", Item::Int8),
            ("chosen_input_ids", Item::Int32),
            ("chosen_attention_mask", Item::Int8),
            ("chosen_labels", Item::Int32),
            ("rejected_input_ids", Item::Int32),
            ("rejected_attention_mask", Item::Int8),
            ("rejected_labels", Item::Int32),
        ],
    };
    let mut totals = [0u64; 6]; // prompt, chosen, rejected tokens; 3 counters below
    let pending = run.run(options, &stage, columns, cancel, |pair, batcher| {
        totals[0] += pair.prompt.len() as u64;
        totals[1] += pair.chosen.len() as u64;
        totals[2] += pair.rejected.len() as u64;
        totals[3] += u64::from(pair.prompt_truncated);
        totals[4] += u64::from(pair.answer_truncated);
        totals[5] += u64::from(pair.prefix_mismatch);
        let full = |answer: &[i32]| [pair.prompt.as_slice(), answer].concat();
        let (chosen, rejected) = (full(&pair.chosen), full(&pair.rejected));
        let ones = |ids: &[i32]| vec![1; ids.len()];
        match kind {
            Kind::Rm => {
                let cells = [
                    Cell::Ints(&chosen),
                    Cell::Ints(&ones(&chosen)),
                    Cell::Ints(&rejected),
                    Cell::Ints(&ones(&rejected)),
                    Cell::Float(pair.margin.unwrap_or(0.0)),
                ];
                batcher.push(&cells[..if with_margin { 5 } else { 4 }])?
            }
            Kind::Dpo => {
                let labels = |answer: &[i32]| {
                    let mut labels = vec![-100; pair.prompt.len()];
                    labels.extend_from_slice(answer);
                    labels
                };
                batcher.push(&[
                    Cell::Ints(&pair.prompt),
                    Cell::Ints(&ones(&pair.prompt)),
                    Cell::Ints(&chosen),
                    Cell::Ints(&ones(&chosen)),
                    Cell::Ints(&labels(&pair.chosen)),
                    Cell::Ints(&rejected),
                    Cell::Ints(&ones(&rejected)),
                    Cell::Ints(&labels(&pair.rejected)),
                ])?
            }
        }
        Ok((chosen.len() + rejected.len()) as u64)
    })?;
    let written = pending.close()?;
    let pairs = written.0.totals.counts.written;
    let stage_options = json!({
        "max_prompt_length": options.max_prompt_length,
        "margin_field": options.margin_field,
    });
    let tokens = json!({
        "prompt": totals[0],
        "chosen": totals[1],
        "rejected": totals[2],
        "written": 2 * totals[0] + totals[1] + totals[2],
    });
    let stage_info = json!({
        "pairs": pairs,
        "truncated_prompts": totals[3],
        "truncated_answers": totals[4],
        "prompt_prefix_mismatches": totals[5],
    });
    run.finish(options, written, stage_options, tokens, stage_info, cancel)
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Rm => "rm",
            Kind::Dpo => "dpo",
        }
    }
}

/// The length of the common prefix of two token sequences.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

struct PairStage<'a> {
    encoder: &'a dyn Encoder,
    template: &'a ChatTemplate,
    render: &'a RenderOptions,
    options: &'a ChatOptions,
}

impl PairStage<'_> {
    /// The record's `--margin-field` value: a finite number, or a bad record naming the field.
    fn margin(&self, record: &RecordAt) -> std::result::Result<Option<f32>, RecordError> {
        let Some(name) = &self.options.margin_field else {
            return Ok(None);
        };
        let field = Some(name.clone());
        match record.map.get(name) {
            Some(Value::Number(n)) if n.as_f64().is_some_and(f64::is_finite) => {
                Ok(n.as_f64().map(|v| v as f32))
            }
            Some(_) => Err(record.problem(
                "wrong_type",
                field,
                format!("`{name}` (--margin-field) must be a number"),
            )),
            None => Err(record.problem(
                "missing_field",
                field,
                format!("no `{name}` (--margin-field) in this record"),
            )),
        }
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encoder.encode(text, false)
    }
}

impl Stage for PairStage<'_> {
    type Row = PairRow;

    fn process(&self, record: RawRecord, path: &Path) -> Result<Outcome<PairRow>> {
        let record = match json_object(record, path) {
            Ok(record) => record,
            Err(outcome) => return Ok(outcome),
        };
        let layout = match layout_of(&record, self.options.layout, &LAYOUTS) {
            Ok(layout) => layout,
            Err(outcome) => return Ok(outcome),
        };
        let problem = |reason, field, message| record.problem(reason, field, message);
        let mut pair = match conversation::preference(&record.map, layout, self.options.same_role) {
            Ok(pair) => pair,
            Err(p) => return Ok(record.unusable(p)),
        };
        let margin = match self.margin(&record) {
            Ok(margin) => margin,
            Err(e) => return Ok(Outcome::Bad(e)),
        };
        if pair.chosen == pair.rejected {
            let message = "chosen and rejected are identical".to_string();
            return Ok(Outcome::Dropped(problem("identical_pair", None, message)));
        }
        with_default_system(&mut pair.prompt.messages, self.options.system.as_deref());
        let options = RenderOptions {
            tools: pair.prompt.tools.clone(),
            ..self.render.clone()
        };
        let render = |messages: Vec<Value>, generation_prompt: bool| {
            let options = RenderOptions {
                add_generation_prompt: generation_prompt,
                ..options.clone()
            };
            self.template
                .render(&Value::Array(messages), &options)
                .map(|r| r.text)
        };
        let prompt_messages = pair.prompt.messages.clone();
        let with = |answer: &[Value]| [prompt_messages.as_slice(), answer].concat();
        let texts = render(prompt_messages.clone(), true).and_then(|prompt| {
            Ok((
                prompt,
                render(with(&pair.chosen), false)?,
                render(with(&pair.rejected), false)?,
            ))
        });
        let (prompt_text, chosen_text, rejected_text) = match texts {
            Ok(texts) => texts,
            Err(e) => return Ok(Outcome::Bad(problem("template_error", None, e.to_string()))),
        };
        let prompt_ids = self.encode(&prompt_text)?;
        let chosen_ids = self.encode(&chosen_text)?;
        let rejected_ids = self.encode(&rejected_text)?;
        let shared =
            common_prefix(&prompt_ids, &chosen_ids).min(common_prefix(&prompt_ids, &rejected_ids));
        let as_i32 = |ids: &[u32]| ids.iter().map(|&id| id as i32).collect::<Vec<i32>>();
        let mut row = PairRow {
            prompt: as_i32(&prompt_ids[..shared]),
            chosen: as_i32(&chosen_ids[shared..]),
            rejected: as_i32(&rejected_ids[shared..]),
            prompt_truncated: false,
            answer_truncated: false,
            prefix_mismatch: shared < prompt_ids.len(),
            margin,
        };
        if row.chosen.is_empty() || row.rejected.is_empty() {
            let message = "an answer renders to no tokens".to_string();
            return Ok(Outcome::Dropped(problem("empty_answer", None, message)));
        }
        let drop = self.options.overlong == Overlong::Drop;
        let max_prompt = self
            .options
            .max_prompt_length
            .min(self.options.max_length - 1);
        if row.prompt.len() > max_prompt {
            if drop {
                let message = format!("prompt of {} tokens > {max_prompt}", row.prompt.len());
                return Ok(Outcome::Dropped(problem("prompt_too_long", None, message)));
            }
            row.prompt.drain(..row.prompt.len() - max_prompt);
            row.prompt_truncated = true;
        }
        let budget = self.options.max_length - row.prompt.len();
        for answer in [&mut row.chosen, &mut row.rejected] {
            if answer.len() > budget {
                if drop {
                    let message = format!(
                        "an answer does not fit in --max-length {}",
                        self.options.max_length
                    );
                    return Ok(Outcome::Dropped(problem("too_long", None, message)));
                }
                answer.truncate(budget);
                row.answer_truncated = true;
            }
        }
        Ok(Outcome::Row(row))
    }
}
