//! The one place a [`Refusal`] becomes an HTTP response: RFC 9457 problem details.

use axum::body::Body;
use callgate_core::refusal::Refusal;
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
