//! The audit log on the real SQLite store: group commit under concurrency, checkpoints that
//! verify, crash recovery, refusal while the store is locked, and one writer per store.

use std::time::Duration;

use callgate_audit::merkle;
use callgate_audit::note::Signer;
use callgate_audit::record::{Event, ReloadEvent, StartEvent};
use callgate_store::{AuditLog, AuditStore, Filter, LogOptions, SqliteStore, StoreError, ops};

const ORIGIN: &str = "callgate.test/audit";

fn signer() -> Signer {
    Signer::from_seed(ORIGIN, [5; 32]).unwrap()
}

fn start() -> StartEvent {
    StartEvent {
        time_ms: 1,
        version: "test".into(),
        config_sha256: "c".into(),
        policy_sha256: "p".into(),
        key: signer().verifier().to_string(),
    }
}

fn event(i: u64) -> callgate_audit::record::EncodedEvent {
    Event::Reload(ReloadEvent {
        time_ms: i,
        config_sha256: format!("event {i}"),
        policy_sha256: String::new(),
    })
    .encode()
    .unwrap()
}

async fn open(path: &std::path::Path) -> Result<AuditLog<SqliteStore>, StoreError> {
    let store = SqliteStore::open(path, Duration::from_millis(200)).await?;
    AuditLog::open(
        store,
        signer(),
        LogOptions {
            origin: ORIGIN.into(),
            anchor: None,
        },
        start(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_are_group_committed_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = open(&path).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..50u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20u64 {
                log.append(vec![event(t * 100 + i)]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let cp = log.checkpoint().await.unwrap().unwrap();
    assert_eq!(cp.size, 1001);
    assert!(
        log.stats()
            .batches
            .load(std::sync::atomic::Ordering::Relaxed)
            < 1001,
        "fewer transactions than records"
    );
    let report = ops::verify(log.store(), ORIGIN, vec![signer().verifier().clone()], None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.tree_size, 1001);
    assert_eq!(report.checkpointed_size, 1001);
    // The root the store proves matches the recomputed tree.
    let leaves = log.store().leaf_hashes().await.unwrap();
    assert!(cp.note.contains(&base64_root(&merkle::root(&leaves))));
}

fn base64_root(h: &merkle::Hash) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(h)
}

#[tokio::test]
async fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let _log = open(&path).await.unwrap();
    let err = SqliteStore::open(&path, Duration::from_millis(100))
        .await
        .err()
        .expect("second writer refused");
    assert!(
        err.to_string().contains("another Callgate process"),
        "{err}"
    );
}

async fn recoveries(log: &AuditLog<SqliteStore>) -> Vec<callgate_store::StoredRecord> {
    let filter = Filter {
        kind: Some("admin.recovery".into()),
        limit: 10,
        ..Default::default()
    };
    log.store().search(&filter).await.unwrap()
}

#[tokio::test]
async fn a_run_that_did_not_stop_cleanly_is_recorded_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    {
        let log = open(&path).await.unwrap();
        log.append(vec![event(1)]).await.unwrap();
        log.close("test").await.unwrap();
        log.store().close().await;
    }
    {
        let log = open(&path).await.unwrap();
        let rec = recoveries(&log).await;
        assert!(rec.is_empty(), "a clean stop needs no recovery");
        log.append(vec![event(2)]).await.unwrap();
        // No close: the process "dies" here.
        log.store().close().await;
    }
    let log = open(&path).await.unwrap();
    let rec = recoveries(&log).await;
    assert_eq!(rec.len(), 1);
    let report = ops::verify(log.store(), ORIGIN, vec![], None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.tree_size, 7);
}

#[tokio::test]
async fn a_locked_store_refuses_appends_and_recovers() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = open(&path).await.unwrap();
    let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    // A response record (not awaited) queued while the store is locked is kept for retry.
    log.record(event(100));
    let err = log.append(vec![event(1)]).await.unwrap_err();
    assert!(matches!(err, StoreError::Unwritable(_)), "{err}");
    assert!(!log.healthy());
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    let first = log.append(vec![event(2)]).await.unwrap();
    assert!(log.healthy());
    // start + retried record + this one: nothing was lost and no index was skipped.
    assert_eq!(first, 2);
    log.checkpoint().await.unwrap();
    ops::verify(log.store(), ORIGIN, vec![], None)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn key_rotation_is_recorded_and_the_new_key_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = open(&path).await.unwrap();
    log.append(vec![event(1)]).await.unwrap();
    log.checkpoint().await.unwrap();
    let new = Signer::from_seed(ORIGIN, [6; 32]).unwrap();
    let new_key = new.verifier().clone();
    log.rotate(new).await.unwrap();
    log.append(vec![event(2)]).await.unwrap();
    let cp = log.checkpoint().await.unwrap().unwrap();
    assert!(ops::open_checkpoint(&cp.note, &new_key).is_ok());
    assert!(ops::open_checkpoint(&cp.note, signer().verifier()).is_err());
    let report = ops::verify(log.store(), ORIGIN, vec![signer().verifier().clone()], None)
        .await
        .unwrap()
        .unwrap();
    // Trust moved to the new key through the rotation, and the old key was retired.
    assert_eq!(report.keys, vec![new_key.to_string()]);
}

#[tokio::test]
async fn a_retired_key_cannot_sign_the_log_again() {
    // A rotation interrupted right after it was recorded (before the key files were
    // swapped): its checkpoint is signed by both keys, so the old key still opens it — but
    // the log names the new key, and opening with the retired one is refused.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = open(&path).await.unwrap();
    log.append(vec![event(1)]).await.unwrap();
    log.rotate(Signer::from_seed(ORIGIN, [6; 32]).unwrap())
        .await
        .unwrap();
    let store = log.store().clone();
    drop(log);
    store.close().await;
    let err = open(&path).await.err().expect("the retired key is refused");
    assert!(err.to_string().contains("rotated"), "{err}");
}

#[tokio::test]
async fn pruning_bodies_keeps_the_log_verifiable() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = open(&path).await.unwrap();
    let call = |t: u64| {
        Event::Refused(callgate_audit::record::RefusedEvent {
            time_ms: t,
            request_id: format!("r{t}"),
            session: None,
            subject: None,
            function: None,
            source: None,
            ingress: "proxy".into(),
            status: 401,
            code: "unauthenticated".into(),
            detail: "no credential".into(),
            repeated: None,
            first_ms: None,
        })
        .encode()
        .unwrap()
    };
    log.append(vec![call(10), call(20), call(3_000)])
        .await
        .unwrap();
    log.checkpoint().await.unwrap();
    // Call records older than t=1000 lose their bodies; the start record is not a call record.
    // The prune record listing them comes first.
    assert_eq!(log.prune(1_000, 100).await.unwrap(), 2);
    let report = ops::verify(log.store(), ORIGIN, vec![], None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.pruned, 2);
    assert_eq!(report.tree_size, 5);
    let prunes = log
        .store()
        .search(&Filter {
            kind: Some("admin.prune".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let prune = ops::record_json(&prunes[0]);
    assert_eq!(
        prune["event"]["indexes"],
        serde_json::json!([[1, 2]]),
        "{prune}"
    );
    let pruned = ops::call_records(log.store(), "r10").await.unwrap();
    assert_eq!(ops::record_json(&pruned[0])["pruned"], true);
    // Nothing more is due: no second prune record.
    assert_eq!(log.prune(1_000, 100).await.unwrap(), 0);
    // A body erased by other means — here the prune record itself, made to look like a
    // pruned call — is found: the bodies it accounted for are no longer accounted for.
    log.checkpoint().await.unwrap();
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE records SET body = NULL, kind = 'call' WHERE idx = 4")
        .execute(&mut conn)
        .await
        .unwrap();
    let failure = ops::verify(log.store(), ORIGIN, vec![], None)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(failure.index, 1);
    assert!(
        failure.reason.contains("prune record lists it"),
        "{failure}"
    );
}

#[tokio::test]
async fn a_store_refuses_to_open_with_a_key_that_did_not_sign_it_or_an_unsigned_key_announcement() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    {
        let log = open(&path).await.unwrap();
        log.append(vec![event(1)]).await.unwrap();
        log.close("test").await.unwrap();
        log.store().close().await;
    }
    // Another key (a lost key file replaced by a fresh one) cannot vouch for these records.
    let other = Signer::from_seed(ORIGIN, [9; 32]).unwrap();
    let store = SqliteStore::open(&path, Duration::from_millis(200))
        .await
        .unwrap();
    let mut start = start();
    start.key = other.verifier().to_string();
    let err = AuditLog::open(
        store.clone(),
        other,
        LogOptions {
            origin: ORIGIN.into(),
            anchor: None,
        },
        start,
    )
    .await
    .err()
    .expect("refused");
    assert!(
        err.to_string().contains("not signed by the configured key"),
        "{err}"
    );
    store.close().await;

    // Someone with write access appends a record announcing their key after the last
    // checkpoint: the next start must not sign over it.
    {
        let mallory = Signer::from_seed(ORIGIN, [8; 32]).unwrap();
        let store = SqliteStore::open(&path, Duration::from_millis(200))
            .await
            .unwrap();
        let size = store.size().await.unwrap();
        let event = Event::KeyRotation(callgate_audit::record::KeyRotationEvent {
            time_ms: 5,
            previous_key: signer().verifier().to_string(),
            key: mallory.verifier().to_string(),
        })
        .encode()
        .unwrap();
        let body = callgate_audit::record::leaf_bytes(size, &event.json);
        store
            .append(&[callgate_store::NewRecord {
                index: size,
                columns: event.columns,
                leaf_hash: merkle::leaf_hash(&body),
                body,
            }])
            .await
            .unwrap();
        store.close().await;
    }
    let err = open(&path).await.err().expect("refused");
    assert!(err.to_string().contains("announces a key"), "{err}");
}

/// The real store, with one fault: the next append lands and then reports an error (as when
/// the reply from SQLite's thread is lost).
#[derive(Clone)]
struct LateError {
    inner: SqliteStore,
    fail_next: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl AuditStore for LateError {
    async fn leaf_hashes(&self) -> Result<Vec<merkle::Hash>, StoreError> {
        self.inner.leaf_hashes().await
    }
    async fn size(&self) -> Result<u64, StoreError> {
        self.inner.size().await
    }
    async fn append(&self, batch: &[callgate_store::NewRecord]) -> Result<(), StoreError> {
        self.inner.append(batch).await?;
        if self
            .fail_next
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::Unwritable("the reply was lost".into()));
        }
        Ok(())
    }
    async fn add_checkpoint(
        &self,
        cp: &callgate_store::StoredCheckpoint,
    ) -> Result<(), StoreError> {
        self.inner.add_checkpoint(cp).await
    }
    async fn checkpoints(&self) -> Result<Vec<callgate_store::StoredCheckpoint>, StoreError> {
        self.inner.checkpoints().await
    }
    async fn rows(
        &self,
        from: u64,
        limit: u32,
    ) -> Result<Vec<callgate_store::StoredRecord>, StoreError> {
        self.inner.rows(from, limit).await
    }
    async fn search(
        &self,
        filter: &Filter,
    ) -> Result<Vec<callgate_store::StoredRecord>, StoreError> {
        self.inner.search(filter).await
    }
    async fn unfinished_since(&self, from: u64) -> Result<Vec<String>, StoreError> {
        self.inner.unfinished_since(from).await
    }
    async fn last_of_kind(&self, kind: &str) -> Result<Option<u64>, StoreError> {
        self.inner.last_of_kind(kind).await
    }
    async fn prune_candidates(
        &self,
        before_ms: u64,
        limit: u32,
    ) -> Result<Vec<callgate_store::StoredRecord>, StoreError> {
        self.inner.prune_candidates(before_ms, limit).await
    }
    async fn prune_bodies(&self, indexes: &[u64]) -> Result<u64, StoreError> {
        self.inner.prune_bodies(indexes).await
    }
    async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.meta(key).await
    }
    async fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.inner.set_meta(key, value).await
    }
}

#[tokio::test]
async fn a_commit_that_reports_an_error_after_landing_is_neither_refused_nor_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = LateError {
        inner: SqliteStore::open(&dir.path().join("audit.db"), Duration::from_millis(200))
            .await
            .unwrap(),
        fail_next: Default::default(),
    };
    let log = AuditLog::open(
        store.clone(),
        signer(),
        LogOptions {
            origin: ORIGIN.into(),
            anchor: None,
        },
        start(),
    )
    .await
    .unwrap();
    store
        .fail_next
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Both in the batch that lands and then "fails": the awaited one is acknowledged, the
    // queued one is not retried into a second copy.
    log.record(event(100));
    assert_eq!(log.append(vec![event(1)]).await.unwrap(), 2);
    assert!(log.healthy());
    assert_eq!(log.append(vec![event(2)]).await.unwrap(), 3);
    assert_eq!(store.size().await.unwrap(), 4);
    log.checkpoint().await.unwrap();
    ops::verify(&store, ORIGIN, vec![], None)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn rows_planted_in_the_store_are_never_signed() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = open(&path).await.unwrap();
    log.append(vec![event(1)]).await.unwrap();
    let signed = log.checkpoint().await.unwrap().unwrap().size;
    // Someone with the database writes a row at the next index while the gateway runs.
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO records (idx, kind, time_ms, body, leaf_hash) VALUES (?, 'admin.stop', 0, x'00', zeroblob(32))",
    )
    .bind(signed as i64)
    .execute(&mut conn)
    .await
    .unwrap();
    // The gateway's next record clashes with it: refused, and the planted row is not taken
    // into the tree — no checkpoint ever covers it.
    assert!(log.append(vec![event(2)]).await.is_err());
    assert!(!log.healthy());
    assert!(log.append(vec![event(3)]).await.is_err());
    let cp = log.checkpoint().await.unwrap();
    assert!(cp.as_ref().is_none_or(|c| c.size == signed), "{cp:?}");
}

#[tokio::test]
async fn a_store_that_does_not_extend_the_published_checkpoint_is_not_opened() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let log = open(&path).await.unwrap();
    for i in 1..=5 {
        log.append(vec![event(i)]).await.unwrap();
    }
    let published = log.checkpoint().await.unwrap().unwrap();
    log.close("test").await.unwrap();
    log.store().close().await;
    let reopen = |anchor: Option<String>| {
        let path = path.clone();
        async move {
            let store = SqliteStore::open(&path, Duration::from_millis(200))
                .await
                .unwrap();
            let r = AuditLog::open(
                store.clone(),
                signer(),
                LogOptions {
                    origin: ORIGIN.into(),
                    anchor,
                },
                start(),
            )
            .await;
            if let Ok(log) = &r {
                log.close("test").await.unwrap();
            }
            store.close().await;
            r.err()
        }
    };
    // Intact: it extends the published checkpoint (and grows past it).
    assert!(reopen(Some(published.note.clone())).await.is_none());
    // The tail deleted together with every checkpoint that covered it: the store alone is
    // consistent, but it no longer extends what was published.
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("DELETE FROM records WHERE idx >= 3; DELETE FROM checkpoints WHERE size > 3")
        .execute(&mut conn)
        .await
        .unwrap();
    let err = reopen(Some(published.note.clone())).await.expect("refused");
    assert!(err.to_string().contains("published outside"), "{err}");
    // Without the anchor, the store's own checkpoints cannot tell.
    assert!(reopen(None).await.is_none());
}
