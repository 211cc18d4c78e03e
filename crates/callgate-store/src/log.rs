//! The audit log's single writer: group commit, the Merkle frontier and signed checkpoints.
//!
//! Every append goes through one task that owns the tree's right edge. The task takes every
//! command waiting in its queue, gives the appends consecutive leaf indexes, stores them in one
//! transaction (one fsync) and only then answers. While that fsync runs, new calls queue up
//! and become the next batch, so throughput grows with load instead of being one fsync per
//! call. A failed batch changes nothing: the indexes are reused by the next batch and every
//! waiting call is refused.
//!
//! Records whose caller does not wait (responses, audit reads) are kept and retried with the
//! next batch when a write fails, so a passing store hiccup loses nothing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use callgate_audit::merkle::{self, Frontier};
use callgate_audit::note::{Checkpoint, Signer, Verifier};
use callgate_audit::record::{
    EncodedEvent, Event, KeyRotationEvent, RecoveryEvent, StartEvent, StopEvent, leaf_bytes,
    parse_record,
};
use tokio::sync::{mpsc, oneshot};

use crate::tree::Tree;
use crate::{AuditStore, NewRecord, StoreError, StoredCheckpoint};

/// How many records one transaction takes at most.
const MAX_BATCH: usize = 4096;
/// How many unacknowledged records are kept for retry while the store fails.
const MAX_RETRY: usize = 100_000;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Settings of a log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// The checkpoint origin line, also the key name.
    pub origin: String,
    /// A checkpoint of this log kept outside the store (the last one published): the store
    /// must extend it, or the log is not opened — so a store rolled back or rewritten since
    /// is not signed again, even when its own checkpoints were rewritten with it.
    pub anchor: Option<String>,
}

type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Command {
    Append {
        events: Vec<EncodedEvent>,
        done: Option<Reply<u64>>,
    },
    Checkpoint {
        done: Reply<Option<StoredCheckpoint>>,
    },
    Rotate {
        signer: Box<Signer>,
        done: Reply<StoredCheckpoint>,
    },
    Close {
        stop: EncodedEvent,
        done: Reply<Option<StoredCheckpoint>>,
    },
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Records made durable.
    pub records: AtomicU64,
    /// Transactions committed (each one fsync).
    pub batches: AtomicU64,
    /// Transactions that failed (their waiting calls were refused).
    pub failed_batches: AtomicU64,
    /// Queued records given up after the retry queue overflowed.
    pub dropped: AtomicU64,
}

/// A handle on the audit log. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog<S: AuditStore + Clone> {
    tx: mpsc::UnboundedSender<Command>,
    store: S,
    origin: Arc<str>,
    healthy: Arc<AtomicBool>,
    stats: Arc<LogStats>,
    verifier: Arc<arc_swap_free::Cell>,
}

/// A tiny lock-protected cell for the current verifier key (rotations are rare).
mod arc_swap_free {
    use callgate_audit::note::Verifier;
    use std::sync::Mutex;

    pub struct Cell(Mutex<Verifier>);

    impl Cell {
        pub fn new(v: Verifier) -> Self {
            Cell(Mutex::new(v))
        }
        pub fn get(&self) -> Verifier {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }
        pub fn set(&self, v: Verifier) {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = v;
        }
    }
}

/// Whether the log (its tree so far, `frontier`) extends `anchor`, a checkpoint kept outside
/// the store. The signature is not needed: a forged anchor can only stop the log opening.
async fn check_anchor<S: AuditStore>(
    store: &S,
    frontier: &Frontier,
    anchor: &str,
    origin: &str,
) -> Result<(), StoreError> {
    let bad = |why: String| StoreError::Inconsistent(why);
    let cp = callgate_audit::note::Note::parse(anchor)
        .ok()
        .and_then(|n| Checkpoint::parse(&n.text).ok())
        .ok_or_else(|| bad("the checkpoint published outside the store cannot be read".into()))?;
    if cp.origin != origin {
        return Err(bad(format!(
            "the checkpoint published outside the store is of the log {:?}, not {origin:?}",
            cp.origin
        )));
    }
    let size = frontier.size();
    if cp.size > size {
        return Err(bad(format!(
            "the store holds {size} records but the checkpoint published outside it covers {}: records were removed; run `callgate audit verify --from-checkpoint`",
            cp.size
        )));
    }
    let root = if cp.size == size {
        frontier.root()
    } else if cp.size == 0 {
        merkle::empty_root()
    } else {
        // From the leaves, never from cached subtree roots: this is the check that the records
        // were not rewritten, and the cache sits in the same store.
        let mut tree = Tree::without_cache(store, cp.size);
        let root = tree.root(0..cp.size).await?;
        // Cached only when they are the roots the checkpoint vouches for.
        if root == cp.root {
            tree.save().await;
        }
        root
    };
    if root != cp.root {
        return Err(bad(format!(
            "the first {} records no longer match the checkpoint published outside the store: the log was rewritten; run `callgate audit verify --from-checkpoint`",
            cp.size
        )));
    }
    Ok(())
}

fn closed<T>(_: T) -> StoreError {
    StoreError::Closed
}

impl<S: AuditStore + Clone> AuditLog<S> {
    /// Opens the log: rebuilds the frontier, checks the store against its last checkpoint,
    /// records a recovery if the previous run did not stop cleanly, then records `start`.
    pub async fn open(
        store: S,
        signer: Signer,
        opts: LogOptions,
        start: StartEvent,
    ) -> Result<AuditLog<S>, StoreError> {
        match store.meta("origin").await? {
            Some(o) if o != opts.origin => {
                return Err(StoreError::Inconsistent(format!(
                    "this audit store belongs to the log {o:?}, not {:?}",
                    opts.origin
                )));
            }
            Some(_) => {}
            None => store.set_meta("origin", &opts.origin).await?,
        }
        let last_checkpoint = store.last_checkpoint().await?;
        let size = store.size().await?;
        // Before signing anything, make sure this key and this store belong together and that
        // nothing unsigned smuggles in a key: the next checkpoint would vouch for it.
        let (signed, mut frontier) = match &last_checkpoint {
            Some(last) => {
                if last.size > size {
                    return Err(StoreError::Inconsistent(format!(
                        "the log holds {size} records but was checkpointed at {}: records were removed; run `callgate audit verify`",
                        last.size
                    )));
                }
                let cp = Checkpoint::open(&last.note, &[signer.verifier().clone()]).map_err(|e| {
                    StoreError::Inconsistent(format!(
                        "the last checkpoint (size {}) is not signed by the configured key ({e}); restore the log's key file or run `callgate audit verify`",
                        last.size
                    ))
                })?;
                // The right edge stored with the checkpoint spares rereading every leaf; it is
                // used only if it leads to the signed root.
                let stored =
                    Frontier::from_bytes(last.size, &last.frontier).filter(|f| f.root() == cp.root);
                let f = match stored {
                    Some(f) => f,
                    None => {
                        let leaves = store.leaf_hashes().await?;
                        let f = Frontier::from_leaves(
                            &leaves[..(last.size as usize).min(leaves.len())],
                        );
                        if f.size() != last.size || f.root() != cp.root {
                            return Err(StoreError::Inconsistent(format!(
                                "the first {} records no longer match their checkpoint; run `callgate audit verify`",
                                last.size
                            )));
                        }
                        f
                    }
                };
                (last.size, f)
            }
            None => (0, Frontier::default()),
        };
        // A rotation retires the key it replaces: a store whose last rotation named another
        // key is not signed with this one again (a rotation interrupted before the key files
        // were swapped would otherwise go on signing with the retired key, and every later
        // checkpoint would fail verification).
        // (One past the last checkpoint is checked with every unsigned record below.)
        if let Some(at) = store.last_of_kind("admin.key_rotation").await?
            && at < signed
            && let Some(row) = store.rows(at, 1).await?.into_iter().next()
            && let Some(body) = &row.body
        {
            let record = parse_record(at, body)
                .map_err(|e| StoreError::Inconsistent(format!("record {at}: {e}")))?;
            if let Some(k) = record.event.announced_key()
                && k != signer.verifier().to_string()
            {
                return Err(StoreError::Inconsistent(format!(
                    "the log's key was rotated to {k} (record {at}); the configured key is the retired one — install the new key (a rotation interrupted before it swapped the key files left it beside the old one, as .key.new)"
                )));
            }
        }
        let mut from = signed;
        loop {
            let rows = store.rows(from, 10_000).await?;
            let n = rows.len() as u64;
            for r in rows {
                if r.index != frontier.size() {
                    return Err(StoreError::Inconsistent(format!(
                        "record {} is missing; run `callgate audit verify`",
                        frontier.size()
                    )));
                }
                let body = r.body.as_deref().ok_or_else(|| {
                    StoreError::Inconsistent(format!(
                        "record {} past the last checkpoint has no body",
                        r.index
                    ))
                })?;
                let leaf = merkle::leaf_hash(body);
                if leaf.as_slice() != r.leaf_hash.as_slice() {
                    return Err(StoreError::Inconsistent(format!(
                        "record {} does not match its leaf hash; run `callgate audit verify`",
                        r.index
                    )));
                }
                let record = parse_record(r.index, body)
                    .map_err(|e| StoreError::Inconsistent(format!("record {}: {e}", r.index)))?;
                if let Some(k) = record.event.announced_key()
                    && k != signer.verifier().to_string()
                {
                    return Err(StoreError::Inconsistent(format!(
                        "record {} (not yet under a checkpoint) announces a key other than the configured one; run `callgate audit verify`",
                        r.index
                    )));
                }
                frontier.push(leaf);
            }
            if n < 10_000 {
                break;
            }
            from += n;
        }
        if frontier.size() != size {
            return Err(StoreError::Inconsistent(format!(
                "the store holds records up to index {} but they are not contiguous; run `callgate audit verify`",
                size.saturating_sub(1)
            )));
        }
        if let Some(anchor) = &opts.anchor {
            check_anchor(&store, &frontier, anchor, &opts.origin).await?;
        }
        let mut boot = Vec::new();
        if frontier.size() > 0 {
            let last_stop = store.last_of_kind("admin.stop").await?;
            if last_stop != Some(frontier.size() - 1) {
                let since = store.last_of_kind("admin.start").await?.unwrap_or(0);
                let unfinished = store.unfinished_since(since).await?;
                boot.push(Event::Recovery(RecoveryEvent {
                    time_ms: now_ms(),
                    tree_size: frontier.size(),
                    unfinished,
                }));
            }
        }
        boot.push(Event::Start(start));
        let boot = boot
            .iter()
            .map(Event::encode)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Record(e.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let healthy = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(LogStats::default());
        let verifier = Arc::new(arc_swap_free::Cell::new(signer.verifier().clone()));
        let writer = Writer {
            store: store.clone(),
            origin: opts.origin.clone(),
            signer,
            frontier,
            last_checkpoint: last_checkpoint.as_ref().map(|c| c.size),
            retry: VecDeque::new(),
            healthy: healthy.clone(),
            stats: stats.clone(),
            verifier: verifier.clone(),
        };
        tokio::spawn(writer.run(rx));
        let log = AuditLog {
            tx,
            store,
            origin: opts.origin.into(),
            healthy,
            stats,
            verifier,
        };
        log.append(boot).await?;
        Ok(log)
    }

    /// Appends records and returns once they are durable, with the first one's index.
    pub async fn append(&self, events: Vec<EncodedEvent>) -> Result<u64, StoreError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Append {
                events,
                done: Some(done),
            })
            .map_err(closed)?;
        rx.await.map_err(closed)?.map_err(StoreError::Unwritable)
    }

    /// Appends a record without waiting for it to be durable (it is retried if a write fails).
    pub fn record(&self, event: EncodedEvent) {
        let _ = self.tx.send(Command::Append {
            events: vec![event],
            done: None,
        });
    }

    /// Signs a checkpoint of the log as it is now (after everything appended so far).
    /// `None` when the log has not grown since the last checkpoint.
    pub async fn checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        let (done, rx) = oneshot::channel();
        self.tx.send(Command::Checkpoint { done }).map_err(closed)?;
        rx.await.map_err(closed)?.map_err(StoreError::Unwritable)
    }

    /// Rotates the checkpoint key: records the rotation, signs a checkpoint covering it with
    /// both keys, and signs with the new key from then on.
    pub async fn rotate(&self, signer: Signer) -> Result<StoredCheckpoint, StoreError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Rotate {
                signer: Box::new(signer),
                done,
            })
            .map_err(closed)?;
        rx.await.map_err(closed)?.map_err(StoreError::Unwritable)
    }

    /// Records `stop`, signs a final checkpoint and stops the writer.
    pub async fn close(&self, reason: &str) -> Result<Option<StoredCheckpoint>, StoreError> {
        let stop = Event::Stop(StopEvent {
            time_ms: now_ms(),
            reason: reason.to_string(),
        })
        .encode()
        .map_err(|e| StoreError::Record(e.to_string()))?;
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Close { stop, done })
            .map_err(closed)?;
        rx.await.map_err(closed)?.map_err(StoreError::Unwritable)
    }

    /// Retention: removes the bodies of call records older than `before_ms`, at most `limit`
    /// of them. Each candidate's body is checked first (its leaf hash, and that it is a
    /// `call…` record), then an `admin.prune` record listing the pruned indexes is made
    /// durable and a checkpoint covering it signed, and only then are the bodies removed — so
    /// verification can tell a pruned body from an erased one. Returns how many bodies were removed.
    pub async fn prune(&self, before_ms: u64, limit: u32) -> Result<u64, StoreError> {
        let candidates = self.store.prune_candidates(before_ms, limit).await?;
        let mut indexes = Vec::with_capacity(candidates.len());
        for r in candidates {
            let Some(body) = &r.body else { continue };
            let genuine = merkle::leaf_hash(body).as_slice() == r.leaf_hash.as_slice();
            let is_call = callgate_audit::record::parse_record(r.index, body)
                .is_ok_and(|rec| rec.event.kind().starts_with("call"));
            if genuine && is_call {
                indexes.push(r.index);
            } else {
                tracing::error!(
                    index = r.index,
                    "an audit record due for pruning does not match its hash or is not a call record; left as it is"
                );
            }
        }
        if indexes.is_empty() {
            return Ok(0);
        }
        let event = Event::Prune(callgate_audit::record::PruneEvent {
            time_ms: now_ms(),
            before_ms,
            indexes: callgate_audit::record::PruneEvent::ranges(&indexes),
        })
        .encode()
        .map_err(|e| StoreError::Record(e.to_string()))?;
        self.append(vec![event]).await?;
        // A checkpoint over the prune record before any body goes: verification honours only
        // prune records a signature covers, since anyone with the database could append one.
        self.checkpoint().await?;
        self.store.prune_bodies(&indexes).await
    }

    /// False while the last write failed.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// The counters and the health flag, for a metrics collector that outlives this handle.
    pub fn stats_handle(&self) -> (Arc<LogStats>, Arc<AtomicBool>) {
        (self.stats.clone(), self.healthy.clone())
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The key that signs checkpoints now.
    pub fn verifier(&self) -> Verifier {
        self.verifier.get()
    }
}

struct Pending {
    event: EncodedEvent,
}

struct Writer<S> {
    store: S,
    origin: String,
    signer: Signer,
    frontier: Frontier,
    last_checkpoint: Option<u64>,
    retry: VecDeque<Pending>,
    healthy: Arc<AtomicBool>,
    stats: Arc<LogStats>,
    verifier: Arc<arc_swap_free::Cell>,
}

impl<S: AuditStore> Writer<S> {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut waiting: Vec<(Vec<EncodedEvent>, Option<Reply<u64>>)> = Vec::new();
        let mut others: Vec<Command> = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut count = 0;
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Append { events, done } => {
                        count += events.len();
                        waiting.push((events, done));
                    }
                    other => {
                        // Anything but an append ends the batch, so it sees every append
                        // queued before it.
                        others.push(other);
                        break;
                    }
                }
                if count < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.commit(std::mem::take(&mut waiting)).await;
            for cmd in others.drain(..) {
                match cmd {
                    Command::Checkpoint { done } => {
                        let _ = done.send(self.checkpoint(&[]).await);
                    }
                    Command::Rotate { signer, done } => {
                        let _ = done.send(self.rotate(*signer).await);
                    }
                    Command::Close { stop, done } => {
                        let ok = self.commit(vec![(vec![stop], None)]).await;
                        let result = if ok {
                            self.checkpoint(&[]).await
                        } else {
                            Err("the stop record could not be written".to_string())
                        };
                        let _ = done.send(result);
                        return;
                    }
                    Command::Append { .. } => unreachable!("appends are batched above"),
                }
            }
        }
    }

    /// Stores the retry queue and `waiting` in one transaction. Returns whether it succeeded.
    async fn commit(&mut self, waiting: Vec<(Vec<EncodedEvent>, Option<Reply<u64>>)>) -> bool {
        if waiting.is_empty() && self.retry.is_empty() {
            return true;
        }
        let base = self.frontier.size();
        let mut rows = Vec::new();
        let push = |rows: &mut Vec<NewRecord>, e: &EncodedEvent| {
            let index = base + rows.len() as u64;
            let body = leaf_bytes(index, &e.json);
            rows.push(NewRecord {
                index,
                columns: e.columns.clone(),
                leaf_hash: merkle::leaf_hash(&body),
                body,
            });
        };
        for p in &self.retry {
            push(&mut rows, &p.event);
        }
        let mut firsts = Vec::with_capacity(waiting.len());
        for (events, _) in &waiting {
            firsts.push(base + rows.len() as u64);
            for e in events {
                push(&mut rows, e);
            }
        }
        let mut result = self.store.append(&rows).await;
        if let Err(e) = &result
            && self.landed(base, &rows).await
        {
            // The error came after the commit (on the way back from SQLite's thread, say): the
            // rows are stored, so this is a success, and re-queueing them would store them twice.
            tracing::warn!(error = %e, records = rows.len(), "an audit commit reported an error but is in the store");
            result = Ok(());
        }
        match result {
            Ok(()) => {
                for r in &rows {
                    self.frontier.push(r.leaf_hash);
                }
                self.retry.clear();
                self.healthy.store(true, Ordering::Relaxed);
                self.stats
                    .records
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                for ((_, done), first) in waiting.into_iter().zip(firsts) {
                    if let Some(done) = done {
                        let _ = done.send(Ok(first));
                    }
                }
                true
            }
            Err(e) => {
                self.healthy.store(false, Ordering::Relaxed);
                self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, records = rows.len(), "audit write failed; calls are refused until it succeeds");
                let msg = e.to_string();
                for (events, done) in waiting {
                    match done {
                        Some(done) => {
                            let _ = done.send(Err(msg.clone()));
                        }
                        None => {
                            for event in events {
                                if self.retry.len() >= MAX_RETRY {
                                    self.retry.pop_front();
                                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                                }
                                self.retry.push_back(Pending { event });
                            }
                        }
                    }
                }
                self.resync().await;
                false
            }
        }
    }

    /// Whether `rows`, appended at `base`, are in the store after all: it holds exactly them
    /// past `base`, with their leaf hashes.
    /// Whether `rows` are in the store after all; `None` when the store could not be read.
    async fn landed_once(&self, base: u64, rows: &[NewRecord]) -> Option<bool> {
        if self.store.size().await.ok()? != base + rows.len() as u64 {
            return Some(false);
        }
        let end = base + rows.len() as u64;
        let leaves = self.store.leaf_hashes_range(base, end).await.ok()?;
        Some(leaves.len() == rows.len() && leaves.iter().zip(rows).all(|(l, r)| *l == r.leaf_hash))
    }

    /// Whether a commit that reported an error is in the store after all. A store that cannot
    /// be read (busy, say) is asked again a few times, since a landed commit that is not
    /// recognised would leave its rows outside the tree and every later commit clashing.
    async fn landed(&self, base: u64, rows: &[NewRecord]) -> bool {
        for pause_ms in [0, 20, 100, 500] {
            tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
            if let Some(answer) = self.landed_once(base, rows).await {
                return answer;
            }
        }
        false
    }

    /// After a failed commit that did not land: a store holding more records than the tree
    /// has rows this writer never wrote (its own commits are recognised by [`Self::landed`]).
    /// They are not adopted into the tree — the next checkpoint would vouch for them — and
    /// every later commit clashes with their indexes, so calls stay refused until an operator
    /// looks (`callgate audit verify`).
    async fn resync(&mut self) {
        if let Ok(size) = self.store.size().await
            && size != self.frontier.size()
        {
            tracing::error!(
                store = size,
                writer = self.frontier.size(),
                "the audit store holds records this gateway did not write; they are not signed, and calls are refused; run `callgate audit verify`"
            );
        }
    }

    async fn checkpoint(&mut self, extra: &[&Signer]) -> Result<Option<StoredCheckpoint>, String> {
        let size = self.frontier.size();
        if self.last_checkpoint == Some(size) && extra.is_empty() {
            return Ok(None);
        }
        let cp = Checkpoint {
            origin: self.origin.clone(),
            size,
            root: self.frontier.root(),
        };
        let mut signers = vec![&self.signer];
        signers.extend_from_slice(extra);
        let note = cp.sign(&signers).map_err(|e| e.to_string())?;
        let stored = StoredCheckpoint {
            size,
            note,
            time_ms: now_ms(),
            frontier: self.frontier.to_bytes(),
        };
        self.store
            .add_checkpoint(&stored)
            .await
            .map_err(|e| e.to_string())?;
        self.last_checkpoint = Some(size);
        Ok(Some(stored))
    }

    async fn rotate(&mut self, new: Signer) -> Result<StoredCheckpoint, String> {
        if new.verifier().name() != self.origin {
            return Err(format!(
                "the new key is named {:?}; checkpoint keys are named after the origin {:?}",
                new.verifier().name(),
                self.origin
            ));
        }
        let event = Event::KeyRotation(KeyRotationEvent {
            time_ms: now_ms(),
            previous_key: self.signer.verifier().to_string(),
            key: new.verifier().to_string(),
        })
        .encode()
        .map_err(|e| e.to_string())?;
        let (done, rx) = oneshot::channel();
        self.commit(vec![(vec![event], Some(done))]).await;
        rx.await.map_err(|_| "the writer stopped".to_string())??;
        // The checkpoint that covers the rotation carries both signatures, so a verifier that
        // trusts the old key learns the new one.
        let cp = self
            .checkpoint(&[&new])
            .await?
            .ok_or("no checkpoint was made")?;
        self.verifier.set(new.verifier().clone());
        self.signer = new;
        Ok(cp)
    }
}
