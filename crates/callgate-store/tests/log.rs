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
    let report = ops::verify(log.store(), ORIGIN, Some(signer().verifier().clone()), None)
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
    let report = ops::verify(log.store(), ORIGIN, None, None)
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
    ops::verify(log.store(), ORIGIN, None, None)
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
    let report = ops::verify(log.store(), ORIGIN, Some(signer().verifier().clone()), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.keys.len(), 2);
}

#[tokio::test]
async fn pruning_bodies_keeps_the_log_verifiable() {
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
        })
        .encode()
        .unwrap()
    };
    log.append(vec![call(10), call(20), call(3_000)])
        .await
        .unwrap();
    log.checkpoint().await.unwrap();
    // Call records older than t=1000 lose their bodies; the start record is not a call record.
    assert_eq!(log.store().prune_bodies(1_000).await.unwrap(), 2);
    let report = ops::verify(log.store(), ORIGIN, None, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.pruned, 2);
    assert_eq!(report.tree_size, 4);
    let pruned = ops::call_records(log.store(), "r10").await.unwrap();
    assert_eq!(ops::record_json(&pruned[0])["pruned"], true);
}
