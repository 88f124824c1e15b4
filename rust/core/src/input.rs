//! Turning the user's `--input` arguments (files, folders, globs) into an ordered list of files.
//!
//! The order is part of the output's determinism: files named one by one keep the order given;
//! folders and globs expand to their files sorted by path. A path given twice is read once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{CoreError, Result};

/// How a file's records are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Plain text: one document per line, or per blank-line-separated paragraph.
    Txt,
    /// JSON Lines: one object per line.
    Jsonl,
    /// `.json`: either a top-level array of objects or JSON Lines (as `datasets` accepts both).
    Json,
    /// Apache Parquet.
    Parquet,
}

impl Format {
    /// The format a file name implies, if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "txt" | "text" => Some(Format::Txt),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "json" => Some(Format::Json),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }

    /// The name `--format` takes (and the usual extension).
    pub fn name(self) -> &'static str {
        match self {
            Format::Txt => "txt",
            Format::Jsonl => "jsonl",
            Format::Json => "json",
            Format::Parquet => "parquet",
        }
    }

    /// Parses a `--format` value.
    pub fn parse(name: &str) -> Result<Format> {
        match name {
            "txt" | "text" => Ok(Format::Txt),
            "jsonl" => Ok(Format::Jsonl),
            "json" => Ok(Format::Json),
            "parquet" => Ok(Format::Parquet),
            other => Err(CoreError::config(
                "format",
                format!("'{other}' is not one of txt, jsonl, json, parquet"),
            )),
        }
    }
}

/// One input file to read, in reading order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub path: PathBuf,
    pub format: Format,
    /// Size on disk, for progress and the manifest.
    pub bytes: u64,
    /// Last modified, when the file system says: with `bytes`, how a reader tells that the
    /// file changed while it was read.
    pub modified: Option<std::time::SystemTime>,
}

const SUPPORTED: &str = ".txt, .jsonl, .json, .parquet";

/// Expands `patterns` into files. `forced` overrides the format implied by each name.
///
/// Fails when a pattern matches nothing readable, naming the pattern; a file named explicitly
/// with an unknown extension is an error too (folders and globs just skip such files).
pub fn resolve_inputs(patterns: &[String], forced: Option<Format>) -> Result<Vec<InputFile>> {
    if patterns.is_empty() {
        return Err(CoreError::config("input", "no input given"));
    }
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    for pattern in patterns {
        let before = files.len();
        let path = Path::new(pattern);
        if path.is_file() {
            let format = match forced.or_else(|| Format::from_path(path)) {
                Some(format) => format,
                None => {
                    return Err(CoreError::Format {
                        path: path.to_path_buf(),
                        message: format!(
                            "unknown file type (supported: {SUPPORTED}; or pass --format)"
                        ),
                    })
                }
            };
            push_file(&mut files, &mut seen, path, format)?;
        } else if path.is_dir() {
            for file in walk_dir(path)? {
                if let Some(format) = forced.or_else(|| Format::from_path(&file)) {
                    push_file(&mut files, &mut seen, &file, format)?;
                }
            }
        } else if pattern.contains(['*', '?', '[']) {
            // As a shell does: `*` does not match a leading dot.
            let match_options = glob::MatchOptions {
                require_literal_leading_dot: true,
                ..glob::MatchOptions::new()
            };
            let matches = glob::glob_with(pattern, match_options).map_err(|e| {
                CoreError::config("input", format!("bad glob pattern '{pattern}': {e}"))
            })?;
            let mut matched: Vec<PathBuf> = matches.filter_map(|entry| entry.ok()).collect();
            matched.sort();
            for entry in matched {
                if entry.is_dir() {
                    for file in walk_dir(&entry)? {
                        if let Some(format) = forced.or_else(|| Format::from_path(&file)) {
                            push_file(&mut files, &mut seen, &file, format)?;
                        }
                    }
                } else if let Some(format) = forced.or_else(|| Format::from_path(&entry)) {
                    push_file(&mut files, &mut seen, &entry, format)?;
                }
            }
        }
        if files.len() == before {
            let hint = if path.exists() || pattern.contains(['*', '?', '[']) || path.is_dir() {
                format!(" with a supported extension ({SUPPORTED})")
            } else {
                " (no such file or folder)".to_string()
            };
            return Err(CoreError::NoInput {
                pattern: pattern.clone(),
                hint,
            });
        }
    }
    Ok(files)
}

fn push_file(
    files: &mut Vec<InputFile>,
    seen: &mut HashSet<PathBuf>,
    path: &Path,
    format: Format,
) -> Result<()> {
    let canonical = path.canonicalize().map_err(|e| CoreError::io(path, e))?;
    if !seen.insert(canonical) {
        return Ok(());
    }
    let metadata = std::fs::metadata(path).map_err(|e| CoreError::io(path, e))?;
    files.push(InputFile {
        path: path.to_path_buf(),
        format,
        bytes: metadata.len(),
        modified: metadata.modified().ok(),
    });
    Ok(())
}

/// All files below `dir`, sorted, skipping hidden files and folders (`.git`, editor swap files).
fn walk_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries = std::fs::read_dir(&current).map_err(|e| CoreError::io(&current, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| CoreError::io(&current, e))?;
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "x\n").unwrap();
        path
    }

    #[test]
    fn folders_and_globs_expand_sorted_and_deduplicated() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "b.txt");
        touch(dir.path(), "a.jsonl");
        touch(dir.path(), "sub/c.json");
        touch(dir.path(), "notes.md");
        touch(dir.path(), ".hidden.txt");
        let folder = dir.path().to_string_lossy().to_string();
        let glob = format!("{folder}/*.txt");
        let files = resolve_inputs(&[glob, folder], None).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| {
                f.path
                    .strip_prefix(dir.path())
                    .unwrap()
                    .to_string_lossy()
                    .to_string()
            })
            .collect();
        assert_eq!(names, ["b.txt", "a.jsonl", "sub/c.json"]);
        assert_eq!(files[1].format, Format::Jsonl);
        assert_eq!(files[2].format, Format::Json);
    }

    #[test]
    fn nothing_matched_names_the_pattern() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = format!("{}/*.jsonl", dir.path().display());
        let err = resolve_inputs(std::slice::from_ref(&pattern), None).unwrap_err();
        assert!(matches!(err, CoreError::NoInput { .. }));
        assert!(err.to_string().contains(&pattern));
        let missing = format!("{}/missing.txt", dir.path().display());
        let err = resolve_inputs(&[missing], None).unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
    }

    #[test]
    fn explicit_file_with_unknown_extension_is_an_error_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let path = touch(dir.path(), "corpus.dat");
        let name = path.to_string_lossy().to_string();
        let err = resolve_inputs(std::slice::from_ref(&name), None).unwrap_err();
        assert!(err.to_string().contains("unknown file type"), "{err}");
        let files = resolve_inputs(&[name], Some(Format::Txt)).unwrap();
        assert_eq!(files[0].format, Format::Txt);
    }
}
