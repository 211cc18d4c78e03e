//! `/v1/audit/...`: the auditor's HTTP API, the equivalents of `callgate audit ...`.
//!
//! Only members of the configured auditors group get in (403 for everyone else, 401 without
//! a credential). Every read is itself recorded in the log, durably, before the answer
//! leaves, so the log shows who looked at what.

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use callgate_core::refusal::Refusal;
use callgate_store::ops::{self, ProveError};
use callgate_store::{AuditStore, Filter, StoreError};
use http::{Response, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

use crate::{RequestId, Shared, problem};

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/audit/calls/{request_id}", get(call))
        .route("/v1/audit/calls/{request_id}/proof", get(proof))
        .route("/v1/audit/sessions/{session}", get(session))
        .route("/v1/audit/records", get(search))
        .route("/v1/audit/checkpoint", get(latest).post(checkpoint_now))
        .route("/v1/audit/key", get(key))
        .route("/v1/audit/verify", get(verify))
}

/// What the access check needs from a request.
struct Access {
    id: String,
    headers: http::HeaderMap,
    resource: String,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Access {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Access {
            id: parts
                .extensions
                .get::<RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_default(),
            headers: parts.headers.clone(),
            resource: parts
                .uri
                .path_and_query()
                .map(|p| format!("{} {p}", parts.method))
                .unwrap_or_default(),
        })
    }
}

/// Authenticates, checks the auditors group, and records the read — or the refused attempt:
/// who tried to read the audit log matters as much as who did.
async fn admit(shared: &Shared, access: &Access) -> Result<String, Response<Body>> {
    let id = access.id.clone();
    let rt = shared.reloader.current();
    let refusal = match rt.auth.authenticate(&access.headers).await {
        Ok(p) if p.groups.contains(&shared.audit.auditors_group) => {
            shared
                .audit
                .read(&id, &p.subject, &access.resource)
                .await
                .map_err(|r| problem::response(&r, &id))?;
            return Ok(id);
        }
        Ok(p) => (
            Some(p.subject.clone()),
            Refusal::Forbidden {
                detail: format!(
                    "reading the audit log needs membership of {:?}",
                    shared.audit.auditors_group
                ),
            },
        ),
        Err(r) => (None, r),
    };
    let (subject, refusal) = refusal;
    shared
        .audit
        .read_refused(&id, subject.as_deref(), &access.resource, refusal.code());
    Err(problem::response(&refusal, &id))
}

fn json(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(v.to_string()))
        .expect("static headers are valid")
}

fn text(body: String) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(body))
        .expect("static headers are valid")
}

fn store_error(e: StoreError, id: &str) -> Response<Body> {
    problem::response(
        &Refusal::Unavailable {
            detail: format!("the audit store cannot answer: {e}"),
        },
        id,
    )
}

/// A path parameter, or why it cannot be read (not valid UTF-8, say).
fn path(p: Result<Path<String>, PathRejection>) -> Result<String, Refusal> {
    p.map(|Path(v)| v)
        .map_err(|e| Refusal::bad_request(e.body_text()))
}

fn not_found(detail: String, id: &str) -> Response<Body> {
    problem::response(&Refusal::UnknownFunction { detail }, id)
}

async fn call(
    State(shared): State<Arc<Shared>>,
    request_id: Result<Path<String>, PathRejection>,
    access: Access,
) -> Response<Body> {
    let id = match admit(&shared, &access).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    let request_id = match path(request_id) {
        Ok(p) => p,
        Err(r) => return problem::response(&r, &id),
    };
    match ops::call_records(shared.audit.log().store(), &request_id).await {
        Ok(rs) if rs.is_empty() => {
            not_found(format!("no record has request id {request_id:?}"), &id)
        }
        Ok(rs) => json(
            StatusCode::OK,
            &json!({"request_id": request_id, "records": rs.iter().map(ops::record_json).collect::<Vec<_>>()}),
        ),
        Err(e) => store_error(e, &id),
    }
}

async fn proof(
    State(shared): State<Arc<Shared>>,
    request_id: Result<Path<String>, PathRejection>,
    access: Access,
) -> Response<Body> {
    let id = match admit(&shared, &access).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    let request_id = match path(request_id) {
        Ok(p) => p,
        Err(r) => return problem::response(&r, &id),
    };
    // Sign a checkpoint first so a call made a moment ago can be proved.
    if let Err(e) = shared.audit.checkpoint().await {
        return store_error(e, &id);
    }
    match ops::prove(shared.audit.log().store(), &request_id).await {
        Ok(p) => json(StatusCode::OK, &p),
        Err(ProveError::NotFound(_)) => {
            not_found(format!("no record has request id {request_id:?}"), &id)
        }
        Err(ProveError::Store(e)) => store_error(e, &id),
        Err(e) => problem::response(
            &Refusal::Unavailable {
                detail: e.to_string(),
            },
            &id,
        ),
    }
}

/// The most records one answer holds; a page that is full names where the next one starts
/// (`next`, given back as `after`). Records can be large (response bodies), so pages are
/// bounded rather than the log read whole.
const PAGE_MAX: u32 = 1000;

/// The most record bytes one answer holds (at least one record, however large): a page of
/// records with large bodies ends early, with `next`.
const PAGE_BYTES: usize = 8 << 20;

/// Records read from the store per query while filling a page, so a page of large records is
/// never held twice over in memory.
const READ_CHUNK: u32 = 64;

/// One page of the records `filter` selects: at most `filter.limit` records and about
/// [`PAGE_BYTES`]; `next` is the last index on the page when more may follow, else null.
async fn page(shared: &Shared, mut filter: Filter) -> Result<(Vec<Value>, Value), StoreError> {
    let limit = filter.limit as usize;
    let (mut records, mut bytes, mut last) = (Vec::new(), 0usize, None);
    loop {
        filter.limit = READ_CHUNK.min((limit - records.len()) as u32);
        let rs = shared.audit.log().store().search(&filter).await?;
        let exhausted = rs.len() < filter.limit as usize;
        for r in &rs {
            let size = r.body.as_ref().map_or(0, Vec::len);
            if !records.is_empty() && bytes + size > PAGE_BYTES {
                return Ok((records, json!(last)));
            }
            bytes += size;
            records.push(ops::record_json(r));
            last = Some(r.index);
        }
        filter.after_index = last;
        if records.len() >= limit {
            return Ok((records, json!(last)));
        }
        if exhausted {
            return Ok((records, Value::Null));
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    /// Only records after this index (the previous page's `next`).
    after: Option<u64>,
    limit: Option<u32>,
}

async fn session(
    State(shared): State<Arc<Shared>>,
    session: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
    access: Access,
) -> Response<Body> {
    let id = match admit(&shared, &access).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    let session = match path(session) {
        Ok(p) => p,
        Err(r) => return problem::response(&r, &id),
    };
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return problem::response(&Refusal::bad_request(e.body_text()), &id),
    };
    let limit = q.limit.unwrap_or(PAGE_MAX).clamp(1, PAGE_MAX);
    let filter = Filter {
        session: Some(session.clone()),
        after_index: q.after,
        limit,
        ..Default::default()
    };
    match page(&shared, filter).await {
        Ok((records, _)) if records.is_empty() && q.after.is_none() => {
            not_found(format!("no record belongs to session {session:?}"), &id)
        }
        Ok((records, next)) => json(
            StatusCode::OK,
            &json!({"session": session, "records": records, "next": next}),
        ),
        Err(e) => store_error(e, &id),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    caller: Option<String>,
    function: Option<String>,
    decision: Option<String>,
    kind: Option<String>,
    session: Option<String>,
    /// Unix milliseconds.
    since: Option<u64>,
    until: Option<u64>,
    /// Only records after this index (to page or follow).
    after: Option<u64>,
    limit: Option<u32>,
}

async fn search(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
    access: Access,
) -> Response<Body> {
    let id = match admit(&shared, &access).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return problem::response(&Refusal::bad_request(e.body_text()), &id),
    };
    let filter = Filter {
        subject: q.caller,
        function: q.function,
        decision: q.decision,
        kind: q.kind,
        session: q.session,
        since_ms: q.since,
        until_ms: q.until,
        after_index: q.after,
        request_id: None,
        limit: q.limit.unwrap_or(100).clamp(1, PAGE_MAX),
    };
    match page(&shared, filter).await {
        Ok((records, next)) => json(StatusCode::OK, &json!({"records": records, "next": next})),
        Err(e) => store_error(e, &id),
    }
}

/// The latest signed checkpoint as text.
async fn latest_note(shared: &Shared, id: &str) -> Response<Body> {
    match shared.audit.log().store().last_checkpoint().await {
        Ok(Some(cp)) => text(cp.note),
        Ok(None) => not_found("no checkpoint yet".into(), id),
        Err(e) => store_error(e, id),
    }
}

async fn latest(State(shared): State<Arc<Shared>>, access: Access) -> Response<Body> {
    let id = match admit(&shared, &access).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    latest_note(&shared, &id).await
}

async fn checkpoint_now(State(shared): State<Arc<Shared>>, access: Access) -> Response<Body> {
    let id = match admit(&shared, &access).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    if let Err(e) = shared.audit.checkpoint().await {
        return store_error(e, &id);
    }
    latest_note(&shared, &id).await
}

async fn key(State(shared): State<Arc<Shared>>, access: Access) -> Response<Body> {
    if let Err(r) = admit(&shared, &access).await {
        return r;
    }
    text(format!("{}\n", shared.audit.log().verifier()))
}

async fn verify(State(shared): State<Arc<Shared>>, access: Access) -> Response<Body> {
    let id = match admit(&shared, &access).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    // Verification reads and hashes the whole log: one at a time, so auditors cannot starve
    // the calls this gateway serves.
    static RUNNING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
    let Ok(_permit) = RUNNING.try_acquire() else {
        return problem::response(
            &Refusal::Unavailable {
                detail: "a verification is already running; try again when it is done".into(),
            },
            &id,
        );
    };
    let log = shared.audit.log();
    match ops::verify(log.store(), log.origin(), vec![], None).await {
        Ok(Ok(r)) => json(
            StatusCode::OK,
            &json!({"ok": true, "tree_size": r.tree_size, "checkpoints": r.checkpoints,
                    "checkpointed_size": r.checkpointed_size, "pruned": r.pruned, "keys": r.keys,
                    "trusted_first_key": r.trusted_first_key}),
        ),
        Ok(Err(f)) => json(
            StatusCode::OK,
            &json!({"ok": false, "first_bad_index": f.index, "reason": f.reason}),
        ),
        Err(e) => store_error(e, &id),
    }
}
