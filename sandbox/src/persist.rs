//! Durable books: the file `books.json` in the state dir, replaced atomically after every change
//! (written to `books.json.tmp`, fsynced, renamed over; the dir is fsynced too) and read back on
//! start, so a killed sandbox still knows every order and every refund it took, like WeChat. What
//! the bytes mean is `books::snapshot`'s business; this module only keeps them safe.
//!
//! Snapshots are group-committed: a change is on disk before [`Store::commit`] returns, but when
//! several requests change the books while a snapshot is being written, the next write saves all
//! of them at once. Under load the number of writes is bounded by the disk, not by the request
//! rate, which keeps whole-state snapshots from growing quadratically in cost.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use thiserror::Error;

/// The books file in the state dir.
pub const BOOKS_FILE: &str = "books.json";

#[derive(Debug, Error)]
pub enum PersistError {
    #[error("reading the sandbox books {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the sandbox books {path} cannot be loaded ({reason}); repair or delete the file, or start \
         with --fresh (SandboxConfig::fresh) to discard it"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("discarding the sandbox books {path}: {source}")]
    Discard {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the sandbox books {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The file and the generation of the state it holds.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    tmp: PathBuf,
    dir: PathBuf,
    /// The generation last written; held while writing, so writes are serialized and ordered.
    written: Mutex<u64>,
}

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store {
            path: dir.join(BOOKS_FILE),
            tmp: dir.join(format!("{BOOKS_FILE}.tmp")),
            dir: dir.to_path_buf(),
            written: Mutex::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved bytes, or None when there is no file yet.
    pub fn read(&self) -> Result<Option<Vec<u8>>, PersistError> {
        match fs::read(&self.path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(PersistError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// The error for a file that was read but does not make sense (`reason` says why).
    pub fn corrupt(&self, reason: String) -> PersistError {
        PersistError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    /// Deletes the saved books (and a leftover temp file): the next start begins empty.
    pub fn discard(&self) -> Result<(), PersistError> {
        for p in [&self.path, &self.tmp] {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(PersistError::Discard {
                        path: p.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Makes sure generation `generation` (or a later one) is on disk. `snapshot` returns the
    /// bytes of a copy of the books with that copy's generation; it is called only when nothing as
    /// new is on disk yet, under this store's lock, so writes are serialized and never go back in
    /// time. A failed encode or write is logged and retried by the next commit (the sandbox keeps
    /// answering, as it would without a disk), leaving the last good file in place.
    pub fn commit(
        &self,
        generation: u64,
        snapshot: impl FnOnce() -> Result<(u64, Vec<u8>), String>,
    ) {
        in_blocking_section(|| {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            if *written >= generation {
                // Someone else's snapshot, taken after our change, is already on disk.
                return;
            }
            match snapshot() {
                Ok((snapshot_generation, bytes)) => match self.write(&bytes) {
                    Ok(()) => *written = snapshot_generation,
                    Err(e) => tracing::error!(error = %e, "the sandbox books were not saved"),
                },
                Err(e) => tracing::error!(error = %e, "the sandbox books were not saved"),
            }
        });
    }

    pub(crate) fn write(&self, bytes: &[u8]) -> Result<(), PersistError> {
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PersistError::Write { path, source }
        };
        let mut f = File::create(&self.tmp).map_err(werr(&self.tmp))?;
        f.write_all(bytes).map_err(werr(&self.tmp))?;
        // Data first, then the rename: after a crash the file is the old or the new snapshot.
        f.sync_data().map_err(werr(&self.tmp))?;
        drop(f);
        fs::rename(&self.tmp, &self.path).map_err(werr(&self.path))?;
        // The rename itself survives a power cut only once the directory is synced.
        #[cfg(unix)]
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(werr(&self.dir))?;
        Ok(())
    }
}

/// Runs blocking file I/O without starving a multi-threaded runtime's other tasks (the local stack
/// serves its own API from the same runtime); elsewhere (current-thread tests) it just runs.
fn in_blocking_section<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
