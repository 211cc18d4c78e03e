//! The MCP ingress: Callgate as an MCP server at `/mcp` (streamable HTTP), fronting the
//! declared HTTP functions and the tools of upstream MCP servers.
//!
//! - [`edge`] is the HTTP edge of `/mcp`: Origin validation, authentication with the RFC 9728
//!   challenge, the audience check, strict JSON, and sessions bound to their principal. It
//!   runs before the MCP SDK sees a byte, so nothing unauthenticated reaches protocol code.
//! - [`server`] answers MCP requests (rmcp's streamable HTTP transport negotiates the
//!   protocol version): `tools/list` filtered per caller, `tools/call` turned into the one
//!   normalized call and run through the same pipeline as every other ingress.
//! - [`result`] turns the pipeline's outcome into a tool result: an upstream answer, a refusal
//!   the agent can read, or a pending approval.
//! - [`upstream`] keeps Callgate's connections to upstream MCP servers (streamable HTTP, and
//!   stdio processes it supervises) and performs phase 9 for their tools.
//! - [`resources`] relays upstream resources and prompts, each read or get one more
//!   normalized call that policy must allow.
//! - [`relay`] governs what an upstream server asks of the agent during a call (sampling,
//!   elicitation, roots): one more normalized call, answered by the agent's own client.
//! - [`pins`] records every upstream tool definition's digest; a changed definition is
//!   blocked until an administrator approves it.

pub mod edge;
pub mod pins;
pub mod relay;
pub mod resources;
pub mod result;
pub mod server;
pub mod upstream;

use callgate_core::Principal;
use std::net::IpAddr;
use std::sync::Arc;

/// The path Callgate serves MCP at.
pub const PATH: &str = "/mcp";

/// The MCP protocol versions Callgate negotiates.
pub const VERSIONS: [&str; 3] = ["2025-06-18", "2025-11-25", "2026-07-28"];

/// Who sent one HTTP request to `/mcp`, as the edge established it. The MCP handler reads
/// it from the request's extensions; it never sees the credential.
#[derive(Clone)]
pub struct McpCaller {
    pub principal: Arc<Principal>,
    pub request_id: String,
    pub source: Option<IpAddr>,
    /// The request's headers (for `Callgate-Reason` and `Callgate-Session`).
    pub headers: http::HeaderMap,
    /// Where reviewers and callers reach this gateway (`https://host`), for links.
    pub base_url: String,
}

impl McpCaller {
    /// Logs and audits a refusal of this caller's request (as every ingress does).
    pub fn refused(
        &self,
        shared: &crate::Shared,
        trace: &crate::pipeline::Trace,
        r: &callgate_core::Refusal,
    ) {
        crate::ingress::refused(
            shared,
            &self.request_id,
            callgate_core::Ingress::Mcp,
            self.source,
            trace,
            r,
        );
    }
}
