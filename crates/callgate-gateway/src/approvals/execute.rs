//! Executing approved calls exactly once, recovery at start, and the expiry sweeper.

use super::*;

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
    // The audit log could not record the forward, so nothing was sent: the call is approved
    // again and runs once the log is writable (the sweeper retries), within its approval's time.
    // (Only then: another refusal with the same status, a blocked MCP tool say, ends the call.)
    if let Err(Failure::NotForwarded(r @ Refusal::Unavailable { .. })) = &result
        && !shared.audit.healthy()
    {
        let released = store.update(id, |h| h.approval.release()).await;
        if let Ok(Ok((_, h))) = released {
            tracing::warn!(request_id = %id, reason = %r.detail(), "an approved call waits for the audit log; it is retried");
            shared
                .approvals
                .retry
                .store(true, std::sync::atomic::Ordering::Relaxed);
            // Not `after_change`: no new notice, and no immediate retry (the sweeper's, once a
            // second, is the retry).
            count(shared, &h);
            shared.approvals.changed(&h.id);
            return;
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
    // The stored headers as the function's allowlist takes them now (a call held before the
    // list narrowed carries no header it would not pass on today).
    let mut forward_headers = http::HeaderMap::new();
    for (k, v) in &stored.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::try_from(k.as_str()),
            http::HeaderValue::try_from(v.as_str()),
        ) && callgate_core::headers::forwards(k.as_str(), &function.forward_headers)
        {
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
        now => {
            let what = match now {
                Ok(t) => stored.target.change(&t),
                Err(_) => "its arguments no longer make a request for it".into(),
            };
            return no(format!(
                "{} no longer sends this call to the approved target: {what}",
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
    let result = crate::pipeline::execute(shared, rt, &call, &decision, record, None).await;
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
            super::spawn_execute(shared, h.id);
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
                retry_released(&shared).await;
            }
        });
    }
}

/// Runs again the approved calls given back while the audit log could not be written.
async fn retry_released(shared: &Arc<Shared>) {
    use std::sync::atomic::Ordering;
    if !shared.approvals.retry.swap(false, Ordering::Relaxed) {
        return;
    }
    match shared
        .approvals
        .store
        .in_states(Some(Kind::Call), &[State::Approved], 10_000)
        .await
    {
        Ok(approved) => {
            for h in approved {
                super::spawn_execute(shared, h.id);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot list the approved calls to retry");
            shared.approvals.retry.store(true, Ordering::Relaxed);
        }
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
