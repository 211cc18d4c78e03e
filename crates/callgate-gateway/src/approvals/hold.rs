//! Holding a call: storing it exactly as it will run and answering 202; break-glass.

use super::*;

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
            // Shown to reviewers through the same profiles as a held call's arguments.
            "mask": crate::masking::Masking::names_for(call, decision),
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
