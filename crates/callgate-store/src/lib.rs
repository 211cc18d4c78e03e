//! Callgate's durable state.
//!
//! - [`AuditStore`]: what the audit log needs from storage, so the embedded store and a later
//!   Postgres store for several replicas are interchangeable.
//! - [`sqlite`]: the embedded default, SQLite in WAL mode with `synchronous=FULL`: a commit
//!   returns only after the write-ahead log is fsynced.
//! - [`log`]: the single writer that assigns leaf indexes, group-commits records (one fsync
//!   for every record that arrived while the previous commit was in flight), keeps the Merkle
//!   frontier and signs checkpoints.
//! - [`tree`]: Merkle tree hashes of ranges of the log for proofs, from blocks of leaves and
//!   cached roots of large subtrees, without reading every leaf.
//! - [`approvals`]: held calls and grants, updated by compare-and-swap so racing reviews and
//!   executors resolve to exactly one outcome.
#![forbid(unsafe_code)]

use std::future::Future;

use callgate_audit::Hash;
use callgate_audit::record::Columns;
use thiserror::Error;

pub mod approvals;
pub mod log;
pub mod ops;
pub mod sqlite;
pub mod tree;

pub use log::{AuditLog, LogOptions};
pub use sqlite::SqliteStore;

/// Options that create a file readable and writable by its owner only (0600): the stores hold
/// calls, arguments and responses.
pub(crate) fn private_options() -> std::fs::OpenOptions {
    let mut o = std::fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o
}

/// Creates `path` empty and owner-only if it does not exist, so that the database SQLite
/// makes there (and its `-wal` and `-shm` files, which take the database's mode) are private.
/// An existing file is left as it is.
pub(crate) fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    match private_options().write(true).create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Storage failures. Every one of them refuses the call being recorded.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("the audit store cannot be written: {0}")]
    Unwritable(String),
    #[error("the audit store cannot be read: {0}")]
    Unreadable(String),
    #[error("the audit store is inconsistent: {0}")]
    Inconsistent(String),
    #[error("the audit writer has stopped")]
    Closed,
    #[error("{0}")]
    Record(String),
}

/// A record ready to be stored.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub index: u64,
    pub columns: Columns,
    pub body: Vec<u8>,
    pub leaf_hash: Hash,
}

/// A record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub index: u64,
    pub kind: String,
    pub time_ms: u64,
    pub request_id: Option<String>,
    pub session: Option<String>,
    pub subject: Option<String>,
    pub function: Option<String>,
    pub decision: Option<String>,
    /// `None` once retention pruned the body; the leaf hash stays.
    pub body: Option<Vec<u8>>,
    pub leaf_hash: Vec<u8>,
}

/// Search filters; all given ones must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub subject: Option<String>,
    pub function: Option<String>,
    /// `allow`, `deny`, `held` or `refused`.
    pub decision: Option<String>,
    pub kind: Option<String>,
    pub session: Option<String>,
    pub request_id: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Only records with an index greater than this (for following the log).
    pub after_index: Option<u64>,
    pub limit: u32,
}

/// A stored signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub size: u64,
    pub note: String,
    pub time_ms: u64,
    /// The tree's right edge at this size ([`callgate_audit::merkle::Frontier::to_bytes`]), so
    /// a restart reads only the records after the last checkpoint. Empty when unknown.
    pub frontier: Vec<u8>,
}

/// What the audit log needs from storage. Appends are all-or-nothing and durable when they
/// return `Ok`.
pub trait AuditStore: Send + Sync + 'static {
    /// The leaf hashes of the whole log in index order (to rebuild the frontier on start).
    fn leaf_hashes(&self) -> impl Future<Output = Result<Vec<Hash>, StoreError>> + Send;
    /// The leaf hashes of records `from..to` in index order (fewer when the store holds
    /// fewer).
    fn leaf_hashes_range(
        &self,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Vec<Hash>, StoreError>> + Send {
        async move {
            let all = self.leaf_hashes().await?;
            let end = (to as usize).min(all.len());
            Ok(all.get(from as usize..end).unwrap_or_default().to_vec())
        }
    }
    /// A cached root of the perfect subtree of `2^level` leaves starting at leaf
    /// `index · 2^level` (see [`tree`]). `None` when not cached or the cache cannot be read:
    /// the caller computes it.
    fn subtree(&self, level: u32, index: u64) -> impl Future<Output = Option<Hash>> + Send {
        let _ = (level, index);
        async { None }
    }
    /// Caches subtree roots `(level, index, root)`; `replace` overwrites roots cached before.
    fn put_subtrees(
        &self,
        roots: &[(u32, u64, Hash)],
        replace: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (roots, replace);
        async { Ok(()) }
    }
    /// How many records the store holds (one more than the highest index).
    fn size(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Stores a batch durably, in one transaction.
    fn append(&self, batch: &[NewRecord]) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn add_checkpoint(
        &self,
        cp: &StoredCheckpoint,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn checkpoints(&self)
    -> impl Future<Output = Result<Vec<StoredCheckpoint>, StoreError>> + Send;
    /// The newest checkpoint (by default the last of [`Self::checkpoints`]; a store with an
    /// index does it without reading them all).
    fn last_checkpoint(
        &self,
    ) -> impl Future<Output = Result<Option<StoredCheckpoint>, StoreError>> + Send {
        async move { Ok(self.checkpoints().await?.pop()) }
    }
    /// Rows `from..from + limit` in index order.
    fn rows(
        &self,
        from: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<StoredRecord>, StoreError>> + Send;
    fn search(
        &self,
        filter: &Filter,
    ) -> impl Future<Output = Result<Vec<StoredRecord>, StoreError>> + Send;
    /// Request ids forwarded after index `from` with no response record.
    fn unfinished_since(
        &self,
        from: u64,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// The index of the last record of `kind`, if any.
    fn last_of_kind(
        &self,
        kind: &str,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;
    /// Up to `limit` call records older than `before_ms` that still have their body, in index
    /// order (candidates for retention; the caller checks each body before pruning it).
    fn prune_candidates(
        &self,
        before_ms: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<StoredRecord>, StoreError>> + Send;
    /// Drops the bodies of the records at `indexes`; returns how many.
    fn prune_bodies(&self, indexes: &[u64])
    -> impl Future<Output = Result<u64, StoreError>> + Send;
    fn meta(&self, key: &str) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
    fn set_meta(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
