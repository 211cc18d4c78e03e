//! Inclusion proofs on a log of several thousand records: every proof leads to the signed
//! checkpoint's root, roots of large subtrees are cached in the store and used, and a wrong
//! cached root neither yields a wrong proof nor stays in the cache.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use callgate_audit::merkle::{self, Hash};
use callgate_audit::note::{Checkpoint, Signer};
use callgate_audit::record::{Event, ResponseEvent, StartEvent};
use callgate_store::tree::Tree;
use callgate_store::{AuditLog, AuditStore, LogOptions, SqliteStore, ops};

const ORIGIN: &str = "callgate.test/proofs";
const CALLS: u64 = 5000;

fn signer() -> Signer {
    Signer::from_seed(ORIGIN, [7; 32]).unwrap()
}

fn response(i: u64) -> callgate_audit::record::EncodedEvent {
    Event::Response(ResponseEvent {
        time_ms: 1000 + i,
        request_id: format!("req-{i}"),
        session: None,
        function: "f".into(),
        status: 200,
        latency_us: 1,
        body: None,
        body_base64: None,
        body_sha256: None,
        error: None,
    })
    .encode()
    .unwrap()
}

async fn log_of_calls(path: &std::path::Path) -> AuditLog<SqliteStore> {
    let store = SqliteStore::open(path, Duration::from_secs(1))
        .await
        .unwrap();
    let start = StartEvent {
        time_ms: 1,
        version: "test".into(),
        config_sha256: "c".into(),
        policy_sha256: "p".into(),
        key: signer().verifier().to_string(),
    };
    let opts = LogOptions {
        origin: ORIGIN.into(),
        anchor: None,
    };
    let log = AuditLog::open(store, signer(), opts, start).await.unwrap();
    for chunk in (0..CALLS).collect::<Vec<_>>().chunks(500) {
        log.append(chunk.iter().map(|&i| response(i)).collect())
            .await
            .unwrap();
    }
    log.checkpoint().await.unwrap().unwrap();
    log
}

/// Proves the call `req-{i}` and checks the proof against the checkpoint it names.
async fn prove_and_check(store: &SqliteStore, i: u64) -> u64 {
    let p = ops::prove(store, &format!("req-{i}")).await.unwrap();
    let index = p["leaf_index"].as_u64().unwrap();
    let size = p["tree_size"].as_u64().unwrap();
    let note = callgate_audit::note::Note::parse(p["checkpoint"].as_str().unwrap()).unwrap();
    let root = Checkpoint::parse(&note.text).unwrap().root;
    let leaf: Hash = STANDARD
        .decode(p["leaf_hash"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let proof: Vec<Hash> = p["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            STANDARD
                .decode(h.as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        })
        .collect();
    assert_eq!(
        merkle::verify_inclusion(index, size, &leaf, &proof, &root),
        Ok(()),
        "proof of req-{i}"
    );
    index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_use_cached_subtrees_and_survive_a_wrong_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_of_calls(&dir.path().join("audit.db")).await;
    let store = log.store();
    let leaves = store.leaf_hashes().await.unwrap();
    assert!(leaves.len() as u64 > CALLS);

    // Nothing cached before the first proof; the first proof caches the roots of the large
    // subtrees it needed (records 0..4096 are one perfect subtree of 2^12 leaves).
    assert_eq!(store.subtree(12, 0).await, None);
    for i in [0, 1, 2046, 2047, 4094, 4095, CALLS - 1] {
        prove_and_check(store, i).await;
    }
    let first_4096 = merkle::root(&leaves[..4096]);
    assert_eq!(store.subtree(12, 0).await, Some(first_4096));
    assert_eq!(
        store.subtree(11, 1).await,
        Some(merkle::root(&leaves[2048..4096]))
    );

    // The cache is what a proof reads: a wrong root planted there is what a tree built with
    // the cache returns ...
    store.put_subtrees(&[(12, 0, [9; 32])], true).await.unwrap();
    let size = leaves.len() as u64;
    assert_eq!(Tree::new(store, size).root(0..4096).await.unwrap(), [9; 32]);
    assert_eq!(
        Tree::without_cache(store, size)
            .root(0..4096)
            .await
            .unwrap(),
        first_4096
    );
    // ... yet the proof served still leads to the signed root (a record past the planted
    // subtree needs its root), and the wrong root is replaced.
    let index = prove_and_check(store, CALLS - 1).await;
    assert!(index >= 4096);
    assert_eq!(store.subtree(12, 0).await, Some(first_4096));
    // Roots of any range agree with the tree computed from every leaf.
    let mut tree = Tree::new(store, size);
    for r in [0..size, 1..3, 4096..size, 1024..2048, 3000..4096] {
        assert_eq!(
            tree.root(r.clone()).await.unwrap(),
            merkle::root(&leaves[r.start as usize..r.end as usize]),
            "{r:?}"
        );
    }
    assert!(tree.root(0..size + 1).await.is_err(), "past the tree");
}
