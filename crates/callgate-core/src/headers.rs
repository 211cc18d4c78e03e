//! Which of a caller's request headers a proxied call passes upstream: an allowlist.
//!
//! The upstream request is rebuilt from the call, so a caller's header reaches the upstream
//! only when it cannot change what the call means. Passed by default: content negotiation,
//! conditional requests and trace context ([`FORWARDED_BY_DEFAULT`]). A function adds names of
//! its own with `forward_headers`; what could change the request's meaning or identity after
//! policy decided on it — credentials, framing, forwarding addresses, method and URL overrides,
//! Callgate's own headers — can never be named ([`check_forwardable`]).

/// Request headers a proxied call passes upstream without being named.
pub const FORWARDED_BY_DEFAULT: &[&str] = &[
    "accept",
    "accept-language",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "traceparent",
    "tracestate",
    "baggage",
    "user-agent",
];

/// Headers a function cannot name in `forward_headers`, and why.
const NEVER: &[(&str, &str)] = &[
    (
        "authorization",
        "a credential: the upstream gets the function's own",
    ),
    ("proxy-authorization", "a credential"),
    ("cookie", "a credential"),
    ("x-api-key", "a credential"),
    ("host", "set from the upstream URL"),
    (
        "content-length",
        "framing: the body is serialized from the arguments",
    ),
    ("content-type", "set from the arguments"),
    (
        "content-encoding",
        "the body is serialized from the arguments",
    ),
    ("transfer-encoding", "framing"),
    ("connection", "hop-by-hop"),
    ("keep-alive", "hop-by-hop"),
    ("te", "hop-by-hop"),
    ("trailer", "hop-by-hop"),
    ("upgrade", "hop-by-hop"),
    ("proxy-connection", "hop-by-hop"),
    ("expect", "hop-by-hop"),
    ("forwarded", "set by Callgate from the connection"),
    ("x-forwarded-for", "set by Callgate from the connection"),
    ("x-forwarded-host", "a client-chosen address"),
    ("x-forwarded-proto", "a client-chosen address"),
    ("x-forwarded-port", "a client-chosen address"),
    ("x-forwarded-prefix", "rewrites the URL"),
    ("x-real-ip", "a client-chosen address"),
    ("x-client-ip", "a client-chosen address"),
    ("true-client-ip", "a client-chosen address"),
    ("x-cluster-client-ip", "a client-chosen address"),
    ("cf-connecting-ip", "a client-chosen address"),
    (
        "x-http-method-override",
        "overrides the method policy checked",
    ),
    ("x-http-method", "overrides the method policy checked"),
    ("x-method-override", "overrides the method policy checked"),
    ("x-original-method", "overrides the method policy checked"),
    ("x-original-url", "overrides the URL policy checked"),
    ("x-rewrite-url", "overrides the URL policy checked"),
    ("x-original-uri", "overrides the URL policy checked"),
    ("x-request-id", "Callgate's own: the call's id"),
];

/// The lower-case name if `name` may be listed in a function's `forward_headers`.
pub fn check_forwardable(name: &str) -> Result<String, String> {
    let lower = name.to_ascii_lowercase();
    if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
        return Err(format!("{name:?} is not a header name"));
    }
    if let Some((_, why)) = NEVER.iter().find(|(n, _)| *n == lower) {
        return Err(format!("{name} cannot be forwarded ({why})"));
    }
    if lower.starts_with("callgate-") || lower.starts_with("x-callgate-") {
        return Err(format!("{name} cannot be forwarded (Callgate's own)"));
    }
    Ok(lower)
}

/// Whether a proxied call passes header `name` (lower-case) upstream, given the function's
/// `extra` names.
pub fn forwards(name: &str, extra: &[String]) -> bool {
    FORWARDED_BY_DEFAULT.contains(&name) || extra.iter().any(|e| e == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_change_meaning_or_identity_cannot_be_listed() {
        for (name, ok) in [
            ("X-Tenant", true),
            ("x-correlation-id", true),
            ("X-HTTP-Method-Override", false),
            ("X-Original-URL", false),
            ("x-rewrite-url", false),
            ("X-Real-IP", false),
            ("Authorization", false),
            ("Callgate-Reason", false),
            ("x-callgate-ambiguous-framing", false),
            ("bad name", false),
        ] {
            assert_eq!(check_forwardable(name).is_ok(), ok, "{name}");
        }
        assert_eq!(check_forwardable("X-Tenant").unwrap(), "x-tenant");
    }

    #[test]
    fn only_listed_names_travel() {
        let extra = vec!["x-tenant".to_string()];
        assert!(forwards("accept", &extra));
        assert!(forwards("traceparent", &[]));
        assert!(forwards("x-tenant", &extra));
        assert!(!forwards("x-tenant", &[]));
        assert!(!forwards("x-http-method-override", &extra));
        assert!(!forwards("x-real-ip", &extra));
    }
}
