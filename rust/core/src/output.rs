//! The output folder, written atomically.
//!
//! Everything is written into a hidden staging folder beside `OUT` and renamed to `OUT` at the
//! very end, so a run killed at any moment leaves either the old `OUT` or the new one, never a
//! folder that loads as complete but is not. A staging folder left by a killed run is removed by
//! the next run that writes to the same `OUT`.
//!
//! `--overwrite` only ever replaces a folder that holds a previous ferrotune output (or nothing):
//! a mistyped `--out ~` must not delete a home folder.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::{CoreError, Result};
use crate::shard::ShardInfo;

/// A staging folder that becomes `final_path` on [`Staging::commit`] and is removed if dropped
/// uncommitted (an error or a cancelled run).
pub struct Staging {
    final_path: PathBuf,
    path: PathBuf,
    committed: bool,
}

const STAGING_MARK: &str = ".ferrotune-partial-";

impl Staging {
    /// Checks that `out` may be written and creates the staging folder beside it.
    pub fn create(out: &Path, overwrite: bool) -> Result<Staging> {
        if out.as_os_str().is_empty() {
            return Err(CoreError::config("out", "is empty"));
        }
        if out.exists() {
            if !overwrite {
                return Err(CoreError::OutputExists(out.to_path_buf()));
            }
            check_replaceable(out)?;
        }
        let name = out
            .file_name()
            .ok_or_else(|| {
                CoreError::config("out", format!("'{}' has no folder name", out.display()))
            })?
            .to_string_lossy()
            .into_owned();
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|e| CoreError::io(&parent, e))?;
        remove_stale_staging(&parent, &name);
        let path = parent.join(format!(".{name}{STAGING_MARK}{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).map_err(|e| CoreError::io(&path, e))?;
        }
        fs::create_dir(&path).map_err(|e| CoreError::io(&path, e))?;
        Ok(Staging {
            final_path: out.to_path_buf(),
            path,
            committed: false,
        })
    }

    /// Where to write the files.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the staged folder the output: syncs it, moves an old output aside, renames, and
    /// deletes the old one.
    pub fn commit(mut self) -> Result<()> {
        sync_dir(&self.path)?;
        let old = if self.final_path.exists() {
            let mut aside = self.path.clone().into_os_string();
            aside.push(".old");
            let aside = PathBuf::from(aside);
            fs::rename(&self.final_path, &aside).map_err(|e| CoreError::io(&self.final_path, e))?;
            Some(aside)
        } else {
            None
        };
        fs::rename(&self.path, &self.final_path).map_err(|e| CoreError::io(&self.final_path, e))?;
        self.committed = true;
        if let Some(parent) = self.final_path.parent() {
            if !parent.as_os_str().is_empty() {
                sync_dir(parent)?;
            }
        }
        if let Some(old) = old {
            fs::remove_dir_all(&old).map_err(|e| CoreError::io(&old, e))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Refuses to replace anything but a previous ferrotune output or an empty folder.
fn check_replaceable(out: &Path) -> Result<()> {
    let refuse = |why: &str| {
        Err(CoreError::config(
            "overwrite",
            format!("refusing to replace '{}': {why}", out.display()),
        ))
    };
    if !out.is_dir() {
        return refuse("it is not a folder");
    }
    let mut entries = fs::read_dir(out).map_err(|e| CoreError::io(out, e))?;
    let empty = entries.next().is_none();
    if empty || out.join("manifest.json").is_file() {
        Ok(())
    } else {
        refuse("it is not a ferrotune output folder (no manifest.json)")
    }
}

/// Removes staging folders of `name` left by runs that are no longer alive.
fn remove_stale_staging(parent: &Path, name: &str) {
    let prefix = format!(".{name}{STAGING_MARK}");
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let pid = rest.trim_end_matches(".old");
        let alive = pid
            .parse::<u32>()
            .map(|pid| Path::new(&format!("/proc/{pid}")).exists() && pid != std::process::id())
            .unwrap_or(true);
        if !alive {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn sync_dir(path: &Path) -> Result<()> {
    // Directories can be opened and fsynced on Unix; elsewhere this is a best effort.
    if let Ok(dir) = fs::File::open(path) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Finishes a prep run: writes the `datasets` metadata and `manifest.json` into the staging
/// folder and, unless the run was cancelled meanwhile, makes it the output.
pub fn publish(
    staging: Staging,
    manifest: &impl serde::Serialize,
    shards: &[ShardInfo],
    description: &str,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<()> {
    write_datasets_metadata(staging.path(), shards, description)?;
    write_file(staging.path(), "manifest.json", &to_pretty(manifest))?;
    if cancel.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(CoreError::Cancelled);
    }
    staging.commit()
}

/// Writes a file into the staging folder in one go.
pub fn write_file(dir: &Path, name: &str, contents: &[u8]) -> Result<()> {
    let path = dir.join(name);
    fs::write(&path, contents).map_err(|e| CoreError::io(&path, e))?;
    Ok(())
}

/// Writes `dataset_info.json` and `state.json`, the two files `datasets.load_from_disk` needs.
///
/// Features are left out of `dataset_info.json` on purpose: `datasets` then infers them from the
/// Arrow schema, which every version reads (the JSON spelling of list features changed in
/// `datasets` 4), so the shards load with old and new versions alike.
pub fn write_datasets_metadata(dir: &Path, shards: &[ShardInfo], description: &str) -> Result<()> {
    let info = json!({
        "citation": "",
        "description": description,
        "homepage": "",
        "license": "",
    });
    write_file(dir, "dataset_info.json", &to_pretty(&info))?;
    // The fingerprint only has to identify the content: derive it from the shards' hashes.
    let fingerprint: String = {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for shard in shards {
            hasher.update(shard.sha256.as_bytes());
        }
        crate::reader::hex(&hasher.finalize())[..16].to_string()
    };
    let files: Vec<_> = shards.iter().map(|s| json!({"filename": s.file})).collect();
    let state = json!({
        "_data_files": files,
        "_fingerprint": fingerprint,
        "_format_columns": null,
        "_format_kwargs": {},
        "_format_type": null,
        "_output_all_columns": false,
        "_split": null,
    });
    write_file(dir, "state.json", &to_pretty(&state))
}

/// Pretty JSON with a trailing newline.
pub fn to_pretty(value: &impl serde::Serialize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("JSON values serialize");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_only_on_overwrite_and_drop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let staging = Staging::create(&out, false).unwrap();
        write_file(staging.path(), "manifest.json", b"{}").unwrap();
        staging.commit().unwrap();
        assert!(out.join("manifest.json").is_file());

        assert!(matches!(
            Staging::create(&out, false),
            Err(CoreError::OutputExists(_))
        ));
        let staging = Staging::create(&out, true).unwrap();
        let staged = staging.path().to_path_buf();
        write_file(&staged, "x", b"1").unwrap();
        drop(staging);
        assert!(!staged.exists(), "an uncommitted staging folder is removed");
        assert!(
            out.join("manifest.json").is_file(),
            "the old output is untouched"
        );

        let staging = Staging::create(&out, true).unwrap();
        write_file(staging.path(), "manifest.json", b"{\"new\": 1}").unwrap();
        staging.commit().unwrap();
        assert_eq!(
            fs::read(out.join("manifest.json")).unwrap(),
            b"{\"new\": 1}"
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no staging or old folder left behind");
    }

    #[test]
    fn overwrite_refuses_a_folder_that_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("precious.txt"), "keep me").unwrap();
        let err = Staging::create(dir.path(), true).err().unwrap();
        assert!(err.to_string().contains("not a ferrotune output"), "{err}");
    }
}
