//! Requests an upstream MCP server makes of the agent while one of the agent's calls runs:
//! `sampling/createMessage` (the agent's model), `elicitation/create` (the agent's user) and
//! `roots/list` (the agent's files).
//!
//! Each is one more normalized call, through the same pipeline as every other: the function
//! `<prefix>:<method>` (Cedar action group `mcp`, so nothing is granted by a policy on
//! `call`), decided for the principal whose call the server is serving, with the request's
//! params as the arguments; rate limits, the durable audit record (request id
//! `<call's request id>.<n>`) and the server's masking profiles apply, both to what is sent to
//! the agent and to its answer. Phase 9 sends it to the agent's own MCP client
//! ([`to_agent`]), never to a server, with no credential.
//!
//! Refused outright, before policy, when nobody could answer: the request came outside a call
//! (a listing), the call has no agent behind it (the invoke API, an approved call running
//! later), the agent's client did not declare the capability, or it speaks 2026-07-28, which
//! allows such requests only inside multi-round-trip results. A policy that requires approval
//! refuses it too: the server is waiting, and a held request could never be answered.
//!
//! Over streamable HTTP the server's request arrives on the stream of the call it belongs to.
//! stdio carries no such association: a request is related to the server's only call in
//! progress, and refused when several are.

use callgate_core::model::{CallMeta, Ingress};
use callgate_core::refusal::Refusal;
use callgate_core::registry::mcp_method_function_name;
use callgate_core::{Backend, Call, Principal};
use rmcp::model::{ClientResult, ProtocolVersion, ServerRequest};
use rmcp::service::{Peer, RoleServer};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use super::result::rpc_refusal;
use crate::Shared;
use crate::identity::oidc::now_secs;
use crate::pipeline::{self, Outcome, Trace};
use crate::runtime::Runtime;
use crate::upstream::UpstreamResponse;

/// The client capabilities Callgate declares to upstream servers: whatever the agent's client
/// can do, Callgate can relay (when policy allows it).
pub fn upstream_capabilities() -> Value {
    json!({"sampling": {}, "elicitation": {"form": {}, "url": {}}, "roots": {}})
}

/// The agent's MCP client a call came from (its session's peer).
#[derive(Clone)]
pub struct Agent {
    peer: Peer<RoleServer>,
}

impl Agent {
    pub fn new(peer: Peer<RoleServer>) -> Agent {
        Agent { peer }
    }
}

/// The call an upstream server's request is made during: whose it is, and who can answer.
#[derive(Clone)]
pub struct Origin {
    request_id: String,
    principal: Arc<Principal>,
    session: Option<String>,
    reason: Option<String>,
    source: Option<IpAddr>,
    agent: Option<Agent>,
    /// Numbers the requests made during this call.
    seq: Arc<AtomicU32>,
}

impl Origin {
    /// The origin of requests made while `call` runs, on behalf of `agent` if there is one.
    pub fn of(call: &Call, agent: Option<&Agent>) -> Origin {
        // The caller as authenticated: groups a grant added for this call's function are
        // not theirs for what the server asks during it (grants are applied afresh there).
        let principal = if call.meta.granted.is_empty() {
            call.principal.clone()
        } else {
            let mut p = (*call.principal).clone();
            p.groups.retain(|g| !call.meta.granted.contains(g));
            Arc::new(p)
        };
        Origin {
            request_id: call.request_id.clone(),
            principal,
            session: call.meta.session.clone(),
            reason: call.meta.reason.clone(),
            source: call.meta.source,
            agent: agent.cloned(),
            seq: Arc::new(AtomicU32::new(0)),
        }
    }
}

/// The answer to a request `server` made outside any call (while Callgate listed its tools):
/// a ping is answered, anything else refused.
pub fn outside_call(server: &str, method: &str) -> Result<Value, Value> {
    if method == "ping" {
        return Ok(json!({}));
    }
    tracing::warn!(
        server,
        method,
        "an upstream MCP server's request outside a call was refused"
    );
    Err(rpc_error(
        -32601,
        format!("Callgate relays {method} to an agent only while the agent's call runs"),
    ))
}

/// A JSON-RPC error object for the server.
fn rpc_error(code: i32, message: impl Into<String>) -> Value {
    json!({"code": code, "message": message.into()})
}

/// Decides one request `server` made during `origin`'s call and, if allowed, has the agent's
/// client answer it: the JSON-RPC result, or the error object, to send the server.
pub async fn server_request(
    shared: &Shared,
    server: &str,
    origin: Option<&Origin>,
    method: &str,
    params: Option<Value>,
) -> Result<Value, Value> {
    if method == "ping" {
        return Ok(json!({}));
    }
    let rt = shared.reloader.current();
    let function = rt
        .config
        .mcp
        .servers
        .get(server)
        .map(|srv| mcp_method_function_name(srv.tool_prefix(server), method))
        .and_then(|name| rt.registry.get(&name))
        .filter(|f| matches!(f.backend, Backend::McpServerRequest { .. }))
        .cloned();
    let Some(function) = function else {
        tracing::warn!(
            server,
            method,
            "an upstream MCP server's request is not relayed"
        );
        return Err(rpc_error(
            -32601,
            format!("Callgate does not relay {method} to the agent"),
        ));
    };
    let Some(origin) = origin else {
        return outside_call(server, method);
    };
    let started = Instant::now();
    let n = origin.seq.fetch_add(1, Ordering::Relaxed) + 1;
    let request_id = format!("{}.{n}", origin.request_id);
    let mut trace = Trace {
        function: Some(function.name.clone()),
        subject: Some(origin.principal.subject.clone()),
        session: origin.session.clone(),
        ..Trace::default()
    };
    let outcome = async {
        let arguments = match params.unwrap_or(Value::Null) {
            Value::Object(m) => m,
            Value::Null => Default::default(),
            other => {
                return Err(Refusal::bad_request(format!(
                    "the params of {method} must be an object, not {}",
                    callgate_core::json::kind_of(&other)
                )));
            }
        };
        callgate_core::args::validate(&function, &arguments)?;
        let agent = answerable(origin.agent.as_ref(), method, &arguments)?;
        let (principal, granted) = shared
            .approvals
            .grants
            .apply(origin.principal.clone(), &function.name);
        let call = Call {
            request_id: request_id.clone(),
            principal,
            function: function.clone(),
            arguments,
            meta: CallMeta {
                ingress: Ingress::Mcp,
                source: origin.source,
                received_at: now_secs(),
                session: origin.session.clone(),
                reason: origin.reason.clone(),
                break_glass: None,
                granted,
                approved: None,
                forward_headers: Default::default(),
            },
        };
        pipeline::run_call_via(shared, &rt, call, &mut trace, Some(agent)).await
    }
    .await;
    let (status, answer) = match outcome {
        Ok(Outcome::Forwarded(up)) => {
            let body: Value = serde_json::from_slice(&up.body).unwrap_or(Value::Null);
            match body.get("error") {
                Some(e) if !up.status.is_success() => (up.status.as_u16(), Err(e.clone())),
                _ => (up.status.as_u16(), Ok(body)),
            }
        }
        // Never: the pipeline refuses to hold a server's request.
        Ok(Outcome::Held(_)) => (500, Err(rpc_error(-32603, "held"))),
        Err(r) => {
            crate::ingress::refused(shared, &request_id, Ingress::Mcp, origin.source, &trace, &r);
            let e = serde_json::to_value(rpc_refusal(&r, &request_id))
                .unwrap_or_else(|_| rpc_error(-32603, "refused"));
            (r.status(), Err(e))
        }
    };
    crate::ingress::observe(shared, &trace, status, started);
    answer
}

/// The agent who can answer `method`, or why nobody can.
fn answerable<'a>(
    agent: Option<&'a Agent>,
    method: &str,
    arguments: &serde_json::Map<String, Value>,
) -> Result<&'a Agent, Refusal> {
    let cannot = |why: String| Refusal::Unavailable {
        detail: format!("{method} cannot be relayed: {why}"),
    };
    let agent = agent.ok_or_else(|| {
        cannot("no agent's MCP client is waiting on this call (it came through the HTTP API, or runs after approval)".into())
    })?;
    let info = agent
        .peer
        .peer_info()
        .ok_or_else(|| cannot("the agent's client has not initialized".into()))?;
    if info.protocol_version >= ProtocolVersion::V_2026_07_28 {
        return Err(cannot(format!(
            "the agent's client speaks MCP {}, which allows server requests only in \
             multi-round-trip results",
            info.protocol_version
        )));
    }
    let caps = &info.capabilities;
    let declared = match method {
        "sampling/createMessage" => caps.sampling.as_ref().is_some_and(|s| {
            let wants_tools =
                arguments.contains_key("tools") || arguments.contains_key("toolChoice");
            !wants_tools || s.tools.is_some()
        }),
        "elicitation/create" => caps.elicitation.as_ref().is_some_and(|e| {
            match arguments.get("mode").and_then(Value::as_str) {
                Some("url") => e.url.is_some(),
                // An empty elicitation capability means form mode (2025-06-18).
                _ => e.form.is_some() || e.url.is_none(),
            }
        }),
        "roots/list" => caps.roots.is_some(),
        _ => false,
    };
    if !declared {
        return Err(cannot(format!(
            "the agent's client did not declare the capability for {method}"
        )));
    }
    Ok(agent)
}

/// Phase 9 for a server's request: the agent's client answers it. Its result, or (502) its
/// JSON-RPC error as `{"error": {...}}`, as the pipeline's upstream response.
///
/// What the server sends the agent is data leaving the server, as a tool result is: the
/// server's masking profiles apply to it, for the agent's principal, before it is sent.
pub async fn to_agent(
    rt: &Runtime,
    call: &Call,
    decision: &callgate_policy::Decision,
    method: &str,
    agent: Option<&Agent>,
) -> Result<UpstreamResponse, Refusal> {
    let unreachable = |detail: String| Refusal::UpstreamUnreachable { detail };
    let agent = answerable(agent, method, &call.arguments)?;
    let mut params = Value::Object(call.arguments.clone());
    let profiles = crate::masking::Masking::names_for(call, decision);
    rt.masking
        .mask_value(&profiles, &mut params, &call.principal.groups);
    let request: ServerRequest = serde_json::from_value(json!({
        "method": method,
        "params": params,
    }))
    .map_err(|e| Refusal::bad_request(format!("{method}: {e}")))?;
    let sent = tokio::time::timeout(call.function.timeout, agent.peer.send_request(request));
    let (status, body) = match sent.await {
        Err(_) => {
            return Err(Refusal::UpstreamTimeout {
                detail: format!("the agent's client did not answer {method} in time"),
            });
        }
        Ok(Ok(result)) => {
            let ok = matches!(
                (method, &result),
                (
                    "sampling/createMessage",
                    ClientResult::CreateMessageResult(_)
                ) | ("elicitation/create", ClientResult::ElicitResult(_))
                    | ("roots/list", ClientResult::ListRootsResult(_))
            );
            if !ok {
                return Err(unreachable(format!(
                    "the agent's client answered {method} with something else"
                )));
            }
            let v = serde_json::to_value(&result)
                .map_err(|e| unreachable(format!("the agent's answer: {e}")))?;
            (http::StatusCode::OK, v)
        }
        Ok(Err(rmcp::ServiceError::McpError(e))) => (
            http::StatusCode::BAD_GATEWAY,
            json!({"error": {"code": e.code.0, "message": e.message}}),
        ),
        Ok(Err(e)) => return Err(unreachable(format!("the agent's client: {e}"))),
    };
    super::upstream::answer(rt, call, status, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Groups a grant added for the tool being called are not the caller's for what the
    /// server asks during the call; their own groups are.
    #[test]
    fn a_grant_for_the_tool_does_not_reach_the_servers_requests() {
        let cfg = callgate_core::config::Config::parse(
            "upstreams: {u: {url: \"http://127.0.0.1:9\"}}\nfunctions:\n  - {name: crm.search, upstream: u, route: GET /s}\n",
            &|_| None,
        )
        .unwrap();
        let reg = callgate_core::registry::Registry::build(&cfg).unwrap();
        let principal = Principal {
            subject: "alice".into(),
            groups: vec!["staff".into(), "support".into()],
            auth: callgate_core::model::AuthMethod::ApiKey { key_id: "k".into() },
            token_id: None,
            actor: None,
            expires_at: None,
            session: None,
            audiences: vec![],
        };
        let call = |granted: Vec<String>| Call {
            request_id: "r".into(),
            principal: Arc::new(principal.clone()),
            function: reg.get_or_alias("crm.search").unwrap().clone(),
            arguments: Default::default(),
            meta: CallMeta {
                ingress: Ingress::Mcp,
                source: None,
                received_at: 0,
                session: None,
                reason: None,
                break_glass: None,
                granted,
                approved: None,
                forward_headers: Default::default(),
            },
        };
        let origin = Origin::of(&call(vec!["support".into()]), None);
        assert_eq!(origin.principal.groups, ["staff"]);
        let origin = Origin::of(&call(vec![]), None);
        assert_eq!(origin.principal.groups, ["staff", "support"]);
    }

    #[test]
    fn server_requests_are_read_from_their_method_and_params() {
        let sampling = json!({"messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}], "maxTokens": 5});
        let form = json!({"mode": "form", "message": "ok?", "requestedSchema": {"type": "object", "properties": {"ok": {"type": "boolean"}}}});
        for (method, params) in [
            ("sampling/createMessage", sampling),
            ("elicitation/create", form),
            ("roots/list", json!({})),
        ] {
            let r: ServerRequest =
                serde_json::from_value(json!({"method": method, "params": params}))
                    .unwrap_or_else(|e| panic!("{method}: {e}"));
            let ok = matches!(
                (method, &r),
                (
                    "sampling/createMessage",
                    ServerRequest::CreateMessageRequest(_)
                ) | ("elicitation/create", ServerRequest::ElicitRequest(_))
                    | ("roots/list", ServerRequest::ListRootsRequest(_))
            );
            assert!(ok, "{method}: {r:?}");
        }
    }
}
