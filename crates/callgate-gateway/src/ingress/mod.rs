//! Ingresses: where requests enter and become calls. The transparent proxy ([`proxy`]) and
//! the API surface ([`api`]: invoke, catalog, operations, demo IdP) both end in
//! [`govern`], which runs the pipeline, records metrics and maps a refusal to HTTP once.

pub mod api;
pub mod approvals_api;
pub mod audit_api;
pub mod proxy;

use axum::body::Body;
use callgate_core::refusal::Refusal;
use http::{Request, Response, header};
use std::time::Instant;

use crate::Shared;
use crate::audit::RefusedRequest;
use crate::metrics::{CallLabels, FunctionLabels};
use crate::pipeline::{self, Inbound, Outcome, Trace};
use crate::problem;
use crate::upstream::UpstreamResponse;
use callgate_approvals::State;
use callgate_store::approvals::Held;

/// Paths served by the API surface rather than proxied. Upstream paths under these prefixes
/// cannot be proxied.
pub fn is_api_path(path: &str) -> bool {
    path.starts_with("/v1/")
        || path == "/v1"
        || path == "/healthz"
        || path == "/readyz"
        || path == "/metrics"
        || path.starts_with("/.well-known/")
        || path.starts_with("/demo/")
        || path == crate::mcp::PATH
}

/// Refuses HTTP/1.1 messages whose framing two parsers could read differently
/// (RFC 9112 §6.3): both Content-Length and Transfer-Encoding, or several Content-Length values.
/// hyper hides some of these; [`crate::framing::FramingGuard`] marks them below it.
pub fn check_framing<B>(req: &Request<B>) -> Result<(), Refusal> {
    let lengths: Vec<_> = req
        .headers()
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .collect();
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    if let Some(what) = req.headers().get(crate::framing::MALFORMED) {
        return Err(Refusal::MalformedRequest {
            detail: String::from_utf8_lossy(what.as_bytes()).into_owned(),
        });
    }
    let bad = |d: &str| Refusal::AmbiguousFraming {
        detail: d.to_string(),
    };
    if chunked && !lengths.is_empty() || req.headers().contains_key(crate::framing::MARKER) {
        return Err(bad("both Content-Length and Transfer-Encoding"));
    }
    if lengths.len() > 1 {
        return Err(bad("more than one Content-Length"));
    }
    if let Some(v) = lengths.first() {
        let ok = v
            .to_str()
            .ok()
            .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            return Err(bad("invalid Content-Length"));
        }
    }
    Ok(())
}

/// Runs one call through the pipeline and answers it.
pub async fn govern(shared: &Shared, inbound: Inbound) -> Response<Body> {
    let started = Instant::now();
    let request_id = inbound.request_id.clone();
    let (ingress, source) = (inbound.ingress, inbound.source);
    let rt = shared.reloader.current();
    let mut trace = Trace::default();
    let wait = prefer_wait(&inbound.parts.headers, rt.config.approvals.max_wait_secs);
    let outcome = pipeline::run(shared, &rt, inbound, &mut trace).await;
    let resp = match outcome {
        Ok(Outcome::Forwarded(up)) => upstream_response(up),
        Ok(Outcome::Held(held)) => {
            let held = match wait {
                Some(w) => shared.approvals.wait(&held.id, w).await.unwrap_or(*held),
                None => *held,
            };
            held_response(&held, &request_id)
        }
        Err(refusal) => {
            refused(shared, &request_id, ingress, source, &trace, &refusal);
            problem::response(&refusal, &request_id)
        }
    };
    observe(shared, &trace, resp.status().as_u16(), started);
    resp
}

/// Logs a refused call and records it in the audit log unless its own record already says so.
pub fn refused(
    shared: &Shared,
    request_id: &str,
    ingress: callgate_core::Ingress,
    source: Option<std::net::IpAddr>,
    trace: &Trace,
    refusal: &Refusal,
) {
    match refusal {
        Refusal::Internal { detail } => {
            tracing::error!(request_id = %request_id, %detail, "internal error")
        }
        r if r.status() >= 500 => {
            tracing::warn!(request_id = %request_id, function = ?trace.function, refusal = %r, "call failed")
        }
        r => {
            tracing::info!(request_id = %request_id, subject = ?trace.subject, function = ?trace.function, refusal = %r, "call refused")
        }
    }
    if !trace.recorded {
        shared.audit.refused(
            RefusedRequest {
                request_id,
                ingress,
                source,
                session: trace.session.clone(),
                subject: trace.subject.clone(),
                function: trace.function.clone(),
            },
            refusal,
        );
    }
}

/// Counts one answered call and its latency.
pub fn observe(shared: &Shared, trace: &Trace, status: u16, started: Instant) {
    let function = trace.function.clone().unwrap_or_else(|| "-".into());
    shared
        .metrics
        .calls
        .get_or_create(&CallLabels {
            function: function.clone(),
            decision: trace.decision_label().into(),
            status,
        })
        .inc();
    shared
        .metrics
        .latency
        .get_or_create(&FunctionLabels { function })
        .observe(started.elapsed().as_secs_f64());
}

/// Marks an answer that is the upstream's (already masked and recorded): the API surface
/// passes it on as it is, whatever its status and type, instead of taking a `text/plain`
/// error for one of its own framework's rejections ([`problem::from_rejection`]).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamAnswer;

fn upstream_response(up: UpstreamResponse) -> Response<Body> {
    let mut resp = Response::new(Body::from(up.body));
    *resp.status_mut() = up.status;
    *resp.headers_mut() = up.headers;
    resp.extensions_mut().insert(UpstreamAnswer);
    resp
}

/// `Prefer: wait=N` (RFC 7240 §4.3), capped at `max` seconds.
pub fn prefer_wait(headers: &http::HeaderMap, max: u64) -> Option<std::time::Duration> {
    let secs = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            (k.trim().eq_ignore_ascii_case("wait"))
                .then(|| v.trim().trim_matches('"').parse::<u64>().ok())?
        })
        .next()?;
    Some(std::time::Duration::from_secs(secs.min(max)))
}

/// The answer to a call that was held: the real upstream response once it ran, a problem
/// when it ended without running, else 202 with where to follow it.
pub fn held_response(held: &Held, request_id: &str) -> Response<Body> {
    let state = held.approval.state;
    if let Some(up) = held
        .outcome
        .as_ref()
        .and_then(crate::approvals::stored_response)
    {
        return upstream_response(up);
    }
    let ended = |detail: String, status| {
        let refusal = match status {
            403 => Refusal::Forbidden { detail },
            _ => Refusal::UpstreamUnreachable { detail },
        };
        problem::response(&refusal, request_id)
    };
    match state {
        State::Denied => ended(format!("call {} was denied by a reviewer", held.id), 403),
        State::Expired => ended(
            format!(
                "call {} expired before it was approved and executed",
                held.id
            ),
            403,
        ),
        State::Cancelled => ended(
            format!("call {} was cancelled by its requester", held.id),
            403,
        ),
        State::Revoked => ended(format!("the approval of call {} was revoked", held.id), 403),
        State::Failed | State::Unknown => {
            let detail = held
                .outcome
                .as_ref()
                .and_then(|o| o["error"]["detail"].as_str())
                .unwrap_or("the call did not complete")
                .to_string();
            let status = held
                .outcome
                .as_ref()
                .and_then(|o| o["error"]["status"].as_u64())
                .unwrap_or(502);
            if status == 403 {
                ended(format!("call {} was not executed: {detail}", held.id), 403)
            } else {
                ended(format!("call {} {}: {detail}", held.id, state), 502)
            }
        }
        _ => {
            let mut body = crate::approvals::view(held, false);
            body["message"] = serde_json::Value::String(format!(
                "{} needs approval by {}; follow it at {}",
                held.summary["function"].as_str().unwrap_or("this call"),
                held.approval.requirement,
                format_args!("/v1/calls/{}", held.id)
            ));
            Response::builder()
                .status(http::StatusCode::ACCEPTED)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::LOCATION, format!("/v1/calls/{}", held.id))
                .header(header::CACHE_CONTROL, "no-store")
                .body(Body::from(body.to_string()))
                .expect("static headers are valid")
        }
    }
}
