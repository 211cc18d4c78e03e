//! Phase 6, approval: holding calls until a different person approves them, and executing the
//! stored request exactly once afterwards.
//!
//! - [`hold`] (`hold.rs`) stores the call exactly as it will be executed ([`StoredCall`]) with
//!   its digest, after its `held` record is durable in the audit log; the caller gets 202.
//! - Reviews, cancellations and revocations ([`review`], [`cancel`], [`revoke`]) run the pure
//!   state machine of `callgate-approvals` inside a compare-and-swap update of the store, then
//!   record what happened in the audit log.
//! - [`execute`] (`execute.rs`) claims an approved call (approved → executing, a compare-and-swap: exactly one
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

mod execute;
pub mod grants;
mod hold;
mod review;
pub mod webhook;

pub use execute::{execute, stored_response, sweep};
pub use hold::{break_glass, hold};
pub use review::{Reviewed, cancel, review, revoke};

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
use callgate_core::{Backend, Call, Principal, args};
use callgate_policy::Decision;
use callgate_store::approvals::{ApprovalStore, ApprovalStoreError, Held, Kind};
use callgate_store::log::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

pub use callgate_core::time::rfc3339;

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

impl Target {
    /// Where the upstream is, as a refusal may name it: scheme, host and port only — the path
    /// and query hold argument values (which masking may hide) and configured secrets.
    fn origin(&self) -> String {
        let url = self.url.split(['?', '#', ' ']).next().unwrap_or("");
        match url.split_once("://") {
            Some((scheme, rest)) => {
                let host = rest.split('/').next().unwrap_or("");
                let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
                format!("{scheme}://{host}")
            }
            None => "an upstream without a URL".into(),
        }
    }

    /// What changed from `self` (approved) to `now`, without argument values.
    pub(crate) fn change(&self, now: &Target) -> String {
        if self.origin() != now.origin() || self.upstream != now.upstream {
            format!(
                "approved for {} at {}, now {} at {}",
                self.upstream,
                self.origin(),
                now.upstream,
                now.origin()
            )
        } else if self.method != now.method {
            format!("approved as {}, now {}", self.method, now.method)
        } else {
            "the function's route or tool changed since it was approved".into()
        }
    }
}

fn target_of(call: &Call) -> Result<Target, Refusal> {
    let shape = args::upstream_shape(&call.function, &call.arguments)?;
    // An MCP call goes to the server's URL whatever it does: the tool (or method) it calls is
    // part of the target, so an approval never runs against another tool that came to hold
    // the function's name.
    let url = match &call.function.backend {
        Backend::Http => format!("{}{}", call.function.upstream_url, shape.path_and_query),
        Backend::McpTool { tool, .. } => {
            format!("{} tools/call {tool}", call.function.upstream_url)
        }
        Backend::McpMethod { method, .. } | Backend::McpServerRequest { method, .. } => {
            format!("{} {method}", call.function.upstream_url)
        }
    };
    Ok(Target {
        upstream: call.function.upstream.clone(),
        method: shape.method.to_string(),
        url,
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

/// The gateway's approvals service.
pub struct Approvals {
    store: ApprovalStore,
    /// Held ids someone is waiting on (`Prefer: wait`, `callgate calls wait`).
    waiters: Mutex<HashMap<String, watch::Sender<u64>>>,
    pub notifier: webhook::Notifier,
    /// Active grants, which policy sees.
    pub grants: grants::Grants,
    /// Set when an approved call was given back because the audit log could not record its
    /// forward; the sweeper then tries the approved calls again.
    retry: std::sync::atomic::AtomicBool,
    /// Approved calls being executed now: shutdown waits for them (and their records).
    executing: std::sync::atomic::AtomicUsize,
}

/// One execution in progress, counted in [`Approvals::executing`] for as long as it lives.
struct Executing(Arc<Shared>);

impl Drop for Executing {
    fn drop(&mut self) {
        self.0
            .approvals
            .executing
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Executes approved call `id` in the background, unless the gateway is shutting down: then
/// it stays approved and runs after the next start ([`Approvals::resume`]).
pub(crate) fn spawn_execute(shared: &Arc<Shared>, id: String) {
    use std::sync::atomic::Ordering;
    // Counted before the check: shutdown sets `draining` and then waits for the count, so
    // either this sees `draining` or shutdown sees this execution.
    shared.approvals.executing.fetch_add(1, Ordering::AcqRel);
    let guard = Executing(shared.clone());
    if shared.draining.load(Ordering::Acquire) {
        tracing::info!(request_id = %id, "shutting down: the approved call runs after the next start");
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let _counted = guard;
        execute(&shared, &id).await
    });
}

impl Approvals {
    /// Waits (until `deadline`) for the approved calls being executed to finish, their
    /// records included. Returns how many are still running.
    pub async fn wait_executions(&self, deadline: tokio::time::Instant) -> usize {
        use std::sync::atomic::Ordering;
        loop {
            let n = self.executing.load(Ordering::Acquire);
            if n == 0 || tokio::time::Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens the approvals store named by the config at `config_path`.
    pub async fn open(rt: &Runtime, config_path: &std::path::Path) -> Result<Approvals, String> {
        let base = crate::runtime::base_dir(config_path);
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
            retry: Default::default(),
            executing: Default::default(),
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

/// What follows a state change: wake waiters, notify, and execute an approved call.
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
            spawn_execute(shared, held.id.clone());
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

#[cfg(test)]
mod tests {
    use super::Target;

    /// A refusal names what changed without argument values or what a configured URL may
    /// hide in its query or user info.
    #[test]
    fn a_target_change_is_told_without_values() {
        let t = |upstream: &str, method: &str, url: &str| Target {
            upstream: upstream.into(),
            method: method.into(),
            url: url.into(),
        };
        let old = t(
            "bank-ops",
            "POST",
            "http://127.0.0.1:4100/cards/4111111111111111?k=s",
        );
        assert_eq!(
            old.change(&t(
                "bank-ops",
                "POST",
                "https://u:pw@api.example/cards/4111111111111111?key=x"
            )),
            "approved for bank-ops at http://127.0.0.1:4100, now bank-ops at https://api.example"
        );
        assert_eq!(
            old.change(&t(
                "bank-ops",
                "PUT",
                "http://127.0.0.1:4100/cards/4111111111111111"
            )),
            "approved as POST, now PUT"
        );
        let moved = old.change(&t(
            "bank-ops",
            "POST",
            "http://127.0.0.1:4100/v2/cards/4111111111111111",
        ));
        assert!(!moved.contains("4111"), "{moved}");
        assert_eq!(
            t(
                "mcp:crm",
                "POST",
                "http://mcp.example/mcp tools/call refund"
            )
            .origin(),
            "http://mcp.example"
        );
    }
}
