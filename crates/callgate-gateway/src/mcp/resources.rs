//! Upstream resources and prompts at `/mcp`: denied unless a policy allows them.
//!
//! Each upstream server's `resources/read` and `prompts/get` are functions of the registry
//! (`<prefix>:resources/read`, `<prefix>:prompts/get`, in the Cedar action group `mcp`), so a
//! read or a prompt is one more normalized call: policy (with the URI or the prompt's name as
//! arguments), rate limits, approvals, credentials, audit and masking all apply, as for a tool.
//!
//! - Lists (`resources/list`, `resources/templates/list`, `prompts/list`) gather the items of
//!   the servers whose function the caller could be allowed, like `tools/list`.
//! - A resource is routed to the server that listed its URI (or a template it matches); a
//!   prompt by its name's prefix (`crm.summarize` → server `crm`'s `summarize`).
//! - A refusal is JSON-RPC error [`REFUSED`](result::REFUSED) with the problem as `data`; a held read is
//!   [`REFUSED`](result::REFUSED) too, with the pending call in `data` (an agent follows it with
//!   `callgate.call_status`).

use callgate_core::refusal::Refusal;
use callgate_core::registry::mcp_method_function_name;
use rmcp::model::{ErrorCode, ErrorData};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Instant;

use super::McpCaller;
use super::relay::Agent;
use super::result::{self, REFUSED, rpc_refusal};
use crate::Shared;
use crate::pipeline::{self, Outcome, ToolCall, Trace};
use crate::runtime::Runtime;

/// Which servers claim a resource URI, as the servers last listed them. A URI is routed only
/// when exactly one server claims it: one server listing another's URI (or a template over
/// it) would otherwise take its reads — and put its own content before the agent as that
/// resource.
#[derive(Default)]
pub struct Owners {
    /// Listed URIs and the servers that listed them.
    uris: RwLock<HashMap<String, Vec<String>>>,
    /// URI template prefixes (up to the first `{`) and their server.
    templates: RwLock<Vec<(String, String)>>,
}

impl Owners {
    /// The servers claiming `uri` (by listing it, or a template over it), sorted.
    fn claims(&self, uri: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .uris
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(uri)
            .cloned()
            .unwrap_or_default();
        out.extend(
            self.templates
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(prefix, _)| !prefix.is_empty() && uri.starts_with(prefix.as_str()))
                .map(|(_, s)| s.clone()),
        );
        out.sort();
        out.dedup();
        out
    }

    /// Replaces `server`'s listed URIs (or templates) with those of its latest listing.
    fn record(&self, server: &str, uris: Option<&[Value]>, templates: Option<&[Value]>) {
        if let Some(uris) = uris {
            let mut map = self.uris.write().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, servers| {
                servers.retain(|s| s != server);
                !servers.is_empty()
            });
            for r in uris {
                if let Some(u) = r.get("uri").and_then(Value::as_str) {
                    let servers = map.entry(u.to_string()).or_default();
                    if !servers.iter().any(|s| s == server) {
                        servers.push(server.to_string());
                    }
                }
            }
        }
        if let Some(templates) = templates {
            let mut t = self.templates.write().unwrap_or_else(|e| e.into_inner());
            t.retain(|(_, s)| s != server);
            for r in templates {
                if let Some(u) = r.get("uriTemplate").and_then(Value::as_str) {
                    let prefix = u.split('{').next().unwrap_or_default().to_string();
                    if !t.iter().any(|(p, s)| *p == prefix && s == server) {
                        t.push((prefix, server.to_string()));
                    }
                }
            }
        }
    }
}

/// The servers (name, prefix) whose `method` the caller could be allowed.
fn servers_for(rt: &Runtime, caller: &McpCaller, method: &str) -> Vec<(String, String)> {
    rt.config
        .mcp
        .servers
        .iter()
        .filter_map(|(name, srv)| {
            let prefix = srv.tool_prefix(name).to_string();
            let f = rt
                .registry
                .get(&mcp_method_function_name(&prefix, method))?;
            rt.engine
                .could_allow(&caller.principal, f)
                .then(|| (name.clone(), prefix))
        })
        .collect()
}

/// The items of a list request, from every server whose `method` the caller could be allowed.
async fn gather(
    shared: &Shared,
    servers: &[(String, String)],
    list: &str,
) -> Vec<(String, String, Vec<Value>)> {
    let mut out = Vec::new();
    for (server, prefix) in servers {
        match shared.mcp.list(shared, server, list).await {
            Ok(items) => out.push((server.clone(), prefix.clone(), items)),
            Err(e) => tracing::warn!(server = %server, error = %e, "{list} failed"),
        }
    }
    out
}

/// `resources/list` or `resources/templates/list` (`list`) for the caller.
pub async fn list_resources(shared: &Shared, caller: &McpCaller, list: &str) -> Vec<Value> {
    let rt = shared.reloader.current();
    let servers = servers_for(&rt, caller, "resources/read");
    let mut all = Vec::new();
    for (server, _, items) in gather(shared, &servers, list).await {
        if list == "resources/list" {
            shared.mcp.owners.record(&server, Some(&items), None);
        } else {
            shared.mcp.owners.record(&server, None, Some(&items));
        }
        all.extend(items);
    }
    all
}

/// `prompts/list` for the caller: each prompt named `<prefix>.<name>`.
pub async fn list_prompts(shared: &Shared, caller: &McpCaller) -> Vec<Value> {
    let rt = shared.reloader.current();
    let servers = servers_for(&rt, caller, "prompts/get");
    let mut all = Vec::new();
    for (_, prefix, items) in gather(shared, &servers, "prompts/list").await {
        for mut p in items {
            if let Some(n) = p.get("name").and_then(Value::as_str) {
                p["name"] = Value::String(format!("{prefix}.{n}"));
                all.push(p);
            }
        }
    }
    all
}

/// `resources/read`: the server's (masked) result, once policy allowed it.
pub async fn read(
    shared: &Shared,
    caller: &McpCaller,
    agent: &Agent,
    uri: &str,
) -> Result<Value, ErrorData> {
    let rt = shared.reloader.current();
    let mut claims = shared.mcp.owners.claims(uri);
    if claims.is_empty() {
        // Not listed yet (or since): list the servers this caller may read from, once.
        list_resources(shared, caller, "resources/list").await;
        list_resources(shared, caller, "resources/templates/list").await;
        claims = shared.mcp.owners.claims(uri);
    }
    if claims.len() > 1 {
        tracing::warn!(%uri, servers = ?claims, "a resource claimed by several MCP servers is not served");
        let r = Refusal::Conflict {
            detail: format!(
                "{uri} is offered by more than one MCP server ({}), so it is not served",
                claims.join(", ")
            ),
        };
        let trace = Trace {
            subject: Some(caller.principal.subject.clone()),
            ..Trace::default()
        };
        caller.refused(shared, &trace, &r);
        return Err(ErrorData::invalid_request(r.detail(), None));
    }
    let Some(server) = claims.pop() else {
        return Err(ErrorData::resource_not_found(
            format!("no upstream MCP server offers {uri}"),
            None,
        ));
    };
    let Some(srv) = rt.config.mcp.servers.get(&server) else {
        return Err(ErrorData::resource_not_found(
            format!("no upstream MCP server offers {uri}"),
            None,
        ));
    };
    let prefix = srv.tool_prefix(&server).to_string();
    // A server this caller may never read from: as if the URI did not exist (recorded all
    // the same), so a refused caller does not learn what other servers offer.
    let may_read = rt
        .registry
        .get(&mcp_method_function_name(&prefix, "resources/read"))
        .is_some_and(|f| rt.engine.could_allow(&caller.principal, f));
    if !may_read {
        let r = Refusal::UnknownFunction {
            detail: format!("{uri} is not offered to this caller"),
        };
        let trace = Trace {
            subject: Some(caller.principal.subject.clone()),
            ..Trace::default()
        };
        caller.refused(shared, &trace, &r);
        return Err(ErrorData::resource_not_found(
            format!("no upstream MCP server offers {uri}"),
            None,
        ));
    }
    let mut args = Map::new();
    args.insert("uri".into(), Value::String(uri.to_string()));
    relay(shared, &rt, caller, agent, &prefix, "resources/read", args).await
}

/// `prompts/get` for `<prefix>.<name>`: the server's (masked) prompt, once policy allowed it.
pub async fn get_prompt(
    shared: &Shared,
    caller: &McpCaller,
    agent: &Agent,
    name: &str,
    arguments: Option<Map<String, Value>>,
) -> Result<Value, ErrorData> {
    let rt = shared.reloader.current();
    let found = rt
        .config
        .mcp
        .servers
        .iter()
        .map(|(n, s)| s.tool_prefix(n).to_string())
        .filter_map(|prefix| {
            let rest = name.strip_prefix(&prefix)?.strip_prefix('.')?;
            Some((prefix.clone(), rest.to_string()))
        })
        .max_by_key(|(prefix, _)| prefix.len());
    let Some((prefix, upstream_name)) = found else {
        return Err(ErrorData::invalid_params(
            format!("unknown prompt: {name}"),
            None,
        ));
    };
    let mut args = Map::new();
    args.insert("name".into(), Value::String(upstream_name));
    if let Some(a) = arguments {
        args.insert("arguments".into(), Value::Object(a));
    }
    relay(shared, &rt, caller, agent, &prefix, "prompts/get", args).await
}

/// One resource or prompt request through the pipeline, as a JSON-RPC result or error.
async fn relay(
    shared: &Shared,
    rt: &Runtime,
    caller: &McpCaller,
    agent: &Agent,
    prefix: &str,
    method: &str,
    arguments: Map<String, Value>,
) -> Result<Value, ErrorData> {
    let started = Instant::now();
    let name = mcp_method_function_name(prefix, method);
    let mut trace = Trace::default();
    let tc = ToolCall {
        request_id: caller.request_id.clone(),
        principal: caller.principal.clone(),
        name: &name,
        arguments: Value::Object(arguments),
        headers: &caller.headers,
        reason: None,
        break_glass: None,
        source: caller.source,
        method: true,
        agent: Some(agent),
    };
    let outcome = pipeline::run_tool_call(shared, rt, tc, &mut trace).await;
    let (status, answer) = match outcome {
        Ok(Outcome::Forwarded(up)) => {
            let body: Value = serde_json::from_slice(&up.body).unwrap_or(Value::Null);
            let answer = match body.get("error") {
                // The server's own error (e.g. −32002 resource not found), passed on.
                Some(e) if !up.status.is_success() => Err(ErrorData::new(
                    ErrorCode(e["code"].as_i64().unwrap_or(-32603) as i32),
                    e["message"].as_str().unwrap_or("error").to_string(),
                    None,
                )),
                _ => Ok(body),
            };
            (up.status.as_u16(), answer)
        }
        Ok(Outcome::Held(held)) => {
            let pending = result::pending(caller, &held);
            let text = pending
                .content
                .first()
                .and_then(|c| c.as_text())
                .map(|t| t.text.clone())
                .unwrap_or_default();
            (
                202,
                Err(ErrorData::new(
                    ErrorCode(REFUSED),
                    text,
                    pending.structured_content,
                )),
            )
        }
        Err(r) => {
            caller.refused(shared, &trace, &r);
            (r.status(), Err(rpc_refusal(&r, &caller.request_id)))
        }
    };
    crate::ingress::observe(shared, &trace, status, started);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_uri_is_routed_only_when_one_server_claims_it() {
        let o = Owners::default();
        o.record("crm", Some(&[json!({"uri": "crm://customers/42"})]), None);
        o.record(
            "crm",
            None,
            Some(&[json!({"uriTemplate": "crm://orders/{id}"})]),
        );
        assert_eq!(o.claims("crm://customers/42"), ["crm"]);
        assert_eq!(o.claims("crm://orders/7"), ["crm"]);
        assert!(o.claims("crm://other").is_empty());
        // Another server listing crm's URI, or a longer template over crm's, contests it.
        o.record(
            "ledger",
            Some(&[json!({"uri": "crm://customers/42"})]),
            None,
        );
        o.record(
            "ledger",
            None,
            Some(&[json!({"uriTemplate": "crm://orders/7{x}"})]),
        );
        assert_eq!(o.claims("crm://customers/42"), ["crm", "ledger"]);
        assert_eq!(o.claims("crm://orders/7"), ["crm", "ledger"]);
        assert_eq!(o.claims("crm://orders/8"), ["crm"]);
        // A later listing replaces the server's earlier claims.
        o.record("ledger", Some(&[]), Some(&[]));
        assert_eq!(o.claims("crm://customers/42"), ["crm"]);
        assert_eq!(o.claims("crm://orders/7"), ["crm"]);
    }
}
