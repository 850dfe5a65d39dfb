//! [`FilePersistence`]: the [`Persistence`] trait in one small JSON file, for apps and tools
//! (`tern chat`) that keep their cursors and unacknowledged sends across restarts.
//!
//! # File and writes
//!
//! The whole state (cursors and outbox) lives in memory and in one file, rewritten on every
//! change: written to `<file>.tmp`, fsynced, then renamed over the file, so a crash leaves
//! either the old or the new state, never a torn file. After an outbox change (a send put or
//! removed) the directory is fsynced too, so the rename itself is durable before `put_pending`
//! returns (the SDK puts a send before its first write). A cursor change skips the directory
//! fsync: losing the last renames in a crash only moves the cursor back, and the messages past
//! it come again by sync (the app dedupes by (conversation, seq) if it shows them twice).
//!
//! Each change costs a rewrite of the file and an fsync: right for a chat client's rate of a
//! few messages a second and a few hundred conversations, not for a bot receiving thousands of
//! messages a second (give such an app a database-backed [`Persistence`]).
//!
//! One process per file: two processes writing the same file would overwrite each other's
//! changes (the last rename wins). The format (version 1):
//!
//! ```text
//! {"version":1,
//!  "cursors":{"dm:alice:bob":12},
//!  "pending":[{"client_msg_id":"…","target":{"peer":"bob"},"content_type":"text/plain",
//!              "body":"<base64>"}]}
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::event::Target;
use crate::persist::{PendingSend, Persistence};

/// The file format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Why the persistence file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FilePersistenceError {
    /// Reading, writing, syncing or renaming failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file exists but is not a persistence file this code can read (it is left as it is).
    #[error("{path} is not a readable persistence file: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The file was written by a newer format version.
    #[error("{path} has format version {found}; this client reads version {FORMAT_VERSION}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found in it.
        found: u32,
    },
}

impl From<FilePersistenceError> for io::Error {
    fn from(e: FilePersistenceError) -> Self {
        match e {
            FilePersistenceError::Io { ref source, .. } => io::Error::new(source.kind(), e),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileState {
    version: u32,
    #[serde(default)]
    cursors: BTreeMap<String, u64>,
    #[serde(default)]
    pending: Vec<StoredSend>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSend {
    client_msg_id: String,
    target: StoredTarget,
    content_type: String,
    /// Base64 (standard alphabet, padded).
    body: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    mention_user_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    mention_all: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredTarget {
    Peer(String),
    Conversation(String),
}

impl StoredSend {
    fn from_pending(p: &PendingSend) -> Self {
        let target = match &p.target {
            Target::Peer(u) => StoredTarget::Peer(u.clone()),
            Target::Conversation(c) => StoredTarget::Conversation(c.clone()),
        };
        Self {
            client_msg_id: p.client_msg_id.clone(),
            target,
            content_type: p.content_type.clone(),
            body: B64.encode(&p.body),
            mention_user_ids: p.mention_user_ids.clone(),
            mention_all: p.mention_all,
        }
    }

    fn to_pending(&self) -> Result<PendingSend, String> {
        let body = B64
            .decode(&self.body)
            .map_err(|e| format!("send {:?}: body is not base64: {e}", self.client_msg_id))?;
        let target = match &self.target {
            StoredTarget::Peer(u) => Target::Peer(u.clone()),
            StoredTarget::Conversation(c) => Target::Conversation(c.clone()),
        };
        Ok(PendingSend {
            client_msg_id: self.client_msg_id.clone(),
            target,
            content_type: self.content_type.clone(),
            body: Bytes::from(body),
            mention_user_ids: self.mention_user_ids.clone(),
            mention_all: self.mention_all,
        })
    }
}

/// What is held in memory: the file's content, decoded.
#[derive(Debug, Default)]
struct State {
    cursors: HashMap<String, u64>,
    /// Unacknowledged sends, oldest first.
    pending: Vec<PendingSend>,
}

/// [`Persistence`] in one JSON file (see the module doc). Every call is a quick in-memory
/// update plus, when something changed, one atomic rewrite of the file.
#[derive(Debug)]
pub struct FilePersistence {
    path: PathBuf,
    tmp: PathBuf,
    state: Mutex<State>,
}

impl FilePersistence {
    /// Opens the file at `path`, or starts empty when it does not exist (its directory is
    /// created then; the file itself is written at the first change). A leftover `<path>.tmp`
    /// from a crash is ignored (and replaced at the next write).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, FilePersistenceError> {
        let path = path.into();
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let state = match fs::read(&path) {
            Ok(bytes) => decode(&path, &bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = parent(&path) {
                    fs::create_dir_all(dir).map_err(|source| FilePersistenceError::Io {
                        what: "creating directory",
                        path: dir.to_owned(),
                        source,
                    })?;
                }
                State::default()
            }
            Err(source) => return Err(FilePersistenceError::Io { what: "reading", path, source }),
        };
        Ok(Self { path, tmp: PathBuf::from(tmp), state: Mutex::new(state) })
    }

    /// The file this persistence writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is applied to memory only after the file write succeeded (see
        // `update`), so a poisoned lock still holds a consistent state.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `change` to a copy of the state; when it changed something, writes the copy
    /// and only then keeps it. The lock is held across the write, so writes are in call order.
    fn update(
        &self,
        sync_dir: bool,
        change: impl FnOnce(&mut State) -> bool,
    ) -> Result<(), FilePersistenceError> {
        let mut state = self.lock();
        let mut next = State { cursors: state.cursors.clone(), pending: state.pending.clone() };
        if !change(&mut next) {
            return Ok(());
        }
        self.write(&next, sync_dir)?;
        *state = next;
        Ok(())
    }

    fn write(&self, state: &State, sync_dir: bool) -> Result<(), FilePersistenceError> {
        let file = FileState {
            version: FORMAT_VERSION,
            cursors: state.cursors.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            pending: state.pending.iter().map(StoredSend::from_pending).collect(),
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| FilePersistenceError::Io {
            what: "encoding",
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        let io_err = |what, path: &Path| {
            let path = path.to_owned();
            move |source| FilePersistenceError::Io { what, path, source }
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.tmp)
            .map_err(io_err("creating", &self.tmp))?;
        f.write_all(&bytes).map_err(io_err("writing", &self.tmp))?;
        f.sync_all().map_err(io_err("syncing", &self.tmp))?;
        drop(f);
        fs::rename(&self.tmp, &self.path).map_err(io_err("renaming over", &self.path))?;
        if sync_dir && let Some(dir) = parent(&self.path) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("syncing directory", dir))?;
        }
        Ok(())
    }
}

/// The directory of `path` (`None` for a bare file name: the current directory).
fn parent(path: &Path) -> Option<&Path> {
    path.parent().filter(|p| !p.as_os_str().is_empty())
}

fn decode(path: &Path, bytes: &[u8]) -> Result<State, FilePersistenceError> {
    let corrupt = |detail: String| FilePersistenceError::Corrupt { path: path.to_owned(), detail };
    let file: FileState = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.version != FORMAT_VERSION {
        return Err(FilePersistenceError::UnsupportedVersion {
            path: path.to_owned(),
            found: file.version,
        });
    }
    let pending = file.pending.iter().map(StoredSend::to_pending).collect::<Result<Vec<_>, _>>();
    Ok(State { cursors: file.cursors.into_iter().collect(), pending: pending.map_err(corrupt)? })
}

impl Persistence for FilePersistence {
    fn load_cursors(&self) -> io::Result<HashMap<String, u64>> {
        Ok(self.lock().cursors.clone())
    }

    fn save_cursor(&self, conversation_id: &str, seq: u64) -> io::Result<()> {
        Ok(self.update(false, |s| {
            let cursor = s.cursors.entry(conversation_id.to_owned()).or_default();
            let moved = seq > *cursor;
            *cursor = (*cursor).max(seq);
            moved
        })?)
    }

    fn put_pending(&self, send: &PendingSend) -> io::Result<()> {
        Ok(self.update(true, |s| {
            match s.pending.iter_mut().find(|p| p.client_msg_id == send.client_msg_id) {
                Some(existing) if existing == send => return false,
                Some(existing) => *existing = send.clone(),
                None => s.pending.push(send.clone()),
            }
            true
        })?)
    }

    fn remove_pending(&self, client_msg_id: &str) -> io::Result<()> {
        Ok(self.update(true, |s| {
            let before = s.pending.len();
            s.pending.retain(|p| p.client_msg_id != client_msg_id);
            s.pending.len() != before
        })?)
    }

    fn list_pending(&self) -> io::Result<Vec<PendingSend>> {
        Ok(self.lock().pending.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: &str, body: &'static [u8]) -> PendingSend {
        PendingSend {
            mention_user_ids: Vec::new(),
            mention_all: false,
            client_msg_id: id.to_owned(),
            target: if id == "g" {
                Target::Conversation("g:team".to_owned())
            } else {
                Target::Peer("bob".to_owned())
            },
            content_type: "text/plain".to_owned(),
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat").join("alice-cli.json");
        let p = FilePersistence::open(&path).unwrap();
        assert!(!path.exists(), "nothing is written before the first change");
        p.save_cursor("dm:alice:bob", 3).unwrap();
        p.save_cursor("dm:alice:bob", 2).unwrap();
        p.save_cursor("g:team", 9).unwrap();
        p.put_pending(&pending("b", b"\x00\xffbinary")).unwrap();
        p.put_pending(&pending("a", b"hi")).unwrap();
        p.put_pending(&pending("g", b"all")).unwrap();
        p.remove_pending("a").unwrap();
        p.remove_pending("absent").unwrap();
        drop(p);

        let q = FilePersistence::open(&path).unwrap();
        let cursors = q.load_cursors().unwrap();
        assert_eq!(cursors.get("dm:alice:bob"), Some(&3), "cursors never go back");
        assert_eq!(cursors.get("g:team"), Some(&9));
        assert_eq!(
            q.list_pending().unwrap(),
            vec![pending("b", b"\x00\xffbinary"), pending("g", b"all")]
        );
        assert!(!dir.path().join("chat").join("alice-cli.json.tmp").exists());
    }

    #[test]
    fn replacing_a_send_keeps_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        let p = FilePersistence::open(&path).unwrap();
        for id in ["x", "y", "z"] {
            p.put_pending(&pending(id, b"1")).unwrap();
        }
        p.put_pending(&pending("x", b"2")).unwrap();
        let ids: Vec<_> = FilePersistence::open(&path)
            .unwrap()
            .list_pending()
            .unwrap()
            .into_iter()
            .map(|s| (s.client_msg_id, s.body))
            .collect();
        assert_eq!(
            ids,
            [
                ("x".to_owned(), Bytes::from_static(b"2")),
                ("y".to_owned(), Bytes::from_static(b"1")),
                ("z".to_owned(), Bytes::from_static(b"1"))
            ]
        );
    }

    #[test]
    fn a_leftover_temporary_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        let p = FilePersistence::open(&path).unwrap();
        p.save_cursor("c", 4).unwrap();
        drop(p);
        // A crash between writing the temporary file and the rename leaves it behind.
        std::fs::write(dir.path().join("p.json.tmp"), b"{\"version\":1,\"cur").unwrap();
        let p = FilePersistence::open(&path).unwrap();
        assert_eq!(p.load_cursors().unwrap().get("c"), Some(&4));
        p.save_cursor("c", 5).unwrap();
        assert_eq!(FilePersistence::open(&path).unwrap().load_cursors().unwrap()["c"], 5);
    }

    #[test]
    fn unreadable_files_are_errors_not_a_silent_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, b"not json").unwrap();
        let err = FilePersistence::open(&path).unwrap_err();
        assert!(matches!(err, FilePersistenceError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("p.json"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not json", "left as it was");

        std::fs::write(&path, br#"{"version":2,"cursors":{}}"#).unwrap();
        let err = FilePersistence::open(&path).unwrap_err();
        assert!(matches!(err, FilePersistenceError::UnsupportedVersion { found: 2, .. }), "{err}");

        std::fs::write(
            &path,
            br#"{"version":1,"pending":[{"client_msg_id":"a","target":{"peer":"b"},"content_type":"t","body":"***"}]}"#,
        )
        .unwrap();
        let err = FilePersistence::open(&path).unwrap_err();
        assert!(err.to_string().contains("not base64"), "{err}");
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("p.json");
        let p = FilePersistence::open(&path).unwrap();
        p.save_cursor("c", 1).unwrap();
        // Make the temporary file impossible to create: a directory in its place.
        std::fs::create_dir(dir.path().join("sub").join("p.json.tmp")).unwrap();
        let err = p.save_cursor("c", 2).unwrap_err();
        assert!(err.to_string().contains("p.json.tmp"), "{err}");
        assert_eq!(p.load_cursors().unwrap()["c"], 1, "memory follows the file");
        let err = p.put_pending(&pending("a", b"x")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::IsADirectory, "{err}");
        assert!(p.list_pending().unwrap().is_empty());
    }
}
