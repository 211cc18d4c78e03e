//! Phase 9, forward: the upstream request is built from the call's arguments (never from the
//! caller's bytes) and sent over the upstream's pooled client with the function's timeout.

use bytes::Bytes;
use callgate_core::Call;
use callgate_core::args::UpstreamShape;
use callgate_core::refusal::Refusal;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full, Limited};

use crate::http_client::HttpClient;

/// An upstream response on its way back to the caller.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and never cross Callgate.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

/// Request headers never passed upstream besides the hop-by-hop ones: the caller's
/// credentials, and headers Callgate sets itself.
const DROP_REQUEST: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    // Callgate's own control headers; the upstream learns nothing from them.
    "callgate-session",
    "callgate-reason",
    "callgate-break-glass",
    "host",
    "content-length",
    "content-type",
    // The body sent upstream is serialized from the parsed arguments: whatever coding or
    // digest the caller's bytes had does not describe it.
    "content-encoding",
    "content-md5",
    "content-digest",
    "repr-digest",
    "digest",
    "expect",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// Upstream response headers never passed to the caller besides the hop-by-hop ones. A
/// cookie or token the upstream issues answers Callgate's own credential: handed to the
/// caller it would be a standing credential for the backend, usable around Callgate. A
/// challenge is addressed to Callgate too, and the call's id is Callgate's.
const DROP_RESPONSE: &[&str] = &[
    "set-cookie",
    "set-cookie2",
    "authorization",
    "proxy-authorization",
    "www-authenticate",
    "proxy-authenticate",
    "authentication-info",
    "proxy-authentication-info",
    "x-request-id",
];

/// Header names listed in `Connection` (hop-by-hop too, RFC 9110 §7.6.1), lower-cased. Read
/// from the raw bytes, so a value that is not visible ASCII still names what it lists.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|s| String::from_utf8_lossy(s.trim_ascii()).to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `headers` without the hop-by-hop ones, those listed in `Connection`, and `drop`.
fn without(headers: &HeaderMap, drop: &[&str]) -> HeaderMap {
    let listed = connection_listed(headers);
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || drop.contains(&n) || listed.iter().any(|l| l == n) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The caller's headers that travel upstream (transparent proxy only): those on the allowlist
/// (`callgate_core::headers`: the default names and the function's `extra`), never a
/// hop-by-hop one, one listed in `Connection`, or a credential.
pub fn forwardable(headers: &HeaderMap, extra: &[String]) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in &without(headers, DROP_REQUEST) {
        if callgate_core::headers::forwards(name.as_str(), extra) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Sends the call upstream and reads the whole response (bounded by `max_response`).
pub async fn forward(
    client: &HttpClient,
    call: &Call,
    shape: UpstreamShape,
    uri: http::Uri,
    mut headers: HeaderMap,
    max_response: usize,
) -> Result<UpstreamResponse, Refusal> {
    if shape.body.is_some() {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    // Callgate reads every response (masking, the audit record): uncompressed, please. The
    // caller's own Accept-Encoding is not passed on; without one any coding would do.
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    if !headers.contains_key(header::ACCEPT) {
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    }
    if let Ok(v) = HeaderValue::from_str(&call.request_id) {
        headers.insert(HeaderName::from_static("x-request-id"), v);
    }
    if let Some(ip) = call.meta.source
        && let Ok(v) = HeaderValue::from_str(&ip.to_string())
    {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    let mut req = Request::builder()
        .method(shape.method)
        .uri(uri)
        .body(Full::new(shape.body.map(Bytes::from).unwrap_or_default()))
        .map_err(|e| Refusal::Internal {
            detail: e.to_string(),
        })?;
    *req.headers_mut() = headers;

    let function = &call.function;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            tracing::warn!(request_id = %call.request_id, upstream = %function.upstream, error = %e, "upstream unreachable");
            Refusal::UpstreamUnreachable { detail: format!("the upstream of {} could not be reached", function.name) }
        })?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, max_response).collect().await.map_err(|e| {
            tracing::warn!(request_id = %call.request_id, error = %e, "upstream response failed");
            Refusal::UpstreamUnreachable {
                detail: format!("the upstream of {} sent an unreadable or oversized response", function.name),
            }
        })?;
        let mut headers = without(&parts.headers, DROP_RESPONSE);
        // The length is recomputed for the body Callgate sends back.
        headers.remove(header::CONTENT_LENGTH);
        Ok(UpstreamResponse {
            status: parts.status,
            headers,
            body: body.to_bytes(),
        })
    };
    match tokio::time::timeout(function.timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(Refusal::UpstreamTimeout {
            detail: format!(
                "the upstream of {} did not answer within {:?}",
                function.name, function.timeout
            ),
        }),
    }
}
