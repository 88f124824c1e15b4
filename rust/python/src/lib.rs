//! `ferrotune._native`: the PyO3 face of `ferrotune-core`.
//!
//! Only conversion lives here: Python arguments → core options, the heavy call run with the GIL
//! released, core errors → the exceptions of `ferrotune.errors`. The public API is the Python
//! package (`ferrotune.data.prep_pt`); this module is private.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::RecvTimeoutError;
use std::time::Duration;

use ferrotune_core::input::Format;
use ferrotune_core::pack::LastBlock;
use ferrotune_core::reader::DocSep;
use ferrotune_core::shard::parse_size;
use ferrotune_core::{CoreError, EmptyPolicy, PtOptions};
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

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
    shard_index=0, shard_size="500MB".to_string(), input_format=None
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
) -> PyResult<String> {
    let options = (|| -> Result<PtOptions, CoreError> {
        Ok(PtOptions {
            block_size,
            workers,
            text_field,
            doc_sep: DocSep::parse(&doc_sep)?,
            last_block: LastBlock::parse(&last_block)?,
            eos,
            eos_token,
            empty: EmptyPolicy::parse(&empty)?,
            skip_bad,
            overwrite,
            quiet,
            num_shards,
            shard_index,
            shard_size: parse_size(&shard_size)?,
            format: input_format.as_deref().map(Format::parse).transpose()?,
            ..PtOptions::new(tokenizer, inputs, out)
        })
    })()
    .map_err(|e| to_py_err(py, e))?;
    let manifest = run_interruptible(py, move |cancel| ferrotune_core::prep_pt(&options, cancel))?;
    Ok(serde_json::to_string(&manifest).expect("the manifest serializes"))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(prep_pt, m)?)?;
    Ok(())
}
