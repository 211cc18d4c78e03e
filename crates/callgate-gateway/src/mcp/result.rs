//! Tool results: how the pipeline's outcome reads to an agent.
//!
//! - A forwarded call: an upstream MCP tool's own (masked) result, or an HTTP function's
//!   (masked) response as text plus, for a JSON object, `structuredContent`.
//! - A refusal: `isError: true` with a message the agent can act on (the problem's title and
//!   detail, never policy internals), so a model can read it rather than a transport error.
//! - A held call: a result saying it is pending, with its `call_id` and how to follow it.

use callgate_approvals::State;
use callgate_core::refusal::Refusal;
use callgate_store::approvals::Held;
use rmcp::model::{CallToolResult, ContentBlock, ErrorCode, ErrorData};
use serde_json::{Value, json};

use super::McpCaller;
use super::server::STATUS_TOOL;
use crate::Shared;
use crate::upstream::UpstreamResponse;

/// The content type of an upstream MCP tool's result inside Callgate (and on the invoke API).
pub const TOOL_RESULT_TYPE: &str = "application/vnd.callgate.tool-result+json";

fn is_tool_result(up: &UpstreamResponse) -> bool {
    up.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == TOOL_RESULT_TYPE.as_bytes())
}

/// The tool result of a forwarded call.
pub fn forwarded(up: &UpstreamResponse) -> CallToolResult {
    if is_tool_result(up) {
        let mut r: CallToolResult = serde_json::from_slice(&up.body).unwrap_or_else(|_| {
            CallToolResult::error(vec![ContentBlock::text(
                "the upstream tool's result could not be read",
            )])
        });
        // The upstream may speak an older revision; Callgate answers in the agent's. (The
        // SDK drops the field again for agents on revisions without it.)
        r.result_type = Some(rmcp::model::ResultType::COMPLETE);
        return r;
    }
    let text = String::from_utf8_lossy(&up.body).into_owned();
    let structured = callgate_core::json::parse_strict(&up.body)
        .ok()
        .filter(Value::is_object);
    let failed = !up.status.is_success();
    let text = if failed {
        format!("the function answered HTTP {}: {text}", up.status.as_u16())
    } else {
        text
    };
    let mut r = if failed {
        CallToolResult::error(vec![ContentBlock::text(text)])
    } else {
        CallToolResult::success(vec![ContentBlock::text(text)])
    };
    r.structured_content = structured;
    r
}

/// A refused call, as an error result the agent can read.
pub fn refused(r: &Refusal, request_id: &str) -> CallToolResult {
    let text = format!("Callgate refused this call: {}: {}", r.title(), r.detail());
    let mut result = CallToolResult::error(vec![ContentBlock::text(text)]);
    result.structured_content = Some(json!({
        "error": {
            "type": format!("urn:callgate:problem:{}", r.code()),
            "title": r.title(),
            "status": r.status(),
            "detail": r.detail(),
            "request_id": request_id,
        }
    }));
    result
}

/// A held call's status and approval URLs.
pub fn links(caller: &McpCaller, id: &str) -> (String, String) {
    (
        format!("{}/v1/calls/{id}", caller.base_url),
        format!("{}/v1/approvals/{id}", caller.base_url),
    )
}

/// A call held for approval: pending, with its id and how to follow it.
pub fn pending(caller: &McpCaller, held: &Held) -> CallToolResult {
    let (status_url, approval_url) = links(caller, &held.id);
    let requirement = held.approval.requirement.to_string();
    let function = held.summary["function"].as_str().unwrap_or("the function");
    let text = format!(
        "This call to {function} is held for approval ({requirement}) and has not run yet. \
         A different person must approve it; it then runs exactly as requested. \
         call_id: {id}. Check it with the {STATUS_TOOL} tool (call_id \"{id}\") or GET {status_url}.",
        id = held.id
    );
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content = Some(json!({
        "status": "pending_approval",
        "call_id": held.id,
        "function": function,
        "state": held.approval.state.as_str(),
        "requirement": requirement,
        "digest": held.digest,
        "status_tool": STATUS_TOOL,
        "status_url": status_url,
        "approval_url": approval_url,
    }));
    r
}

/// `callgate.call_status`: a held call's state for its requester (or an auditor) and, once it
/// ran, its result.
pub async fn status(shared: &Shared, caller: &McpCaller, id: &str) -> CallToolResult {
    let p = &caller.principal;
    let held = match crate::ingress::approvals_api::load(shared, id).await {
        Ok(h) if crate::ingress::approvals_api::is_requester(shared, p, &h) => h,
        Ok(h) if crate::ingress::approvals_api::is_auditor(shared, p) => {
            // Someone else's call: an audit read, recorded before anything is shown.
            let resource = format!("/v1/calls/{id}");
            if let Err(r) = shared
                .audit
                .read(&caller.request_id, &p.subject, &resource)
                .await
            {
                return refused(&r, &caller.request_id);
            }
            h
        }
        Ok(_) => {
            return refused(
                &crate::ingress::approvals_api::hidden(id),
                &caller.request_id,
            );
        }
        Err(r) => return refused(&r, &caller.request_id),
    };
    let state = held.approval.state;
    if state == State::Succeeded
        && let Some(up) = held
            .outcome
            .as_ref()
            .and_then(crate::approvals::stored_response)
    {
        let mut r = forwarded(&up);
        r.content.insert(
            0,
            ContentBlock::text(format!(
                "call {id} was approved and executed; its result follows"
            )),
        );
        return r;
    }
    let view = crate::ingress::approvals_api::masked_view(shared, p, &held, true);
    let text = match state {
        State::Pending => format!("call {id} is still waiting for approval"),
        State::Approved | State::Executing => format!("call {id} is approved and running"),
        s => format!("call {id} is {}", s.as_str()),
    };
    let mut r = if matches!(
        state,
        State::Denied | State::Expired | State::Cancelled | State::Revoked | State::Failed
    ) {
        CallToolResult::error(vec![ContentBlock::text(text)])
    } else {
        CallToolResult::success(vec![ContentBlock::text(text)])
    };
    r.structured_content = Some(view);
    r
}

/// The JSON-RPC error code of an MCP request Callgate refused or held (a resource read, a
/// prompt, or an upstream server's request of the agent).
pub const REFUSED: i32 = -32003;

/// A refusal as a JSON-RPC error: the problem's title and detail, never policy internals.
pub fn rpc_refusal(r: &Refusal, request_id: &str) -> ErrorData {
    ErrorData::new(
        ErrorCode(REFUSED),
        format!(
            "Callgate refused this request: {}: {}",
            r.title(),
            r.detail()
        ),
        Some(json!({
            "type": format!("urn:callgate:problem:{}", r.code()),
            "title": r.title(),
            "status": r.status(),
            "detail": r.detail(),
            "request_id": request_id,
        })),
    )
}
