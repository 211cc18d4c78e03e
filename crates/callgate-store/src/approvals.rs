//! Held calls and grants: the approvals store (embedded SQLite through sqlx, WAL with
//! `synchronous=FULL`, in its own database file beside the audit log).
//!
//! A held item is one row: the stored request exactly as it will be executed (`payload`) with
//! its digest, the [`Approval`] (requirement, requester, reviews, state) as JSON, a summary for
//! reviewers, and once executed the upstream's answer. Every change goes through
//! [`ApprovalStore::update`]: read the row, let the pure state machine decide, write it back
//! only if the row's `version` is still the one read (compare-and-swap). Two racing approvals,
//! an approval racing a denial or cancellation, or two executors therefore produce exactly one
//! outcome, and the loser re-reads and is judged against the new state.
//!
//! There is deliberately no way to change a stored payload: nothing in this module writes the
//! `payload` or `digest` columns after insertion.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use callgate_approvals::{Approval, State};
use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS held (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        version INTEGER NOT NULL,
        requester TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER,
        digest TEXT NOT NULL,
        payload TEXT NOT NULL,
        approval TEXT NOT NULL,
        summary TEXT NOT NULL,
        outcome TEXT
    )",
    "CREATE INDEX IF NOT EXISTS held_state ON held(state, expires_ms)",
    "CREATE INDEX IF NOT EXISTS held_requester ON held(requester, created_ms)",
];

/// Failures of the approvals store. Any of them refuses the request being held or reviewed.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalStoreError {
    #[error("the approvals store cannot be used: {0}")]
    Unavailable(String),
    #[error("the approvals store is inconsistent: {0}")]
    Inconsistent(String),
    #[error("no held call or grant {0:?}")]
    NotFound(String),
    #[error("{0:?} already exists")]
    Exists(String),
    #[error("too much contention on {0:?}; try again")]
    Contention(String),
}

fn unavailable(e: sqlx::Error) -> ApprovalStoreError {
    ApprovalStoreError::Unavailable(e.to_string())
}

/// What kind of item is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A function call, executed by Callgate once approved.
    Call,
    /// A request for temporary group membership, active once approved.
    Grant,
    /// A call made with break-glass: already executed, awaiting acknowledgement.
    BreakGlass,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Call => "call",
            Kind::Grant => "grant",
            Kind::BreakGlass => "break_glass",
        }
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        match s {
            "call" => Ok(Kind::Call),
            "grant" => Ok(Kind::Grant),
            "break_glass" => Ok(Kind::BreakGlass),
            _ => Err(format!("unknown kind {s:?}")),
        }
    }
}

/// One held item.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// The request id of the call that created it (or the grant's id).
    pub id: String,
    pub kind: Kind,
    /// The stored request, exactly as it will be executed (or the grant asked for).
    pub payload: Value,
    /// Hex SHA-256 of the canonical payload: what reviewers approve.
    pub digest: String,
    pub approval: Approval,
    /// What reviewers are shown: function, risk, reason, policies, session.
    pub summary: Value,
    /// The upstream's answer once executed, or the failure.
    pub outcome: Option<Value>,
    /// Compare-and-swap version; bumped by every update.
    pub version: i64,
}

/// The approvals store.
#[derive(Clone)]
pub struct ApprovalStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl ApprovalStore {
    /// Opens (creating if needed) the store at `path`.
    pub async fn open(path: &Path) -> Result<ApprovalStore, ApprovalStoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                ApprovalStoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        crate::create_private(path)
            .map_err(|e| ApprovalStoreError::Unavailable(format!("{}: {e}", path.display())))?;
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(unavailable)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        // One writing connection: writes are serialized here, and the version check makes each
        // update a compare-and-swap whatever the store (a Postgres store can keep the contract).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .map_err(unavailable)?;
        for stmt in SCHEMA {
            sqlx::query(*stmt)
                .execute(&writer)
                .await
                .map_err(unavailable)?;
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await
            .map_err(unavailable)?;
        Ok(ApprovalStore { writer, reader })
    }

    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Stores a new held item; returns once it is durable.
    pub async fn insert(&self, h: &Held) -> Result<(), ApprovalStoreError> {
        let approval = to_text(&h.approval)?;
        let r = sqlx::query(
            "INSERT INTO held (id, kind, state, version, requester, created_ms, expires_ms, \
             digest, payload, approval, summary, outcome) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        )
        .bind(&h.id)
        .bind(h.kind.as_str())
        .bind(h.approval.state.as_str())
        .bind(h.version)
        .bind(&h.approval.requester.subject)
        .bind(h.approval.created_ms as i64)
        .bind(h.approval.expires_ms().map(|t| t as i64))
        .bind(&h.digest)
        .bind(to_text(&h.payload)?)
        .bind(approval)
        .bind(to_text(&h.summary)?)
        .bind(h.outcome.as_ref().map(to_text).transpose()?)
        .execute(&self.writer)
        .await;
        match r {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(ApprovalStoreError::Exists(h.id.clone()))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// One held item.
    pub async fn get(&self, id: &str) -> Result<Option<Held>, ApprovalStoreError> {
        sqlx::query("SELECT * FROM held WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(unavailable)?
            .map(|r| held(&r))
            .transpose()
    }

    /// Reads, changes and writes back one item atomically. `change` sees the current row and
    /// either edits it (its approval and outcome; the payload cannot change) and returns a
    /// value, or refuses with an error and nothing is written. If another writer got there
    /// first, `change` runs again on the new row.
    pub async fn update<T, E>(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Held) -> Result<T, E>,
    ) -> Result<Result<(T, Held), E>, ApprovalStoreError> {
        for _ in 0..16 {
            let Some(mut h) = self.get_for_update(id).await? else {
                return Err(ApprovalStoreError::NotFound(id.to_string()));
            };
            let read_version = h.version;
            let value = match change(&mut h) {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            h.version = read_version + 1;
            let done = sqlx::query(
                "UPDATE held SET state = ?, version = ?, expires_ms = ?, approval = ?, \
                 summary = ?, outcome = ? WHERE id = ? AND version = ?",
            )
            .bind(h.approval.state.as_str())
            .bind(h.version)
            .bind(h.approval.expires_ms().map(|t| t as i64))
            .bind(to_text(&h.approval)?)
            .bind(to_text(&h.summary)?)
            .bind(h.outcome.as_ref().map(to_text).transpose()?)
            .bind(id)
            .bind(read_version)
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
            if done.rows_affected() == 1 {
                return Ok(Ok((value, h)));
            }
        }
        Err(ApprovalStoreError::Contention(id.to_string()))
    }

    /// Reads through the writer so an update sees every committed write.
    async fn get_for_update(&self, id: &str) -> Result<Option<Held>, ApprovalStoreError> {
        sqlx::query("SELECT * FROM held WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.writer)
            .await
            .map_err(unavailable)?
            .map(|r| held(&r))
            .transpose()
    }

    /// Items in any of `states`, oldest first.
    pub async fn in_states(
        &self,
        kind: Option<Kind>,
        states: &[State],
        limit: u32,
    ) -> Result<Vec<Held>, ApprovalStoreError> {
        let mut qb = sqlx::QueryBuilder::new("SELECT * FROM held WHERE state IN (");
        let mut sep = qb.separated(", ");
        for s in states {
            sep.push_bind(s.as_str());
        }
        qb.push(")");
        if let Some(k) = kind {
            qb.push(" AND kind = ").push_bind(k.as_str());
        }
        qb.push(" ORDER BY created_ms, id LIMIT ")
            .push_bind(limit as i64);
        self.fetch(qb).await
    }

    /// The items a built query selects.
    async fn fetch(
        &self,
        mut qb: sqlx::QueryBuilder<sqlx::Sqlite>,
    ) -> Result<Vec<Held>, ApprovalStoreError> {
        qb.build()
            .fetch_all(&self.reader)
            .await
            .map_err(unavailable)?
            .iter()
            .map(held)
            .collect()
    }

    /// Items whose current state ran out at `now_ms` (pending or approved past their time).
    pub async fn due(&self, now_ms: u64) -> Result<Vec<String>, ApprovalStoreError> {
        let rows = sqlx::query(
            "SELECT id FROM held WHERE state IN ('pending', 'approved') AND expires_ms <= ? \
             ORDER BY expires_ms LIMIT 1000",
        )
        .bind(now_ms as i64)
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                r.try_get::<String, _>(0)
                    .map_err(|e| ApprovalStoreError::Inconsistent(e.to_string()))
            })
            .collect()
    }

    /// One page of a requester's items of `kind`, newest first: in `states` (any when empty),
    /// created before the item `before` (its creation time and id), at most `limit`.
    pub async fn requester_page(
        &self,
        kind: Kind,
        subject: &str,
        states: &[State],
        before: Option<(u64, &str)>,
        limit: u32,
    ) -> Result<Vec<Held>, ApprovalStoreError> {
        let mut qb = sqlx::QueryBuilder::new("SELECT * FROM held WHERE requester = ");
        qb.push_bind(subject)
            .push(" AND kind = ")
            .push_bind(kind.as_str());
        if !states.is_empty() {
            qb.push(" AND state IN (");
            let mut sep = qb.separated(", ");
            for s in states {
                sep.push_bind(s.as_str());
            }
            qb.push(")");
        }
        if let Some((created, id)) = before {
            qb.push(" AND (created_ms < ")
                .push_bind(created as i64)
                .push(" OR (created_ms = ")
                .push_bind(created as i64)
                .push(" AND id < ")
                .push_bind(id.to_string())
                .push("))");
        }
        qb.push(" ORDER BY created_ms DESC, id DESC LIMIT ")
            .push_bind(limit as i64);
        self.fetch(qb).await
    }

    /// A requester's items, newest first.
    pub async fn by_requester(
        &self,
        kind: Kind,
        subject: &str,
        limit: u32,
    ) -> Result<Vec<Held>, ApprovalStoreError> {
        sqlx::query(
            "SELECT * FROM held WHERE requester = ? AND kind = ? ORDER BY created_ms DESC LIMIT ?",
        )
        .bind(subject)
        .bind(kind.as_str())
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await
        .map_err(unavailable)?
        .iter()
        .map(held)
        .collect()
    }
}

fn to_text<T: serde::Serialize>(v: &T) -> Result<String, ApprovalStoreError> {
    serde_json::to_string(v).map_err(|e| ApprovalStoreError::Inconsistent(e.to_string()))
}

fn held(r: &SqliteRow) -> Result<Held, ApprovalStoreError> {
    let bad = |what: &str, e: String| ApprovalStoreError::Inconsistent(format!("{what}: {e}"));
    let text = |name: &str| -> Result<String, ApprovalStoreError> {
        r.try_get::<String, _>(name)
            .map_err(|e| bad(name, e.to_string()))
    };
    let json = |name: &str| -> Result<Value, ApprovalStoreError> {
        serde_json::from_str(&text(name)?).map_err(|e| bad(name, e.to_string()))
    };
    let approval: Approval =
        serde_json::from_str(&text("approval")?).map_err(|e| bad("approval", e.to_string()))?;
    let state: State = text("state")?.parse().map_err(|e| bad("state", e))?;
    if state != approval.state {
        return Err(bad(
            "state",
            format!("column says {state}, the approval says {}", approval.state),
        ));
    }
    let outcome: Option<String> = r
        .try_get("outcome")
        .map_err(|e| bad("outcome", e.to_string()))?;
    Ok(Held {
        id: text("id")?,
        kind: text("kind")?.parse().map_err(|e| bad("kind", e))?,
        payload: json("payload")?,
        digest: text("digest")?,
        approval,
        summary: json("summary")?,
        outcome: outcome
            .map(|o| serde_json::from_str(&o))
            .transpose()
            .map_err(|e| bad("outcome", e.to_string()))?,
        version: r
            .try_get("version")
            .map_err(|e| bad("version", e.to_string()))?,
    })
}
