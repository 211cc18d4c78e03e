//! Just-in-time elevation: temporary membership of a group, asked for with a reason and
//! approved under the same rules as calls.
//!
//! An approved grant is active from its approval for the duration asked (capped by the
//! group's `max_duration`). Policy sees the group only while the grant is active, and only for
//! the functions the grant names (all, when it names none): the pipeline adds it to the
//! caller's groups after authentication ([`Grants::groups_for`]). Reviews never see grants —
//! a reviewer's eligibility comes from their own credential — so a grant can never be used to
//! approve anything. Revocation updates the in-memory index before it answers, so it takes
//! effect on the next request.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use callgate_approvals::requirement::parse_duration;
use callgate_approvals::{Approval, Expiry, Requirement, State};
use callgate_core::Principal;
use callgate_core::refusal::Refusal;
use callgate_store::approvals::{ApprovalStore, Held, Kind};
use callgate_store::log::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{event, requester_of, store_refusal};
use crate::Shared;

/// What a grant is for (the stored payload of a grant request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantPayload {
    /// The person who gets the membership.
    pub subject: String,
    pub group: String,
    /// The functions it applies to; empty for all.
    #[serde(default)]
    pub functions: Vec<String>,
    pub duration_secs: u64,
    pub reason: String,
}

/// `POST /v1/grants` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    pub group: String,
    #[serde(default)]
    pub functions: Vec<String>,
    /// `30m`, `4h`...
    pub duration: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
struct Active {
    id: String,
    group: String,
    functions: Vec<String>,
    until_ms: u64,
}

/// Active grants by subject, kept in step with the store.
#[derive(Default)]
pub struct Grants {
    active: RwLock<HashMap<String, Vec<Active>>>,
}

impl Grants {
    /// Loads approved grants from the store.
    pub async fn load(store: &ApprovalStore) -> Result<Grants, String> {
        let g = Grants::default();
        for h in store
            .in_states(Some(Kind::Grant), &[State::Approved], 100_000)
            .await
            .map_err(|e| e.to_string())?
        {
            g.refresh(&h);
        }
        Ok(g)
    }

    /// Brings the index in line with grant `h` as it now is.
    pub fn refresh(&self, h: &Held) {
        if h.kind != Kind::Grant {
            return;
        }
        let Ok(p) = serde_json::from_value::<GrantPayload>(h.payload.clone()) else {
            return;
        };
        let mut map = self.active.write().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(p.subject.clone()).or_default();
        list.retain(|a| a.id != h.id);
        if h.approval.state == State::Approved
            && let Some(from) = h.approval.approved_ms
        {
            list.push(Active {
                id: h.id.clone(),
                group: p.group,
                functions: p.functions,
                until_ms: from.saturating_add(p.duration_secs.saturating_mul(1000)),
            });
        }
        if list.is_empty() {
            map.remove(&p.subject);
        }
    }

    /// Groups granted to `subject` for `function` right now.
    pub fn groups_for(&self, subject: &str, function: &str, now_ms: u64) -> Vec<String> {
        let map = self.active.read().unwrap_or_else(|e| e.into_inner());
        let Some(list) = map.get(subject) else {
            return Vec::new();
        };
        list.iter()
            .filter(|a| now_ms < a.until_ms)
            .filter(|a| a.functions.is_empty() || a.functions.iter().any(|f| f == function))
            .map(|a| a.group.clone())
            .collect()
    }

    /// `p` with the groups its active grants add for `function`, and which ones were added.
    pub fn apply(&self, p: Arc<Principal>, function: &str) -> (Arc<Principal>, Vec<String>) {
        let added: Vec<String> = self
            .groups_for(&p.subject, function, now_ms())
            .into_iter()
            .filter(|g| !p.groups.contains(g))
            .collect();
        if added.is_empty() {
            return (p, added);
        }
        let mut q = (*p).clone();
        q.groups.extend(added.iter().cloned());
        (Arc::new(q), added)
    }
}

/// Whether grant `h` is active at `now_ms`.
pub fn is_active(h: &Held, now_ms: u64) -> bool {
    let Ok(p) = serde_json::from_value::<GrantPayload>(h.payload.clone()) else {
        return false;
    };
    h.approval.state == State::Approved
        && h.approval
            .approved_ms
            .is_some_and(|t| now_ms < t.saturating_add(p.duration_secs.saturating_mul(1000)))
}

/// Asks for a grant; it waits for approval like a held call.
pub async fn request(
    shared: &Shared,
    request_id: &str,
    principal: &Principal,
    req: GrantRequest,
) -> Result<Held, Refusal> {
    let rt = shared.reloader.current();
    let cfg = &rt.config.approvals;
    let rule = cfg.grants.get(&req.group).ok_or_else(|| {
        Refusal::bad_request(format!(
            "group {:?} cannot be granted (grantable: {})",
            req.group,
            cfg.grants.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let requirement = Requirement::parse(&rule.approval).map_err(|e| Refusal::Internal {
        detail: e.to_string(),
    })?;
    let max = parse_duration(&rule.max_duration).map_err(|e| Refusal::Internal { detail: e })?;
    let secs = parse_duration(&req.duration).map_err(Refusal::bad_request)?;
    if secs > max {
        return Err(Refusal::bad_request(format!(
            "a grant of {} lasts at most {}",
            req.group, rule.max_duration
        )));
    }
    callgate_core::args::check_reason(&req.reason)?;
    for f in &req.functions {
        if rt.registry.get(f).is_none() {
            return Err(Refusal::bad_request(format!("no function named {f:?}")));
        }
    }
    let requester = requester_of(principal, cfg);
    let payload = GrantPayload {
        subject: requester.subject.clone(),
        group: req.group.clone(),
        functions: req.functions,
        duration_secs: secs,
        reason: req.reason.clone(),
    };
    let payload = serde_json::to_value(&payload).map_err(|e| Refusal::Internal {
        detail: e.to_string(),
    })?;
    let digest = callgate_approvals::digest::digest(&payload)
        .map_err(|e| Refusal::Internal { detail: e })?;
    let held = Held {
        id: request_id.to_string(),
        kind: Kind::Grant,
        payload,
        digest: digest.clone(),
        approval: Approval {
            // An approved grant lasts its own duration, revocable until then.
            expiry: Expiry::PendingOnly,
            ..Approval::new(requirement.clone(), requester, now_ms())
        },
        summary: json!({"reason": req.reason, "group": req.group}),
        outcome: None,
        version: 0,
    };
    let mut ev = event(&held, &principal.subject);
    ev.digest = Some(digest);
    ev.requirement = Some(requirement.to_string());
    ev.reason = Some(req.reason);
    ev.detail = Some(format!("grant of {} for {}", req.group, req.duration));
    shared.audit.approval_requested(ev).await?;
    shared
        .approvals
        .store()
        .insert(&held)
        .await
        .map_err(store_refusal)?;
    super::count(shared, &held);
    shared.approvals.notifier.send(
        &rt,
        super::webhook::Notice::requested(&held, &rt.config.approvals),
    );
    Ok(held)
}
