//! Callgate's MCP server: what `/mcp` answers once the [`super::edge`] has let a request in.
//!
//! - `tools/list` lists only the tools the caller could be allowed to call (the same test as
//!   the HTTP catalog), plus `callgate.call_status` for callers who may call something that
//!   can be held for approval.
//! - `tools/call` becomes the one normalized call ([`pipeline::run_tool_call`]); policy,
//!   approvals, credentials, audit and masking never see MCP types.
//! - `resources/*` and `prompts/*` relay upstream servers' resources and prompts when policy
//!   allows them ([`super::resources`]); Callgate offers none of its own.

use callgate_core::refusal::Refusal;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, ErrorData, GetPromptRequestParams, GetPromptResponse,
    Implementation, InitializeResult, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ProtocolVersion,
    ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler};
use serde_json::{Value, json};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use super::McpCaller;
use super::relay::Agent;
use super::{resources, result};
use crate::Shared;
use crate::pipeline::{self, Outcome, ToolCall, Trace};

/// The tool Callgate itself provides, for an agent to follow a held call.
pub const STATUS_TOOL: &str = "callgate.call_status";

/// The `_meta` key an agent may give a call's reason in (as `Callgate-Reason` does on HTTP).
pub const REASON_META: &str = "io.callgate/reason";
/// The `_meta` key of a break-glass reason (as the `Callgate-Break-Glass` header over HTTP).
pub const BREAK_GLASS_META: &str = "io.callgate/break_glass";

/// One instance per MCP session (or per stateless request); all state is in [`Shared`].
#[derive(Clone)]
pub struct CallgateMcp {
    shared: Arc<Shared>,
}

impl CallgateMcp {
    pub fn new(shared: Arc<Shared>) -> CallgateMcp {
        CallgateMcp { shared }
    }
}

/// The caller the edge authenticated for this request.
fn caller(ctx: &RequestContext<RoleServer>) -> Result<McpCaller, ErrorData> {
    ctx.extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<McpCaller>())
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("request without an authenticated caller", None))
}

fn status_tool() -> Tool {
    serde_json::from_value(json!({
        "name": STATUS_TOOL,
        "title": "Status of a held call",
        "description": "The state of a call Callgate held for approval (pending, approved, denied, executed, ...) and, once it ran, its result. Pass the call_id from the pending result.",
        "inputSchema": {
            "type": "object",
            "properties": {"call_id": {"type": "string", "description": "the id of the held call"}},
            "required": ["call_id"],
            "additionalProperties": false
        },
        "annotations": {"readOnlyHint": true, "openWorldHint": false}
    }))
    .expect("static tool definition")
}

impl ServerHandler for CallgateMcp {
    fn get_info(&self) -> InitializeResult {
        // Resources and prompts are upstream servers' to offer.
        let relays = !self.shared.reloader.peek().config.mcp.servers.is_empty();
        let caps = if relays {
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_prompts()
                .build()
        } else {
            ServerCapabilities::builder().enable_tools().build()
        };
        InitializeResult::new(caps)
            .with_server_info(Implementation::new("callgate", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Callgate governs every tool call: who you are, what policy allows with these \
                 arguments, and whether a second person must approve. A refused call says why; \
                 a held call returns its call_id: poll it with callgate.call_status.",
            )
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(&[
            ProtocolVersion::V_2025_06_18,
            ProtocolVersion::V_2025_11_25,
            ProtocolVersion::V_2026_07_28,
        ])
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let caller = caller(&ctx)?;
        let rt = self.shared.reloader.current();
        let empty = json!({"type": "object", "properties": {}});
        let mut holdable = false;
        let mut tools: Vec<Tool> = Vec::new();
        for f in rt.registry.iter() {
            let exposed = match &f.backend {
                callgate_core::Backend::Http => rt.config.mcp.expose_functions,
                // A tool whose definition changed is not offered until it is approved.
                callgate_core::Backend::McpTool { server, tool } => {
                    !self.shared.mcp.is_blocked(server, tool)
                }
                callgate_core::Backend::McpMethod { .. }
                | callgate_core::Backend::McpServerRequest { .. } => false,
            };
            if !exposed {
                continue;
            }
            // A group a grant gives the caller for this function counts, as when it is called.
            let (principal, _) = self
                .shared
                .approvals
                .grants
                .apply(caller.principal.clone(), &f.name);
            if !rt.engine.could_allow(&principal, f) {
                continue;
            }
            holdable |= rt.engine.may_hold(&principal, f);
            let tool = serde_json::from_value(json!({
                "name": f.name,
                "description": f.description,
                "inputSchema": f.schema.clone().unwrap_or_else(|| empty.clone()),
            }));
            match tool {
                Ok(t) => tools.push(t),
                Err(e) => {
                    tracing::warn!(function = %f.name, error = %e, "not listed as an MCP tool")
                }
            }
        }
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        if holdable {
            tools.push(status_tool());
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = caller(&ctx)?;
        if request.name == STATUS_TOOL {
            let args = request.arguments.as_ref();
            if let Some(other) = args.and_then(|a| a.keys().find(|k| *k != "call_id")) {
                return Err(ErrorData::invalid_params(
                    format!("{STATUS_TOOL} takes only call_id, not {other:?}"),
                    None,
                ));
            }
            let id = args
                .and_then(|a| a.get("call_id"))
                .and_then(Value::as_str)
                .ok_or_else(|| ErrorData::invalid_params("call_id (a string) is required", None))?;
            return Ok(CallToolResponse::Complete(
                result::status(&self.shared, &caller, id).await,
            ));
        }
        let started = Instant::now();
        let rt = self.shared.reloader.current();
        // rmcp moves the request's `_meta` into the context before the handler runs.
        let meta = |key: &str| {
            ctx.meta
                .get(key)
                .or_else(|| request.meta.as_ref().and_then(|m| m.get(key)))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let (reason, break_glass) = (meta(REASON_META), meta(BREAK_GLASS_META));
        let mut trace = Trace::default();
        let agent = Agent::new(ctx.peer.clone());
        let tc = ToolCall {
            request_id: caller.request_id.clone(),
            principal: caller.principal.clone(),
            name: &request.name,
            arguments: request.arguments.map(Value::Object).unwrap_or(Value::Null),
            headers: &caller.headers,
            reason,
            break_glass,
            source: caller.source,
            method: false,
            agent: Some(&agent),
        };
        let outcome = pipeline::run_tool_call(&self.shared, &rt, tc, &mut trace).await;
        let (status, answer) = match outcome {
            Ok(Outcome::Forwarded(up)) => (up.status.as_u16(), Ok(result::forwarded(&up))),
            Ok(Outcome::Held(held)) => {
                offer_approval_link(&ctx, &caller, &held).await;
                (202, Ok(result::pending(&caller, &held)))
            }
            // An unknown tool is a protocol error (MCP: invalid params); it names nothing.
            Err(r @ Refusal::UnknownFunction { .. }) => {
                caller.refused(&self.shared, &trace, &r);
                (
                    404,
                    Err(ErrorData::invalid_params(
                        format!("unknown tool: {}", request.name),
                        None,
                    )),
                )
            }
            Err(r) => {
                caller.refused(&self.shared, &trace, &r);
                (r.status(), Ok(result::refused(&r, &caller.request_id)))
            }
        };
        crate::ingress::observe(&self.shared, &trace, status, started);
        answer.map(CallToolResponse::Complete)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let caller = caller(&ctx)?;
        let items = resources::list_resources(&self.shared, &caller, "resources/list").await;
        Ok(ListResourcesResult::with_all_items(typed(items)))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let caller = caller(&ctx)?;
        let items =
            resources::list_resources(&self.shared, &caller, "resources/templates/list").await;
        Ok(ListResourceTemplatesResult::with_all_items(typed(items)))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let caller = caller(&ctx)?;
        let agent = Agent::new(ctx.peer.clone());
        let v = resources::read(&self.shared, &caller, &agent, &request.uri).await?;
        Ok(ReadResourceResponse::Complete(readable(v)?))
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let caller = caller(&ctx)?;
        let items = resources::list_prompts(&self.shared, &caller).await;
        Ok(ListPromptsResult::with_all_items(typed(items)))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let caller = caller(&ctx)?;
        let agent = Agent::new(ctx.peer.clone());
        let v = resources::get_prompt(
            &self.shared,
            &caller,
            &agent,
            &request.name,
            request.arguments,
        )
        .await?;
        Ok(GetPromptResponse::Complete(readable(v)?))
    }
}

/// How long a held call's answer waits for the client to take up the approval link.
const ELICIT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A held call, for a client that supports URL-mode elicitation in a session (2025-11-25):
/// Callgate asks it to show the approval link to its user, who can pass it to an approver.
/// The pending result carries the same link for every other client. The answer (accept,
/// decline, cancel) is logged; the held call does not depend on it.
async fn offer_approval_link(
    ctx: &RequestContext<RoleServer>,
    caller: &McpCaller,
    held: &callgate_store::approvals::Held,
) {
    let Some(info) = ctx.peer.peer_info() else {
        return;
    };
    let url_mode = info
        .capabilities
        .elicitation
        .as_ref()
        .is_some_and(|e| e.url.is_some());
    // 2026-07-28 has no server-to-client requests outside a multi-round-trip result.
    if !url_mode || info.protocol_version >= ProtocolVersion::V_2026_07_28 {
        return;
    }
    let (_, approval_url) = result::links(caller, &held.id);
    let function = held.summary["function"].as_str().unwrap_or("this function");
    let params = rmcp::model::ElicitRequestParams::UrlElicitationParams {
        meta: None,
        message: format!(
            "The call to {function} is held until a different person approves it ({}). \
             Share this link with an approver.",
            held.approval.requirement
        ),
        url: approval_url,
        elicitation_id: held.id.clone(),
    };
    match tokio::time::timeout(ELICIT_WAIT, ctx.peer.create_elicitation(params)).await {
        Ok(Ok(r)) => {
            tracing::info!(request_id = %caller.request_id, call_id = %held.id, action = ?r.action, "approval link offered")
        }
        Ok(Err(e)) => {
            tracing::debug!(request_id = %caller.request_id, error = %e, "approval link not offered")
        }
        Err(_) => {
            tracing::debug!(request_id = %caller.request_id, "no answer to the approval link offer")
        }
    }
}

/// An upstream's (masked) result as the SDK's type.
fn readable<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ErrorData> {
    serde_json::from_value(v).map_err(|e| {
        ErrorData::internal_error(format!("the upstream's result is not readable: {e}"), None)
    })
}

/// Upstream items as the SDK's types; an item the SDK cannot read is left out (and logged).
fn typed<T: serde::de::DeserializeOwned>(items: Vec<Value>) -> Vec<T> {
    items
        .into_iter()
        .filter_map(|v| match serde_json::from_value(v) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "an upstream MCP list item was left out");
                None
            }
        })
        .collect()
}
