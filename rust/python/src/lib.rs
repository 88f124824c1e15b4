//! `ferrotune._native`: the PyO3 face of `ferrotune-core`.
//!
//! Only conversion lives here: Python arguments → core options, the heavy call run with the GIL
//! released, core errors → the exceptions of `ferrotune.errors`. The public API is the Python
//! package (`ferrotune.data.prep_pt`, `ferrotune.data.render_chat_template`); this module is private.

use std::sync::atomic::{AtomicBool, Ordering};

/// mimalloc: tokenization allocates many small vectors per document (words, offsets, ids), and
/// glibc's malloc/free took about a fifth of `prep sft`'s time (perf, 2-core EPYC). Without
/// transparent huge pages (`no_thp`): loading a tokenizer touches ~150 MB once, and zeroing 2 MB
/// pages for it made that load vary from 0.7 to 1.3 s on a VM (0.66–0.70 s with 4 KB pages).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::sync::Arc;

use crossbeam_channel::RecvTimeoutError;
use std::time::Duration;

use ferrotune_core::chat_prep::{self, ChatStage};
use ferrotune_core::encoder::{EngineChoice, IdsAndOffsets};
use ferrotune_core::folder::FolderWriter;
use ferrotune_core::input::Format;
use ferrotune_core::pack::LastBlock;
use ferrotune_core::reader::DocSep;
use ferrotune_core::shard::parse_size;
use ferrotune_core::tokenizer::LoadedTokenizer;
use ferrotune_core::transform::{read_records as read_file_records, Transform};
use ferrotune_core::{
    ChatOptions, ChatTemplate, CommonOptions, CoreError, EmptyPolicy, PtOptions, RenderOptions,
};
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyCapsuleMethods, PyDict};

use arrow_array::ffi_stream::{FFI_ArrowArrayStream, RecordBatchStreamReader};
use arrow_array::{RecordBatch, RecordBatchIterator};
use arrow_schema::{ArrowError, SchemaRef};

/// Raises the `ferrotune.errors` exception that matches a core error, with its attributes set.
fn to_py_err(py: Python<'_>, error: CoreError) -> PyErr {
    let message = error.to_string();
    let raise = |class: &str, kwargs: &[(&str, Option<String>)], line: Option<u64>| {
        let build = || -> PyResult<PyErr> {
            let module = py.import("ferrotune.errors")?;
            let class = module.getattr(class)?;
            let dict = PyDict::new(py);
            for (key, value) in kwargs {
                dict.set_item(key, value)?;
            }
            if let Some(line) = line {
                dict.set_item("line", line)?;
            }
            let instance = class.call((message.clone(),), Some(&dict))?;
            Ok(PyErr::from_value(instance))
        };
        build().unwrap_or_else(|e| e)
    };
    match error {
        CoreError::Record(record) => raise(
            "DataError",
            &[
                ("path", Some(record.path.display().to_string())),
                ("field", record.field.clone()),
                ("reason", Some(record.reason.to_string())),
            ],
            Some(record.line),
        ),
        CoreError::NoInput { pattern, .. } => {
            raise("InputNotFoundError", &[("path", Some(pattern))], None)
        }
        CoreError::Format { path, .. } | CoreError::Arrow { path, .. } => raise(
            "DataError",
            &[("path", Some(path.display().to_string()))],
            None,
        ),
        CoreError::Tokenizer { path, .. } => raise(
            "TokenizerError",
            &[("path", Some(path.display().to_string()))],
            None,
        ),
        CoreError::Config { option, .. } => raise("ConfigError", &[("option", Some(option))], None),
        CoreError::OutputExists(path) => raise(
            "OutputExistsError",
            &[("path", Some(path.display().to_string()))],
            None,
        ),
        CoreError::Io { path, source } => PyOSError::new_err((
            source.raw_os_error().unwrap_or(0),
            source.to_string(),
            path.display().to_string(),
        )),
        CoreError::Template {
            template,
            message: template_message,
        } => raise(
            "TemplateError",
            &[
                ("template", Some(template)),
                ("message", Some(template_message)),
            ],
            None,
        ),
        CoreError::Internal(_) => PyRuntimeError::new_err(message),
        CoreError::Cancelled => PyKeyboardInterrupt::new_err("cancelled"),
    }
}

/// Runs `job` on a thread with the GIL released, checking for Ctrl-C every 100 ms; on an
/// interrupt the job is told to stop (and cleans up its staging folder) before the
/// KeyboardInterrupt propagates.
fn run_interruptible<T: Send + 'static>(
    py: Python<'_>,
    job: impl FnOnce(&AtomicBool) -> Result<T, CoreError> + Send + 'static,
) -> PyResult<T> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    let (tx, rx) = crossbeam_channel::bounded(1);
    let handle = std::thread::spawn(move || {
        let _ = tx.send(job(&flag));
    });
    loop {
        match py.detach(|| rx.recv_timeout(Duration::from_millis(100))) {
            Ok(result) => {
                let _ = handle.join();
                return result.map_err(|e| to_py_err(py, e));
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err("ferrotune's data engine panicked"));
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Err(interrupt) = py.check_signals() {
                    cancel.store(true, Ordering::Relaxed);
                    let _ = py.detach(|| handle.join());
                    return Err(interrupt);
                }
            }
        }
    }
}

/// Tokenizes and packs a pretraining corpus into Arrow shards; returns the manifest as JSON.
#[pyfunction]
#[pyo3(signature = (
    tokenizer, inputs, out, *, block_size=1024, workers=0, text_field="text".to_string(),
    doc_sep="line".to_string(), last_block="pad".to_string(), eos=true, eos_token=None,
    empty="skip".to_string(), skip_bad=false, overwrite=false, quiet=true, num_shards=1,
    shard_index=0, shard_size="500MB".to_string(), input_format=None, engine="auto".to_string()
))]
#[allow(clippy::too_many_arguments)]
fn prep_pt(
    py: Python<'_>,
    tokenizer: std::path::PathBuf,
    inputs: Vec<String>,
    out: std::path::PathBuf,
    block_size: usize,
    workers: usize,
    text_field: String,
    doc_sep: String,
    last_block: String,
    eos: bool,
    eos_token: Option<String>,
    empty: String,
    skip_bad: bool,
    overwrite: bool,
    quiet: bool,
    num_shards: usize,
    shard_index: usize,
    shard_size: String,
    input_format: Option<String>,
    engine: String,
) -> PyResult<String> {
    let options = (|| -> Result<PtOptions, CoreError> {
        let common = CommonOptions {
            workers,
            skip_bad,
            overwrite,
            quiet,
            num_shards,
            shard_index,
            shard_size: parse_size(&shard_size)?,
            engine: EngineChoice::parse(&engine)?,
            ..CommonOptions::new(tokenizer, inputs, out)
        };
        Ok(PtOptions {
            common,
            block_size,
            text_field,
            doc_sep: DocSep::parse(&doc_sep)?,
            last_block: LastBlock::parse(&last_block)?,
            eos,
            eos_token,
            empty: EmptyPolicy::parse(&empty)?,
            format: input_format.as_deref().map(Format::parse).transpose()?,
        })
    })()
    .map_err(|e| to_py_err(py, e))?;
    let manifest = run_interruptible(py, move |cancel| ferrotune_core::prep_pt(&options, cancel))?;
    Ok(serde_json::to_string(&manifest).expect("the manifest serializes"))
}

/// Runs a conversation stage (`sft`, `rm`, `dpo`, `ppo`) with its options as one JSON object;
/// returns the manifest as JSON.
#[pyfunction]
fn prep_chat(py: Python<'_>, stage: &str, options_json: &str) -> PyResult<String> {
    let options = ChatOptions::from_json(options_json).map_err(|e| to_py_err(py, e))?;
    let stage = ChatStage::parse(stage).map_err(|e| to_py_err(py, e))?;
    let manifest = run_interruptible(py, move |cancel| {
        chat_prep::prep_chat(stage, &options, cancel)
    })?;
    Ok(serde_json::to_string(&manifest).expect("the manifest serializes"))
}

/// The built-in chat templates (`--template NAME`), name → Jinja source.
#[pyfunction]
fn builtin_templates() -> Vec<(&'static str, &'static str)> {
    ferrotune_core::chat::BUILTINS.to_vec()
}

/// The fingerprint of a tokenizer (a model folder or a `tokenizer.json`): a SHA-256 over what
/// decides its ids, the same for a file `save_pretrained` re-serialised. The manifest records it
/// as `tokenizer.fingerprint`; the trainers compare a model folder's with this one function, so
/// prep and training agree by construction.
#[pyfunction]
fn tokenizer_fingerprint(py: Python<'_>, path: std::path::PathBuf) -> PyResult<String> {
    py.detach(|| ferrotune_core::fingerprint::fingerprint_path(&path))
        .map_err(|e| to_py_err(py, e))
}

fn parse_json(name: &str, text: &str) -> PyResult<serde_json::Value> {
    serde_json::from_str(text)
        .map_err(|e| PyValueError::new_err(format!("{name}: invalid JSON: {e}")))
}

/// Parses an optional JSON object argument (special tokens, kwargs).
fn parse_json_object(
    name: &str,
    text: Option<&str>,
) -> PyResult<serde_json::Map<String, serde_json::Value>> {
    match text.map(|t| parse_json(name, t)).transpose()? {
        None => Ok(Default::default()),
        Some(serde_json::Value::Object(map)) => Ok(map),
        Some(_) => Err(PyValueError::new_err(format!(
            "{name}: expected a JSON object"
        ))),
    }
}

/// Byte offsets into `text` as character offsets, as Python indexes `str` (one pass over the
/// text, however many spans).
fn char_offsets(text: &str, spans: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut bytes: Vec<usize> = spans
        .iter()
        .flat_map(|&(start, end)| [start, end])
        .collect();
    bytes.sort_unstable();
    bytes.dedup();
    let mut chars = Vec::with_capacity(bytes.len());
    let (mut at, mut count) = (0, 0);
    for &byte in &bytes {
        count += text[at..byte].chars().count();
        at = byte;
        chars.push(count);
    }
    let to_char = |byte: usize| chars[bytes.binary_search(&byte).expect("collected above")];
    spans
        .iter()
        .map(|&(start, end)| (to_char(start), to_char(end)))
        .collect()
}

/// Renders a conversation with a chat template as `apply_chat_template(tokenize=False)` does;
/// returns the text and the character spans of its `{% generation %}` blocks.
#[pyfunction]
#[pyo3(signature = (
    template, messages_json, *, tools_json=None, add_generation_prompt=false,
    special_tokens_json=None, kwargs_json=None, documents_json=None, name="chat_template"
))]
#[allow(clippy::too_many_arguments)]
fn render_chat_template(
    py: Python<'_>,
    template: &str,
    messages_json: &str,
    tools_json: Option<&str>,
    add_generation_prompt: bool,
    special_tokens_json: Option<&str>,
    kwargs_json: Option<&str>,
    documents_json: Option<&str>,
    name: &str,
) -> PyResult<(String, Vec<(usize, usize)>)> {
    let messages = parse_json("messages_json", messages_json)?;
    let options = RenderOptions {
        tools: tools_json
            .map(|t| parse_json("tools_json", t))
            .transpose()?,
        documents: documents_json
            .map(|t| parse_json("documents_json", t))
            .transpose()?,
        add_generation_prompt,
        special_tokens: parse_json_object("special_tokens_json", special_tokens_json)?,
        kwargs: parse_json_object("kwargs_json", kwargs_json)?,
    };
    let rendered = py
        .detach(|| ChatTemplate::new(template, name)?.render(&messages, &options))
        .map_err(|e| to_py_err(py, e))?;
    let spans = char_offsets(&rendered.text, &rendered.generation_spans);
    Ok((rendered.text, spans))
}

/// A HF tokenizer as the data engine loads it, encoding through the engines `--engine` picks
/// (`auto`: the fast engine where it is proven exact, the reference elsewhere). Offsets are
/// character offsets, as Python indexes `str`.
#[pyclass(frozen, name = "Tokenizer", module = "ferrotune._native")]
struct PyTokenizer {
    inner: LoadedTokenizer,
}

#[pymethods]
impl PyTokenizer {
    #[new]
    #[pyo3(signature = (path, *, engine="auto"))]
    fn new(py: Python<'_>, path: std::path::PathBuf, engine: &str) -> PyResult<Self> {
        let load = || -> Result<LoadedTokenizer, CoreError> {
            LoadedTokenizer::load(&path, None, EngineChoice::parse(engine)?)
        };
        let inner = py.detach(load).map_err(|e| to_py_err(py, e))?;
        Ok(PyTokenizer { inner })
    }

    /// The ids of each text; with `add_special_tokens`, those the post-processor adds.
    #[pyo3(signature = (texts, *, add_special_tokens=true))]
    fn encode_batch(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        add_special_tokens: bool,
    ) -> PyResult<Vec<Vec<u32>>> {
        let encoder = self.inner.encoder();
        py.detach(|| {
            texts
                .iter()
                .map(|text| encoder.encode(text, add_special_tokens))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| to_py_err(py, e))
    }

    /// The ids and character offsets of each text, no special tokens added.
    fn encode_batch_with_offsets(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
    ) -> PyResult<Vec<IdsAndOffsets>> {
        let encoder = self.inner.encoder();
        py.detach(|| {
            texts
                .iter()
                .map(|text| {
                    let (ids, offsets) = encoder.encode_with_offsets(text)?;
                    Ok((ids, char_offsets(text, &offsets)))
                })
                .collect::<Result<Vec<_>, CoreError>>()
        })
        .map_err(|e| to_py_err(py, e))
    }

    /// Which engines ran and how many texts each encoded, as the manifest records it (JSON).
    fn engine_report(&self) -> String {
        self.inner.engine_report().to_string()
    }
}

/// The name the Arrow PyCapsule interface gives a stream capsule.
const STREAM_CAPSULE: &std::ffi::CStr = c"arrow_array_stream";

/// The record batches of any object with `__arrow_c_stream__` (a pyarrow Table or
/// RecordBatch, a Ray block, a polars frame): imported through the C stream interface, so the
/// buffers are shared, not copied.
fn import_batches(data: &Bound<'_, PyAny>) -> PyResult<Vec<RecordBatch>> {
    let capsule = data.call_method0("__arrow_c_stream__").map_err(|_| {
        PyValueError::new_err(format!(
            "expected Arrow data (an object with __arrow_c_stream__, e.g. a pyarrow Table or \
             RecordBatch), got {}",
            data.get_type()
        ))
    })?;
    let capsule = capsule.cast::<PyCapsule>()?;
    let pointer = capsule.pointer_checked(Some(STREAM_CAPSULE))?;
    // SAFETY: the capsule holds an `ArrowArrayStream` (the interface's contract for this
    // name); `from_raw` moves it out and leaves a released stream behind for the capsule.
    let reader = unsafe { RecordBatchStreamReader::from_raw(pointer.cast().as_ptr()) }
        .map_err(|e| PyValueError::new_err(format!("Arrow stream: {e}")))?;
    reader
        .collect::<Result<Vec<_>, ArrowError>>()
        .map_err(|e| PyValueError::new_err(format!("Arrow stream: {e}")))
}

/// Record batches handed to Python through `__arrow_c_stream__` (`pyarrow.table(stream)`
/// takes them without a copy). A stream is read once.
#[pyclass(name = "ArrowStream", module = "ferrotune._native")]
struct ArrowStream {
    data: Option<(SchemaRef, Vec<RecordBatch>)>,
}

#[pymethods]
impl ArrowStream {
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__<'py>(
        &mut self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = requested_schema; // the rows keep their own schema
        let (schema, batches) = self
            .data
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this Arrow stream was already read"))?;
        let reader = RecordBatchIterator::new(batches.into_iter().map(Ok), schema);
        let stream = FFI_ArrowArrayStream::new(Box::new(reader));
        PyCapsule::new_with_value(py, stream, STREAM_CAPSULE)
    }
}

/// A stage loaded once (tokenizer, chat template) and run on one Arrow table after another.
#[pyclass(frozen, name = "Transform", module = "ferrotune._native")]
struct PyTransform {
    inner: Transform,
}

#[pymethods]
impl PyTransform {
    #[new]
    fn new(py: Python<'_>, stage: &str, options_json: &str) -> PyResult<Self> {
        let inner = py
            .detach(|| Transform::new(stage, options_json))
            .map_err(|e| to_py_err(py, e))?;
        Ok(PyTransform { inner })
    }

    #[getter]
    fn stage(&self) -> &'static str {
        self.inner.stage()
    }

    /// Runs the stage on one table of records (GIL released); returns the rows as an
    /// `ArrowStream`, the batch's manifest as JSON, and its rejects (`rejects.jsonl` lines).
    fn run(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<(ArrowStream, String, Vec<String>)> {
        let batches = import_batches(data)?;
        let cancel = AtomicBool::new(false);
        let output = py
            .detach(|| self.inner.run(&batches, &cancel))
            .map_err(|e| to_py_err(py, e))?;
        let manifest = serde_json::to_string(&output.manifest).expect("the manifest serializes");
        let stream = ArrowStream {
            data: Some((output.schema, output.batches)),
        };
        Ok((stream, manifest, output.rejects))
    }
}

/// The raw records of the files at `path` (a file, folder or glob), split as `prep` splits them:
/// an `ArrowStream` of `file`, `line`, `kind`, `record`.
#[pyfunction]
#[pyo3(signature = (path, *, doc_sep="line".to_string(), text_column="text".to_string(), batch_rows=4096))]
fn read_records(
    py: Python<'_>,
    path: std::path::PathBuf,
    doc_sep: String,
    text_column: String,
    batch_rows: usize,
) -> PyResult<ArrowStream> {
    let read = (|| {
        Ok::<_, CoreError>(ferrotune_core::reader::ReadOptions {
            doc_sep: DocSep::parse(&doc_sep)?,
            text_column,
        })
    })()
    .map_err(|e| to_py_err(py, e))?;
    let (schema, batches) = py
        .detach(|| read_file_records(&path, &read, batch_rows))
        .map_err(|e| to_py_err(py, e))?;
    Ok(ArrowStream {
        data: Some((schema, batches)),
    })
}

/// An output folder written from Arrow batches made elsewhere (Ray, Spark, merge), published
/// atomically with the manifest the caller assembled.
#[pyclass(name = "FolderWriter", module = "ferrotune._native")]
struct PyFolderWriter {
    inner: Option<FolderWriter>,
}

impl PyFolderWriter {
    fn open(&mut self) -> PyResult<&mut FolderWriter> {
        self.inner
            .as_mut()
            .ok_or_else(|| PyRuntimeError::new_err("this folder was already finished"))
    }
}

#[pymethods]
impl PyFolderWriter {
    /// Rows written as they come, or with `block_size` PT documents packed into blocks.
    #[new]
    #[pyo3(signature = (out, *, overwrite=false, shard_size="500MB".to_string(), block_size=None, last_block="pad".to_string(), pad_id=0))]
    fn new(
        py: Python<'_>,
        out: std::path::PathBuf,
        overwrite: bool,
        shard_size: String,
        block_size: Option<usize>,
        last_block: String,
        pad_id: u32,
    ) -> PyResult<Self> {
        let open = || -> Result<FolderWriter, CoreError> {
            let size = parse_size(&shard_size)?;
            match block_size {
                None => FolderWriter::rows(&out, overwrite, size),
                Some(block) => FolderWriter::blocks(
                    &out,
                    overwrite,
                    size,
                    block,
                    LastBlock::parse(&last_block)?,
                    pad_id,
                ),
            }
        };
        let inner = open().map_err(|e| to_py_err(py, e))?;
        Ok(PyFolderWriter { inner: Some(inner) })
    }

    /// Appends the batches of any Arrow data (`__arrow_c_stream__`).
    fn write(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let batches = import_batches(data)?;
        let writer = self.open()?;
        py.detach(|| batches.iter().try_for_each(|batch| writer.write(batch)))
            .map_err(|e| to_py_err(py, e))
    }

    /// Writes a file beside the shards.
    fn write_file(&mut self, py: Python<'_>, name: &str, contents: &[u8]) -> PyResult<()> {
        self.open()?
            .write_file(name, contents)
            .map_err(|e| to_py_err(py, e))
    }

    /// Completes the manifest (JSON) and publishes the folder; returns the manifest as JSON.
    #[pyo3(signature = (manifest_json, *, description))]
    fn finish(
        &mut self,
        py: Python<'_>,
        manifest_json: &str,
        description: &str,
    ) -> PyResult<String> {
        let manifest = parse_json("manifest_json", manifest_json)?;
        let writer = self
            .inner
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("this folder was already finished"))?;
        let cancel = AtomicBool::new(false);
        let manifest = py
            .detach(|| writer.finish(manifest, description, &cancel))
            .map_err(|e| to_py_err(py, e))?;
        Ok(serde_json::to_string_pretty(&manifest).expect("JSON"))
    }
}

/// The files `prep` reads for `inputs` (files, folders, globs), in the order it reads them.
#[pyfunction]
fn resolve_inputs(py: Python<'_>, inputs: Vec<String>) -> PyResult<Vec<std::path::PathBuf>> {
    let files =
        ferrotune_core::input::resolve_inputs(&inputs, None).map_err(|e| to_py_err(py, e))?;
    Ok(files.into_iter().map(|file| file.path).collect())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTokenizer>()?;
    m.add_class::<PyTransform>()?;
    m.add_class::<ArrowStream>()?;
    m.add_class::<PyFolderWriter>()?;
    m.add_function(wrap_pyfunction!(read_records, m)?)?;
    m.add_function(wrap_pyfunction!(resolve_inputs, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(prep_pt, m)?)?;
    m.add_function(wrap_pyfunction!(prep_chat, m)?)?;
    m.add_function(wrap_pyfunction!(builtin_templates, m)?)?;
    m.add_function(wrap_pyfunction!(render_chat_template, m)?)?;
    m.add_function(wrap_pyfunction!(tokenizer_fingerprint, m)?)?;
    Ok(())
}
