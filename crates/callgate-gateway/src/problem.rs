//! The one place a [`Refusal`] becomes an HTTP response: RFC 9457 problem details.

use axum::body::Body;
use callgate_core::refusal::{FieldError, Refusal};
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

pub const REQUEST_ID: &str = "x-request-id";

/// The RFC 6750 error parameters of a Bearer challenge for an authentication failure: none when
/// no credential was sent, else `error="invalid_token"` with the reason (quote-safe).
pub fn invalid_token_params(detail: &str) -> Option<String> {
    if detail.starts_with("no credential") {
        return None;
    }
    let d: String = detail
        .chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect();
    Some(format!(
        "error=\"invalid_token\", error_description=\"{d}\""
    ))
}

/// Renders a refusal as `application/problem+json`.
pub fn response(refusal: &Refusal, request_id: &str) -> Response<Body> {
    let status =
        StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    with_status(refusal, request_id, status)
}

fn with_status(refusal: &Refusal, request_id: &str, status: StatusCode) -> Response<Body> {
    let mut body = json!({
        "type": format!("urn:callgate:problem:{}", refusal.code()),
        "title": refusal.title(),
        "status": status.as_u16(),
        "detail": refusal.detail(),
        "instance": format!("urn:callgate:request:{request_id}"),
        "request_id": request_id,
    });
    if let Refusal::InvalidArguments { errors } = refusal {
        body["errors"] = serde_json::to_value(errors).unwrap_or_default();
    }
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/problem+json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(body.to_string()))
        .expect("static headers are valid");
    let h = resp.headers_mut();
    match refusal {
        Refusal::Unauthenticated { detail } => {
            let challenge = match invalid_token_params(detail) {
                None => "Bearer realm=\"callgate\"".to_string(),
                Some(p) => format!("Bearer realm=\"callgate\", {p}"),
            };
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                h.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        Refusal::RateLimited { retry_after, .. } => {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        _ => {}
    }
    if refusal.closes_connection() {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(REQUEST_ID, v);
    }
    resp
}

/// An error answer the API framework wrote itself — an extractor's rejection: a path
/// parameter that is not UTF-8, a body over the limit, a malformed query — as problem+json
/// like every other refusal, with the same status. Other answers are returned as they are,
/// including protocol errors that are JSON of their own (JSON-RPC, OAuth) and every upstream
/// answer to an invoked call, whatever its type.
pub async fn from_rejection(
    resp: Response<Body>,
    request_id: &str,
    body_limit: usize,
) -> Response<Body> {
    if resp
        .extensions()
        .get::<crate::ingress::UpstreamAnswer>()
        .is_some()
    {
        return resp;
    }
    let status = resp.status();
    let plain = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("refused").to_string()
    } else {
        text
    };
    let refusal = match status.as_u16() {
        _ if detail.contains(crate::request_body::TIMEOUT_TEXT) => {
            Refusal::RequestTimeout { detail }
        }
        404 => Refusal::NotFound { detail },
        405 => Refusal::MethodNotAllowed { detail },
        413 => Refusal::PayloadTooLarge { limit: body_limit },
        422 => Refusal::InvalidArguments {
            errors: vec![FieldError {
                pointer: String::new(),
                detail,
            }],
        },
        s if s < 500 => Refusal::BadRequest { detail },
        _ => {
            tracing::error!(request_id, %status, detail, "the API answered with an error of its own");
            Refusal::Internal { detail }
        }
    };
    // The framework's status is kept (415, say) where no refusal kind has it, and so are its
    // headers (`Allow`, a challenge) but for the body's own.
    let status = match refusal {
        Refusal::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
        _ => status,
    };
    let mut out = with_status(&refusal, request_id, status);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE
            && name != header::CONTENT_LENGTH
            && !out.headers().contains_key(name)
        {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
}
