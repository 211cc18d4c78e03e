//! The approvals API: requesters follow their held calls (`/v1/calls`), reviewers review them
//! (`/v1/approvals`), people ask for temporary group membership (`/v1/grants`).
//!
//! Every endpoint authenticates the caller. What a caller may see follows segregation of
//! duties: a held call is visible to its requester (the person or the agent that asked), to
//! reviewers eligible for it, and to auditors; to anyone else it does not exist (404).
//! Reviewer eligibility always comes from the reviewer's own credential.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::routing::{get, post};
use callgate_approvals::{State as HeldState, Verdict};
use callgate_core::Principal;
use callgate_core::refusal::Refusal;
use callgate_store::approvals::{Held, Kind};
use callgate_store::log::now_ms;
use http::{HeaderMap, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

use crate::approvals::{self, grants, reviewer_of};
use crate::{RequestId, Shared, problem};

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/calls", get(my_calls))
        .route("/v1/calls/{id}", get(call_status))
        .route("/v1/calls/{id}/cancel", post(cancel))
        .route("/v1/approvals", get(list))
        .route("/v1/approvals/{id}", get(show))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/deny", post(deny))
        .route("/v1/approvals/{id}/revoke", post(revoke))
        .route("/v1/grants", get(my_grants).post(request_grant))
        .route("/v1/grants/{id}/revoke", post(revoke_grant))
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(v.to_string()))
        .expect("static headers are valid")
}

type Answer = Result<Response<Body>, Refusal>;

fn answer(id: &RequestId, a: Answer) -> Response<Body> {
    a.unwrap_or_else(|r| problem::response(&r, &id.0))
}

async fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<Principal, Refusal> {
    let rt = shared.reloader.current();
    Ok((*rt.auth.authenticate(headers).await?).clone())
}

pub(crate) fn is_auditor(shared: &Shared, p: &Principal) -> bool {
    p.groups.contains(&shared.audit.auditors_group)
}

/// Whether `p` asked for `h`: as the person, as the agent that asked, or as an agent acting
/// for the person.
pub(crate) fn is_requester(shared: &Shared, p: &Principal, h: &Held) -> bool {
    let rt = shared.reloader.peek();
    h.approval.requester.is(&p.subject)
        || h.approval
            .requester
            .is(&approvals::requester_of(p, &rt.config.approvals).subject)
}

/// Whether `p` may see held item `h`: its requester, an eligible reviewer, or an auditor.
fn may_see(shared: &Shared, p: &Principal, h: &Held) -> bool {
    let rt = shared.reloader.peek();
    is_requester(shared, p, h)
        || is_auditor(shared, p)
        || h.approval
            .eligible_groups(&reviewer_of(p, &rt.config.approvals))
            .is_ok()
}

pub(crate) fn hidden(id: &str) -> Refusal {
    Refusal::NotFound {
        detail: format!("no held call or grant {id} that you may see"),
    }
}

/// Held item `id`. A missing item and one the caller may not see look the same (404); a store
/// that cannot answer stays a 503.
pub(crate) async fn load(shared: &Shared, id: &str) -> Result<Held, Refusal> {
    shared.approvals.get(id).await.map_err(|r| match r {
        Refusal::NotFound { .. } => hidden(id),
        other => other,
    })
}

/// Held item `id` if `p` may see it (requester, eligible reviewer, auditor), else 404.
async fn visible(shared: &Shared, p: &Principal, id: &str) -> Result<Held, Refusal> {
    let h = load(shared, id).await?;
    if may_see(shared, p, &h) {
        Ok(h)
    } else {
        Err(hidden(id))
    }
}

/// A JSON body that may be empty.
fn optional_body<T: for<'de> Deserialize<'de> + Default>(body: &Bytes) -> Result<T, Refusal> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    let v = callgate_core::json::parse_strict(body)
        .map_err(|e| Refusal::bad_request(format!("the body is not acceptable JSON: {e}")))?;
    serde_json::from_value(v).map_err(|e| Refusal::bad_request(format!("invalid body: {e}")))
}

/// `GET /v1/calls/{id}`: the state of a held call and, once executed, the upstream's response
/// — for the requester and auditors. With `Prefer: wait=N`, waits for it to finish.
async fn call_status(
    State(shared): State<Arc<Shared>>,
    axum::Extension(rid): axum::Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    let a = async {
        let p = authenticate(&shared, &headers).await?;
        let h = load(&shared, &id).await?;
        if !is_requester(&shared, &p, &h) {
            if !is_auditor(&shared, &p) {
                return Err(hidden(&id));
            }
            // An auditor reading someone else's call (and its answer) is an audit read like
            // any other: recorded, durably, before anything is shown.
            shared
                .audit
                .read(&rid.0, &p.subject, &format!("/v1/calls/{id}"))
                .await?;
        }
        let max = shared.reloader.peek().config.approvals.max_wait_secs;
        let h = match super::prefer_wait(&headers, max) {
            Some(w) if !h.approval.state.is_final() => shared.approvals.wait(&id, w).await?,
            _ => h,
        };
        Ok(json_response(
            StatusCode::OK,
            &masked_view(&shared, &p, &h, true),
        ))
    };
    answer(&rid, a.await)
}

/// The query of `GET /v1/calls`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CallsQuery {
    /// Comma-separated states (`pending,approved`); any when absent.
    state: Option<String>,
    /// At most this many (default 50, at most 500).
    limit: Option<u32>,
    /// The page after this call (the previous page's `next`).
    before: Option<String>,
}

/// `GET /v1/calls`: the caller's own held calls (as requester, or for the person an agent
/// acts for), newest first, a page at a time; `next` names the following page.
async fn my_calls(
    State(shared): State<Arc<Shared>>,
    axum::Extension(rid): axum::Extension<RequestId>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Response<Body> {
    let a = async {
        let p = authenticate(&shared, &headers).await?;
        let q: CallsQuery = serde_urlencoded_query(query.as_deref().unwrap_or(""))?;
        let states = match &q.state {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|s| {
                    s.trim().parse::<HeldState>().map_err(|_| {
                        Refusal::bad_request(format!(
                            "state {s:?} is none of {}",
                            HeldState::ALL.map(HeldState::as_str).join(", ")
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let limit = q.limit.unwrap_or(50);
        if !(1..=500).contains(&limit) {
            return Err(Refusal::bad_request("limit is 1 to 500"));
        }
        let rt = shared.reloader.current();
        let me = approvals::requester_of(&p, &rt.config.approvals);
        let store = shared.approvals.store();
        let before = match &q.before {
            None => None,
            Some(id) => {
                let h = store
                    .get(id)
                    .await
                    .map_err(approvals::store_refusal)?
                    .filter(|h| is_requester(&shared, &p, h))
                    .ok_or_else(|| {
                        Refusal::bad_request(format!("before: no call {id:?} of yours"))
                    })?;
                Some((h.approval.created_ms, h.id))
            }
        };
        let page = store
            .requester_page(
                Kind::Call,
                &me.subject,
                &states,
                before.as_ref().map(|(c, id)| (*c, id.as_str())),
                limit + 1,
            )
            .await
            .map_err(approvals::store_refusal)?;
        let more = page.len() > limit as usize;
        let shown = &page[..page.len().min(limit as usize)];
        let mut body = json!({
            "calls": shown.iter().map(|h| masked_view(&shared, &p, h, false)).collect::<Vec<_>>(),
        });
        if more && let Some(last) = shown.last() {
            body["next"] = json!(last.id);
        }
        Ok(json_response(StatusCode::OK, &body))
    };
    answer(&rid, a.await)
}

/// A query string read strictly into `T` (unknown or repeated names refused).
fn serde_urlencoded_query<T: for<'de> Deserialize<'de>>(q: &str) -> Result<T, Refusal> {
    let mut map = serde_json::Map::new();
    for (k, v) in form_urlencoded::parse(q.as_bytes()) {
        let v = match k.as_ref() {
            "limit" => json!(
                v.parse::<u32>()
                    .map_err(|_| { Refusal::bad_request("limit is a number") })?
            ),
            _ => json!(v),
        };
        if map.insert(k.into_owned(), v).is_some() {
            return Err(Refusal::bad_request("a query parameter is given twice"));
        }
    }
    serde_json::from_value(Value::Object(map))
        .map_err(|e| Refusal::bad_request(format!("query: {e}")))
}

/// `POST /v1/calls/{id}/cancel`: the requester withdraws a call not yet executing.
async fn cancel(
    State(shared): State<Arc<Shared>>,
    axum::Extension(rid): axum::Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    let a = async {
        let p = authenticate(&shared, &headers).await?;
        let h = approvals::cancel(&shared, &id, &p).await?;
        Ok(json_response(
            StatusCode::OK,
            &masked_view(&shared, &p, &h, false),
        ))
    };
    answer(&rid, a.await)
}

/// `GET /v1/approvals`: pending items the caller may review and has not reviewed, oldest
/// first (calls, grants, and break-glass calls to acknowledge), then calls whose execution was
/// interrupted (`unknown`: someone must find out whether they ran).
async fn list(
    State(shared): State<Arc<Shared>>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
) -> Response<Body> {
    let a = async {
        let p = authenticate(&shared, &headers).await?;
        let rt = shared.reloader.current();
        let reviewer = reviewer_of(&p, &rt.config.approvals);
        let pending = shared
            .approvals
            .store()
            .in_states(None, &[HeldState::Pending, HeldState::Unknown], 5000)
            .await
            .map_err(approvals::store_refusal)?;
        let now = now_ms();
        let (open, unknown): (Vec<&Held>, Vec<&Held>) = pending
            .iter()
            .filter(|h| h.approval.eligible_groups(&reviewer).is_ok())
            .partition(|h| h.approval.state == HeldState::Pending);
        let items: Vec<Value> = open
            .into_iter()
            .filter(|h| h.approval.expires_ms().is_none_or(|e| now < e))
            .filter(|h| !h.approval.has_reviewed(&p.subject))
            .chain(unknown)
            .map(|h| masked_view(&shared, &p, h, false))
            .collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({ "approvals": items }),
        ))
    };
    answer(&rid, a.await)
}

/// `GET /v1/approvals/{id}`.
async fn show(
    State(shared): State<Arc<Shared>>,
    axum::Extension(rid): axum::Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    let a = async {
        let p = authenticate(&shared, &headers).await?;
        let h = visible(&shared, &p, &id).await?;
        Ok(json_response(
            StatusCode::OK,
            &masked_view(&shared, &p, &h, false),
        ))
    };
    answer(&rid, a.await)
}

/// The body of approve and deny: all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewBody {
    comment: Option<String>,
    /// Which of the reviewer's groups an approval counts for.
    group: Option<String>,
    /// The digest the reviewer looked at: refused (409) if the stored request's differs.
    digest: Option<String>,
}

async fn review(
    shared: Arc<Shared>,
    rid: RequestId,
    id: String,
    headers: HeaderMap,
    body: Bytes,
    verdict: Verdict,
) -> Response<Body> {
    let a = async {
        let p = authenticate(&shared, &headers).await?;
        let b: ReviewBody = optional_body(&body)?;
        if let Some(c) = &b.comment {
            callgate_core::args::check_reason(c)?;
        }
        // Someone who may not see the item learns nothing about it.
        let h = load(&shared, &id).await?;
        if !may_see(&shared, &p, &h) {
            // Still recorded: an outsider trying to review is worth knowing about.
            let _ = approvals::review(&shared, &id, &p, verdict, None, None, None).await;
            return Err(hidden(&id));
        }
        let r = approvals::review(
            &shared,
            &id,
            &p,
            verdict,
            b.group.as_deref(),
            b.comment,
            b.digest.as_deref(),
        )
        .await?;
        let mut v = masked_view(&shared, &p, &r.held, false);
        v["review"] = serde_json::to_value(&r.record).unwrap_or_default();
        Ok(json_response(StatusCode::OK, &v))
    };
    answer(&rid, a.await)
}

async fn approve(
    State(shared): State<Arc<Shared>>,
    axum::Extension(rid): axum::Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    review(shared, rid, id, headers, body, Verdict::Approve).await
}

async fn deny(
    State(shared): State<Arc<Shared>>,
    axum::Extension(rid): axum::Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    review(shared, rid, id, headers, body, Verdict::Deny).await
}

/// `POST /v1/approvals/{id}/revoke`: an eligible reviewer withdraws an approval before the
/// call runs (or ends an active grant).
async fn revoke(
    State(shared): State<Arc<Shared>>,
    axum::Extension(rid): axum::Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    let a = async {
        let p = authenticate(&shared, &headers).await?;
        // Someone who may not see the item learns nothing about it.
        visible(&shared, &p, &id).await?;
        let h = approvals::revoke(&shared, &id, &p).await?;
        Ok(json_response(
            StatusCode::OK,
            &masked_view(&shared, &p, &h, false),
        ))
    };
    answer(&rid, a.await)
}

/// The view of `h` for `p`: arguments masked by the call's profiles under `p`'s own clearance
/// (their credential's groups — never a grant's).
pub(crate) fn masked_view(shared: &Shared, p: &Principal, h: &Held, outcome: bool) -> Value {
    let mut v = approvals::view(h, outcome);
    let names: Vec<String> = h.summary["mask"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if !names.is_empty() {
        let rt = shared.reloader.peek();
        rt.masking
            .mask_value(&names, &mut v["arguments"], &p.groups);
        // The stored response was masked for the requester's clearance. Anyone else (a
        // reviewer, an auditor) sees it masked again under their own: JSON by the same
        // profiles, anything else not at all.
        // Masked for exactly the credential that made the call: an agent's, when one asked.
        let r = &h.approval.requester;
        let caller = r.actor.as_deref().unwrap_or(&r.subject) == p.subject;
        if !caller && let Some(resp) = v.get_mut("response").and_then(Value::as_object_mut) {
            let had_bytes = resp.remove("body_base64").is_some();
            match resp.get_mut("body") {
                Some(body) => rt.masking.mask_value(&names, body, &p.groups),
                None if had_bytes => {
                    resp.insert("body".into(), json!(callgate_masking::strategy::REDACTED));
                }
                None => {}
            }
        }
    }
    v
}

fn grant_view(h: &Held) -> Value {
    let mut v = approvals::view(h, false);
    let active = grants::is_active(h, now_ms());
    v["active"] = json!(active);
    if let (Some(from), Some(secs)) = (h.approval.approved_ms, h.payload["duration_secs"].as_u64())
    {
        v["active_until"] = json!(approvals::rfc3339(from + secs * 1000));
    }
    v
}

/// `POST /v1/grants`: asks for temporary membership of a group.
async fn request_grant(
    State(shared): State<Arc<Shared>>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let a = async {
        let p = authenticate(&shared, &headers).await?;
        let v = callgate_core::json::parse_strict(&body)
            .map_err(|e| Refusal::bad_request(format!("the body is not acceptable JSON: {e}")))?;
        let req: grants::GrantRequest = serde_json::from_value(v)
            .map_err(|e| Refusal::bad_request(format!("invalid grant request: {e}")))?;
        let h = grants::request(&shared, &rid.0, &p, req).await?;
        let mut resp = json_response(StatusCode::ACCEPTED, &grant_view(&h));
        if let Ok(v) = http::HeaderValue::from_str(&format!("/v1/calls/{}", h.id)) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        Ok(resp)
    };
    answer(&rid, a.await)
}

/// `GET /v1/grants`: the caller's grants, newest first.
async fn my_grants(
    State(shared): State<Arc<Shared>>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
) -> Response<Body> {
    let a = async {
        let p = authenticate(&shared, &headers).await?;
        let rt = shared.reloader.current();
        let me = approvals::requester_of(&p, &rt.config.approvals);
        let list = shared
            .approvals
            .store()
            .by_requester(Kind::Grant, &me.subject, 200)
            .await
            .map_err(approvals::store_refusal)?;
        let items: Vec<Value> = list.iter().map(grant_view).collect();
        Ok(json_response(StatusCode::OK, &json!({ "grants": items })))
    };
    answer(&rid, a.await)
}

/// `POST /v1/grants/{id}/revoke`: the holder gives a grant up, or an eligible reviewer ends
/// it. Takes effect on the next request.
async fn revoke_grant(
    State(shared): State<Arc<Shared>>,
    axum::Extension(rid): axum::Extension<RequestId>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    let a = async {
        let p = authenticate(&shared, &headers).await?;
        let h = load(&shared, &id).await?;
        if h.kind != Kind::Grant || !may_see(&shared, &p, &h) {
            return Err(hidden(&id));
        }
        let h = if is_requester(&shared, &p, &h) {
            approvals::cancel(&shared, &id, &p).await?
        } else {
            approvals::revoke(&shared, &id, &p).await?
        };
        Ok(json_response(StatusCode::OK, &grant_view(&h)))
    };
    answer(&rid, a.await)
}
