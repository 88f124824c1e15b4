//! ferrotune-core: the data engine behind `ferrotune prep`.
//!
//! Pure Rust, no Python: readers for text, JSON and Parquet corpora ([`reader`]), HuggingFace
//! tokenization ([`tokenizer`]), block packing ([`pack`]), Arrow IPC shards ([`shard`]) written
//! atomically ([`output`]) with a manifest ([`manifest`]). Chat templates render conversations
//! byte-identically to transformers ([`template`]). [`pt::prep_pt`] ties them together
//! for pretraining data. The Python bindings live in `rust/python`.

pub mod chat;
pub mod chat_prep;
pub mod conversation;
pub mod encoder;
pub mod error;
pub mod fingerprint;
pub mod folder;
pub mod input;
pub mod manifest;
pub mod mask;
pub mod output;
pub mod pack;
pub mod pipeline;
pub mod ppo;
pub mod preference;
pub mod progress;
pub mod pt;
pub mod reader;
pub mod rows;
pub mod run;
pub mod sft;
pub mod shard;
pub mod template;
pub mod tokenizer;
pub mod tokenizer_file;
pub mod transform;
pub mod vocabulary;

pub use chat_prep::ChatOptions;
pub use error::{CoreError, RecordError, Result};
pub use pipeline::EmptyPolicy;
pub use pt::{prep_pt, PtOptions};
pub use run::CommonOptions;
pub use sft::prep_sft;
pub use template::{ChatTemplate, RenderOptions, Rendered};
