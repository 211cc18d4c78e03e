//! The normalized call: the one shape every ingress (HTTP proxy, invoke API, later MCP and gRPC)
//! produces, and the only shape policy, rate limits, approvals, masking and audit ever see.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::sync::Arc;

use crate::registry::FunctionDef;

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum AuthMethod {
    /// An OIDC access token (JWT) verified against the issuer's JWKS.
    Oidc { issuer: String },
    /// A service-account API key matched against a configured hash.
    ApiKey { key_id: String },
}

impl AuthMethod {
    /// The short name used in policy context and logs (`oidc`, `api_key`).
    pub fn name(&self) -> &'static str {
        match self {
            AuthMethod::Oidc { .. } => "oidc",
            AuthMethod::ApiKey { .. } => "api_key",
        }
    }
}

/// The authenticated caller. Never holds the caller's credential itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The human (or service account) the call is for: the token's subject.
    pub subject: String,
    /// Groups from the configured claim, scopes when enabled, or the API key's groups.
    pub groups: Vec<String>,
    pub auth: AuthMethod,
    /// The token's `jti`, when it has one (for audit; never the token).
    pub token_id: Option<String>,
    /// The acting agent or service when the call is delegated (RFC 8693 `act.sub`).
    pub actor: Option<String>,
    /// Unix time the credential stops being valid, if it expires.
    pub expires_at: Option<u64>,
    /// The token's session (`sid` claim), which groups calls for session replay.
    pub session: Option<String>,
    /// The token's audiences (`aud`); empty for API keys, which are Callgate's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
}

/// Which ingress turned a request into this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ingress {
    /// The transparent HTTP proxy: the client called the upstream's own path on Callgate.
    Proxy,
    /// `POST /v1/functions/{name}/invoke`.
    Invoke,
    /// An MCP `tools/call` at `/mcp`.
    Mcp,
}

impl Ingress {
    pub fn name(self) -> &'static str {
        match self {
            Ingress::Proxy => "proxy",
            Ingress::Invoke => "invoke",
            Ingress::Mcp => "mcp",
        }
    }
}

/// Protocol metadata kept beside the call. Policy sees only the parts that are copied into its
/// context (time, source address, ingress); headers are carried for forwarding only.
#[derive(Debug, Clone)]
pub struct CallMeta {
    pub ingress: Ingress,
    pub source: Option<IpAddr>,
    /// Unix seconds when Callgate received the request.
    pub received_at: u64,
    /// The session the call belongs to: the `Callgate-Session` header, else the token's
    /// session. Groups calls for `callgate audit replay`.
    pub session: Option<String>,
    /// Why the caller makes this call (`Callgate-Reason` header or the invoke body's
    /// `reason`); shown to approvers.
    pub reason: Option<String>,
    /// Set when the caller invoked break-glass (`Callgate-Break-Glass: <reason>`).
    pub break_glass: Option<String>,
    /// Groups the principal holds only through an active grant (already in its groups).
    pub granted: Vec<String>,
    /// Set when the call runs after approval: the held call's id and the approved digest.
    pub approved: Option<Approved>,
    /// Request headers that may be passed to the upstream: the caller's credentials,
    /// cookies and hop-by-hop headers are already removed.
    pub forward_headers: http::HeaderMap,
}

/// What an approved call was approved as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approved {
    pub id: String,
    pub digest: String,
}

/// One governed function call.
#[derive(Debug, Clone)]
pub struct Call {
    /// The `x-request-id` that names this call in responses, logs, audit and approvals.
    pub request_id: String,
    pub principal: Arc<Principal>,
    pub function: Arc<FunctionDef>,
    /// The arguments, parsed once. The upstream request is built from exactly this value.
    pub arguments: Map<String, Value>,
    pub meta: CallMeta,
}

/// The unit one client is counted by for per-source limits: an IPv4 address, or an IPv6 /64
/// (what one subscriber or host is usually given, so rotating addresses within it counts once).
pub fn source_block(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod source_block_tests {
    use super::source_block;

    #[test]
    fn an_ipv6_64_counts_as_one_source_and_ipv4_addresses_alone() {
        let b = |s: &str| source_block(s.parse().unwrap()).to_string();
        assert_eq!(b("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(b("2001:db8:1:2:ffff:1:2:3"), "2001:db8:1:2::");
        assert_ne!(b("2001:db8:1:3::1"), b("2001:db8:1:2::1"));
        assert_eq!(b("192.0.2.7"), "192.0.2.7");
        assert_eq!(b("::ffff:192.0.2.7"), "192.0.2.7");
    }
}
