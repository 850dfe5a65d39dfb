//! Fuzz-corpus helpers for the stable test runs: replay every file of a target's corpus through
//! its fuzz body, and check that generated seed files are committed and current. Used by the
//! `fuzz_corpus` tests of every crate that owns fuzz targets.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};

/// `fuzz/corpus/<target>` of the repository whose crate lives at `crate_dir` (pass
/// `env!("CARGO_MANIFEST_DIR")`; every crate sits one level below the repository root).
pub fn corpus_dir(crate_dir: &str, target: &str) -> PathBuf {
    Path::new(crate_dir).join("../fuzz/corpus").join(target)
}

/// Runs `body` on every file of `dir` in name order; panics (naming the file) when the
/// directory is missing or empty, or when `body` panics on a file.
pub fn replay(dir: &Path, target: &str, body: fn(&[u8])) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => panic!("corpus dir {} is missing: {e}", dir.display()),
    };
    let mut files: Vec<PathBuf> =
        entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    assert!(!files.is_empty(), "corpus dir {} is empty", dir.display());
    for file in &files {
        let data = match std::fs::read(file) {
            Ok(data) => data,
            Err(e) => panic!("cannot read {}: {e}", file.display()),
        };
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| body(&data))) {
            eprintln!("fuzz target {target} failed on {}", file.display());
            resume_unwind(panic);
        }
    }
}

/// Checks that every generated seed `(path, bytes)` is committed with exactly these bytes;
/// with `TERN_WRITE_CORPUS=1` in the environment it writes them first.
pub fn check_seeds(seeds: impl IntoIterator<Item = (PathBuf, Vec<u8>)>) {
    let write = std::env::var_os("TERN_WRITE_CORPUS").is_some();
    let mut stale = Vec::new();
    for (path, bytes) in seeds {
        if write {
            if let Some(dir) = path.parent()
                && let Err(e) = std::fs::create_dir_all(dir)
            {
                panic!("cannot create {}: {e}", dir.display());
            }
            if let Err(e) = std::fs::write(&path, &bytes) {
                panic!("cannot write {}: {e}", path.display());
            }
        }
        if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "seed files missing or stale (rerun with TERN_WRITE_CORPUS=1): {stale:#?}"
    );
}
