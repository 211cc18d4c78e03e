//! Merkle tree hashes of ranges of the stored log, without reading every leaf.
//!
//! A proof names O(log n) leaf ranges ([`merkle::inclusion_ranges`]); each splits into
//! perfect subtrees aligned to their size ([`merkle::range_shape`]). A subtree of at most
//! [`BLOCK`] leaves is hashed from its leaf hashes, read a block at a time; the root of a
//! larger one is taken from the store's subtree cache ([`AuditStore::subtree`]) or computed
//! from its two halves and then cached. Such a subtree never changes once its records exist
//! (the log is append-only), so after the first proof over a region each later proof reads
//! one block of leaves and a few cached roots instead of the whole log.
//!
//! The cache is an optimisation, never trusted: whoever needs assurance checks a proof against
//! a signed checkpoint, and [`Tree::without_cache`] recomputes from the leaves alone (and
//! replaces what it computes) when a proof built with it does not lead to the signed root.
//! `callgate audit verify` does not use it at all.

use std::ops::Range;

use callgate_audit::Hash;
use callgate_audit::merkle;

use crate::{AuditStore, StoreError};

/// Leaves per block: perfect subtrees of up to this many leaves are hashed from their leaves.
pub const BLOCK: u64 = 1 << BLOCK_LEVEL;
const BLOCK_LEVEL: u32 = 10;

/// Range roots of the stored log's first `size` leaves.
pub struct Tree<'s, S> {
    store: &'s S,
    size: u64,
    use_cache: bool,
    /// The last block of leaf hashes read: its first index and the hashes.
    block: Option<(u64, Vec<Hash>)>,
    /// Subtree roots computed here, to cache: (level, index, root).
    computed: Vec<(u32, u64, Hash)>,
}

impl<'s, S: AuditStore> Tree<'s, S> {
    /// The tree of the first `size` records, using the store's subtree cache.
    pub fn new(store: &'s S, size: u64) -> Self {
        Tree {
            store,
            size,
            use_cache: true,
            block: None,
            computed: Vec::new(),
        }
    }

    /// The same tree computed from the leaves alone; [`Tree::save`] then replaces the cached
    /// roots with what it computed.
    pub fn without_cache(store: &'s S, size: u64) -> Self {
        Tree {
            use_cache: false,
            ..Tree::new(store, size)
        }
    }

    /// How many leaves the tree has.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The Merkle tree hash of the leaves in `r` (within the first `size`, not empty).
    pub async fn root(&mut self, r: Range<u64>) -> Result<Hash, StoreError> {
        if r.start >= r.end || r.end > self.size {
            return Err(StoreError::Inconsistent(format!(
                "leaves {}..{} are outside a tree of {}",
                r.start, r.end, self.size
            )));
        }
        match merkle::range_shape(&r) {
            Ok(level) => self.perfect(level, r.start >> level).await,
            Err(mid) => {
                let left = Box::pin(self.root(r.start..mid)).await?;
                let right = Box::pin(self.root(mid..r.end)).await?;
                Ok(merkle::node_hash(&left, &right))
            }
        }
    }

    /// The root of the perfect subtree of `2^level` leaves starting at `index · 2^level`.
    async fn perfect(&mut self, level: u32, index: u64) -> Result<Hash, StoreError> {
        if level <= BLOCK_LEVEL {
            let start = index << level;
            let leaves = self.leaves(start, 1 << level).await?;
            return Ok(merkle::root(leaves));
        }
        if self.use_cache
            && let Some(h) = self.store.subtree(level, index).await
        {
            return Ok(h);
        }
        let left = Box::pin(self.perfect(level - 1, 2 * index)).await?;
        let right = Box::pin(self.perfect(level - 1, 2 * index + 1)).await?;
        let h = merkle::node_hash(&left, &right);
        self.computed.push((level, index, h));
        Ok(h)
    }

    /// Leaf hashes `start..start + n` (`n` at most a block, within one block).
    async fn leaves(&mut self, start: u64, n: u64) -> Result<&[Hash], StoreError> {
        let first = start - start % BLOCK;
        if self.block.as_ref().is_none_or(|(at, _)| *at != first) {
            let end = (first + BLOCK).min(self.size);
            let hashes = self.store.leaf_hashes_range(first, end).await?;
            if hashes.len() as u64 != end - first {
                return Err(StoreError::Inconsistent(format!(
                    "records {first}..{end} are not all in the store"
                )));
            }
            self.block = Some((first, hashes));
        }
        let (_, hashes) = self.block.as_ref().expect("read above");
        let from = (start - first) as usize;
        hashes
            .get(from..from + n as usize)
            .ok_or_else(|| StoreError::Inconsistent(format!("records {start}.. are missing")))
    }

    /// Caches the subtree roots computed so far; call it once the result was checked against
    /// a signed root. A failure to write is not an error: the cache only saves work.
    pub async fn save(&mut self) {
        let computed = std::mem::take(&mut self.computed);
        if !computed.is_empty() {
            let _ = self.store.put_subtrees(&computed, !self.use_cache).await;
        }
    }
}
