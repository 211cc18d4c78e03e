//! Phase 6, approval: holding calls until a different person approves them, and executing the
//! stored request exactly once afterwards.
//!
//! - [`Approvals::hold`] stores the call exactly as it will be executed ([`StoredCall`]) with
//!   its digest, after its `held` record is durable in the audit log; the caller gets 202.
//! - Reviews, cancellations and revocations ([`Approvals::review`] and friends) run the pure
//!   state machine of `callgate-approvals` inside a compare-and-swap update of the store, then
//!   record what happened in the audit log.
//! - [`execute`] claims an approved call (approved → executing, a compare-and-swap: exactly one
//!   claim wins), checks the stored payload against the approved digest, re-checks policy,
//!   makes the `call.forward` record durable, and only then forwards. The upstream's answer is
//!   stored for the requester (`GET /v1/calls/{id}`) and for callers waiting with
//!   `Prefer: wait=N`.
//! - At start, [`Approvals::resume`] turns calls left `executing` by a crash into `unknown`
//!   (or runs them again when the function is idempotent) and executes approved ones; a
//!   sweeper expires what ran out of time.
//!
//! Reviewer eligibility always comes from the reviewer's own credential: grants are added to a
//! caller's groups only where policy sees them ([`grants`]), never here.

pub mod grants;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use callgate_approvals::state::TransitionError;
use callgate_approvals::{
    Approval, Expiry, Requester, Requirement, ReviewError, ReviewRecord, Reviewer, State, Verdict,
    digest,
};
use callgate_audit::record::ApprovalEvent;
use callgate_core::config::ApprovalsConfig;
use callgate_core::model::{CallMeta, Ingress};
use callgate_core::refusal::Refusal;
use callgate_core::{Call, Principal, args};
use callgate_policy::Decision;
use callgate_store::approvals::{ApprovalStore, ApprovalStoreError, Held, Kind};
use callgate_store::log::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::Shared;
use crate::pipeline::{Failure, Record};
use crate::runtime::Runtime;
use crate::upstream::UpstreamResponse;

/// A held call as stored: everything needed to execute it, and nothing the caller could
/// change afterwards. Its canonical form's SHA-256 is the digest reviewers approve.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredCall {
    pub function: String,
    pub arguments: Map<String, Value>,
    /// The caller as authenticated (never the credential): the human subject, their groups,
    /// and the acting agent when delegated.
    pub caller: Principal,
    pub requester: Requester,
    /// Where and how it will be sent.
    pub target: Target,
    /// Headers passed upstream (transparent proxy; credentials already removed).
    pub headers: Vec<(String, String)>,
    pub ingress: Ingress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<std::net::IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    pub received_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Groups in `caller.groups` that came from grants: at execution they are replaced by the
    /// grants active then, so policy never sees a lapsed or revoked grant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub granted: Vec<String>,
}

/// The upstream request a held call becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub upstream: String,
    pub method: String,
    pub url: String,
}

fn target_of(call: &Call) -> Result<Target, Refusal> {
    let shape = args::upstream_shape(&call.function, &call.arguments)?;
    Ok(Target {
        upstream: call.function.upstream.clone(),
        method: shape.method.to_string(),
        url: format!("{}{}", call.function.upstream_url, shape.path_and_query),
    })
}

/// The requester of `p`'s calls: the human the call is for and the agent that asked. A token
/// with an `act` claim, or a caller configured in `approvals.delegations`, acts for someone.
pub fn requester_of(p: &Principal, cfg: &ApprovalsConfig) -> Requester {
    match (cfg.delegations.get(&p.subject), &p.actor) {
        // A configured agent is its person's, whoever acts through its token.
        (Some(person), actor) => Requester {
            subject: person.clone(),
            actor: Some(actor.clone().unwrap_or_else(|| p.subject.clone())),
        },
        (None, actor) => Requester {
            subject: p.subject.clone(),
            actor: actor.clone(),
        },
    }
}

/// `p` as a reviewer: their own credential's groups, and whether it is delegated.
pub fn reviewer_of(p: &Principal, cfg: &ApprovalsConfig) -> Reviewer {
    Reviewer {
        subject: p.subject.clone(),
        groups: p.groups.clone(),
        delegated: p.actor.is_some() || cfg.delegations.contains_key(&p.subject),
    }
}

/// What the store's errors mean to a caller: the store cannot answer, so refuse (fail closed).
pub(crate) fn store_refusal(e: ApprovalStoreError) -> Refusal {
    match e {
        ApprovalStoreError::NotFound(id) => Refusal::NotFound {
            detail: format!("no held call or grant {id}"),
        },
        ApprovalStoreError::Exists(id) => Refusal::Conflict {
            detail: format!("{id} is already held"),
        },
        other => {
            tracing::error!(error = %other, "approvals store failed");
            Refusal::Unavailable {
                detail: "the approvals store cannot be used right now".into(),
            }
        }
    }
}

fn review_refusal(e: ReviewError) -> Refusal {
    match e {
        ReviewError::AlreadyReviewed => Refusal::Conflict {
            detail: e.to_string(),
        },
        ReviewError::GroupNotEligible(_) => Refusal::Forbidden {
            detail: e.to_string(),
        },
        _ => Refusal::Forbidden {
            detail: e.to_string(),
        },
    }
}

fn transition_refusal(e: TransitionError) -> Refusal {
    match e {
        TransitionError::NotRequester => Refusal::Forbidden {
            detail: e.to_string(),
        },
        TransitionError::WrongState(_) => Refusal::Conflict {
            detail: e.to_string(),
        },
        TransitionError::Review(r) => review_refusal(r),
    }
}

/// RFC 3339 UTC for a Unix time in milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The gateway's approvals service.
pub struct Approvals {
    store: ApprovalStore,
    /// Held ids someone is waiting on (`Prefer: wait`, `callgate calls wait`).
    waiters: Mutex<HashMap<String, watch::Sender<u64>>>,
    pub notifier: webhook::Notifier,
    /// Active grants, which policy sees.
    pub grants: grants::Grants,
}

impl Approvals {
    /// Opens the approvals store named by the config at `config_path`.
    pub async fn open(rt: &Runtime, config_path: &std::path::Path) -> Result<Approvals, String> {
        let base = config_path.parent().unwrap_or(std::path::Path::new("."));
        let path = base.join(&rt.config.approvals.path);
        let store = ApprovalStore::open(&path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let grants = grants::Grants::load(&store).await?;
        Ok(Approvals {
            store,
            waiters: Mutex::default(),
            notifier: webhook::Notifier::new(),
            grants,
        })
    }

    pub fn store(&self) -> &ApprovalStore {
        &self.store
    }

    /// A receiver that changes whenever held item `id` changes.
    pub fn subscribe(&self, id: &str) -> watch::Receiver<u64> {
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|_, tx| tx.receiver_count() > 0);
        w.entry(id.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn changed(&self, id: &str) {
        let w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = w.get(id) {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// Waits up to `max` for item `id` to reach a final state; returns it as it then is.
    pub async fn wait(&self, id: &str, max: Duration) -> Result<Held, Refusal> {
        let deadline = Instant::now()
            .checked_add(max)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let mut rx = self.subscribe(id);
        loop {
            let h = self
                .store
                .get(id)
                .await
                .map_err(store_refusal)?
                .ok_or_else(|| Refusal::NotFound {
                    detail: format!("no held call {id}"),
                })?;
            if h.approval.state.is_final() {
                return Ok(h);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(h);
            }
            // Wake on a change, or re-read once a second in case another process changed it.
            let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), rx.changed()).await;
        }
    }

    pub async fn get(&self, id: &str) -> Result<Held, Refusal> {
        self.store
            .get(id)
            .await
            .map_err(store_refusal)?
            .ok_or_else(|| Refusal::NotFound {
                detail: format!("no held call or grant {id}"),
            })
    }
}

/// Builds the approval-event skeleton for a held item.
pub(crate) fn event(h: &Held, actor: &str) -> ApprovalEvent {
    ApprovalEvent {
        time_ms: now_ms(),
        request_id: h.id.clone(),
        session: h.summary["session"].as_str().map(str::to_string),
        item: h.kind.as_str().to_string(),
        function: h.summary["function"].as_str().map(str::to_string),
        actor: actor.to_string(),
        state: h.approval.state.as_str().to_string(),
        digest: None,
        requirement: None,
        reason: None,
        verdict: None,
        group: None,
        counted: None,
        comment: None,
        detail: None,
    }
}

/// Holds `call` for approval: its `held` record and `approval.requested` event are durable,
/// then the stored request is. Returns the held item.
pub async fn hold(
    shared: &Shared,
    rt: &Runtime,
    call: &Call,
    decision: &Decision,
    requirement: Requirement,
) -> Result<Held, Refusal> {
    if requirement.reason_required && call.meta.reason.is_none() {
        return Err(Refusal::bad_request(
            "this call needs approval and a reason: send a Callgate-Reason header (or \"reason\" in the invoke body)",
        ));
    }
    let requester = requester_of(&call.principal, &rt.config.approvals);
    let stored = StoredCall {
        function: call.function.name.clone(),
        arguments: call.arguments.clone(),
        caller: (*call.principal).clone(),
        requester: requester.clone(),
        target: target_of(call)?,
        headers: call
            .meta
            .forward_headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        ingress: call.meta.ingress,
        source: call.meta.source,
        session: call.meta.session.clone(),
        received_at: call.meta.received_at,
        reason: call.meta.reason.clone(),
        granted: call.meta.granted.clone(),
    };
    let payload = serde_json::to_value(&stored).map_err(|e| Refusal::Internal {
        detail: e.to_string(),
    })?;
    let digest = digest::digest(&payload).map_err(|e| Refusal::Internal { detail: e })?;
    let now = now_ms();
    let held = Held {
        id: call.request_id.clone(),
        kind: Kind::Call,
        payload,
        digest: digest.clone(),
        approval: Approval::new(requirement.clone(), requester, now),
        summary: json!({
            "function": call.function.name,
            "risk": call.function.risk,
            "description": call.function.description,
            "reason": call.meta.reason,
            "policies": decision.determining.iter().map(|p| &p.id).collect::<Vec<_>>(),
            "session": call.meta.session,
            // The masking profiles the arguments are shown to reviewers through.
            "mask": crate::masking::Masking::names_for(call, decision),
        }),
        outcome: None,
        version: 0,
    };
    let mut ev = event(&held, &call.principal.subject);
    ev.digest = Some(digest);
    ev.requirement = Some(requirement.to_string());
    ev.reason = call.meta.reason.clone();
    shared
        .audit
        .held(
            call,
            decision,
            ev,
            rt.masking.audit_arguments(call, decision),
        )
        .await?;
    shared
        .approvals
        .store
        .insert(&held)
        .await
        .map_err(store_refusal)?;
    count(shared, &held);
    tracing::info!(request_id = %call.request_id, function = %call.function.name, requirement = %requirement, "call held for approval");
    shared
        .approvals
        .notifier
        .send(rt, webhook::Notice::requested(&held, &rt.config.approvals));
    Ok(held)
}

/// Break-glass: the caller's own (not granted) groups include one the function allows to
/// skip approval. The call proceeds, flagged; a review item that reviewers must acknowledge
/// is stored and notified before anything is forwarded.
pub async fn break_glass(
    shared: &Shared,
    rt: &Runtime,
    call: &Call,
    decision: &Decision,
    requirement: Requirement,
    why: &str,
) -> Result<(), Refusal> {
    let allowed = call
        .function
        .break_glass
        .iter()
        .any(|g| call.principal.groups.contains(g) && !call.meta.granted.contains(g));
    if !allowed {
        return Err(Refusal::Forbidden {
            detail: format!(
                "{} cannot use break-glass on {}",
                call.principal.subject, call.function.name
            ),
        });
    }
    let requester = requester_of(&call.principal, &rt.config.approvals);
    let payload = json!({
        "function": call.function.name,
        "arguments": call.arguments,
        "requester": requester,
        "break_glass": why,
    });
    let digest = digest::digest(&payload).map_err(|e| Refusal::Internal { detail: e })?;
    let held = Held {
        id: call.request_id.clone(),
        kind: Kind::BreakGlass,
        payload,
        digest: digest.clone(),
        approval: Approval {
            // It waits for acknowledgement however long that takes.
            expiry: Expiry::Never,
            ..Approval::new(requirement.clone(), requester, now_ms())
        },
        summary: json!({
            "function": call.function.name,
            "risk": call.function.risk,
            "reason": why,
            "policies": decision.determining.iter().map(|p| &p.id).collect::<Vec<_>>(),
            "session": call.meta.session,
            "break_glass": true,
        }),
        outcome: None,
        version: 0,
    };
    let mut ev = event(&held, &call.principal.subject);
    ev.digest = Some(digest);
    ev.requirement = Some(requirement.to_string());
    ev.reason = Some(why.to_string());
    ev.detail = Some("break-glass: executed without approval; reviewers must acknowledge".into());
    shared.audit.approval_requested(ev).await?;
    shared
        .approvals
        .store
        .insert(&held)
        .await
        .map_err(store_refusal)?;
    count(shared, &held);
    tracing::warn!(request_id = %call.request_id, subject = %call.principal.subject, function = %call.function.name, reason = %why, "break-glass call");
    shared
        .approvals
        .notifier
        .send(rt, webhook::Notice::requested(&held, &rt.config.approvals));
    Ok(())
}

/// A review's outcome, as the API reports it.
pub struct Reviewed {
    pub record: ReviewRecord,
    pub held: Held,
}

/// Records `reviewer`'s verdict on `id`. Approval that completes the requirement starts the
/// execution in the background.
pub async fn review(
    shared: &Arc<Shared>,
    id: &str,
    principal: &Principal,
    verdict: Verdict,
    group: Option<&str>,
    comment: Option<String>,
    expected_digest: Option<&str>,
) -> Result<Reviewed, Refusal> {
    let rt = shared.reloader.current();
    let reviewer = reviewer_of(principal, &rt.config.approvals);
    let mut before = State::Pending;
    let result = shared
        .approvals
        .store
        .update(id, |h| {
            before = h.approval.state;
            if let Some(d) = expected_digest
                && d != h.digest
            {
                return Err(Refusal::Conflict {
                    detail: format!(
                        "the stored request's digest is {}, not the {d} you reviewed",
                        h.digest
                    ),
                });
            }
            h.approval
                .review(&reviewer, verdict, group, comment.clone(), now_ms())
                .map_err(review_refusal)
        })
        .await
        .map_err(store_refusal)?;
    let (record, held) = match result {
        Ok(ok) => ok,
        Err(refusal) => {
            // Refused reviews (the requester approving their own call, an outsider) are
            // recorded too, without waiting.
            if let Ok(h) = shared.approvals.get(id).await {
                let mut ev = event(&h, &principal.subject);
                ev.verdict = Some(verdict_str(verdict).into());
                ev.counted = Some(false);
                ev.detail = Some(format!("refused: {}", refusal.detail()));
                shared.audit.approval(ev, false).await?;
            }
            return Err(refusal);
        }
    };
    tracing::info!(request_id = %id, reviewer = %principal.subject, verdict = verdict_str(verdict), counted = record.counted, state = %held.approval.state, "review recorded");
    let mut ev = event(&held, &principal.subject);
    ev.verdict = Some(verdict_str(verdict).into());
    ev.group = record.group.clone();
    ev.counted = Some(record.counted);
    ev.comment = record.comment.clone();
    ev.digest = Some(held.digest.clone());
    let recorded = shared.audit.approval(ev, true).await;
    // What the new state sets off (waking waiters, notifying, executing — whose own forward
    // record, naming the approvers, must be durable first) happens even if this record could
    // not be written: the state has changed.
    if held.approval.state != before {
        after_change(shared, &rt, &held);
    }
    recorded.map_err(reviewed_unrecorded)?;
    Ok(Reviewed { record, held })
}

/// The step took effect but its audit record could not be written.
fn reviewed_unrecorded(r: Refusal) -> Refusal {
    tracing::error!(error = %r, "an approval step took effect but its audit record could not be written");
    Refusal::Unavailable {
        detail: "the step was stored, but the audit log cannot be written right now; nothing \
                 is executed until it can"
            .into(),
    }
}

fn verdict_str(v: Verdict) -> &'static str {
    match v {
        Verdict::Approve => "approve",
        Verdict::Deny => "deny",
    }
}

/// What follows a state change: wake waiters, notify, and execute an approved call.
/// Counts a held item entering its current state.
pub(crate) fn count(shared: &Shared, held: &Held) {
    shared
        .metrics
        .approvals
        .get_or_create(&crate::metrics::ApprovalLabels {
            kind: held.kind.as_str().into(),
            state: held.approval.state.as_str().into(),
        })
        .inc();
}

pub(crate) fn after_change(shared: &Arc<Shared>, rt: &Runtime, held: &Held) {
    count(shared, held);
    shared.approvals.grants.refresh(held);
    shared.approvals.changed(&held.id);
    match (held.kind, held.approval.state) {
        (Kind::Call, State::Approved) => {
            shared
                .approvals
                .notifier
                .send(rt, webhook::Notice::resolved(held, &rt.config.approvals));
            let (shared, id) = (shared.clone(), held.id.clone());
            tokio::spawn(async move { execute(&shared, &id).await });
        }
        (_, s) if s.is_final() || s == State::Approved => {
            shared
                .approvals
                .notifier
                .send(rt, webhook::Notice::resolved(held, &rt.config.approvals));
        }
        _ => {}
    }
}

/// The requester withdraws their call (pending or approved, not yet executing).
pub async fn cancel(
    shared: &Arc<Shared>,
    id: &str,
    principal: &Principal,
) -> Result<Held, Refusal> {
    let rt = shared.reloader.current();
    let person = requester_of(principal, &rt.config.approvals).subject;
    let (_, held) = shared
        .approvals
        .store
        .update(id, |h| {
            // The person the call is for (directly or through an agent acting for them), or
            // the very agent that asked, may cancel.
            let who = if h.approval.requester.is(&principal.subject) {
                &principal.subject
            } else {
                &person
            };
            h.approval.cancel(who, now_ms()).map_err(transition_refusal)
        })
        .await
        .map_err(store_refusal)?
        .map_err(|r| match r {
            // Someone else's call does not exist as far as this caller knows.
            Refusal::Forbidden { .. } => Refusal::NotFound {
                detail: format!("no held call {id} of yours"),
            },
            r => r,
        })?;
    let recorded = shared
        .audit
        .approval(event(&held, &principal.subject), true)
        .await;
    after_change(shared, &rt, &held);
    recorded.map_err(reviewed_unrecorded)?;
    Ok(held)
}

/// An eligible reviewer withdraws an approval before the call runs.
pub async fn revoke(
    shared: &Arc<Shared>,
    id: &str,
    principal: &Principal,
) -> Result<Held, Refusal> {
    let rt = shared.reloader.current();
    let reviewer = reviewer_of(principal, &rt.config.approvals);
    let (_, held) = shared
        .approvals
        .store
        .update(id, |h| {
            h.approval
                .revoke(&reviewer, now_ms())
                .map_err(transition_refusal)
        })
        .await
        .map_err(store_refusal)??;
    let recorded = shared
        .audit
        .approval(event(&held, &principal.subject), true)
        .await;
    after_change(shared, &rt, &held);
    recorded.map_err(reviewed_unrecorded)?;
    Ok(held)
}

/// The stored form of an upstream answer (or failure) for `GET /v1/calls/{id}`.
fn outcome_of(result: &Result<UpstreamResponse, Refusal>) -> Value {
    match result {
        Ok(r) => {
            let headers: Vec<(String, String)> = r
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect();
            json!({
                "status": r.status.as_u16(),
                "headers": headers,
                "body_base64": STANDARD.encode(&r.body),
            })
        }
        Err(refusal) => json!({
            "error": {"status": refusal.status(), "code": refusal.code(), "detail": refusal.detail()}
        }),
    }
}

/// Rebuilds the upstream answer stored in `outcome`, if there is one.
pub fn stored_response(outcome: &Value) -> Option<UpstreamResponse> {
    let status = http::StatusCode::from_u16(outcome.get("status")?.as_u64()? as u16).ok()?;
    let body = STANDARD
        .decode(outcome.get("body_base64")?.as_str()?)
        .ok()?;
    let mut headers = http::HeaderMap::new();
    for pair in outcome.get("headers")?.as_array()? {
        let (Some(k), Some(v)) = (pair.get(0)?.as_str(), pair.get(1)?.as_str()) else {
            continue;
        };
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::try_from(k),
            http::HeaderValue::try_from(v),
        ) {
            headers.append(k, v);
        }
    }
    Some(UpstreamResponse {
        status,
        headers,
        body: body.into(),
    })
}

/// Executes approved call `id` once: claims it (approved → executing, compare-and-swap),
/// checks it, makes its forward record durable, forwards, stores the answer.
pub async fn execute(shared: &Arc<Shared>, id: &str) {
    let store = &shared.approvals.store;
    let claim = store
        .update(id, |h| {
            if h.kind != Kind::Call {
                return Err(TransitionError::WrongState(h.approval.state));
            }
            h.approval.begin_execution(now_ms())
        })
        .await;
    let held = match claim {
        Ok(Ok((_, h))) => h,
        // Someone else claimed it, or it was cancelled, revoked or expired meanwhile.
        Ok(Err(_)) => return,
        Err(e) => {
            tracing::error!(request_id = %id, error = %e, "cannot claim an approved call; it stays approved");
            return;
        }
    };
    let rt = shared.reloader.current();
    let started = Instant::now();
    let (result, call) = run_stored(shared, &rt, &held).await;
    let latency = started.elapsed();
    if let Some(call) = &call {
        match &result {
            Ok(r) => shared.audit.response(call, r, latency),
            Err(Failure::Upstream(refusal)) => shared.audit.upstream_failed(call, refusal, latency),
            Err(Failure::NotForwarded(_)) => {}
        }
    }
    let (ok, outcome, detail) = match &result {
        Ok(r) => (true, outcome_of(&Ok(r.clone())), None),
        Err(Failure::Upstream(r)) => (false, outcome_of(&Err(r.clone())), Some(r.to_string())),
        Err(Failure::NotForwarded(r)) => {
            tracing::warn!(request_id = %id, reason = %r.detail(), "an approved call was not executed");
            (
                false,
                outcome_of(&Err(r.clone())),
                Some(format!("not executed: {}", r.detail())),
            )
        }
    };
    let finished = store
        .update(id, |h| {
            h.approval.finish(ok)?;
            h.outcome = Some(outcome.clone());
            Ok::<_, TransitionError>(())
        })
        .await;
    match finished {
        Ok(Ok((_, h))) => {
            let mut ev = event(&h, "callgate");
            ev.detail = detail;
            if let Err(e) = shared.audit.approval(ev, false).await {
                tracing::error!(request_id = %id, error = %e, "recording the execution's end failed");
            }
            after_change(shared, &rt, &h);
        }
        Ok(Err(e)) => {
            tracing::error!(request_id = %id, error = %e, "the executed call changed state meanwhile")
        }
        // Left `executing`: at the next start it becomes `unknown`, never executed twice.
        Err(e) => {
            tracing::error!(request_id = %id, error = %e, "storing the executed call's outcome failed")
        }
    }
}

/// Checks a claimed held call and forwards it. Nothing is sent unless the payload still has
/// the approved digest, the function still routes it to the same target, policy still allows
/// it and its forward record is durable.
async fn run_stored(
    shared: &Shared,
    rt: &Runtime,
    held: &Held,
) -> (Result<UpstreamResponse, Failure>, Option<Call>) {
    let no = |detail: String| {
        (
            Err(Failure::NotForwarded(Refusal::Forbidden { detail })),
            None,
        )
    };
    if !digest::matches(&held.payload, &held.digest) {
        tracing::error!(request_id = %held.id, "the stored request does not match its approved digest; refusing to execute");
        return no("the stored request does not match the approved digest".into());
    }
    let stored: StoredCall = match serde_json::from_value(held.payload.clone()) {
        Ok(s) => s,
        Err(e) => return no(format!("the stored request cannot be read: {e}")),
    };
    let Some(function) = rt.registry.get(&stored.function) else {
        return no(format!(
            "function {} is no longer declared",
            stored.function
        ));
    };
    let mut forward_headers = http::HeaderMap::new();
    for (k, v) in &stored.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::try_from(k.as_str()),
            http::HeaderValue::try_from(v.as_str()),
        ) {
            forward_headers.append(k, v);
        }
    }
    // The caller's own groups, plus the grants active now (not those active when it was held).
    let mut caller = stored.caller.clone();
    caller.groups.retain(|g| !stored.granted.contains(g));
    let (principal, granted) = shared
        .approvals
        .grants
        .apply(Arc::new(caller), &stored.function);
    let call = Call {
        request_id: held.id.clone(),
        principal,
        function: function.clone(),
        arguments: stored.arguments.clone(),
        meta: CallMeta {
            ingress: stored.ingress,
            source: stored.source,
            received_at: stored.received_at,
            session: stored.session.clone(),
            reason: stored.reason.clone(),
            break_glass: None,
            granted,
            approved: Some(callgate_core::model::Approved {
                id: held.id.clone(),
                digest: held.digest.clone(),
            }),
            forward_headers,
        },
    };
    match target_of(&call) {
        Ok(t) if t == stored.target => {}
        _ => {
            return no(format!(
                "{} no longer sends this call to the approved target",
                stored.function
            ));
        }
    }
    let decision = match rt.engine.decide(&call) {
        Ok(d) if d.allowed() => d,
        Ok(_) => return no("policy no longer allows this call".into()),
        Err(r) => return (Err(Failure::NotForwarded(r)), None),
    };
    // A requirement that grew since the call was held (a stricter policy or function default)
    // must be met by the approvals it has.
    let now_needed = Requirement::merge_all(
        call.function
            .approval
            .iter()
            .chain(decision.obligations.approval.iter()),
    );
    if let Some(req) = now_needed {
        let counts = held.approval.counts();
        let short: Vec<String> = req
            .groups
            .iter()
            .filter(|(g, n)| counts.get(*g).copied().unwrap_or(0) < **n)
            .map(|(g, n)| format!("{n} of {g}"))
            .collect();
        if !short.is_empty() {
            return no(format!(
                "the approval now required ({}) is not met",
                short.join(", ")
            ));
        }
    }
    let approved_by = held
        .approval
        .reviews
        .iter()
        .filter(|r| r.counted && r.verdict == Verdict::Approve)
        .map(|r| callgate_audit::record::Approver {
            reviewer: r.reviewer.clone(),
            group: r.group.clone().unwrap_or_default(),
            time_ms: r.time_ms,
        })
        .collect();
    let record = Record::Approved {
        digest: held.digest.clone(),
        approved_by,
    };
    let result = crate::pipeline::execute(shared, rt, &call, &decision, record).await;
    (result, Some(call))
}

impl Approvals {
    /// At start: calls a crash left `executing` become `unknown` (or approved again when the
    /// function is idempotent); approved calls are executed; what ran out of time expires.
    pub async fn resume(shared: &Arc<Shared>) -> Result<(), String> {
        let rt = shared.reloader.current();
        let store = &shared.approvals.store;
        let executing = store
            .in_states(Some(Kind::Call), &[State::Executing], 10_000)
            .await
            .map_err(|e| e.to_string())?;
        for h in executing {
            let idempotent = h.summary["function"]
                .as_str()
                .and_then(|f| rt.registry.get(f))
                .is_some_and(|f| f.idempotent);
            if let Ok(Ok((_, h))) = store
                .update(&h.id, |h| {
                    if h.approval.recover(idempotent, now_ms()) {
                        Ok(())
                    } else {
                        Err(())
                    }
                })
                .await
            {
                let mut ev = event(&h, "callgate");
                ev.detail = Some(if idempotent {
                    "execution was interrupted; the function is idempotent, so it runs again".into()
                } else {
                    "execution was interrupted by a stop; whether the upstream ran it is unknown, and it is not run again".into()
                });
                tracing::warn!(request_id = %h.id, state = %h.approval.state, "recovered an interrupted execution");
                shared
                    .audit
                    .approval(ev, true)
                    .await
                    .map_err(|e| e.to_string())?;
                after_change(shared, &rt, &h);
            }
        }
        sweep(shared).await;
        let approved = store
            .in_states(Some(Kind::Call), &[State::Approved], 10_000)
            .await
            .map_err(|e| e.to_string())?;
        for h in approved {
            let (shared, id) = (shared.clone(), h.id.clone());
            tokio::spawn(async move { execute(&shared, &id).await });
        }
        Ok(())
    }

    /// Starts the sweeper that expires held items whose time ran out.
    pub fn start_sweeper(shared: &Arc<Shared>) {
        let weak = Arc::downgrade(shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                sweep(&shared).await;
            }
        });
    }
}

/// Expires every held item whose current state ran out.
pub async fn sweep(shared: &Arc<Shared>) {
    let store = &shared.approvals.store;
    let now = now_ms();
    let due = match store.due(now).await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot look for expired approvals");
            return;
        }
    };
    let rt = shared.reloader.peek();
    for id in due {
        let r = store
            .update(&id, |h| {
                if h.approval.expire(now) {
                    Ok(())
                } else {
                    Err(())
                }
            })
            .await;
        if let Ok(Ok((_, h))) = r {
            tracing::info!(request_id = %id, "held call expired");
            if let Err(e) = shared.audit.approval(event(&h, "callgate"), false).await {
                tracing::error!(error = %e, "recording an expiry failed");
            }
            after_change(shared, &rt, &h);
        }
    }
}

/// The target as people are shown it: the upstream's name, the method and the path — not the
/// upstream's internal address.
fn public_target(t: &Value) -> Value {
    let path = t["url"]
        .as_str()
        .and_then(|u| u.parse::<http::Uri>().ok())
        .and_then(|u| u.path_and_query().map(|p| p.to_string()));
    json!({"upstream": t["upstream"], "method": t["method"], "path": path})
}

/// The JSON view of a held item for requesters, reviewers and auditors.
pub fn view(h: &Held, include_outcome: bool) -> Value {
    let a = &h.approval;
    let counts = a.counts();
    let approvers: Map<String, Value> = a
        .requirement
        .groups
        .iter()
        .map(|(g, n)| {
            (
                g.clone(),
                json!({"needed": n, "approved": counts.get(g).copied().unwrap_or(0)}),
            )
        })
        .collect();
    let now = now_ms();
    let mut v = json!({
        "id": h.id,
        "kind": h.kind.as_str(),
        "state": a.state.as_str(),
        "function": h.summary["function"],
        "risk": h.summary["risk"],
        "reason": h.summary["reason"],
        "policies": h.summary["policies"],
        "requester": a.requester,
        "arguments": h.payload["arguments"],
        "target": public_target(&h.payload["target"]),
        "headers": h.payload["headers"],
        "digest": h.digest,
        "requirement": a.requirement.to_string(),
        "approvers": approvers,
        "reviews": a.reviews,
        "created_at": rfc3339(a.created_ms),
        "age_secs": now.saturating_sub(a.created_ms) / 1000,
        "links": {
            "call": format!("/v1/calls/{}", h.id),
            "approval": format!("/v1/approvals/{}", h.id),
        },
    });
    if h.kind == Kind::Grant {
        v["grant"] = h.payload.clone();
        v["function"] = Value::Null;
        v["arguments"] = Value::Null;
        v["target"] = Value::Null;
    }
    if let Some(e) = a.expires_ms() {
        v["expires_at"] = json!(rfc3339(e));
    }
    if let Some(t) = a.approved_ms {
        v["approved_at"] = json!(rfc3339(t));
    }
    if include_outcome && let Some(o) = &h.outcome {
        let mut o = o.clone();
        // The body as JSON when it is JSON, for people reading the status.
        if let Some(b) = o
            .get("body_base64")
            .and_then(Value::as_str)
            .and_then(|b| STANDARD.decode(b).ok())
            && let Ok(j) = serde_json::from_slice::<Value>(&b)
        {
            o["body"] = j;
        }
        v["response"] = o;
    }
    v
}
