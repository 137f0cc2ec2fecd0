//! [`StorageError`]: why a [`super::DiskStorage`] refused to open or to write, with the path
//! (and byte offset) at fault and what to do. It travels inside an `io::Error` where the
//! [`super::Storage`] trait requires one; [`StorageError::from_io`] gets it back.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::types::NodeId;

/// Why a disk store could not be opened or written. Every variant names the file.
#[derive(Debug)]
pub enum StorageError {
    /// The data directory's path exists but is not a directory.
    NotADirectory {
        /// The path given as the data directory.
        path: PathBuf,
    },
    /// The OS refused a file operation (permissions, a full disk, a failing device).
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done ("create", "read", "write", "fsync", ...).
        action: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Another store (in this or another process) holds the directory's lock.
    Locked {
        /// The directory, or its lock file.
        path: PathBuf,
    },
    /// The directory belongs to another cluster or another node.
    WrongIdentity {
        /// The identity file.
        path: PathBuf,
        /// The cluster and node the caller opened it as.
        expected: (u64, NodeId),
        /// The cluster and node recorded in the directory.
        found: (u64, NodeId),
    },
    /// The identity file is missing (while segments exist) or does not parse.
    BadIdentity {
        /// The identity file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The log's first segment is gone: the earliest segment left does not start from a
    /// checkpoint (or no segment is left at all).
    FirstSegmentMissing {
        /// The data directory.
        dir: PathBuf,
        /// The earliest segment found, if any.
        earliest: Option<PathBuf>,
    },
    /// A segment between two others is missing.
    MissingSegment {
        /// The segment file that should exist.
        path: PathBuf,
    },
    /// Bytes that fail their checksum or do not parse, before the log's tail.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The byte offset of the bad record.
        offset: u64,
        /// What is wrong.
        why: String,
    },
    /// The recorded hard state contradicts the log (a term below the log's last term).
    Contradiction {
        /// The file holding the hard state.
        path: PathBuf,
        /// The byte offset of the hard state's record.
        offset: u64,
        /// What contradicts what.
        why: String,
    },
    /// A checkpoint names a snapshot file that is not there.
    MissingSnapshot {
        /// The snapshot file that should exist.
        path: PathBuf,
    },
    /// An earlier write failed, so the file's end is unknown: the store takes no more writes.
    Failed {
        /// The data directory.
        dir: PathBuf,
        /// The first failure.
        why: String,
    },
    /// [`super::DiskOptions`] no store can work with ([`super::DiskOptions::validate`]);
    /// nothing was written.
    BadOptions {
        /// What is wrong, naming the field.
        why: String,
    },
    /// A node directory holds no store although its cluster directory created it before
    /// (`NODES` in [`super::DiskStorage::factory`]'s directory lists it): it was wiped or lost.
    Lost {
        /// The node's directory.
        dir: PathBuf,
        /// The node.
        node: NodeId,
    },
    /// A cluster directory's list of the nodes it created (`NODES`) does not parse.
    BadNodeList {
        /// The list.
        path: PathBuf,
    },
    /// The identity file declares an on-disk format this build does not read (a newer one).
    UnsupportedFormat {
        /// The identity file.
        path: PathBuf,
        /// The format version it declares (e.g. "v3").
        found: String,
    },
}

impl StorageError {
    /// The `StorageError` inside an `io::Error` returned through the [`super::Storage`] trait
    /// or a storage factory, if it is one.
    pub fn from_io(error: &io::Error) -> Option<&StorageError> {
        error.get_ref().and_then(|inner| inner.downcast_ref::<StorageError>())
    }

    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, source: io::Error) -> Self {
        StorageError::Io { path: path.into(), action, source }
    }
}

/// What a store that cannot be read back asks of its operator, if no backup exists: a node
/// that restarted empty under its old id would have forgotten its votes and its log, and as
/// a voter could help elect a leader that lacks committed entries (Raft keeps a majority's
/// memory, not any one node's).
const REPLACE: &str = "replace the node: remove it from the cluster, then add it back under a new id with an empty directory (never restart a voter with an empty directory under its old id: it forgets its votes and log, and can help elect a leader that lacks committed entries)";

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::NotADirectory { path } => write!(
                f,
                "data directory {} is not a directory: give a directory path (it is created if missing)",
                path.display()
            ),
            StorageError::Io { path, action, source } => write!(
                f,
                "could not {action} {}: {source}; check the path's permissions and free space",
                path.display()
            ),
            StorageError::Locked { path } => write!(
                f,
                "{} is locked by another running node: stop it first, or give this node its own directory",
                path.display()
            ),
            StorageError::WrongIdentity { path, expected, found } => write!(
                f,
                "{} belongs to cluster {:016x} node {}, not cluster {:016x} node {}: use that node's directory, or an empty one for a new node",
                path.display(),
                found.0,
                found.1,
                expected.0,
                expected.1
            ),
            StorageError::BadIdentity { path, why } => write!(
                f,
                "identity file {}: {why}; restore it from a backup, or {REPLACE}",
                path.display()
            ),
            StorageError::FirstSegmentMissing { dir, earliest } => match earliest {
                Some(first) => write!(
                    f,
                    "the log in {} lost its first segment: {} does not start from a checkpoint; restore the missing segments, or {REPLACE}",
                    dir.display(),
                    first.display()
                ),
                None => write!(
                    f,
                    "the log in {} has no segments although the directory was initialised; restore them, or {REPLACE}",
                    dir.display()
                ),
            },
            StorageError::MissingSegment { path } => write!(
                f,
                "segment {} is missing between two others; restore it, or {REPLACE}",
                path.display()
            ),
            StorageError::Corrupt { path, offset, why } => write!(
                f,
                "{} is corrupt at byte {offset}: {why}; the node will not guess what it lost: restore the file, or {REPLACE}",
                path.display()
            ),
            StorageError::Contradiction { path, offset, why } => write!(
                f,
                "{} at byte {offset}: the hard state contradicts the log ({why}); restore the directory, or {REPLACE}",
                path.display()
            ),
            StorageError::MissingSnapshot { path } => write!(
                f,
                "snapshot file {} is missing; restore it, or {REPLACE}",
                path.display()
            ),
            StorageError::Failed { dir, why } => write!(
                f,
                "the store in {} stopped after a failed write ({why}); fix the cause (free space?) and restart the node",
                dir.display()
            ),
            StorageError::BadOptions { why } => write!(f, "bad disk options: {why}"),
            StorageError::BadNodeList { path } => write!(
                f,
                "{} does not parse (one node id per line): restore it from a backup, or delete it and it is written again, listing the node directories that hold a store (so first check that no node's directory was emptied: the new list cannot know that node)",
                path.display()
            ),
            StorageError::Lost { dir, node } => write!(
                f,
                "{} holds no store, although node {node} was created there before: its directory was emptied, deleted or lost. If it was moved or its disk is not mounted, restore that directory where it was (not an older backup: a voter back with less than it acknowledged is as unsafe as an empty one); otherwise {REPLACE}",
                dir.display()
            ),
            StorageError::UnsupportedFormat { path, found } => write!(
                f,
                "{} declares on-disk format {found}, but this build reads v1 and v2: run a newer ferraft on this directory",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<StorageError> for io::Error {
    fn from(error: StorageError) -> Self {
        let kind = match &error {
            StorageError::Io { source, .. } => source.kind(),
            StorageError::NotADirectory { .. } => io::ErrorKind::NotADirectory,
            StorageError::Locked { .. } => io::ErrorKind::WouldBlock,
            StorageError::BadOptions { .. } => io::ErrorKind::InvalidInput,
            StorageError::MissingSegment { .. }
            | StorageError::MissingSnapshot { .. }
            | StorageError::Lost { .. } => io::ErrorKind::NotFound,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that cannot be read back never advises restarting the node empty under its
    /// old id (unsafe for a voter: found by an audit, which lost an acknowledged write that
    /// way); it advises a backup, or replacing the node under a new id.
    #[test]
    fn unreadable_stores_advise_replacing_the_node_not_restarting_it_empty() {
        let path = PathBuf::from("/data/n2/seg-1");
        let dir = PathBuf::from("/data/n2");
        let why = "bad".to_owned();
        let errors = [
            StorageError::BadIdentity { path: path.clone(), why: why.clone() },
            StorageError::FirstSegmentMissing { dir: dir.clone(), earliest: Some(path.clone()) },
            StorageError::FirstSegmentMissing { dir, earliest: None },
            StorageError::MissingSegment { path: path.clone() },
            StorageError::Corrupt { path: path.clone(), offset: 7, why: why.clone() },
            StorageError::Contradiction { path: path.clone(), offset: 7, why },
            StorageError::MissingSnapshot { path },
            StorageError::Lost { dir: PathBuf::from("/data/n2"), node: NodeId(2) },
        ];
        for error in errors {
            let text = error.to_string();
            assert!(text.contains("restore"), "{text}");
            assert!(text.contains("under a new id"), "{text}");
            assert!(!text.contains("wipe") && !text.contains("catch up"), "{text}");
        }
    }

    /// A node directory found empty after its node ran: restoring an older backup of it
    /// brings the voter back with fewer votes and entries than it acknowledged, as unsafe as
    /// an empty directory. Only the directory itself (moved, or a disk not mounted) may go
    /// back.
    #[test]
    fn a_lost_directory_is_not_to_be_restored_from_an_older_backup() {
        let lost = StorageError::Lost { dir: PathBuf::from("/data/n2"), node: NodeId(2) };
        let text = lost.to_string();
        assert!(!text.contains("from a backup"), "{text}");
        assert!(text.contains("under a new id"), "{text}");
    }
}
