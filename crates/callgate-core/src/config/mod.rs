//! Configuration types: what an operator writes in `callgate.yaml`.
//!
//! These types are the single source of truth for the config format: they parse it
//! (unknown fields are errors), and the JSON Schema published by `callgate schema` is
//! generated from them. Reading files and expanding `${VAR}` references is the caller's job
//! ; this module stays free of IO.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::rate::RateSpec;

mod mcp;
mod phases;
pub use mcp::*;
pub use phases::*;

/// The whole gateway configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the gateway listens on, `host:port` (`serve --listen` overrides it; `${VAR}`
    /// references are expanded).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// TLS on the listener. Without it the listener speaks plain HTTP/1.1 and h2c.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub identity: IdentityConfig,
    /// Named upstreams that functions forward to.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Cedar policy files or directories of `.cedar` files, relative to this config file.
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default)]
    pub functions: Vec<FunctionConfig>,
    #[serde(default)]
    pub rate_limits: RateLimitConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// The audit log. Always on: a call is never forwarded before its record is durable.
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    #[serde(default)]
    pub credentials: CredentialsConfig,
    #[serde(default)]
    pub masking: MaskingConfig,
    /// The MCP endpoint (`/mcp`) and the upstream MCP servers whose tools Callgate governs.
    #[serde(default)]
    pub mcp: McpConfig,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; reloaded when the file changes.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); reloaded when the file changes.
    pub key_file: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted, in bytes (413 above it).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Largest upstream response read, in bytes (502 above it).
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
    /// Default upstream timeout in milliseconds for functions that set none.
    #[serde(default = "default_timeout_ms")]
    pub upstream_timeout_ms: u64,
    /// How long graceful shutdown waits for in-flight calls, in milliseconds.
    #[serde(default = "default_drain_ms")]
    pub shutdown_grace_ms: u64,
    /// How long a connection may stay open with no request on it — before its first request
    /// and between requests — in milliseconds. It is closed after that.
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
    /// How long a request's header block may take to arrive, counted from its first byte, in
    /// milliseconds. The connection is closed after that.
    #[serde(default = "default_header_ms")]
    pub header_read_timeout_ms: u64,
    /// How long a request body may take to arrive in full, counted from the end of its header
    /// block, in milliseconds (408 after it, and the connection is closed).
    #[serde(default = "default_body_read_ms")]
    pub body_read_timeout_ms: u64,
    /// Connections open at once from one source address; a further one is closed as soon as
    /// it is accepted. 0: no limit (behind a load balancer every caller shares its address).
    #[serde(default = "default_conns_per_source")]
    pub max_connections_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_max_body(),
            max_response_bytes: default_max_response(),
            upstream_timeout_ms: default_timeout_ms(),
            shutdown_grace_ms: default_drain_ms(),
            idle_timeout_ms: default_idle_ms(),
            header_read_timeout_ms: default_header_ms(),
            body_read_timeout_ms: default_body_read_ms(),
            max_connections_per_source: default_conns_per_source(),
        }
    }
}

fn default_max_body() -> usize {
    1024 * 1024
}
fn default_max_response() -> usize {
    16 * 1024 * 1024
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_token_lifetime() -> u64 {
    86_400
}
fn default_drain_ms() -> u64 {
    10_000
}
fn default_idle_ms() -> u64 {
    60_000
}
fn default_header_ms() -> u64 {
    10_000
}
fn default_body_read_ms() -> u64 {
    30_000
}
fn default_conns_per_source() -> usize {
    256
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Trusted OIDC issuers. Tokens from any other issuer are refused.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Service-account API keys, stored only as hashes.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` value tokens must carry; discovery is fetched from
    /// `<issuer>/.well-known/openid-configuration` unless `jwks_uri` is set.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// Signature algorithms accepted from this issuer. Asymmetric only:
    /// RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA.
    #[serde(default = "default_algs")]
    pub algorithms: Vec<String>,
    /// JWKS location; skips discovery when set.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Claim holding the caller's groups; dotted for nested claims (`realm_access.roles`).
    /// A string value is split on spaces, an array is taken as is.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Also treat the space-separated `scope` claim's entries as groups.
    #[serde(default)]
    pub scopes_as_groups: bool,
    /// Claim naming the caller (default `sub`).
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Text put before the subject claim to make the caller's name (`partner:` makes `sub`
    /// `42` the principal `partner:42`). With several issuers each needs one, or a `sub` at
    /// one issuer would be the same principal as at another; equal prefixes say on purpose
    /// that two issuers share one namespace of users.
    #[serde(default)]
    pub subject_prefix: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_skew")]
    pub clock_skew_secs: u64,
    /// The longest remaining lifetime accepted of an access token: one whose `exp` is further
    /// away than this is refused, whatever its signature (default one day).
    #[serde(default = "default_max_token_lifetime")]
    pub max_token_lifetime_secs: u64,
    /// Minimum seconds between two JWKS refreshes caused by an unknown `kid` (or a token no
    /// cached key verifies).
    #[serde(default = "default_refresh")]
    pub jwks_refresh_interval_secs: u64,
    /// The JWKS is fetched again once it is this many seconds old, so a key the issuer
    /// withdrew stops verifying without a restart. If the issuer cannot be reached then, the
    /// keys in hand stay in use and the fetch is retried.
    #[serde(default = "default_jwks_max_age")]
    pub jwks_max_age_secs: u64,
    /// Extra CA bundle (PEM) for reaching this issuer over TLS.
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn default_algs() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_skew() -> u64 {
    30
}
fn default_refresh() -> u64 {
    30
}
fn default_jwks_max_age() -> u64 {
    600
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A name for the key (logged and audited; the key itself never is).
    pub id: String,
    /// `sha256:<hex>` of the whole key (`callgate keygen` prints a new key and its hash).
    pub hash: String,
    /// The subject the key authenticates as.
    pub subject: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL (`http://` or `https://`). `${VAR}` references are expanded from the environment.
    pub url: String,
    /// PEM CA bundle trusted for this upstream instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Connect timeout in milliseconds.
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    /// How long a pooled connection to this upstream may stay unused before it is closed,
    /// in milliseconds.
    #[serde(default = "default_pool_idle_ms")]
    pub pool_idle_timeout_ms: u64,
    /// How Callgate authenticates to this upstream, for every function that does not say
    /// otherwise. Never the caller's own credential.
    #[serde(default)]
    pub credential: Option<CredentialConfig>,
}

fn default_connect_ms() -> u64 {
    2_000
}
fn default_pool_idle_ms() -> u64 {
    90_000
}

/// Where an argument travels in the upstream request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArgSource {
    Path,
    Query,
    Body,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// Dotted name, e.g. `billing.reset_account`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A key of `upstreams`.
    pub upstream: String,
    /// HTTP method and path template, e.g. `POST /billing/reset` or `GET /users/{id}`.
    pub route: String,
    /// JSON Schema (draft 2020-12) for the arguments object.
    #[serde(default)]
    pub arguments: Option<serde_json::Value>,
    /// Where each argument goes. Path parameters come from the route; other arguments default
    /// to the query for GET/HEAD/DELETE and to the JSON body otherwise.
    #[serde(default)]
    pub bind: BTreeMap<String, ArgSource>,
    /// Risk label, visible to policy as `resource.risk`: low, medium, high or critical.
    #[serde(default = "default_risk")]
    pub risk: String,
    /// Upstream timeout in milliseconds (defaults to `limits.upstream_timeout_ms`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Approval every call of this function needs, in the `@approval` syntax
    /// (`"2 of finance-approvers; ttl=30m; reason"`). Policies' `@approval` obligations add to it.
    #[serde(default)]
    pub approval: Option<String>,
    /// Whether executing a call twice is harmless (an approved call interrupted by a crash is
    /// then run again instead of being marked `unknown`).
    #[serde(default)]
    pub idempotent: bool,
    /// Groups allowed to use break-glass on this function: the call runs without approval
    /// (with a `Callgate-Break-Glass: <reason>` header), is flagged, notifies reviewers and
    /// leaves a review item that must be acknowledged afterwards.
    #[serde(default)]
    pub break_glass: Vec<String>,
    /// The just-in-time credential for this function's upstream (overrides the upstream's).
    #[serde(default)]
    pub credential: Option<CredentialConfig>,
    /// The masking profile applied to this function's responses (policies' `@mask` add more).
    #[serde(default)]
    pub mask: Option<String>,
    /// Request headers a proxied call passes upstream besides the default ones (content
    /// negotiation, conditional requests, tracing). Credentials, framing, forwarding and
    /// method- or URL-override headers cannot be named.
    #[serde(default)]
    pub forward_headers: Vec<String>,
}

pub(super) fn default_risk() -> String {
    "low".into()
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Limit per caller across all functions.
    #[serde(default)]
    pub per_caller: Option<RateSpec>,
    /// Limit per caller for one function, keyed by function name. A `@rate_limit` annotation
    /// on the permitting policy applies as well; the stricter wins.
    #[serde(default)]
    pub per_function: BTreeMap<String, RateSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub format: String,
    /// A tracing filter such as `info` or `callgate=debug`. `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

fn default_log_format() -> String {
    "text".into()
}
fn default_log_level() -> String {
    "info".into()
}

/// A config format error with a location, when the parser knows it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    pub line: Option<usize>,
    pub message: String,
}

impl Config {
    /// Parses a config file's text. `${VAR}` references in `listen`, upstream URLs, issuer URLs
    /// and API key hashes are expanded with `vars`; a reference to an unset variable is an
    /// error.
    pub fn parse(text: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut cfg: Config = yaml_serde::from_str(text).map_err(|e| ConfigError {
            line: e.location().map(|l| l.line()),
            message: e.to_string(),
        })?;
        let expand = |at: String, s: &mut String| -> Result<(), ConfigError> {
            *s = expand_vars(s, vars).map_err(|m| ConfigError {
                line: None,
                message: format!("{at}: {m}"),
            })?;
            Ok(())
        };
        expand("listen".into(), &mut cfg.listen)?;
        for (name, up) in cfg.upstreams.iter_mut() {
            expand(format!("upstreams.{name}.url"), &mut up.url)?;
        }
        for (i, iss) in cfg.identity.issuers.iter_mut().enumerate() {
            expand(format!("identity.issuers[{i}].issuer"), &mut iss.issuer)?;
            if let Some(j) = iss.jwks_uri.as_mut() {
                expand(format!("identity.issuers[{i}].jwks_uri"), j)?;
            }
        }
        for k in cfg.identity.api_keys.iter_mut() {
            expand(format!("identity.api_keys.{}.hash", k.id), &mut k.hash)?;
        }
        for (name, srv) in cfg.mcp.servers.iter_mut() {
            if let Some(u) = srv.url.as_mut() {
                expand(format!("mcp.servers.{name}.url"), u)?;
            }
            for (k, v) in srv.env.iter_mut() {
                expand(format!("mcp.servers.{name}.env.{k}"), v)?;
            }
        }
        Ok(cfg)
    }

    /// The JSON Schema of the config format, generated from these types.
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(Config)).expect("schema serializes")
    }
}

/// Expands `${NAME}` references. Anything else containing `$` is left alone.
pub fn expand_vars(s: &str, vars: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated ${ (a reference is ${NAME})".to_string())?;
        let name = &after[..end];
        let value = vars(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_errors_with_a_line() {
        let err = Config::parse("listen: x\nfunctons: []\n", &|_| None).unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("functons"), "{}", err.message);
    }

    #[test]
    fn expands_vars() {
        let f = |n: &str| (n == "A").then(|| "x".to_string());
        assert_eq!(expand_vars("http://${A}:1", &f).unwrap(), "http://x:1");
        assert!(expand_vars("${B}", &f).is_err());
    }
}
