//! Reviews, cancellations and revocations: the state machine inside a store compare-and-swap,
//! then the audit record.

use super::*;

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
            // A break-glass use already ran: reviewers acknowledge it, and the person who
            // used it cannot withdraw it from their queue.
            if h.kind == callgate_store::approvals::Kind::BreakGlass
                && (h.approval.requester.is(&principal.subject)
                    || h.approval.requester.is(&person))
            {
                return Err(Refusal::Conflict {
                    detail: format!(
                        "{id} records a break-glass call that already ran; reviewers acknowledge it, it cannot be cancelled"
                    ),
                });
            }
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
