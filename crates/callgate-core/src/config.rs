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
fn default_anonymous_refusals() -> u32 {
    10
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

fn default_risk() -> String {
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

/// What is kept of an upstream response body in the audit log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BodyRecording {
    /// The body after masking (JSON as JSON, anything else as base64), plus its SHA-256.
    #[default]
    Full,
    /// Only the SHA-256 of the body the caller got.
    Digest,
    /// Neither.
    None,
}

/// The tamper-evident audit log.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The SQLite store, relative to this file's directory. Created on first start.
    #[serde(default = "default_audit_path")]
    pub path: String,
    /// The checkpoint signing key (signed-note private key), relative to this file's
    /// directory. Created with mode 0600 on first start.
    #[serde(default = "default_audit_key")]
    pub key_file: String,
    /// The log's name: the first line of every checkpoint and the key's name. No spaces or
    /// `+`; by convention a URL-like path such as `callgate.example.com/audit`.
    #[serde(default = "default_origin")]
    pub origin: String,
    /// How often a checkpoint is signed while the log grows (also at shutdown and on demand).
    #[serde(default = "default_checkpoint_ms")]
    pub checkpoint_interval_ms: u64,
    /// A directory outside Callgate's control where every checkpoint is also written
    /// (`checkpoint` is the latest; `checkpoints/<size>` each one).
    #[serde(default)]
    pub publish_dir: Option<String>,
    /// An HTTP(S) endpoint outside Callgate's control (a witness) that receives every
    /// checkpoint as `POST` with a `text/plain` signed note.
    #[serde(default)]
    pub publish_url: Option<String>,
    /// What is recorded of response bodies.
    #[serde(default)]
    pub response_body: BodyRecording,
    /// Record bodies of calls older than this many days are pruned; leaf hashes stay, so the
    /// log still verifies. Unset keeps everything.
    #[serde(default)]
    pub retention_days: Option<u64>,
    /// Members of this group may read the log through `GET /v1/audit/...`.
    #[serde(default = "default_auditors")]
    pub auditors_group: String,
    /// How long a write waits for a lock held by another process before calls are refused.
    #[serde(default = "default_busy_ms")]
    pub busy_timeout_ms: u64,
    /// Refusals of callers with no verified identity recorded one by one per source address
    /// and minute; the rest of that minute's are recorded as one record with their count, so
    /// anonymous traffic cannot grow the log without bound (0: every one is counted).
    #[serde(default = "default_anonymous_refusals")]
    pub anonymous_refusals_per_minute: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: default_audit_path(),
            key_file: default_audit_key(),
            origin: default_origin(),
            checkpoint_interval_ms: default_checkpoint_ms(),
            publish_dir: None,
            publish_url: None,
            response_body: BodyRecording::default(),
            retention_days: None,
            auditors_group: default_auditors(),
            busy_timeout_ms: default_busy_ms(),
            anonymous_refusals_per_minute: default_anonymous_refusals(),
        }
    }
}

fn default_audit_path() -> String {
    "callgate-data/audit.db".into()
}
fn default_audit_key() -> String {
    "callgate-data/audit.key".into()
}
fn default_origin() -> String {
    "callgate.local/audit".into()
}
fn default_checkpoint_ms() -> u64 {
    10_000
}
fn default_auditors() -> String {
    "auditors".into()
}
fn default_busy_ms() -> u64 {
    1_000
}

/// Held calls, reviews, notifications, delegations and grants.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// The approvals database (SQLite), relative to the config file.
    #[serde(default = "default_approvals_path")]
    pub path: String,
    /// The longest `Prefer: wait=N` a caller may ask for, in seconds.
    #[serde(default = "default_max_wait")]
    pub max_wait_secs: u64,
    /// The gateway's address as reviewers reach it, for links in notifications
    /// (e.g. `https://callgate.example.com`). Links are relative without it.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Webhooks fired when approval is requested and when it is resolved.
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// Callers that act for a person: caller subject → the person's subject. A call by the
    /// agent counts as that person's for segregation of duties (as a token's `act` claim does).
    #[serde(default)]
    pub delegations: BTreeMap<String, String>,
    /// Groups a person may ask to join temporarily (`POST /v1/grants`).
    #[serde(default)]
    pub grants: BTreeMap<String, GrantRule>,
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            path: default_approvals_path(),
            max_wait_secs: default_max_wait(),
            public_url: None,
            webhooks: Vec::new(),
            delegations: BTreeMap::new(),
            grants: BTreeMap::new(),
        }
    }
}

fn default_approvals_path() -> String {
    "callgate-data/approvals.db".into()
}
fn default_max_wait() -> u64 {
    60
}

/// A webhook for approval notifications.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// `callgate` (JSON event) or `slack` (an incoming-webhook message).
    #[serde(default)]
    pub format: WebhookFormat,
    /// Environment variable holding the HMAC-SHA256 signing secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the signing secret (relative to the config file).
    #[serde(default)]
    pub secret_file: Option<String>,
    /// Attempts before giving up (with exponential backoff from 1 s).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

fn default_attempts() -> u32 {
    5
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    #[default]
    Callgate,
    Slack,
}

/// Who approves temporary membership of a group, and for how long at most.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRule {
    /// The approval a grant needs, in the `@approval` syntax.
    pub approval: String,
    /// The longest a grant may last (`30m`, `8h`, `1d`).
    #[serde(default = "default_grant_max")]
    pub max_duration: String,
}

fn default_grant_max() -> String {
    "8h".into()
}

/// A just-in-time credential Callgate attaches to a forwarded call.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialConfig {
    /// A JWT Callgate signs for this one call (`iss` Callgate, `aud` the audience, `sub` the
    /// person, `act` the agent, a scope naming the function, a short `exp`, a unique `jti`).
    Minted {
        /// The upstream's audience: exactly what it checks `aud` against.
        audience: String,
        /// Lifetime in seconds, 1 to 60.
        #[serde(default = "default_minted_ttl")]
        ttl_secs: u64,
    },
    /// A static secret from an environment variable or a file, placed in a header or a query
    /// parameter. Never visible to callers, never logged or audited.
    Secret {
        #[serde(default)]
        env: Option<String>,
        #[serde(default)]
        file: Option<String>,
        /// Header to put it in (e.g. `Authorization`, `X-Api-Key`).
        #[serde(default)]
        header: Option<String>,
        /// Query parameter to put it in instead.
        #[serde(default)]
        query: Option<String>,
        /// Text before the secret in the header (e.g. `"Bearer "`).
        #[serde(default)]
        prefix: String,
    },
    /// A short-lived token from an OAuth 2.0 authorization server: client credentials, or
    /// RFC 8693 token exchange. Cached until shortly before it expires.
    Oauth {
        token_url: String,
        client_id: String,
        /// Environment variable holding the client secret.
        #[serde(default)]
        client_secret_env: Option<String>,
        /// File holding the client secret.
        #[serde(default)]
        client_secret_file: Option<String>,
        #[serde(default)]
        scope: Option<String>,
        /// RFC 8707 resource indicator (the upstream's identifier at the server).
        #[serde(default)]
        resource: Option<String>,
        /// Use token exchange (RFC 8693) with a Callgate-minted token naming the caller as the
        /// subject token, instead of client credentials.
        #[serde(default)]
        token_exchange: bool,
        /// How the client authenticates at the token endpoint.
        #[serde(default)]
        client_auth: ClientAuth,
        /// PEM CA bundle trusted for an `https://` token endpoint instead of the system roots
        /// (relative to the config file).
        #[serde(default)]
        ca_file: Option<String>,
    },
}

/// OAuth client authentication at the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic (`client_secret_basic`).
    #[default]
    Basic,
    /// In the form body (`client_secret_post`).
    Post,
}

fn default_minted_ttl() -> u64 {
    60
}

/// Callgate's token-minting keys and issuer name.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    /// `iss` of minted tokens.
    #[serde(default = "default_mint_issuer")]
    pub issuer: String,
    /// Directory of Ed25519 signing keys (created on first use, mode 0600), relative to the
    /// config file.
    #[serde(default = "default_mint_keys")]
    pub key_dir: String,
    /// A new signing key is made when the current one is this old; the previous key stays in
    /// `/.well-known/jwks.json` for `overlap_secs` so tokens it signed still verify.
    #[serde(default = "default_rotate_hours")]
    pub rotate_after_hours: u64,
    #[serde(default = "default_overlap")]
    pub overlap_secs: u64,
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        CredentialsConfig {
            issuer: default_mint_issuer(),
            key_dir: default_mint_keys(),
            rotate_after_hours: default_rotate_hours(),
            overlap_secs: default_overlap(),
        }
    }
}

fn default_mint_issuer() -> String {
    "callgate".into()
}
fn default_mint_keys() -> String {
    "callgate-data/mint-keys".into()
}
fn default_rotate_hours() -> u64 {
    24
}
fn default_overlap() -> u64 {
    600
}

/// Response masking: named profiles, the keyed-hash secret, and what to do with a body a
/// profile cannot parse.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    #[serde(default)]
    pub profiles: BTreeMap<String, MaskProfileConfig>,
    /// File with the secret for `hash` (created, 0600, on first use), relative to the config.
    #[serde(default = "default_mask_key")]
    pub hash_key_file: String,
    /// A response a profile cannot read (not JSON when it says JSON, or binary): `reject` (502)
    /// or `redact` (the whole body replaced). Never passed through.
    #[serde(default)]
    pub on_unparsable: Unparsable,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        MaskingConfig {
            profiles: BTreeMap::new(),
            hash_key_file: default_mask_key(),
            on_unparsable: Unparsable::default(),
        }
    }
}

fn default_mask_key() -> String {
    "callgate-data/mask.key".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unparsable {
    #[default]
    Reject,
    Redact,
}

/// One masking profile.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaskProfileConfig {
    pub rules: Vec<MaskRuleConfig>,
    /// Response headers removed when the profile applies.
    #[serde(default = "default_mask_headers")]
    pub headers: Vec<String>,
}

fn default_mask_headers() -> Vec<String> {
    [
        "set-cookie",
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "www-authenticate",
    ]
    .map(String::from)
    .to_vec()
}

/// One rule: select by exactly one of `path`, `keys` or `detect`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaskRuleConfig {
    /// RFC 9535 JSONPath, e.g. `$..password`.
    #[serde(default)]
    pub path: Option<String>,
    /// Key-name patterns, case-insensitive, matched as substrings.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Detectors: email, phone, card, iban, us_ssn, ipv4, ipv6, jwt, private_key, bearer,
    /// aws_key, gcp_key, github_token, slack_token, stripe_key.
    #[serde(default)]
    pub detect: Vec<String>,
    /// redact | partial | hash | drop.
    pub strategy: String,
    /// For `partial`: characters kept at the end.
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// Groups that see the value unmasked.
    #[serde(default)]
    pub cleared: Vec<String>,
}

fn default_keep() -> usize {
    4
}

/// The MCP gateway: Callgate serves MCP at `/mcp` and fronts upstream MCP servers.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// Serve `/mcp` (on by default).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The canonical URI of Callgate's MCP endpoint (RFC 9728 `resource`), e.g.
    /// `https://callgate.example.com/mcp`. Without it, it is derived from each request's
    /// scheme and Host.
    #[serde(default)]
    pub resource: Option<String>,
    /// Token audiences accepted at `/mcp`. A token meant for any other audience is refused,
    /// even when its issuer is trusted. Default: the `resource` URI.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Authorization servers named in the protected-resource metadata. Default: the
    /// configured OIDC issuers.
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// Browser origins allowed to call `/mcp` (`https://app.example.com`). A request with an
    /// `Origin` header not listed here is refused (DNS-rebinding protection).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Offer the declared HTTP functions as MCP tools as well (on by default).
    #[serde(default = "default_true")]
    pub expose_functions: bool,
    /// Where pinned tool definitions are kept, relative to the config file.
    #[serde(default = "default_pins_path")]
    pub pins: String,
    /// Upstream MCP servers, by name. The name is the default tool prefix.
    #[serde(default)]
    pub servers: BTreeMap<String, McpServerConfig>,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            enabled: true,
            resource: None,
            audiences: Vec::new(),
            authorization_servers: Vec::new(),
            allowed_origins: Vec::new(),
            expose_functions: true,
            pins: default_pins_path(),
            servers: BTreeMap::new(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_pins_path() -> String {
    "callgate-data/mcp-tools.json".into()
}

/// One upstream MCP server: streamable HTTP (`url`) or stdio (`command`).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// The server's streamable HTTP endpoint. `${VAR}` references are expanded.
    #[serde(default)]
    pub url: Option<String>,
    /// A command Callgate launches and supervises (stdio transport): program and arguments.
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment for the command. Values may be `${VAR}` references.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Prefix of this server's tools in the registry (`github` → `github.create_issue`).
    /// Default: the server's name.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Callgate's own credential for this server (HTTP servers: attached to every request;
    /// never the agent's token).
    #[serde(default)]
    pub credential: Option<CredentialConfig>,
    /// Risk label of this server's tools unless `tools` says otherwise.
    #[serde(default = "default_risk")]
    pub risk: String,
    /// Approval requirement for every tool of this server (as a function's `approval`).
    #[serde(default)]
    pub approval: Option<String>,
    /// Masking profile for tool results.
    #[serde(default)]
    pub mask: Option<String>,
    /// Per-tool settings, by the upstream's tool name.
    #[serde(default)]
    pub tools: BTreeMap<String, McpToolConfig>,
    /// Timeout of one tool call in milliseconds (default: `limits.upstream_timeout_ms`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// PEM CA bundle for an `https://` server.
    #[serde(default)]
    pub ca_file: Option<String>,
}

impl McpServerConfig {
    /// The prefix of this server's tools and functions: `prefix`, or the server's name.
    pub fn tool_prefix<'a>(&'a self, name: &'a str) -> &'a str {
        self.prefix.as_deref().unwrap_or(name)
    }
}

/// Settings for one upstream tool.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpToolConfig {
    #[serde(default)]
    pub risk: Option<String>,
    #[serde(default)]
    pub approval: Option<String>,
    #[serde(default)]
    pub mask: Option<String>,
    /// Calling it twice is harmless (an interrupted approved call runs again).
    #[serde(default)]
    pub idempotent: bool,
}
