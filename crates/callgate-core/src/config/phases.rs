//! The sections read by the later phases and their stores: `audit`, `approvals`,
//! `credentials` (and a function's or upstream's `credential`), `masking`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

fn default_anonymous_refusals() -> u32 {
    10
}
