//! The `mcp` section: the `/mcp` endpoint and the upstream MCP servers whose tools Callgate
//! governs.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::{CredentialConfig, default_risk};

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
