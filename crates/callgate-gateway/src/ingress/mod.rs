//! Ingresses: where requests enter and become calls. The transparent proxy ([`proxy`]) and
//! the API surface ([`api`]: invoke, catalog, operations, demo IdP) both end in
//! [`govern`], which runs the pipeline, records metrics and maps a refusal to HTTP once.

pub mod api;
pub mod audit_api;
pub mod proxy;

use axum::body::Body;
use callgate_core::refusal::Refusal;
use http::{Request, Response, header};
use std::time::Instant;

use crate::Shared;
use crate::audit::RefusedRequest;
use crate::metrics::{CallLabels, FunctionLabels};
use crate::pipeline::{self, Inbound, Trace};
use crate::problem;

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
    let outcome = pipeline::run(shared, &rt, inbound, &mut trace).await;
    let resp = match outcome {
        Ok(up) => {
            let mut resp = Response::new(Body::from(up.body));
            *resp.status_mut() = up.status;
            *resp.headers_mut() = up.headers;
            resp
        }
        Err(refusal) => {
            match &refusal {
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
                        request_id: &request_id,
                        ingress,
                        source,
                        session: trace.session.clone(),
                        subject: trace.subject.clone(),
                        function: trace.function.clone(),
                    },
                    &refusal,
                );
            }
            problem::response(&refusal, &request_id)
        }
    };
    let function = trace.function.clone().unwrap_or_else(|| "-".into());
    shared
        .metrics
        .calls
        .get_or_create(&CallLabels {
            function: function.clone(),
            decision: trace.decision_label().into(),
            status: resp.status().as_u16(),
        })
        .inc();
    shared
        .metrics
        .latency
        .get_or_create(&FunctionLabels { function })
        .observe(started.elapsed().as_secs_f64());
    resp
}
