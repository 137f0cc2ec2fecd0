//! [`DiskStorage`]: a node's persistent state in a directory of its own, as a segmented,
//! checksummed write-ahead log (the record format is documented in `wal.rs`) plus snapshot
//! files.
//!
//! Layout of a node directory:
//!
//! ```text
//! IDENTITY                 "ferraft node v2", the cluster id and the node id; checked on open
//!                          (v1: segments not pre-zeroed; read alike and upgraded on open)
//! LOCK                     held (flock) while a store has the directory open, as is the
//!                          directory itself (Unix): deleting LOCK does not free it
//! wal-<seq>.log            segments, seq = 1, 2, ... without gaps; the last one is written to
//! next.wal.tmp             the next segment being prepared (zeros); deleted on open
//! snap-<index>.snap        the latest snapshot, named by its last included index
//! ```
//!
//! [`DiskStorage::factory`] keeps one such directory per node, `n<id>`, in a cluster
//! directory that also holds `CLUSTER` (the cluster's id) and `NODES` (the nodes it created,
//! one id per line, so a wiped node directory is told from a new one; `NODES.lock` is locked
//! while a factory, in any process, reads and extends it).
//!
//! Writes are encoded into one reusable buffer and reach the file in one `pwrite` per
//! [`Storage::sync`], at the write offset, which then `fdatasync`s (group commit: the driver
//! syncs once per step). **Segments are pre-zeroed**: a segment is filled with zeros to
//! [`DiskOptions::segment_bytes`] and synced under the name `next.wal.tmp`, then gets its
//! header record (synced), is renamed to its `wal-<seq>.log` name and the directory synced,
//! and only then becomes the segment written to. Appends overwrite zeros inside the file's
//! size, so an `fdatasync` commits no file size or extent (about half the cost of an
//! extending write on ext4). The next segment is prepared on a helper thread once the current
//! one is half full, so rotation only renames it. Rotation to a new segment happens in `sync`
//! once a segment passes [`DiskOptions::segment_bytes`]; the full segment is fsync'd before the
//! next one is named, so only the last segment can ever end in a torn record. A snapshot is written to a
//! temporary file, fsync'd, renamed, the directory fsync'd; then a new segment starts with a
//! checkpoint of the whole state, and every older segment and snapshot file is deleted.
//!
//! The store keeps a copy of the persistent state in memory (what `load` returns and what a
//! checkpoint writes), so it never reads its files after opening them.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::StorageError;
use super::wal::{self, Checkpoint, Frame, Record, RecordOwned, RecordRef, Tail};
use super::SyncJob;
use super::{kept_before, HardState, PersistentState, Storage};
use crate::message::{Configuration, Entry, Snapshot};
use crate::types::{LogIndex, NodeId, Term};

const IDENTITY: &str = "IDENTITY";
const LOCK: &str = "LOCK";
const CLUSTER: &str = "CLUSTER";
/// In a cluster directory ([`DiskStorage::factory`]): the ids of the nodes it created.
const NODES: &str = "NODES";
/// In a cluster directory: locked while a factory reads and extends `NODES`.
const NODES_LOCK: &str = "NODES.lock";
const IDENTITY_MAGIC: &str = "ferraft node v2";
/// The identity line of directories written before segments were pre-zeroed.
const IDENTITY_MAGIC_V1: &str = "ferraft node v1";
/// The next segment while it is being prepared (`.tmp`: an open deletes it).
const NEXT_SEGMENT: &str = "next.wal.tmp";
/// Buffered bytes beyond which `append` writes them out before `sync` (bounds memory).
const FLUSH_BYTES: usize = 8 << 20;

/// When a disk store makes its writes durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` in every [`Storage::sync`]: nothing counts as written before it is on disk
    /// (the default; what Raft's safety needs, Figure 2 SUB-8).
    #[default]
    Always,
    /// Never fsync: writes reach the OS but a power loss or OS crash may lose any of them, and
    /// a node that forgets a vote or an acknowledged entry can break safety. For tests and
    /// benchmarks only. A process crash alone loses nothing written.
    Never,
}

/// Tuning for a [`DiskStorage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskOptions {
    /// A segment is closed and a new one started once it holds this many bytes; each segment
    /// is created filled with this many zeros (default 16 MiB).
    pub segment_bytes: u64,
    /// When writes are made durable (default [`SyncPolicy::Always`]).
    pub sync: SyncPolicy,
}

/// The largest [`DiskOptions::segment_bytes`]: every segment is zero-filled to its size when
/// it is created, so a larger one would fill a disk before the store could write a record.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 32;

impl DiskOptions {
    /// Refuses options no store can work with (before [`DiskStorage::open`] writes anything):
    /// a `segment_bytes` of 0 (a new segment file for every sync) or above
    /// [`MAX_SEGMENT_BYTES`].
    pub fn validate(&self) -> Result<(), StorageError> {
        let segment_bytes = self.segment_bytes;
        if segment_bytes == 0 {
            let why = "DiskOptions::segment_bytes is 0: every sync would start a new segment \
                       file; give it a positive size (default 16 MiB)";
            return Err(StorageError::BadOptions { why: why.into() });
        }
        if segment_bytes > MAX_SEGMENT_BYTES {
            let why = format!(
                "DiskOptions::segment_bytes ({segment_bytes}) exceeds {MAX_SEGMENT_BYTES}: \
                 each segment is zero-filled to this size when created; lower it (default \
                 16 MiB)"
            );
            return Err(StorageError::BadOptions { why });
        }
        Ok(())
    }
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions { segment_bytes: 16 << 20, sync: SyncPolicy::Always }
    }
}

/// Which cluster and node a directory belongs to; recorded when it is created and checked on
/// every open, so a node never starts from another node's (or cluster's) log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The cluster's id (any value shared by the cluster's nodes; [`DiskStorage::factory`]
    /// draws one at random when it creates the cluster directory).
    pub cluster: u64,
    /// The node's id.
    pub node: NodeId,
}

/// A [`Storage`] in a directory: see the module docs for the layout and `wal.rs` for the
/// record format.
///
/// ```
/// use ferraft::storage::{DiskOptions, DiskStorage, NodeIdentity, Storage};
/// use ferraft::{Configuration, HardState, NodeId, Term};
///
/// let dir = std::env::temp_dir().join(format!("ferraft-doc-disk-{}", std::process::id()));
/// let me = NodeIdentity { cluster: 7, node: NodeId(1) };
/// let bootstrap = Configuration::new([NodeId(1)]);
/// {
///     let mut store: DiskStorage<u64> =
///         DiskStorage::open(&dir, me, &bootstrap, DiskOptions::default()).unwrap();
///     store.save_hard_state(HardState { term: Term(3), voted_for: Some(NodeId(1)) }).unwrap();
///     store.sync().unwrap(); // durable from here on
/// }
/// let store: DiskStorage<u64> =
///     DiskStorage::open(&dir, me, &bootstrap, DiskOptions::default()).unwrap();
/// assert_eq!(store.load().unwrap().hard_state.term, Term(3));
/// # drop(store);
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub struct DiskStorage<C> {
    dir: PathBuf,
    options: DiskOptions,
    /// Held for the store's life: the directory's lock.
    _lock: DirLock,
    /// What `load` returns: everything written so far.
    state: PersistentState<C>,
    /// The segment being written to, its sequence number and the write offset in it (the
    /// length of its data; the file is longer, pre-zeroed).
    segment: File,
    segment_seq: u64,
    segment_len: u64,
    /// The data bytes of the segments before the current one (from `first_seq`).
    closed_bytes: u64,
    /// The next segment, being zero-filled on a helper thread.
    next: Option<std::thread::JoinHandle<Result<File, StorageError>>>,
    /// The oldest segment still on disk.
    first_seq: u64,
    /// Encoded records not yet written to the segment.
    buf: Vec<u8>,
    /// Set by the first failed write: the file's end is unknown, so every later call fails.
    failed: Option<String>,
    _command: PhantomData<fn() -> C>,
}

impl<C> std::fmt::Debug for DiskStorage<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStorage")
            .field("dir", &self.dir)
            .field("segment_seq", &self.segment_seq)
            .field("entries", &self.state.entries.len())
            .finish()
    }
}

impl<C> DiskStorage<C>
where
    C: Serialize + DeserializeOwned + Clone + Send + 'static,
{
    /// Opens (creating it if needed) the node directory `dir` as `identity`; a new directory
    /// starts from `bootstrap` (ignored when the directory already holds a log). Replays the
    /// log: a torn last record is truncated away (with a warning); anything else wrong is a
    /// [`StorageError`] naming the file and offset.
    ///
    /// An empty directory looks the same whether this is the node's first start or its
    /// directory was wiped or lost. Create a store only when the operator says it is a first
    /// start (or a new node under a new id), as the `kv_server` example does with
    /// `--bootstrap` and `--join`, and [`DiskStorage::factory`] with its list of the nodes it
    /// created: a voter restarted empty under its old id has forgotten its votes and log,
    /// and can help elect a leader that lacks committed entries.
    pub fn open(
        dir: impl AsRef<Path>,
        identity: NodeIdentity,
        bootstrap: &Configuration,
        options: DiskOptions,
    ) -> Result<Self, StorageError> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        prepare_dir(&dir)?;
        let lock = lock_dir(&dir)?;
        let listing = Listing::read(&dir)?;
        let identity_path = dir.join(IDENTITY);
        if !identity_path.exists() {
            if !listing.segments.is_empty() && listing.segments != [1] {
                let why = "missing although the directory holds log segments".to_string();
                return Err(StorageError::BadIdentity { path: identity_path, why });
            }
            // NB: only segment 1 without an identity, holding nothing but its bootstrap
            // checkpoint, is an initialisation cut short.
            if listing.segments == [1] {
                check_nothing_after_bootstrap(&dir, &identity_path)?;
            }
            return Self::create(dir, lock, identity, bootstrap, options);
        }
        if check_identity(&identity_path, identity)? == Format::V1 {
            let text = identity_text(identity);
            write_atomically(&dir, IDENTITY, text.as_bytes())?;
            tracing::info!(dir = %dir.display(), "upgraded the node directory to format v2");
        }
        let recovered = recover::<C>(&dir, &listing.segments)?;
        Self::resume(dir, lock, listing, recovered, options)
    }

    /// A storage factory for [`crate::ClusterBuilder::storage`]: node `id` lives in
    /// `dir/n<id>`, and `dir/CLUSTER` holds the cluster's id (drawn at random the first time).
    /// Restarting a node, or a whole cluster in a new process, reopens the same directories.
    ///
    /// `dir/NODES` lists the nodes whose directories the factory created, so it tells a
    /// first start from a wiped one: a node it created before whose directory now holds no
    /// store is refused with [`StorageError::Lost`] (a voter restarted empty under its old id
    /// can help elect a leader that lacks committed entries), while an id it never created
    /// gets a new directory.
    pub fn factory(
        dir: impl Into<PathBuf>,
    ) -> impl Fn(NodeId, &Configuration) -> io::Result<DiskStorage<C>> + Send + Sync + 'static {
        Self::factory_with(dir, DiskOptions::default())
    }

    /// [`DiskStorage::factory`] with options.
    pub fn factory_with(
        dir: impl Into<PathBuf>,
        options: DiskOptions,
    ) -> impl Fn(NodeId, &Configuration) -> io::Result<DiskStorage<C>> + Send + Sync + 'static {
        let dir = dir.into();
        // NB: one start at a time reads and extends the list of created nodes: in this
        // factory, and (the directory's lock) in every other on the directory, in this
        // process or another.
        let created = Mutex::new(());
        move |id, bootstrap| {
            let _one = created.lock().unwrap_or_else(|p| p.into_inner());
            let _all = lock_cluster_dir(&dir)?;
            let cluster = cluster_id(&dir)?;
            let identity = NodeIdentity { cluster, node: id };
            let mut nodes = created_nodes(&dir)?;
            let node_dir = node_dir(&dir, id);
            if nodes.contains(&id) && !holds_store(&node_dir)? {
                return Err(StorageError::Lost { dir: node_dir, node: id }.into());
            }
            let store = DiskStorage::open(&node_dir, identity, bootstrap, options)?;
            // NB: recorded once its store exists: a start cut short before leaves the id
            // unrecorded, so the next start creates the directory again instead of refusing it.
            if nodes.insert(id) {
                record_created_nodes(&dir, &nodes)?;
            }
            Ok(store)
        }
    }

    /// The node directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of data written: the segments' data up to their write offsets (not the
    /// pre-zeroed rest of each file) plus the snapshot file. See [`DiskStorage::disk_bytes`]
    /// for what the files take.
    pub fn used_bytes(&self) -> io::Result<u64> {
        let snapshot = match &self.state.snapshot {
            Some(s) => fs::metadata(snapshot_path(&self.dir, s.meta.index))?.len(),
            None => 0,
        };
        Ok(self.closed_bytes + self.segment_len + snapshot)
    }

    /// Bytes of every segment and snapshot file in the directory, the pre-zeroed rest of each
    /// segment included.
    pub fn disk_bytes(&self) -> io::Result<u64> {
        let mut total = 0;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("wal-") || name.starts_with("snap-") {
                total += entry.metadata()?.len();
            }
        }
        Ok(total)
    }

    /// A brand-new directory: segment 1 with the bootstrap checkpoint, then the identity.
    fn create(
        dir: PathBuf,
        lock: DirLock,
        identity: NodeIdentity,
        bootstrap: &Configuration,
        options: DiskOptions,
    ) -> Result<Self, StorageError> {
        let state = PersistentState {
            hard_state: HardState::default(),
            base_config: bootstrap.clone(),
            log_offset: LogIndex(0),
            offset_term: Term(0),
            entries: Vec::new(),
            snapshot: None,
        };
        let zeros = zero_file(&dir, options.segment_bytes, options.sync)?;
        let (segment, segment_len) = install_segment(&dir, 1, zeros, Some(&state), options.sync)?;
        write_atomically(&dir, IDENTITY, identity_text(identity).as_bytes())?;
        tracing::info!(dir = %dir.display(), "created a new node directory");
        Ok(DiskStorage {
            dir,
            options,
            _lock: lock,
            state,
            segment,
            segment_seq: 1,
            segment_len,
            closed_bytes: 0,
            next: None,
            first_seq: 1,
            buf: Vec::new(),
            failed: None,
            _command: PhantomData,
        })
    }

    /// After replay: drop what the replay found garbage, zero the torn tail, reopen the last
    /// segment for writing.
    fn resume(
        dir: PathBuf,
        lock: DirLock,
        listing: Listing,
        recovered: Recovered<C>,
        options: DiskOptions,
    ) -> Result<Self, StorageError> {
        for &seq in listing.segments.iter().filter(|&&s| s < recovered.first_seq) {
            remove(&segment_path(&dir, seq))?;
        }
        for &seq in listing.segments.iter().filter(|&&s| s > recovered.last_seq) {
            remove(&segment_path(&dir, seq))?; // a segment whose header was torn
        }
        let keep = recovered.state.snapshot.as_ref().map(|s| s.meta.index);
        for &index in listing.snapshots.iter().filter(|&&i| Some(LogIndex(i)) != keep) {
            remove(&snapshot_path(&dir, LogIndex(index)))?;
        }
        let path = segment_path(&dir, recovered.last_seq);
        let segment = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| StorageError::io(&path, "open", e))?;
        if recovered.garbage_end > recovered.last_len {
            // A torn tail: zeros again, so later writes are followed by zeros only.
            let zeros = vec![0u8; (recovered.garbage_end - recovered.last_len) as usize];
            segment
                .write_all_at(&zeros, recovered.last_len)
                .map_err(|e| StorageError::io(&path, "zero the torn tail of", e))?;
            if options.sync == SyncPolicy::Always {
                segment.sync_data().map_err(|e| StorageError::io(&path, "fsync", e))?;
            }
        }
        if options.sync == SyncPolicy::Always {
            sync_dir(&dir)?; // the deletions above
        }
        let mut store = DiskStorage {
            dir,
            options,
            _lock: lock,
            state: recovered.state,
            segment,
            segment_seq: recovered.last_seq,
            segment_len: recovered.last_len,
            closed_bytes: recovered.closed_bytes,
            next: None,
            first_seq: recovered.first_seq,
            buf: Vec::new(),
            failed: None,
            _command: PhantomData,
        };
        store.maybe_prepare_next();
        Ok(store)
    }

    fn check_usable(&self) -> io::Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(why) => {
                Err(StorageError::Failed { dir: self.dir.clone(), why: why.clone() }.into())
            }
        }
    }

    /// Records the first failure: from now on the store refuses everything.
    fn fail(&mut self, error: StorageError) -> io::Error {
        tracing::error!(error = %error, "disk store failed; it takes no more writes");
        self.failed.get_or_insert_with(|| error.to_string());
        error.into()
    }

    fn encode(&mut self, record: &RecordRef<'_, C>) -> io::Result<()> {
        wal::append_frame(&mut self.buf, record)
            .map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))
    }

    /// Writes the buffered records to the segment (no fsync).
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.segment.write_all_at(&self.buf, self.segment_len) {
            let path = segment_path(&self.dir, self.segment_seq);
            return Err(self.fail(StorageError::io(path, "write", e)));
        }
        self.segment_len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn fsync_segment(&mut self) -> io::Result<()> {
        if self.options.sync == SyncPolicy::Never {
            return Ok(());
        }
        if let Err(e) = self.segment.sync_data() {
            let path = segment_path(&self.dir, self.segment_seq);
            return Err(self.fail(StorageError::io(path, "fsync", e)));
        }
        Ok(())
    }

    /// Closes the current segment (written and fsync'd) and starts the next, with a checkpoint
    /// of the whole state if asked.
    fn rotate(&mut self, checkpoint: bool) -> io::Result<()> {
        self.flush()?;
        self.fsync_segment()?;
        let seq = self.segment_seq + 1;
        let next = self.take_next();
        let state = checkpoint.then_some(&self.state);
        let installed =
            next.and_then(|zeros| install_segment(&self.dir, seq, zeros, state, self.options.sync));
        match installed {
            Ok((file, len)) => {
                self.closed_bytes += self.segment_len;
                (self.segment, self.segment_seq, self.segment_len) = (file, seq, len);
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// The prepared next segment, or one zero-filled now if none is ready.
    fn take_next(&mut self) -> Result<File, StorageError> {
        match self.next.take().map(|handle| handle.join()) {
            Some(Ok(prepared)) => prepared,
            Some(Err(_)) => Err(StorageError::io(
                self.dir.join(NEXT_SEGMENT),
                "prepare",
                io::Error::other("the thread preparing it panicked"),
            )),
            None => zero_file(&self.dir, self.options.segment_bytes, self.options.sync),
        }
    }

    /// Starts zero-filling the next segment on a helper thread once the current one is half
    /// full (so a short-lived store never writes a second segment of zeros).
    fn maybe_prepare_next(&mut self) {
        if self.next.is_some() || self.segment_len.saturating_mul(2) < self.options.segment_bytes {
            return;
        }
        let (dir, options) = (self.dir.clone(), self.options);
        let spawned = std::thread::Builder::new()
            .name("ferraft-wal-prep".into())
            .spawn(move || zero_file(&dir, options.segment_bytes, options.sync));
        // NB: if no thread can be spawned, rotation zero-fills the segment itself.
        self.next = spawned.ok();
    }

    /// Deletes every segment before the current one and every snapshot file but `keep`.
    fn delete_before_current(&mut self, old_snapshot: Option<LogIndex>) -> io::Result<()> {
        let result = (self.first_seq..self.segment_seq)
            .try_for_each(|seq| remove(&segment_path(&self.dir, seq)))
            .and_then(|()| match old_snapshot {
                Some(index) => remove(&snapshot_path(&self.dir, index)),
                None => Ok(()),
            })
            .and_then(|()| self.sync_dir_if_safe());
        self.first_seq = self.segment_seq;
        self.closed_bytes = 0;
        result.map_err(|e| self.fail(e))
    }

    fn sync_dir_if_safe(&self) -> Result<(), StorageError> {
        match self.options.sync {
            SyncPolicy::Always => sync_dir(&self.dir),
            SyncPolicy::Never => Ok(()),
        }
    }
}

impl<C> Storage<C> for DiskStorage<C>
where
    C: Serialize + DeserializeOwned + Clone + Send + 'static,
{
    fn load(&self) -> io::Result<PersistentState<C>> {
        self.check_usable()?;
        Ok(self.state.clone())
    }

    fn save_hard_state(&mut self, hard_state: HardState) -> io::Result<()> {
        self.check_usable()?;
        self.encode(&Record::HardState(hard_state))?;
        self.state.hard_state = hard_state;
        Ok(())
    }

    fn append(&mut self, first: LogIndex, entries: &[Entry<C>]) -> io::Result<()> {
        self.check_usable()?;
        let keep = kept_before(&self.state, first, entries.len())
            .map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))?;
        self.encode(&Record::Entries { first, entries })?;
        self.state.entries.truncate(keep);
        self.state.entries.extend_from_slice(entries);
        if self.buf.len() >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn save_snapshot(&mut self, snapshot: &Arc<Snapshot>) -> io::Result<()> {
        self.check_usable()?;
        if snapshot.meta.index <= self.state.log_offset {
            return Ok(()); // an older snapshot than the one kept
        }
        super::check_snapshot_index(snapshot)?; // a state that recovery would refuse
        let mut bytes = Vec::new();
        wal::append_frame(&mut bytes, &**snapshot)
            .map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))?;
        let name = snapshot_name(snapshot.meta.index);
        if let Err(e) = write_atomically(&self.dir, &name, &bytes) {
            return Err(self.fail(e));
        }
        let old_snapshot = self.state.snapshot.as_ref().map(|s| s.meta.index);
        super::apply_snapshot(&mut self.state, snapshot);
        self.rotate(true)?;
        self.delete_before_current(old_snapshot)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.check_usable()?;
        self.flush()?;
        self.fsync_segment()?;
        if self.segment_len >= self.options.segment_bytes {
            self.rotate(false)?;
        }
        self.maybe_prepare_next();
        Ok(())
    }

    /// The write-out happens here; the `fdatasync` of the segment runs wherever the job goes.
    /// A full segment is closed and rotated here instead (synced in place), as rotation must
    /// not run beside writes to the next segment.
    fn start_sync(&mut self) -> io::Result<Option<SyncJob>> {
        self.check_usable()?;
        if self.options.sync == SyncPolicy::Never || self.segment_len >= self.options.segment_bytes
        {
            return self.sync().map(|()| None);
        }
        self.flush()?;
        self.maybe_prepare_next();
        let path = segment_path(&self.dir, self.segment_seq);
        let segment = match self.segment.try_clone() {
            Ok(segment) => segment,
            Err(e) => return Err(self.fail(StorageError::io(path, "dup", e))),
        };
        // NB: a failed background fsync is reported to the driver, which stops the node, so
        // nothing later relies on this store's writes.
        Ok(Some(Box::new(move || {
            segment.sync_data().map_err(|e| StorageError::io(path, "fsync", e).into())
        })))
    }
}

impl<C> Drop for DiskStorage<C> {
    fn drop(&mut self) {
        // Best effort, no fsync: what a process hands the OS survives its crash, not a power
        // loss; nothing here counted as persisted anyway.
        if self.failed.is_none() && !self.buf.is_empty() {
            let _ = self.segment.write_all_at(&self.buf, self.segment_len);
        }
        if let Some(handle) = self.next.take() {
            let _ = handle.join(); // its file is a `.tmp`, deleted by the next open
        }
    }
}

// ---- the directory ----

fn node_dir(cluster_dir: &Path, id: NodeId) -> PathBuf {
    cluster_dir.join(format!("n{}", id.0))
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:020}.log"))
}

fn snapshot_name(index: LogIndex) -> String {
    format!("snap-{:020}.snap", index.0)
}

fn snapshot_path(dir: &Path, index: LogIndex) -> PathBuf {
    dir.join(snapshot_name(index))
}

/// Creates the directory if missing; refuses a path that is not a directory.
fn prepare_dir(dir: &Path) -> Result<(), StorageError> {
    if dir.exists() && !dir.is_dir() {
        return Err(StorageError::NotADirectory { path: dir.to_path_buf() });
    }
    fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, "create", e))
}

/// A store's hold on its directory: a lock on the directory itself (Unix), which deleting
/// its files cannot undo (an operator who removes a `LOCK` file thought stale let a second
/// server write a running one's directory: found by an audit), and one on its `LOCK` file
/// (every platform).
struct DirLock {
    #[cfg(unix)]
    _dir: File,
    _file: File,
}

fn lock_dir(dir: &Path) -> Result<DirLock, StorageError> {
    #[cfg(unix)]
    let dir_lock = {
        let handle = File::open(dir).map_err(|e| StorageError::io(dir, "open", e))?;
        match handle.try_lock() {
            Ok(()) => handle,
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StorageError::Locked { path: dir.to_path_buf() })
            }
            Err(fs::TryLockError::Error(e)) => return Err(StorageError::io(dir, "lock", e)),
        }
    };
    Ok(DirLock {
        #[cfg(unix)]
        _dir: dir_lock,
        _file: lock_file(dir)?,
    })
}

/// Opens (creating it if needed) a file that exists to be locked.
fn open_lock_file(path: &Path) -> Result<File, StorageError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| StorageError::io(path, "open", e))
}

fn lock_file(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join(LOCK);
    let file = open_lock_file(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(StorageError::Locked { path }),
        Err(fs::TryLockError::Error(e)) => Err(StorageError::io(path, "lock", e)),
    }
}

/// The segment and snapshot files of a directory, by number; leftover `.tmp` files go.
struct Listing {
    segments: Vec<u64>,
    snapshots: Vec<u64>,
}

impl Listing {
    fn read(dir: &Path) -> Result<Self, StorageError> {
        let mut listing = Listing { segments: Vec::new(), snapshots: Vec::new() };
        let entries = fs::read_dir(dir).map_err(|e| StorageError::io(dir, "read", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io(dir, "read", e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = number_in(&name, "wal-", ".log") {
                listing.segments.push(seq);
            } else if let Some(index) = number_in(&name, "snap-", ".snap") {
                listing.snapshots.push(index);
            } else if name.ends_with(".tmp") {
                remove(&entry.path())?; // a write cut short before its rename
            }
        }
        listing.segments.sort_unstable();
        listing.snapshots.sort_unstable();
        Ok(listing)
    }
}

fn number_in(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
}

/// The on-disk format a directory's identity file declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Segments end at their data (written before pre-zeroing).
    V1,
    /// Pre-zeroed segments: a zero frame header ends a segment's data.
    V2,
}

fn identity_text(identity: NodeIdentity) -> String {
    format!("{IDENTITY_MAGIC}\ncluster={:016x}\nnode={}\n", identity.cluster, identity.node.0)
}

fn check_identity(path: &Path, expected: NodeIdentity) -> Result<Format, StorageError> {
    let text = fs::read_to_string(path).map_err(|e| StorageError::io(path, "read", e))?;
    let bad = |why: &str| StorageError::BadIdentity { path: path.to_path_buf(), why: why.into() };
    let mut lines = text.lines();
    let format = match lines.next() {
        Some(IDENTITY_MAGIC) => Format::V2,
        Some(IDENTITY_MAGIC_V1) => Format::V1,
        Some(line) if line.starts_with("ferraft node v") => {
            let found = line.trim_start_matches("ferraft node ").to_string();
            return Err(StorageError::UnsupportedFormat { path: path.to_path_buf(), found });
        }
        _ => return Err(bad("it does not start with \"ferraft node v2\"")),
    };
    let mut field = |key: &str| {
        lines.next().and_then(|l| l.strip_prefix(key)).ok_or_else(|| bad("a field is missing"))
    };
    let cluster = u64::from_str_radix(field("cluster=")?, 16).map_err(|_| bad("bad cluster id"))?;
    let node = NodeId(field("node=")?.parse().map_err(|_| bad("bad node id"))?);
    if (cluster, node) != (expected.cluster, expected.node) {
        return Err(StorageError::WrongIdentity {
            path: path.to_path_buf(),
            expected: (expected.cluster, expected.node),
            found: (cluster, node),
        });
    }
    Ok(format)
}

/// Refuses to treat segment 1 as an initialisation cut short (to be written over) when it
/// holds anything after its first record, the bootstrap checkpoint: a term, a vote or entries
/// mean the node ran, and its identity file was lost since.
fn check_nothing_after_bootstrap(dir: &Path, identity_path: &Path) -> Result<(), StorageError> {
    let path = segment_path(dir, 1);
    let bytes = fs::read(&path).map_err(|e| StorageError::io(&path, "read", e))?;
    let ran = match wal::read_frame(&bytes, 0) {
        Frame::Whole { next, .. } => bytes[next..].iter().any(|&b| b != 0),
        // NB: the bootstrap record torn (a crash inside `create`) or damaged since: only a
        // whole record after it says the node ran; `create` writes nothing after it.
        Frame::End | Frame::Bad { .. } => {
            matches!(wal::classify_tail(&bytes, 0), wal::Tail::LaterFrame { .. })
        }
    };
    if !ran {
        return Ok(());
    }
    Err(StorageError::BadIdentity {
        path: identity_path.to_path_buf(),
        why: format!(
            "missing, although {} holds records written after the directory was created (the \
             node's term, vote or log): opening it as a new directory would forget them",
            path.display()
        ),
    })
}

/// The cluster directory's id, drawn and recorded the first time.
fn cluster_id(dir: &Path) -> Result<u64, StorageError> {
    prepare_dir(dir)?;
    let path = dir.join(CLUSTER);
    match fs::read_to_string(&path) {
        Ok(text) => u64::from_str_radix(text.trim(), 16).map_err(|_| StorageError::BadIdentity {
            path: path.clone(),
            why: "the cluster id is not a hexadecimal number".into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = rand::random::<u64>();
            write_atomically(dir, CLUSTER, format!("{id:016x}\n").as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(StorageError::io(path, "read", e)),
    }
}

/// The largest node id a cluster directory's `NODES` lists (`None` if it has no readable
/// list): a `Cluster` on the directory hands out new ids past it, so a node removed for good
/// is never created again under its id.
pub(crate) fn largest_created(dir: &Path) -> Option<u64> {
    let text = fs::read_to_string(dir.join(NODES)).ok()?;
    text.lines().filter_map(|line| line.trim().parse::<u64>().ok()).max()
}

/// Waits for, then holds, the cluster directory's lock on `NODES`: every factory on the
/// directory, in any process, reads and extends the list (and draws the cluster's id) alone
/// (found by a review: two factories each wrote back the list they had read, dropping the
/// other's node, and collided on `NODES.tmp`).
fn lock_cluster_dir(dir: &Path) -> Result<File, StorageError> {
    prepare_dir(dir)?;
    let path = dir.join(NODES_LOCK);
    let file = open_lock_file(&path)?;
    file.lock().map_err(|e| StorageError::io(&path, "lock", e))?;
    Ok(file)
}

/// The nodes a cluster directory's factory created (`NODES`). A directory written before
/// the list existed gets one, naming every node directory that holds a store.
fn created_nodes(dir: &Path) -> Result<BTreeSet<NodeId>, StorageError> {
    let path = dir.join(NODES);
    match fs::read_to_string(&path) {
        Ok(text) => text
            .lines()
            .map(|line| line.trim().parse().map(NodeId))
            .collect::<Result<_, _>>()
            .map_err(|_| StorageError::BadNodeList { path: path.clone() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut nodes = BTreeSet::new();
            let entries = fs::read_dir(dir).map_err(|e| StorageError::io(dir, "read", e))?;
            for entry in entries {
                let entry = entry.map_err(|e| StorageError::io(dir, "read", e))?;
                let name = entry.file_name();
                let id = name.to_str().and_then(|n| n.strip_prefix('n')?.parse().ok());
                if let Some(id) = id.filter(|_| entry.path().is_dir()) {
                    if holds_store(&entry.path())? {
                        nodes.insert(NodeId(id));
                    }
                }
            }
            record_created_nodes(dir, &nodes)?;
            Ok(nodes)
        }
        Err(e) => Err(StorageError::io(path, "read", e)),
    }
}

fn record_created_nodes(dir: &Path, nodes: &BTreeSet<NodeId>) -> Result<(), StorageError> {
    let text: String = nodes.iter().map(|id| format!("{}\n", id.0)).collect();
    write_atomically(dir, NODES, text.as_bytes())
}

/// Whether a node directory holds anything of a store: its identity file, a segment or a
/// snapshot. (What it holds is for [`DiskStorage::open`] to judge.)
fn holds_store(dir: &Path) -> Result<bool, StorageError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StorageError::io(dir, "read", e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(dir, "read", e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == IDENTITY || name.starts_with("wal-") || name.starts_with("snap-") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Writes `name` whole or not at all: a temp file, fsync'd, renamed, the directory fsync'd.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp).map_err(|e| StorageError::io(&tmp, "create", e))?;
    file.write_all(bytes).map_err(|e| StorageError::io(&tmp, "write", e))?;
    file.sync_all().map_err(|e| StorageError::io(&tmp, "fsync", e))?;
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(|e| StorageError::io(&path, "rename", e))?;
    sync_dir(dir)
}

/// Creates `dir/next.wal.tmp` holding `bytes` zeros (synced, unless the policy is never).
fn zero_file(dir: &Path, bytes: u64, sync: SyncPolicy) -> Result<File, StorageError> {
    let path = dir.join(NEXT_SEGMENT);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| StorageError::io(&path, "create", e))?;
    let zeros = vec![0u8; (1 << 20).min(bytes) as usize];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n]).map_err(|e| StorageError::io(&path, "zero-fill", e))?;
        left -= n as u64;
    }
    if sync == SyncPolicy::Always {
        file.sync_all().map_err(|e| StorageError::io(&path, "fsync", e))?;
    }
    Ok(file)
}

/// Makes the zero-filled `next.wal.tmp` segment `seq`: writes its header (with a checkpoint of
/// `state`, if given) at offset 0, syncs, renames it and syncs the directory. Returns the
/// file and the write offset after the header.
fn install_segment<C: Serialize>(
    dir: &Path,
    seq: u64,
    file: File,
    state: Option<&PersistentState<C>>,
    sync: SyncPolicy,
) -> Result<(File, u64), StorageError> {
    let checkpoint = state.map(|s| Checkpoint {
        hard_state: s.hard_state,
        base_config: s.base_config.clone(),
        log_offset: s.log_offset,
        offset_term: s.offset_term,
        snapshot: s.snapshot.is_some(),
        entries: &s.entries[..],
    });
    let mut bytes = Vec::new();
    let header: RecordRef<'_, C> = Record::Header { seq, checkpoint };
    let (tmp, path) = (dir.join(NEXT_SEGMENT), segment_path(dir, seq));
    wal::append_frame(&mut bytes, &header).map_err(|why| StorageError::Corrupt {
        path: path.clone(),
        offset: 0,
        why,
    })?;
    file.write_all_at(&bytes, 0).map_err(|e| StorageError::io(&tmp, "write", e))?;
    if sync == SyncPolicy::Always {
        file.sync_data().map_err(|e| StorageError::io(&tmp, "fsync", e))?;
    }
    fs::rename(&tmp, &path).map_err(|e| StorageError::io(&path, "rename", e))?;
    if sync == SyncPolicy::Always {
        sync_dir(dir)?;
    }
    Ok((file, bytes.len() as u64))
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    let handle = File::open(dir).map_err(|e| StorageError::io(dir, "open", e))?;
    handle.sync_all().map_err(|e| StorageError::io(dir, "fsync", e))
}

fn remove(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StorageError::io(path, "delete", e)),
        _ => Ok(()),
    }
}

// ---- recovery ----

/// What replay found.
struct Recovered<C> {
    state: PersistentState<C>,
    /// The segment replay started from (the last with a checkpoint).
    first_seq: u64,
    /// The last segment and its data's length (the write offset).
    last_seq: u64,
    last_len: u64,
    /// Where a torn tail's non-zero bytes end (`<= last_len` when there is none).
    garbage_end: u64,
    /// The data bytes of the segments from `first_seq` before the last.
    closed_bytes: u64,
}

/// Where the hard state was last set, for a contradiction's report.
type Place = (PathBuf, u64);

/// Replays `segments` (sorted) of `dir`. See `wal.rs` for what counts as torn.
fn recover<C: DeserializeOwned + Clone>(
    dir: &Path,
    segments: &[u64],
) -> Result<Recovered<C>, StorageError> {
    let earliest = segments.first().map(|&s| segment_path(dir, s));
    let Some(&first) = segments.first() else {
        return Err(StorageError::FirstSegmentMissing { dir: dir.to_path_buf(), earliest });
    };
    if let Some(w) = segments.windows(2).find(|w| w[1] != w[0] + 1) {
        return Err(StorageError::MissingSegment { path: segment_path(dir, w[0] + 1) });
    }
    let mut replay = Replay::<C> { state: None, first_seq: first, hard_state_at: None };
    let mut lens = Vec::new();
    let mut garbage_end = 0;
    for (i, &seq) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let path = segment_path(dir, seq);
        let bytes = fs::read(&path).map_err(|e| StorageError::io(&path, "read", e))?;
        match replay.segment(&path, seq, &bytes, is_last)? {
            Some((len, garbage)) => {
                lens.push((seq, len));
                garbage_end = garbage;
            }
            None => break, // the last segment's header was torn: it never existed
        }
        if replay.state.is_none() {
            return Err(StorageError::FirstSegmentMissing { dir: dir.to_path_buf(), earliest });
        }
    }
    let Replay { state, first_seq, hard_state_at } = replay;
    let Some(mut state) = state else {
        return Err(StorageError::FirstSegmentMissing { dir: dir.to_path_buf(), earliest });
    };
    check_hard_state(&state, hard_state_at)?;
    if state.snapshot.is_some() {
        state.snapshot = Some(Arc::new(read_snapshot(dir, &state)?));
    }
    let (last_seq, last_len) = *lens.last().expect("a segment with a checkpoint was replayed");
    if last_seq == u64::MAX {
        return Err(StorageError::Corrupt {
            path: segment_path(dir, last_seq),
            offset: 0,
            why: format!("its sequence number {last_seq} leaves none for the next segment"),
        });
    }
    let closed_bytes = lens.iter().filter(|(s, _)| (first_seq..last_seq).contains(s)).map(|l| l.1);
    let closed_bytes = closed_bytes.sum();
    Ok(Recovered { state, first_seq, last_seq, last_len, garbage_end, closed_bytes })
}

struct Replay<C> {
    /// None until the first checkpoint.
    state: Option<PersistentState<C>>,
    first_seq: u64,
    hard_state_at: Option<Place>,
}

impl<C: DeserializeOwned + Clone> Replay<C> {
    /// Replays one segment; returns the length of its data and where a torn tail's garbage
    /// ends (0 if none), or None if it is the last and even its header is missing or torn.
    fn segment(
        &mut self,
        path: &Path,
        seq: u64,
        bytes: &[u8],
        is_last: bool,
    ) -> Result<Option<(u64, u64)>, StorageError> {
        let mut offset = 0;
        loop {
            let corrupt = |why: String| StorageError::Corrupt {
                path: path.to_path_buf(),
                offset: offset as u64,
                why,
            };
            let why = match wal::read_frame(bytes, offset) {
                Frame::Whole { payload, next } => {
                    let record: RecordOwned<C> = postcard::from_bytes(payload)
                        .map_err(|e| corrupt(format!("a record does not parse: {e}")))?;
                    self.record(record, path, seq, offset).map_err(corrupt)?;
                    if self.state.is_none() {
                        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
                        let earliest = Some(path.to_path_buf());
                        return Err(StorageError::FirstSegmentMissing { dir, earliest });
                    }
                    offset = next;
                    continue;
                }
                Frame::End => "non-zero bytes follow the end of the data",
                Frame::Bad { why } => why,
            };
            return match wal::classify_tail(bytes, offset) {
                Tail::Clean if offset == 0 && is_last => Ok(None),
                Tail::Clean if offset == 0 => Err(corrupt("the segment is empty".into())),
                Tail::Clean => Ok(Some((offset as u64, 0))),
                Tail::LaterFrame { at } => {
                    Err(corrupt(format!("{why}, and a whole record follows at byte {at}")))
                }
                Tail::Torn { garbage_end } if is_last => {
                    tracing::warn!(
                        file = %path.display(), offset, garbage_end, why,
                        "zeroing a torn record at the log's tail (a crash mid-write)"
                    );
                    Ok((offset > 0).then_some((offset as u64, garbage_end as u64)))
                }
                Tail::Torn { .. } => {
                    Err(corrupt(format!("{why}, in a segment closed before the next began")))
                }
            };
        }
    }

    fn record(
        &mut self,
        record: RecordOwned<C>,
        path: &Path,
        seq: u64,
        offset: usize,
    ) -> Result<(), String> {
        match record {
            Record::Header { seq: found, checkpoint } => {
                if offset != 0 || found != seq {
                    return Err(format!("a segment header for segment {found} is out of place"));
                }
                if let Some(c) = checkpoint {
                    self.checkpoint(c, path, seq)?;
                }
            }
            _ if offset == 0 => return Err("the segment does not start with its header".into()),
            Record::HardState(hs) => {
                let state = self.state.as_mut().ok_or("a record before any checkpoint")?;
                state.hard_state = hs;
                self.hard_state_at = Some((path.to_path_buf(), offset as u64));
            }
            Record::Entries { first, entries } => {
                let state = self.state.as_mut().ok_or("a record before any checkpoint")?;
                let keep = kept_before(state, first, entries.len())?;
                state.entries.truncate(keep);
                state.entries.extend(entries);
            }
        }
        Ok(())
    }

    fn checkpoint(
        &mut self,
        c: Checkpoint<Vec<Entry<C>>>,
        path: &Path,
        seq: u64,
    ) -> Result<(), String> {
        // NB: the core computes the log's last index and the one after it; a checksummed but
        // wrong offset must not overflow there (nor in `kept_before` for a later record).
        super::last_index(c.log_offset, c.entries.len())
            .map_err(|why| format!("the checkpoint's log offset is impossible: {why}"))?;
        self.state = Some(PersistentState {
            hard_state: c.hard_state,
            base_config: c.base_config,
            log_offset: c.log_offset,
            offset_term: c.offset_term,
            entries: c.entries,
            snapshot: None,
        });
        if c.snapshot {
            // Marks that a snapshot file is to be read once replay ends.
            let placeholder = Snapshot {
                meta: crate::message::SnapshotMeta {
                    index: c.log_offset,
                    term: c.offset_term,
                    config: Arc::new(Configuration::default()),
                },
                data: Arc::from(Vec::new()),
            };
            self.state.as_mut().expect("just set").snapshot = Some(Arc::new(placeholder));
        }
        self.first_seq = seq;
        self.hard_state_at = Some((path.to_path_buf(), 0));
        Ok(())
    }
}

/// A node's term is never below the term of an entry in its log (it adopts a term before it
/// accepts that term's entries, and persists the term first).
fn check_hard_state<C>(state: &PersistentState<C>, at: Option<Place>) -> Result<(), StorageError> {
    let last_term = state.entries.last().map_or(state.offset_term, |e| e.term);
    let term = state.hard_state.term;
    let why = if term < last_term {
        format!("current term {term} is below the log's last term {last_term}")
    } else if term.0 == u64::MAX {
        // NB: the log's terms are at most the current term: this bounds them all. A node's own
        // campaigns may pass the margin peers are held to (`MARGIN`), by a few: not this far.
        format!("current term {term} is the last of the term space (no node gets there)")
    } else {
        return Ok(());
    };
    let (path, offset) = at.unwrap_or_default();
    Err(StorageError::Contradiction { path, offset, why })
}

fn read_snapshot<C>(dir: &Path, state: &PersistentState<C>) -> Result<Snapshot, StorageError> {
    let path = snapshot_path(dir, state.log_offset);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StorageError::MissingSnapshot { path })
        }
        Err(e) => return Err(StorageError::io(path, "read", e)),
    };
    let corrupt = |why: String| StorageError::Corrupt { path: path.clone(), offset: 0, why };
    let snapshot = wal::decode_snapshot(&bytes).map_err(corrupt)?;
    if (snapshot.meta.index, snapshot.meta.term) != (state.log_offset, state.offset_term) {
        return Err(corrupt(format!(
            "it holds the snapshot through {} in {}, the log expects {} in {}",
            snapshot.meta.index, snapshot.meta.term, state.log_offset, state.offset_term
        )));
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    //! Checksummed but impossible states, crafted with the WAL's own encoder: each open is a
    //! typed [`StorageError::Corrupt`] naming the file and the bad value, never a panic, and
    //! leaves the files as they were.

    use super::*;
    use crate::message::{Payload, SnapshotMeta};
    use crate::storage::MAX_LAST_INDEX;

    /// A directory under the temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            use std::sync::atomic::{AtomicU64, Ordering};
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("ferraft-unit-{name}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const ME: NodeIdentity = NodeIdentity { cluster: 7, node: NodeId(1) };
    const MAX: u64 = u64::MAX;

    fn open(dir: &Path) -> Result<DiskStorage<u64>, StorageError> {
        let options = DiskOptions { segment_bytes: 4096, sync: SyncPolicy::Never };
        DiskStorage::open(dir, ME, &Configuration::new([NodeId(1)]), options)
    }

    fn entries(n: usize) -> Vec<Entry<u64>> {
        (0..n).map(|i| Entry { term: Term(1), payload: Payload::Command(i as u64) }).collect()
    }

    /// Makes `dir` a node directory (identity from a real open) whose only segment is `seq`:
    /// a header with a checkpoint at `log_offset` holding `n` entries, then `records`.
    /// Returns the segment's path and the offset of each record.
    fn craft(
        dir: &Path,
        seq: u64,
        (log_offset, n, snapshot): (u64, usize, bool),
        records: &[RecordRef<'_, u64>],
    ) -> (PathBuf, Vec<u64>) {
        drop(open(dir).expect("create"));
        fs::remove_file(segment_path(dir, 1)).expect("rm the bootstrap segment");
        let entries = entries(n);
        let checkpoint = Checkpoint {
            hard_state: HardState { term: Term(1), voted_for: None },
            base_config: Configuration::new([NodeId(1)]),
            log_offset: LogIndex(log_offset),
            offset_term: Term(1),
            snapshot,
            entries: &entries[..],
        };
        let mut bytes = Vec::new();
        let header: RecordRef<'_, u64> = Record::Header { seq, checkpoint: Some(checkpoint) };
        wal::append_frame(&mut bytes, &header).expect("encode");
        let mut offsets = Vec::new();
        for record in records {
            offsets.push(bytes.len() as u64);
            wal::append_frame(&mut bytes, record).expect("encode");
        }
        bytes.resize(4096, 0);
        let path = segment_path(dir, seq);
        fs::write(&path, bytes).expect("write the segment");
        (path, offsets)
    }

    /// Opening `dir` is `Corrupt` at `path`:`offset`, with `value` in the reason; the files
    /// are left as they were.
    fn refused(dir: &Path, path: &Path, offset: u64, value: &str) {
        let before = fs::read(path).expect("read");
        match open(dir) {
            Err(StorageError::Corrupt { path: at, offset: found, why }) => {
                assert_eq!((at.as_path(), found), (path, offset), "{why}");
                assert!(why.contains(value), "{why} does not name {value}");
            }
            Err(other) => panic!("expected Corrupt at {}: {other}", path.display()),
            Ok(store) => panic!("opened: {:?}", store.load().map(|s| (s.log_offset, s.entries))),
        }
        assert_eq!(fs::read(path).expect("read"), before, "the refused file changed");
    }

    /// A7a (offset MAX - 1, two entries) and A7b's offset (MAX), and the boundary: a log may
    /// end at `MAX_LAST_INDEX` = MAX - 1, never at MAX (its next index would overflow).
    #[test]
    fn a_checkpoint_whose_log_ends_past_the_last_usable_index_is_corrupt() {
        for (offset, n) in [(MAX - 1, 2), (MAX, 0), (MAX, 3), (MAX - 1, 1), (MAX - 5, 6)] {
            let dir = TempDir::new("checkpoint-overflow");
            let (path, _) = craft(&dir.0, 1, (offset, n, false), &[]);
            refused(&dir.0, &path, 0, &format!("{n} entries after index i{offset}"));
        }
        for (offset, n) in [(MAX - 1, 0), (MAX - 3, 2)] {
            let dir = TempDir::new("checkpoint-boundary");
            craft(&dir.0, 1, (offset, n, false), &[]);
            let state = open(&dir.0).expect("a log ending at MAX - 1 opens").load().expect("load");
            assert_eq!((state.log_offset, state.entries.len()), (LogIndex(offset), n));
            assert!(offset + n as u64 <= MAX_LAST_INDEX.0);
        }
    }

    /// A7b: an Entries record after an offset of MAX (refused at the checkpoint already), or
    /// one that would carry the log past MAX - 1, or start far past its end.
    #[test]
    fn an_entries_record_past_the_last_usable_index_is_corrupt() {
        let none = entries(0);
        let dir = TempDir::new("entries-after-max");
        let record = Record::Entries { first: LogIndex(5), entries: &none[..] };
        let (path, _) = craft(&dir.0, 1, (MAX, 0, false), &[record]);
        refused(&dir.0, &path, 0, &format!("after index i{MAX}"));

        let two = entries(2);
        let dir = TempDir::new("entries-overflow");
        let record = Record::Entries { first: LogIndex(MAX - 1), entries: &two[..] };
        let (path, at) = craft(&dir.0, 1, (MAX - 2, 0, false), &[record]);
        refused(&dir.0, &path, at[0], &format!("2 entries after index i{}", MAX - 2));

        let one = entries(1);
        let dir = TempDir::new("entries-at-max");
        let record = Record::Entries { first: LogIndex(MAX), entries: &one[..] };
        let (path, at) = craft(&dir.0, 1, (MAX - 2, 1, false), &[record]);
        refused(&dir.0, &path, at[0], &format!("1 entries after index i{}", MAX - 1));

        let dir = TempDir::new("entries-gap");
        let record = Record::Entries { first: LogIndex(MAX), entries: &none[..] };
        let (path, at) = craft(&dir.0, 1, (5, 0, false), &[record]);
        refused(&dir.0, &path, at[0], &format!("entries from i{MAX} leave a gap"));

        let dir = TempDir::new("entries-boundary");
        let record = Record::Entries { first: LogIndex(MAX - 1), entries: &one[..] };
        craft(&dir.0, 1, (MAX - 2, 0, false), &[record]);
        let state = open(&dir.0).expect("a log ending at MAX - 1 opens").load().expect("load");
        assert_eq!((state.log_offset, state.entries.len()), (LogIndex(MAX - 2), 1));
    }

    /// A last segment numbered MAX leaves no number for the next one (rotation adds one).
    /// A recorded current term of `u64::MAX` (the log's terms are at most it): refused as a
    /// contradiction, since the node's next campaign would count past it. A term past the
    /// margin peers are held to opens: a node's own campaigns go beyond it.
    #[test]
    fn the_last_term_of_the_term_space_is_refused() {
        let dir = TempDir::new("term-margin");
        let term = Term(u64::MAX);
        let record: RecordRef<'_, u64> = Record::HardState(HardState { term, voted_for: None });
        let (path, offsets) = craft(&dir.0, 1, (0, 2, false), &[record]);
        match open(&dir.0) {
            Err(StorageError::Contradiction { path: at, offset, why }) => {
                assert_eq!((at.as_path(), offset), (path.as_path(), offsets[0]), "{why}");
                assert!(why.contains(&term.to_string()) && why.contains("last"), "{why}");
            }
            other => panic!("expected a contradiction: {:?}", other.map(|_| ())),
        }
        let dir = TempDir::new("term-margin-ok");
        let term = Term(crate::types::MARGIN + 1);
        let record: RecordRef<'_, u64> = Record::HardState(HardState { term, voted_for: None });
        craft(&dir.0, 1, (0, 2, false), &[record]);
        let state = open(&dir.0).expect("past the margin is a term").load().expect("load");
        assert_eq!(state.hard_state.term, term);
    }

    #[test]
    fn a_last_segment_numbered_u64_max_is_corrupt() {
        let dir = TempDir::new("segment-max");
        let (path, _) = craft(&dir.0, MAX, (0, 1, false), &[]);
        refused(&dir.0, &path, 0, &MAX.to_string());
    }

    /// A snapshot at an impossible index: the checkpoint naming it is refused before the file
    /// is read; a snapshot file whose own index is MAX contradicts its checkpoint.
    #[test]
    fn a_snapshot_at_an_impossible_index_is_corrupt() {
        let write_snapshot = |dir: &Path, file: u64, index: u64| {
            let meta = SnapshotMeta {
                index: LogIndex(index),
                term: Term(1),
                config: Arc::new(Configuration::new([NodeId(1)])),
            };
            let snapshot = Snapshot { meta, data: Arc::from(vec![1u8, 2, 3]) };
            let mut bytes = Vec::new();
            wal::append_frame(&mut bytes, &snapshot).expect("encode");
            let path = snapshot_path(dir, LogIndex(file));
            fs::write(&path, bytes).expect("write the snapshot");
            path
        };
        let dir = TempDir::new("snapshot-max");
        let (path, _) = craft(&dir.0, 2, (MAX, 0, true), &[]);
        let snap = write_snapshot(&dir.0, MAX, MAX);
        refused(&dir.0, &path, 0, &format!("after index i{MAX}"));
        assert!(snap.exists(), "the snapshot file was deleted");

        let dir = TempDir::new("snapshot-file-max");
        craft(&dir.0, 2, (5, 0, true), &[]);
        let snap = write_snapshot(&dir.0, 5, MAX);
        refused(&dir.0, &snap, 0, &format!("through i{MAX}"));
    }
}
