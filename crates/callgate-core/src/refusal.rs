//! Typed refusals: every way a call can be turned away before or while it is forwarded.
//!
//! A refusal is a value that each ingress maps exactly once to its protocol (RFC 9457 problem
//! details for HTTP). The detail text is written for the caller: policy internals never appear
//! in it; they go to the logs.

use std::time::Duration;

/// One field-level argument problem (JSON pointer into the arguments object).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub pointer: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("authentication required: {detail}")]
    Unauthenticated { detail: String },
    #[error("the identity provider could not be reached")]
    IdentityUnavailable { detail: String },
    #[error("forbidden: {detail}")]
    Forbidden { detail: String },
    #[error("no declared function matches: {detail}")]
    UnknownFunction { detail: String },
    #[error("method not allowed")]
    MethodNotAllowed { detail: String },
    /// A held call, approval or grant that does not exist (or the caller may not see).
    #[error("not found: {detail}")]
    NotFound { detail: String },
    /// The request conflicts with the current state (a second review, a resolved request).
    #[error("conflict: {detail}")]
    Conflict { detail: String },
    #[error("bad request: {detail}")]
    BadRequest { detail: String },
    /// HTTP/1.1 framing two parsers could read differently; the connection is closed.
    #[error("ambiguous message framing: {detail}")]
    AmbiguousFraming { detail: String },
    /// An HTTP/1.1 request head that does not parse (a control character in a header value,
    /// a malformed request line); the connection is closed.
    #[error("malformed request: {detail}")]
    MalformedRequest { detail: String },
    /// The request body did not arrive in time; the connection is closed.
    #[error("request timed out: {detail}")]
    RequestTimeout { detail: String },
    #[error("invalid arguments")]
    InvalidArguments { errors: Vec<FieldError> },
    #[error("request body over {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("rate limit exceeded")]
    RateLimited {
        retry_after: Duration,
        detail: String,
    },
    #[error("upstream unreachable")]
    UpstreamUnreachable { detail: String },
    #[error("upstream timed out")]
    UpstreamTimeout { detail: String },
    #[error("service unavailable: {detail}")]
    Unavailable { detail: String },
    #[error("internal error")]
    Internal { detail: String },
}

impl Refusal {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Refusal::BadRequest {
            detail: detail.into(),
        }
    }

    pub fn invalid_argument(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Refusal::InvalidArguments {
            errors: vec![FieldError {
                pointer: pointer.into(),
                detail: detail.into(),
            }],
        }
    }

    /// The HTTP status this refusal maps to.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Unauthenticated { .. } => 401,
            Refusal::Forbidden { .. } => 403,
            Refusal::UnknownFunction { .. } => 404,
            Refusal::MethodNotAllowed { .. } => 405,
            Refusal::NotFound { .. } => 404,
            Refusal::Conflict { .. } => 409,
            Refusal::BadRequest { .. }
            | Refusal::AmbiguousFraming { .. }
            | Refusal::MalformedRequest { .. } => 400,
            Refusal::RequestTimeout { .. } => 408,
            Refusal::PayloadTooLarge { .. } => 413,
            Refusal::InvalidArguments { .. } => 422,
            Refusal::RateLimited { .. } => 429,
            Refusal::Internal { .. } => 500,
            Refusal::UpstreamUnreachable { .. } => 502,
            Refusal::IdentityUnavailable { .. } | Refusal::Unavailable { .. } => 503,
            Refusal::UpstreamTimeout { .. } => 504,
        }
    }

    /// A stable short code, used as the problem `type` suffix and as a metrics label.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated { .. } => "unauthenticated",
            Refusal::IdentityUnavailable { .. } => "identity-unavailable",
            Refusal::Forbidden { .. } => "forbidden",
            Refusal::UnknownFunction { .. } => "unknown-function",
            Refusal::MethodNotAllowed { .. } => "method-not-allowed",
            Refusal::NotFound { .. } => "not-found",
            Refusal::Conflict { .. } => "conflict",
            Refusal::BadRequest { .. } => "bad-request",
            Refusal::AmbiguousFraming { .. } => "ambiguous-framing",
            Refusal::MalformedRequest { .. } => "malformed-request",
            Refusal::RequestTimeout { .. } => "request-timeout",
            Refusal::InvalidArguments { .. } => "invalid-arguments",
            Refusal::PayloadTooLarge { .. } => "payload-too-large",
            Refusal::RateLimited { .. } => "rate-limited",
            Refusal::UpstreamUnreachable { .. } => "upstream-unreachable",
            Refusal::UpstreamTimeout { .. } => "upstream-timeout",
            Refusal::Unavailable { .. } => "unavailable",
            Refusal::Internal { .. } => "internal",
        }
    }

    /// The problem `title`: short, fixed per kind.
    pub fn title(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated { .. } => "Authentication required",
            Refusal::IdentityUnavailable { .. } => "Identity provider unavailable",
            Refusal::Forbidden { .. } => "Forbidden",
            Refusal::UnknownFunction { .. } => "No such function",
            Refusal::MethodNotAllowed { .. } => "Method not allowed",
            Refusal::NotFound { .. } => "Not found",
            Refusal::Conflict { .. } => "Conflict with the current state",
            Refusal::BadRequest { .. } => "Malformed request",
            Refusal::AmbiguousFraming { .. } => "Ambiguous message framing",
            Refusal::MalformedRequest { .. } => "Malformed request",
            Refusal::RequestTimeout { .. } => "Request timed out",
            Refusal::InvalidArguments { .. } => "Invalid arguments",
            Refusal::PayloadTooLarge { .. } => "Request body too large",
            Refusal::RateLimited { .. } => "Rate limit exceeded",
            Refusal::UpstreamUnreachable { .. } => "Upstream unreachable",
            Refusal::UpstreamTimeout { .. } => "Upstream timed out",
            Refusal::Unavailable { .. } => "Service unavailable",
            Refusal::Internal { .. } => "Internal error",
        }
    }

    /// The problem `detail`: what went wrong, for the caller.
    pub fn detail(&self) -> String {
        match self {
            Refusal::Unauthenticated { detail }
            | Refusal::IdentityUnavailable { detail }
            | Refusal::Forbidden { detail }
            | Refusal::UnknownFunction { detail }
            | Refusal::MethodNotAllowed { detail }
            | Refusal::NotFound { detail }
            | Refusal::Conflict { detail }
            | Refusal::BadRequest { detail }
            | Refusal::AmbiguousFraming { detail }
            | Refusal::MalformedRequest { detail }
            | Refusal::RequestTimeout { detail }
            | Refusal::RateLimited { detail, .. }
            | Refusal::UpstreamUnreachable { detail }
            | Refusal::UpstreamTimeout { detail }
            | Refusal::Unavailable { detail } => detail.clone(),
            Refusal::InvalidArguments { errors } => errors
                .iter()
                .map(|e| {
                    if e.pointer.is_empty() {
                        e.detail.clone()
                    } else {
                        format!("{}: {}", e.pointer, e.detail)
                    }
                })
                .collect::<Vec<_>>()
                .join("; "),
            Refusal::PayloadTooLarge { limit } => {
                format!("the request body exceeds the limit of {limit} bytes")
            }
            Refusal::Internal { .. } => "an internal error occurred; see the gateway logs".into(),
        }
    }

    /// Whether the connection should be closed after answering (framing errors).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Refusal::AmbiguousFraming { .. }
                | Refusal::MalformedRequest { .. }
                | Refusal::RequestTimeout { .. }
        )
    }
}
