//! Callgate's connections to upstream MCP servers.

use callgate_core::Call;
use callgate_core::refusal::Refusal;

use crate::credentials::Obtained;
use crate::runtime::Runtime;
use crate::upstream::UpstreamResponse;

/// The upstream MCP servers of this process.
#[derive(Default)]
pub struct Upstreams {}

impl Upstreams {
    /// Phase 9 for an MCP tool: `tools/call` on its server, with Callgate's credential.
    pub async fn call_tool(
        &self,
        _rt: &Runtime,
        server: &str,
        _tool: &str,
        _call: &Call,
        _credential: Option<Obtained>,
    ) -> Result<UpstreamResponse, Refusal> {
        Err(Refusal::UpstreamUnreachable {
            detail: format!("MCP server {server} is not connected"),
        })
    }
}
