//! The embedded audit store: one SQLite database in WAL mode.
//!
//! Why SQLite rather than hand-written segment files: WAL with `synchronous=FULL` gives
//! crash-safe, fsynced, all-or-nothing batches, concurrent readers while the gateway writes
//! (`callgate audit verify` on a live log), and indexed search, without Callgate owning a file
//! format's recovery code. Tamper evidence does not depend on the store: the Merkle tree and
//! the signed checkpoints do that, so the database may be as ordinary as it likes.
//!
//! One connection writes (the group-commit writer is the only caller of [`SqliteStore::append`]);
//! a small pool reads. The writing connection is held for the store's life rather than taken
//! from a pool: a pool pings a connection on every acquire and release, which would add two
//! round trips to SQLite's thread (and their wake-ups) to every group commit.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use callgate_audit::Hash;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

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
    // Roots of perfect subtrees of the log, cached by proofs (see `crate::tree`).
    "CREATE TABLE IF NOT EXISTS subtrees (
        level INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (level, idx)
    ) WITHOUT ROWID",
];

/// Rows per INSERT statement (10 parameters each, well under SQLite's limit of 32,766).
const ROWS_PER_STATEMENT: usize = 1000;

/// The SQLite audit store.
#[derive(Clone)]
pub struct SqliteStore {
    /// The writing connection; `None` for a store opened read-only, and after `close`.
    writer: Option<std::sync::Arc<Mutex<Option<SqliteConnection>>>>,
    reader: SqlitePool,
    /// Held while this process may write: one writer per store, or leaf indexes would clash.
    lock: std::sync::Arc<std::sync::Mutex<Option<std::fs::File>>>,
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
        crate::create_private(path)
            .map_err(|e| StoreError::Unwritable(format!("{}: {e}", path.display())))?;
        let lock = crate::private_options()
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
        let mut writer = opts.connect().await.map_err(unwritable)?;
        for stmt in SCHEMA {
            sqlx::query(*stmt)
                .execute(&mut writer)
                .await
                .map_err(unwritable)?;
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true).create_if_missing(false))
            .await
            .map_err(unreadable)?;
        Ok(SqliteStore {
            writer: Some(std::sync::Arc::new(Mutex::new(Some(writer)))),
            reader,
            lock: std::sync::Arc::new(std::sync::Mutex::new(Some(lock))),
        })
    }

    /// Opens an existing store for reading only (the auditor's commands).
    pub async fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        if !path.exists() {
            return Err(StoreError::Unreadable(format!(
                "no audit store at {}",
                path.display()
            )));
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
            writer: None,
            reader,
            lock: Default::default(),
        })
    }

    /// The writing connection, locked for one statement or transaction.
    async fn conn(&self) -> Result<MappedMutexGuard<'_, SqliteConnection>, StoreError> {
        let w = self.writer.as_ref().ok_or_else(|| {
            StoreError::Unwritable("the audit store is open read-only".to_string())
        })?;
        MutexGuard::try_map(w.lock().await, Option::as_mut).map_err(|_| StoreError::Closed)
    }

    /// Closes the connections and releases the writer lock.
    pub async fn close(&self) {
        self.reader.close().await;
        if let Some(w) = &self.writer
            && let Some(conn) = w.lock().await.take()
        {
            let _ = conn.close().await;
        }
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
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
        self.leaf_hashes_range(0, i64::MAX as u64).await
    }

    async fn leaf_hashes_range(&self, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
        let rows = sqlx::query(
            "SELECT idx, leaf_hash FROM records WHERE idx >= ? AND idx < ? ORDER BY idx",
        )
        .bind(from as i64)
        .bind(to as i64)
        .fetch_all(&self.reader)
        .await
        .map_err(unreadable)?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.into_iter().enumerate() {
            let want = from + i as u64;
            let idx: i64 = col_at(&row, 0)?;
            if idx as u64 != want {
                return Err(StoreError::Inconsistent(format!(
                    "record {want} is missing (found {idx} in its place); run `callgate audit verify`"
                )));
            }
            let h: Vec<u8> = col_at(&row, 1)?;
            out.push(h.as_slice().try_into().map_err(|_| {
                StoreError::Inconsistent(format!("record {want} has a malformed leaf hash"))
            })?);
        }
        Ok(out)
    }

    async fn subtree(&self, level: u32, index: u64) -> Option<Hash> {
        // A store made by an earlier build, opened read-only, has no such table: a miss.
        let row = sqlx::query("SELECT hash FROM subtrees WHERE level = ? AND idx = ?")
            .bind(i64::from(level))
            .bind(index as i64)
            .fetch_optional(&self.reader)
            .await
            .ok()??;
        let h: Vec<u8> = row.try_get(0).ok()?;
        h.as_slice().try_into().ok()
    }

    async fn put_subtrees(
        &self,
        roots: &[(u32, u64, Hash)],
        replace: bool,
    ) -> Result<(), StoreError> {
        // Never at the expense of the audit writer: when it holds the connection, the roots
        // are not cached this time.
        let Some(w) = &self.writer else {
            return Ok(());
        };
        let Ok(guard) = w.try_lock() else {
            return Ok(());
        };
        let Ok(mut conn) = MutexGuard::try_map(guard, Option::as_mut) else {
            return Err(StoreError::Closed);
        };
        let mut tx = conn.begin().await.map_err(unwritable)?;
        for chunk in roots.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(if replace {
                "INSERT OR REPLACE INTO subtrees (level, idx, hash) "
            } else {
                "INSERT OR IGNORE INTO subtrees (level, idx, hash) "
            });
            q.push_values(chunk, |mut b, (level, idx, hash)| {
                b.push_bind(i64::from(*level))
                    .push_bind(*idx as i64)
                    .push_bind(hash.to_vec());
            });
            q.build().execute(&mut *tx).await.map_err(unwritable)?;
        }
        tx.commit().await.map_err(unwritable)
    }

    async fn size(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(idx) + 1, 0) FROM records")
            .fetch_one(&self.reader)
            .await
            .map_err(unreadable)?;
        Ok(col_at::<i64>(&row, 0)? as u64)
    }

    async fn append(&self, batch: &[NewRecord]) -> Result<(), StoreError> {
        // One multi-row INSERT is atomic on its own: a batch that fits in one statement costs a
        // single round trip to SQLite's thread (and one fsync at its implicit commit).
        let mut conn = self.conn().await?;
        if batch.len() <= ROWS_PER_STATEMENT {
            return insert(batch)
                .build()
                .execute(&mut *conn)
                .await
                .map(|_| ())
                .map_err(unwritable);
        }
        let mut tx = conn.begin().await.map_err(unwritable)?;
        for chunk in batch.chunks(ROWS_PER_STATEMENT) {
            insert(chunk)
                .build()
                .execute(&mut *tx)
                .await
                .map_err(unwritable)?;
        }
        tx.commit().await.map_err(unwritable)
    }

    async fn add_checkpoint(&self, cp: &StoredCheckpoint) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO checkpoints (size, note, time_ms, frontier) VALUES (?, ?, ?, ?)")
            .bind(cp.size as i64)
            .bind(&cp.note)
            .bind(cp.time_ms as i64)
            .bind(cp.frontier.as_slice())
            .execute(&mut *self.conn().await?)
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

    async fn last_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        let row = sqlx::query(
            "SELECT size, note, time_ms, frontier FROM checkpoints ORDER BY size DESC LIMIT 1",
        )
        .fetch_optional(&self.reader)
        .await
        .map_err(unreadable)?;
        row.map(|r| {
            Ok(StoredCheckpoint {
                size: col_at::<i64>(&r, 0)? as u64,
                note: col_at(&r, 1)?,
                time_ms: col_at::<i64>(&r, 2)? as u64,
                frontier: col_at::<Option<Vec<u8>>>(&r, 3)?.unwrap_or_default(),
            })
        })
        .transpose()
    }

    async fn rows(&self, from: u64, limit: u32) -> Result<Vec<StoredRecord>, StoreError> {
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
        .fetch_all(&self.reader)
        .await
        .map_err(unreadable)?;
        rows.iter().map(|r| col_at(r, 0)).collect()
    }

    async fn last_of_kind(&self, kind: &str) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query("SELECT MAX(idx) FROM records WHERE kind = ?")
            .bind(kind)
            .fetch_one(&self.reader)
            .await
            .map_err(unreadable)?;
        Ok(col_at::<Option<i64>>(&row, 0)?.map(|i| i as u64))
    }

    async fn prune_candidates(
        &self,
        before_ms: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM records
             WHERE time_ms < ? AND body IS NOT NULL AND kind LIKE 'call%'
             ORDER BY idx LIMIT ?"
        )))
        .bind(before_ms as i64)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await
        .map_err(unreadable)?;
        rows.into_iter().map(record).collect()
    }

    async fn prune_bodies(&self, indexes: &[u64]) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await.map_err(unwritable)?;
        let mut done = 0;
        for chunk in indexes.chunks(ROWS_PER_STATEMENT) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("UPDATE records SET body = NULL WHERE idx IN (");
            let mut list = qb.separated(", ");
            for i in chunk {
                list.push_bind(*i as i64);
            }
            qb.push(")");
            done += qb
                .build()
                .execute(&mut *tx)
                .await
                .map_err(unwritable)?
                .rows_affected();
        }
        tx.commit().await.map_err(unwritable)?;
        Ok(done)
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
            .execute(&mut *self.conn().await?)
            .await
            .map_err(unwritable)?;
        Ok(())
    }
}
