//! What auditors ask of a stored log: verify it, prove one record's inclusion, and fetch the
//! records of one call or one session. Shared by the CLI and the HTTP API.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use callgate_audit::Hash;
use callgate_audit::merkle;
use callgate_audit::note::{Checkpoint, Note, Verifier};
use callgate_audit::record::parse_record;
use callgate_audit::verify::{Failure, LogVerifier, Report, Row, RowColumns};
use serde_json::{Value, json};

use crate::tree::Tree;
use crate::{AuditStore, Filter, StoreError, StoredRecord};

/// Rows read per query while verifying.
const PAGE: u32 = 10_000;

/// Verifies the whole stored log. The outer error is a storage failure; the inner one is what
/// verification found.
pub async fn verify<S: AuditStore>(
    store: &S,
    origin: &str,
    keys: Vec<Verifier>,
    external: Option<String>,
) -> Result<Result<Report, Failure>, StoreError> {
    let checkpoints = store
        .checkpoints()
        .await?
        .into_iter()
        .map(|c| (c.size, c.note))
        .collect();
    let mut v = LogVerifier::new(origin, checkpoints, external, keys);
    let mut from = 0;
    loop {
        let rows = store.rows(from, PAGE).await?;
        let n = rows.len() as u64;
        for r in rows {
            if let Err(f) = v.push(Row {
                index: r.index,
                body: r.body,
                leaf_hash: r.leaf_hash,
                columns: Some(RowColumns {
                    kind: r.kind,
                    time_ms: r.time_ms,
                    request_id: r.request_id,
                    session: r.session,
                    subject: r.subject,
                    function: r.function,
                    decision: r.decision,
                }),
            }) {
                return Ok(Err(f));
            }
        }
        if n < PAGE as u64 {
            break;
        }
        from += n;
    }
    Ok(v.finish())
}

/// Why a proof cannot be given.
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no record has request id {0:?}")]
    NotFound(String),
    #[error(
        "record {index} is not yet covered by a signed checkpoint (the latest covers {size} records); wait for the next checkpoint"
    )]
    NotCheckpointed { index: u64, size: u64 },
    #[error("the record's body was pruned by retention; its inclusion can be proved only by hash")]
    Pruned,
    #[error("the stored log is inconsistent: {0}")]
    Inconsistent(String),
}

/// The inclusion proof of the first record of a call (its `call` record), against the latest
/// checkpoint: `{"leaf_index","tree_size","leaf_hash","proof","checkpoint","record"}`.
pub async fn prove<S: AuditStore>(store: &S, request_id: &str) -> Result<Value, ProveError> {
    let records = store
        .search(&Filter {
            request_id: Some(request_id.to_string()),
            limit: 1,
            ..Default::default()
        })
        .await?;
    let rec = records
        .into_iter()
        .next()
        .ok_or_else(|| ProveError::NotFound(request_id.to_string()))?;
    let cp = store.last_checkpoint().await?;
    let size = cp.as_ref().map(|c| c.size).unwrap_or(0);
    let cp = match cp {
        Some(cp) if rec.index < cp.size => cp,
        _ => {
            return Err(ProveError::NotCheckpointed {
                index: rec.index,
                size,
            });
        }
    };
    let body = rec.body.clone().ok_or(ProveError::Pruned)?;
    let signed_root = Note::parse(&cp.note)
        .ok()
        .and_then(|n| Checkpoint::parse(&n.text).ok())
        .ok_or_else(|| ProveError::Inconsistent("the latest checkpoint cannot be read".into()))?
        .root;
    let leaf = merkle::leaf_hash(&body);
    // From cached subtree roots first; if that proof does not lead to the checkpoint's root,
    // once more from the leaves alone. What was computed is cached (over what the cache held)
    // only once the proof led to the signed root.
    let mut tree = Tree::new(store, cp.size);
    let mut proof = inclusion_proof(&mut tree, rec.index).await?;
    if merkle::verify_inclusion(rec.index, cp.size, &leaf, &proof, &signed_root).is_err() {
        tree = Tree::without_cache(store, cp.size);
        proof = inclusion_proof(&mut tree, rec.index).await?;
        if merkle::verify_inclusion(rec.index, cp.size, &leaf, &proof, &signed_root).is_err() {
            return Err(ProveError::Inconsistent(format!(
                "record {} does not lead to the root of the checkpoint at {}; run `callgate audit verify`",
                rec.index, cp.size
            )));
        }
    }
    tree.save().await;
    let record = parse_record(rec.index, &body)
        .map_err(|e| ProveError::Inconsistent(format!("record {}: {e}", rec.index)))?;
    Ok(json!({
        "leaf_index": rec.index,
        "tree_size": cp.size,
        "leaf_hash": STANDARD.encode(leaf),
        "proof": proof.iter().map(|h| STANDARD.encode(h)).collect::<Vec<_>>(),
        "checkpoint": cp.note,
        "record": record.json,
    }))
}

/// The audit path of leaf `index` in `tree`, from the ranges the RFC names.
async fn inclusion_proof<S: AuditStore>(
    tree: &mut Tree<'_, S>,
    index: u64,
) -> Result<Vec<Hash>, ProveError> {
    let ranges = merkle::inclusion_ranges(tree.size(), index)
        .ok_or_else(|| ProveError::Inconsistent("index outside the tree".into()))?;
    let mut proof = Vec::with_capacity(ranges.len());
    for r in ranges {
        proof.push(tree.root(r).await?);
    }
    Ok(proof)
}

/// Every record of one call, in log order.
pub async fn call_records<S: AuditStore>(
    store: &S,
    request_id: &str,
) -> Result<Vec<StoredRecord>, StoreError> {
    store
        .search(&Filter {
            request_id: Some(request_id.to_string()),
            limit: 10_000,
            ..Default::default()
        })
        .await
}

/// The record as JSON (its event with `index`), or a stub for a pruned body.
pub fn record_json(r: &StoredRecord) -> Value {
    match r.body.as_deref().map(|b| parse_record(r.index, b)) {
        Some(Ok(rec)) => rec.json,
        Some(Err(e)) => json!({"index": r.index, "kind": r.kind, "error": e.to_string()}),
        None => {
            json!({"index": r.index, "pruned": true, "event": {"kind": r.kind, "time_ms": r.time_ms,
            "request_id": r.request_id, "session": r.session, "function": r.function}})
        }
    }
}

/// Checks a signed checkpoint with a key (for `--from-checkpoint` and tests).
pub fn open_checkpoint(note: &str, key: &Verifier) -> Result<Checkpoint, String> {
    Checkpoint::open(note, std::slice::from_ref(key)).map_err(|e| e.to_string())
}
