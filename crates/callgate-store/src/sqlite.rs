//! The embedded audit store: a write-ahead journal in front of one SQLite database.
//!
//! A batch is durable once it is in the journal ([`crate::journal`]: one write, one
//! `fdatasync`); that is when [`SqliteStore::append`] returns and the call may be forwarded.
//! A background task (the indexer) then inserts the same records into SQLite in large
//! transactions, and every read first waits until SQLite holds everything appended before it,
//! so readers never miss a record. On open, records in the journal that SQLite lacks (the
//! process died before indexing them) are inserted first.
//!
//! Why SQLite for everything else: WAL with `synchronous=FULL` gives crash-safe,
//! all-or-nothing transactions, concurrent readers while the gateway writes (`callgate audit
//! verify` on a live log) and indexed search, without Callgate owning more than the journal's
//! small recovery rule. Tamper evidence does not depend on the store: the Merkle tree and the
//! signed checkpoints do that, so the database may be as ordinary as it likes.
//!
//! One connection writes (the indexer, checkpoints and retention share it); a small pool reads.
//! If SQLite cannot be written, the indexer keeps retrying and appends are refused (fail
//! closed) until it succeeds: the journal is not a place to pile up records nobody can read.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callgate_audit::Hash;
use callgate_audit::record::parse_record;
use tokio::sync::{Notify, mpsc, watch};

use crate::journal::{self, Journal};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};

use crate::{AuditStore, Filter, NewRecord, StoreError, StoredCheckpoint, StoredRecord};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS records (
        idx INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        time_ms INTEGER NOT NULL,
        request_id TEXT,
        session TEXT,
        subject TEXT,
        function TEXT,
        decision TEXT,
        body BLOB,
        leaf_hash BLOB NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS records_request ON records(request_id) WHERE request_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS records_session ON records(session) WHERE session IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS records_time ON records(time_ms)",
    "CREATE TABLE IF NOT EXISTS checkpoints (
        size INTEGER PRIMARY KEY,
        note TEXT NOT NULL,
        time_ms INTEGER NOT NULL,
        frontier BLOB
    )",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
];

/// Rows per INSERT statement (10 parameters each, well under SQLite's limit of 32,766).
const ROWS_PER_STATEMENT: usize = 1000;

/// How long the indexer gathers batches before a transaction, unless a reader waits.
const GATHER: Duration = Duration::from_millis(10);
/// Records per indexer transaction at most.
const MAX_INDEX_BATCH: usize = 20_000;
/// Journal bytes after which it is rewound as soon as SQLite has caught up.
const REWIND_AT: u64 = 8 << 20;
/// How long a read waits for the indexer before it is refused.
const READ_WAIT: Duration = Duration::from_secs(10);

/// The SQLite audit store.
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Held while this process may write: one writer per store, or leaf indexes would clash.
    lock: Arc<Mutex<Option<std::fs::File>>>,
    /// The journal and its indexer; `None` when opened read-only.
    journal: Option<Arc<Indexed>>,
}

/// The journal and what the indexer has done with it.
struct Indexed {
    journal: Mutex<Journal>,
    /// One past the last index appended (durable in the journal).
    appended: AtomicU64,
    /// One past the last index SQLite holds durably.
    indexed: watch::Sender<u64>,
    /// False while the indexer's last transaction failed: appends are refused.
    healthy: AtomicBool,
    /// What the indexer failed with last.
    failure: Mutex<Option<String>>,
    /// A reader waits: index now rather than after gathering.
    flush: Notify,
    tx: Mutex<Option<mpsc::UnboundedSender<Vec<NewRecord>>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn unwritable(e: sqlx::Error) -> StoreError {
    StoreError::Unwritable(e.to_string())
}

fn unreadable(e: sqlx::Error) -> StoreError {
    StoreError::Unreadable(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` for writing. `busy_timeout` bounds how
    /// long a write waits for a lock held by someone else before the call is refused.
    pub async fn open(path: &Path, busy_timeout: Duration) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unwritable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let lock_path = path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Unwritable(format!("{}: {e}", lock_path.display())))?;
        if let Err(e) = lock.try_lock() {
            return Err(StoreError::Unwritable(match e {
                std::fs::TryLockError::WouldBlock => format!(
                    "another Callgate process is writing {} (it holds {})",
                    path.display(),
                    lock_path.display()
                ),
                std::fs::TryLockError::Error(e) => format!("{}: {e}", lock_path.display()),
            }));
        }
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(unwritable)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(busy_timeout)
            // Index pages stay in memory instead of being reread from the OS for every batch.
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "memory");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts.clone())
            .await
            .map_err(unwritable)?;
        for stmt in SCHEMA {
            sqlx::query(*stmt)
                .execute(&writer)
                .await
                .map_err(unwritable)?;
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true).create_if_missing(false))
            .await
            .map_err(unreadable)?;
        let (mut journal, frames) = Journal::open(&path.with_extension("journal"))?;
        let size = size_of(&writer).await?;
        let replay = recover(&frames, size, path)?;
        if !replay.is_empty() {
            tracing::warn!(
                records = replay.len(),
                from = size,
                "the audit journal holds records the index lacks (the last run did not stop cleanly); indexing them"
            );
            insert_all(&writer, &replay).await?;
        }
        // SQLite now holds everything the journal does.
        journal.rewind();
        let size = size_of(&writer).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let indexed = Arc::new(Indexed {
            journal: Mutex::new(journal),
            appended: AtomicU64::new(size),
            indexed: watch::Sender::new(size),
            healthy: AtomicBool::new(true),
            failure: Mutex::new(None),
            flush: Notify::new(),
            tx: Mutex::new(Some(tx)),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(index(writer.clone(), indexed.clone(), rx));
        *lock_of(&indexed.task) = Some(task);
        Ok(SqliteStore {
            writer,
            reader,
            lock: Arc::new(Mutex::new(Some(lock))),
            journal: Some(indexed),
        })
    }

    /// Opens an existing store for reading only (the auditor's commands). When no gateway is
    /// writing it and its journal holds records the index lacks (the gateway died), they are
    /// indexed first, so the reader sees every durable record.
    pub async fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            return Err(StoreError::Unreadable(format!(
                "no audit store at {}",
                path.display()
            )));
        }
        let journal = path.with_extension("journal");
        if std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0) {
            // Taken only if nobody writes; a gateway that does indexes on its own.
            if let Ok(store) = SqliteStore::open(path, Duration::from_secs(5)).await {
                store.close().await;
            }
        }
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(unreadable)?
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(5));
        let reader = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .map_err(unreadable)?;
        Ok(SqliteStore {
            writer: reader.clone(),
            reader,
            lock: Default::default(),
            journal: None,
        })
    }

    /// Indexes what is left in the journal, closes the connections and releases the writer
    /// lock.
    pub async fn close(&self) {
        if let Some(j) = &self.journal {
            lock_of(&j.tx).take();
            let task = lock_of(&j.task).take();
            if let Some(task) = task {
                let _ = task.await;
            }
        }
        self.reader.close().await;
        self.writer.close().await;
        lock_of(&self.lock).take();
    }

    /// Waits until SQLite holds every record appended so far.
    async fn caught_up(&self) -> Result<(), StoreError> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        let target = j.appended.load(Ordering::Acquire);
        if *j.indexed.borrow() >= target {
            return Ok(());
        }
        j.flush.notify_one();
        let mut rx = j.indexed.subscribe();
        match tokio::time::timeout(READ_WAIT, rx.wait_for(|&i| i >= target)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StoreError::Unreadable(format!(
                "the audit index is behind its journal: {}",
                lock_of(&j.failure)
                    .clone()
                    .unwrap_or_else(|| "the indexer stopped".into())
            ))),
        }
    }
}

fn lock_of<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn size_of(pool: &SqlitePool) -> Result<u64, StoreError> {
    let row = sqlx::query("SELECT COALESCE(MAX(idx) + 1, 0) FROM records")
        .fetch_one(pool)
        .await
        .map_err(unreadable)?;
    Ok(col_at::<i64>(&row, 0)? as u64)
}

/// The journal's records from `size` on (what SQLite lacks), checked and with their columns.
fn recover(
    frames: &[journal::Frame],
    size: u64,
    path: &Path,
) -> Result<Vec<NewRecord>, StoreError> {
    let missing: Vec<&journal::Frame> = frames.iter().filter(|f| f.index >= size).collect();
    match missing.first() {
        None => Ok(Vec::new()),
        Some(f) if f.index != size => Err(StoreError::Inconsistent(format!(
            "{} holds records up to index {} but its journal continues at {}: records are missing; run `callgate audit verify`",
            path.display(),
            size as i64 - 1,
            f.index
        ))),
        Some(_) => missing
            .into_iter()
            .map(|f| {
                let record = parse_record(f.index, &f.body).map_err(|e| {
                    StoreError::Inconsistent(format!("journal record {}: {e}", f.index))
                })?;
                Ok(NewRecord {
                    index: f.index,
                    columns: record.event.columns(),
                    body: f.body.clone(),
                    leaf_hash: f.leaf_hash,
                })
            })
            .collect(),
    }
}

/// Inserts `rows` in one transaction (durable when it returns: `synchronous=FULL`).
async fn insert_all(pool: &SqlitePool, rows: &[NewRecord]) -> Result<(), StoreError> {
    if rows.len() <= ROWS_PER_STATEMENT {
        // One multi-row INSERT is atomic on its own: one round trip to SQLite's thread.
        return insert(rows)
            .build()
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(unwritable);
    }
    let mut tx = pool.begin().await.map_err(unwritable)?;
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        insert(chunk)
            .build()
            .execute(&mut *tx)
            .await
            .map_err(unwritable)?;
    }
    tx.commit().await.map_err(unwritable)
}

/// The indexer: moves journaled batches into SQLite in large transactions, rewinds the
/// journal when SQLite has caught up, and stops (after indexing everything) when the store is
/// closed.
async fn index(
    pool: SqlitePool,
    state: Arc<Indexed>,
    mut rx: mpsc::UnboundedReceiver<Vec<NewRecord>>,
) {
    let mut pending: Vec<NewRecord> = Vec::new();
    let mut open = true;
    while open || !pending.is_empty() {
        if pending.is_empty() {
            match rx.recv().await {
                Some(batch) => pending.extend(batch),
                None => break,
            }
            // Gather for a moment so SQLite gets few, large transactions, unless a reader
            // is waiting.
            let gather = tokio::time::sleep(GATHER);
            tokio::pin!(gather);
            while pending.len() < MAX_INDEX_BATCH {
                tokio::select! {
                    batch = rx.recv() => match batch {
                        Some(batch) => pending.extend(batch),
                        None => {
                            open = false;
                            break;
                        }
                    },
                    _ = &mut gather => break,
                    _ = state.flush.notified() => break,
                }
            }
        }
        while pending.len() < MAX_INDEX_BATCH {
            match rx.try_recv() {
                Ok(batch) => pending.extend(batch),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        match insert_all(&pool, &pending).await {
            Ok(()) => {
                let next = pending.last().map_or(0, |r| r.index + 1);
                pending.clear();
                state.healthy.store(true, Ordering::Release);
                state.indexed.send_replace(next);
                // Rewind only when nothing in the journal is missing from SQLite; appends
                // hold the journal's lock while they write, so this never waits on a sync.
                if let Ok(mut j) = state.journal.try_lock()
                    && j.len() >= REWIND_AT
                    && state.appended.load(Ordering::Acquire) == next
                {
                    j.rewind();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = pending.len(), "indexing audit records failed; appends are refused until it succeeds");
                *lock_of(&state.failure) = Some(e.to_string());
                state.healthy.store(false, Ordering::Release);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// `INSERT INTO records ... VALUES (...), (...)` for `rows`.
fn insert(rows: &[NewRecord]) -> QueryBuilder<Sqlite> {
    let mut qb: QueryBuilder<Sqlite> =
        QueryBuilder::new(format!("INSERT INTO records ({COLUMNS}) "));
    qb.push_values(rows, |mut b, r| {
        b.push_bind(r.index as i64)
            .push_bind(r.columns.kind)
            .push_bind(r.columns.time_ms as i64)
            .push_bind(r.columns.request_id.as_deref())
            .push_bind(r.columns.session.as_deref())
            .push_bind(r.columns.subject.as_deref())
            .push_bind(r.columns.function.as_deref())
            .push_bind(r.columns.decision.as_deref())
            .push_bind(r.body.as_slice())
            .push_bind(r.leaf_hash.as_slice());
    });
    qb
}

/// A column of a stored row; a value of the wrong type (someone edited the database) is an
/// inconsistency to report, not a panic.
fn col<'r, T>(row: &'r SqliteRow, name: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(name)
        .map_err(|e| StoreError::Inconsistent(format!("column {name}: {e}")))
}

fn col_at<'r, T>(row: &'r SqliteRow, i: usize) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(i)
        .map_err(|e| StoreError::Inconsistent(format!("column {i}: {e}")))
}

fn record(row: SqliteRow) -> Result<StoredRecord, StoreError> {
    Ok(StoredRecord {
        index: col::<i64>(&row, "idx")? as u64,
        kind: col(&row, "kind")?,
        time_ms: col::<i64>(&row, "time_ms")? as u64,
        request_id: col(&row, "request_id")?,
        session: col(&row, "session")?,
        subject: col(&row, "subject")?,
        function: col(&row, "function")?,
        decision: col(&row, "decision")?,
        body: col(&row, "body")?,
        leaf_hash: col(&row, "leaf_hash")?,
    })
}

const COLUMNS: &str =
    "idx, kind, time_ms, request_id, session, subject, function, decision, body, leaf_hash";

impl AuditStore for SqliteStore {
    async fn leaf_hashes(&self) -> Result<Vec<Hash>, StoreError> {
        self.caught_up().await?;
        let rows = sqlx::query("SELECT idx, leaf_hash FROM records ORDER BY idx")
            .fetch_all(&self.writer)
            .await
            .map_err(unreadable)?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.into_iter().enumerate() {
            let idx: i64 = col_at(&row, 0)?;
            if idx as u64 != i as u64 {
                return Err(StoreError::Inconsistent(format!(
                    "record {i} is missing (found {idx} in its place); run `callgate audit verify`"
                )));
            }
            let h: Vec<u8> = col_at(&row, 1)?;
            out.push(h.as_slice().try_into().map_err(|_| {
                StoreError::Inconsistent(format!("record {i} has a malformed leaf hash"))
            })?);
        }
        Ok(out)
    }

    async fn size(&self) -> Result<u64, StoreError> {
        match &self.journal {
            // Durable in the journal is in the store.
            Some(j) => Ok(j.appended.load(Ordering::Acquire)),
            None => size_of(&self.writer).await,
        }
    }

    async fn append(&self, batch: &[NewRecord]) -> Result<(), StoreError> {
        let Some(j) = &self.journal else {
            return Err(StoreError::Unwritable(
                "the audit store is open read-only".into(),
            ));
        };
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(());
        };
        if !j.healthy.load(Ordering::Acquire) {
            return Err(StoreError::Unwritable(format!(
                "the audit index cannot be written: {}",
                lock_of(&j.failure).clone().unwrap_or_default()
            )));
        }
        if first.index != j.appended.load(Ordering::Acquire) {
            return Err(StoreError::Inconsistent(format!(
                "append at index {} but the store is at {}",
                first.index,
                j.appended.load(Ordering::Acquire)
            )));
        }
        let frames = journal::encode(batch);
        let next = last.index + 1;
        let state = j.clone();
        tokio::task::spawn_blocking(move || {
            let mut journal = lock_of(&state.journal);
            journal.write(&frames)?;
            // Under the journal's lock, so the indexer's rewind check sees both or neither.
            state.appended.store(next, Ordering::Release);
            Ok::<(), std::io::Error>(())
        })
        .await
        .map_err(|e| StoreError::Unwritable(e.to_string()))?
        .map_err(|e| StoreError::Unwritable(format!("the audit journal: {e}")))?;
        if let Some(tx) = lock_of(&j.tx).as_ref() {
            let _ = tx.send(batch.to_vec());
        }
        Ok(())
    }

    async fn add_checkpoint(&self, cp: &StoredCheckpoint) -> Result<(), StoreError> {
        // A checkpoint never covers more than the index holds.
        self.caught_up().await?;
        sqlx::query("INSERT INTO checkpoints (size, note, time_ms, frontier) VALUES (?, ?, ?, ?)")
            .bind(cp.size as i64)
            .bind(&cp.note)
            .bind(cp.time_ms as i64)
            .bind(cp.frontier.as_slice())
            .execute(&self.writer)
            .await
            .map_err(unwritable)?;
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let rows =
            sqlx::query("SELECT size, note, time_ms, frontier FROM checkpoints ORDER BY size")
                .fetch_all(&self.reader)
                .await
                .map_err(unreadable)?;
        rows.into_iter()
            .map(|r| {
                Ok(StoredCheckpoint {
                    size: col_at::<i64>(&r, 0)? as u64,
                    note: col_at(&r, 1)?,
                    time_ms: col_at::<i64>(&r, 2)? as u64,
                    frontier: col_at::<Option<Vec<u8>>>(&r, 3)?.unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn rows(&self, from: u64, limit: u32) -> Result<Vec<StoredRecord>, StoreError> {
        self.caught_up().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM records WHERE idx >= ? ORDER BY idx LIMIT ?"
        )))
        .bind(from as i64)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await
        .map_err(unreadable)?;
        rows.into_iter().map(record).collect()
    }

    async fn search(&self, f: &Filter) -> Result<Vec<StoredRecord>, StoreError> {
        self.caught_up().await?;
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("SELECT {COLUMNS} FROM records WHERE 1=1"));
        for (col, val) in [
            ("subject", &f.subject),
            ("function", &f.function),
            ("decision", &f.decision),
            ("kind", &f.kind),
            ("session", &f.session),
            ("request_id", &f.request_id),
        ] {
            if let Some(v) = val {
                qb.push(format!(" AND {col} = ")).push_bind(v.clone());
            }
        }
        if let Some(t) = f.since_ms {
            qb.push(" AND time_ms >= ").push_bind(t as i64);
        }
        if let Some(t) = f.until_ms {
            qb.push(" AND time_ms < ").push_bind(t as i64);
        }
        if let Some(i) = f.after_index {
            qb.push(" AND idx > ").push_bind(i as i64);
        }
        qb.push(" ORDER BY idx LIMIT ")
            .push_bind(f.limit.max(1) as i64);
        let rows = qb
            .build()
            .fetch_all(&self.reader)
            .await
            .map_err(unreadable)?;
        rows.into_iter().map(record).collect()
    }

    async fn unfinished_since(&self, from: u64) -> Result<Vec<String>, StoreError> {
        self.caught_up().await?;
        let rows = sqlx::query(
            "SELECT request_id FROM records
             WHERE idx >= ?1 AND request_id IS NOT NULL
               AND (kind = 'call.forward' OR (kind = 'call' AND decision = 'allow'))
               AND request_id NOT IN (
                 SELECT request_id FROM records
                 WHERE idx >= ?1 AND kind = 'call.response' AND request_id IS NOT NULL)
             ORDER BY idx",
        )
        .bind(from as i64)
        .fetch_all(&self.writer)
        .await
        .map_err(unreadable)?;
        rows.iter().map(|r| col_at(r, 0)).collect()
    }

    async fn last_of_kind(&self, kind: &str) -> Result<Option<u64>, StoreError> {
        self.caught_up().await?;
        let row = sqlx::query("SELECT MAX(idx) FROM records WHERE kind = ?")
            .bind(kind)
            .fetch_one(&self.writer)
            .await
            .map_err(unreadable)?;
        Ok(col_at::<Option<i64>>(&row, 0)?.map(|i| i as u64))
    }

    async fn prune_bodies(&self, before_ms: u64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE records SET body = NULL
             WHERE time_ms < ? AND body IS NOT NULL AND kind LIKE 'call%'",
        )
        .bind(before_ms as i64)
        .execute(&self.writer)
        .await
        .map_err(unwritable)?;
        Ok(done.rows_affected())
    }

    async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.reader)
            .await
            .map_err(unreadable)?;
        row.map(|r| col_at(&r, 0)).transpose()
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.writer)
            .await
            .map_err(unwritable)?;
        Ok(())
    }
}
