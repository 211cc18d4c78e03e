//! Callgate's connections to upstream MCP servers, and phase 9 for their tools.
//!
//! - **stdio** servers are processes Callgate launches (rmcp's child-process transport) and
//!   supervises: when one exits it is started again with exponential backoff (0.5 s doubling
//!   to 30 s, reset after a minute of uptime). The process gets a clean environment: only
//!   `PATH`, `HOME`, `LANG` and its configured `env`, never Callgate's own secrets.
//! - **streamable HTTP** servers are spoken to with Callgate's pooled HTTP client, so every
//!   `tools/call` carries that call's own just-in-time credential (a header per request);
//!   the agent's token is never forwarded. Sessions are re-established when the server
//!   forgets them (404).
//!
//! On every (re)connection, on `notifications/tools/list_changed` and once a minute, the
//! server's tools are listed and recorded in [`super::pins`]: new tools are pinned, changed
//! ones blocked. Requests a server makes of the agent during a call (sampling, elicitation,
//! roots) are decided and relayed by [`super::relay`]; outside a call they are refused.

use bytes::Bytes;
use callgate_core::config::McpServerConfig;
use callgate_core::refusal::Refusal;
use callgate_core::{Call, ToolDef};
use http::{HeaderName, HeaderValue, header};
use http_body_util::{BodyExt, Full};
// Sampling and roots are deprecated by MCP 2026-07-28 (SEP-2577); servers on earlier versions
// still ask for them, and Callgate relays them when policy allows.
use rmcp::model::{
    CallToolResponse, ClientConfig, ElicitRequestParams, ElicitResult, ErrorData,
    GetPromptResponse, Implementation, ReadResourceResponse,
};
#[allow(deprecated)]
use rmcp::model::{CreateMessageRequestParams, CreateMessageResult, ListRootsResult};
use rmcp::service::{NotificationContext, Peer, RequestContext, RoleClient, ServiceExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

use super::pins::Pins;
use super::relay::{Agent, Origin};
use super::result::TOOL_RESULT_TYPE;
use crate::Shared;
use crate::credentials::Obtained;
use crate::http_client::HttpClient;
use crate::runtime::Runtime;
use crate::upstream::UpstreamResponse;

/// The protocol version Callgate offers upstream servers in the handshake.
const UPSTREAM_VERSION: &str = "2025-11-25";
/// How often a server's tools are listed again, in case it changed them without saying so.
const REFRESH: Duration = Duration::from_secs(60);

/// The upstream MCP servers of this process.
#[derive(Default)]
pub struct Upstreams {
    pins: Option<Arc<Pins>>,
    servers: RwLock<HashMap<String, Arc<Server>>>,
    /// Which server each listed resource belongs to.
    pub owners: super::resources::Owners,
}

struct Server {
    name: String,
    conn: Conn,
    /// Woken when the server says its tools changed.
    refresh: Notify,
    /// The calls in progress on a stdio server, which its requests of the agent belong to.
    in_flight: std::sync::Mutex<Vec<(u64, Origin)>>,
    next_flight: AtomicU64,
}

/// What a server's request during a call is decided with: the call's origin and the gateway.
struct Relay<'a> {
    shared: &'a Shared,
    origin: Origin,
    /// Whose upstream session the call runs in ([`session_owner`]).
    owner: String,
}

/// Registers a call in progress on a stdio server, for as long as it lives.
struct InFlight<'a> {
    server: &'a Server,
    id: u64,
}

impl<'a> InFlight<'a> {
    fn enter(server: &'a Server, origin: Origin) -> InFlight<'a> {
        let id = server.next_flight.fetch_add(1, Ordering::Relaxed);
        lock(&server.in_flight).push((id, origin));
        InFlight { server, id }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(&self.server.in_flight).retain(|(id, _)| *id != self.id);
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Server {
    /// The call a stdio server's request belongs to: its only call in progress. `Err` with
    /// the number of calls when there are several (stdio does not say which one asks).
    fn sole_in_flight(&self) -> Result<Option<Origin>, usize> {
        let calls = lock(&self.in_flight);
        match calls.as_slice() {
            [] => Ok(None),
            [(_, origin)] => Ok(Some(origin.clone())),
            many => Err(many.len()),
        }
    }
}

enum Conn {
    Http(Box<HttpMcp>),
    /// The running process's client, while it runs.
    Stdio(tokio::sync::watch::Sender<Option<Peer<RoleClient>>>),
}

fn unreachable(server: &str, detail: impl std::fmt::Display) -> Refusal {
    Refusal::UpstreamUnreachable {
        detail: format!("MCP server {server}: {detail}"),
    }
}

impl Upstreams {
    /// Upstreams whose tool pins live at `pins`.
    pub fn new(pins: &Path) -> Upstreams {
        Upstreams {
            pins: Some(Arc::new(Pins::new(pins.to_path_buf()))),
            servers: RwLock::new(HashMap::new()),
            owners: Default::default(),
        }
    }

    /// The tool pins.
    pub fn pins(&self) -> Option<&Pins> {
        self.pins.as_deref()
    }

    /// Whether `server`'s `tool` is blocked by a changed, unapproved definition.
    pub fn is_blocked(&self, server: &str, tool: &str) -> bool {
        self.pins
            .as_ref()
            .is_none_or(|p| p.is_blocked(server, tool))
    }

    /// Connects to (or launches) every configured server and keeps it so.
    pub fn start(shared: &Arc<Shared>, base: &Path) {
        let rt = shared.reloader.current();
        for (name, cfg) in &rt.config.mcp.servers {
            let conn = match &cfg.url {
                Some(url) => match HttpMcp::new(url, cfg, base) {
                    Ok(h) => Conn::Http(Box::new(h)),
                    Err(e) => {
                        tracing::error!(server = %name, error = %e, "MCP server not started");
                        continue;
                    }
                },
                None => Conn::Stdio(tokio::sync::watch::Sender::new(None)),
            };
            let server = Arc::new(Server {
                name: name.clone(),
                conn,
                refresh: Notify::new(),
                in_flight: Default::default(),
                next_flight: AtomicU64::new(0),
            });
            shared
                .mcp
                .servers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone(), server.clone());
            let weak = Arc::downgrade(shared);
            let cfg = cfg.clone();
            let base = base.to_path_buf();
            match &server.conn {
                Conn::Http(_) => {
                    tokio::spawn(keep_listed(weak, server));
                }
                Conn::Stdio(_) => {
                    tokio::spawn(supervise(weak, server, cfg, base));
                }
            }
        }
    }

    fn server(&self, name: &str) -> Option<Arc<Server>> {
        self.servers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Phase 9 for an MCP tool: `tools/call` on its server, with Callgate's credential. What
    /// the server asks of the agent meanwhile is relayed to `agent` when policy allows it.
    #[allow(clippy::too_many_arguments)]
    pub async fn call_tool(
        &self,
        shared: &Shared,
        rt: &Runtime,
        server: &str,
        tool: &str,
        call: &Call,
        credential: Option<Obtained>,
        agent: Option<&Agent>,
    ) -> Result<UpstreamResponse, Refusal> {
        let params = json!({"name": tool, "arguments": call.arguments});
        let relay = Relay {
            shared,
            origin: Origin::of(call, agent),
            owner: session_owner(rt, call),
        };
        let result = self
            .request(
                server,
                "tools/call",
                params,
                call.function.timeout,
                credential,
                relay,
            )
            .await?;
        let (status, body) = match result {
            Ok(r) => (http::StatusCode::OK, r),
            // The server refused the request itself (unknown tool, bad arguments): an error
            // result the agent can read.
            Err(e) => (
                http::StatusCode::BAD_GATEWAY,
                json!({
                    "content": [{"type": "text", "text": format!(
                        "the MCP server refused the call: {}",
                        e["message"].as_str().unwrap_or("error")
                    )}],
                    "isError": true
                }),
            ),
        };
        answer(rt, call, status, &body)
    }

    /// Phase 9 for another MCP request (`resources/read`, `prompts/get`): the server's result,
    /// or (502) its JSON-RPC error as `{"error": {...}}`.
    #[allow(clippy::too_many_arguments)]
    pub async fn call_method(
        &self,
        shared: &Shared,
        rt: &Runtime,
        server: &str,
        method: &str,
        call: &Call,
        credential: Option<Obtained>,
        agent: Option<&Agent>,
    ) -> Result<UpstreamResponse, Refusal> {
        let params = Value::Object(call.arguments.clone());
        let relay = Relay {
            shared,
            origin: Origin::of(call, agent),
            owner: session_owner(rt, call),
        };
        let result = self
            .request(
                server,
                method,
                params,
                call.function.timeout,
                credential,
                relay,
            )
            .await?;
        let (status, body) = match result {
            Ok(r) => (http::StatusCode::OK, r),
            Err(e) => (
                http::StatusCode::BAD_GATEWAY,
                json!({"error": {"code": e["code"], "message": e["message"]}}),
            ),
        };
        answer(rt, call, status, &body)
    }

    /// Every item a list request returns (`resources/list` → `resources`,
    /// `resources/templates/list` → `resourceTemplates`, `prompts/list` → `prompts`), with
    /// the server's listing credential. A server without that capability lists nothing.
    pub async fn list(
        &self,
        shared: &Shared,
        server: &str,
        method: &str,
    ) -> Result<Vec<Value>, String> {
        let srv = self
            .server(server)
            .ok_or_else(|| format!("MCP server {server} is not connected"))?;
        let key = match method {
            "resources/list" => "resources",
            "resources/templates/list" => "resourceTemplates",
            _ => "prompts",
        };
        match &srv.conn {
            Conn::Http(h) => {
                let credential = {
                    let rt = shared.reloader.current();
                    shared.credentials.for_listing(&rt, server)
                };
                h.list_all(server, method, key, credential).await
            }
            Conn::Stdio(slot) => {
                let peer = slot
                    .borrow()
                    .clone()
                    .ok_or_else(|| format!("MCP server {server} is not running"))?;
                if !supports(&peer, method) {
                    return Ok(vec![]);
                }
                let items = match method {
                    "resources/list" => to_values(peer.list_all_resources().await),
                    "resources/templates/list" => {
                        to_values(peer.list_all_resource_templates().await)
                    }
                    _ => to_values(peer.list_all_prompts().await),
                };
                items.map_err(|e| format!("{method}: {e}"))
            }
        }
    }

    /// One request to `server`: its result or its JSON-RPC error. A stdio process being
    /// (re)started is waited for, within `timeout`.
    async fn request(
        &self,
        server: &str,
        method: &str,
        params: Value,
        timeout: Duration,
        credential: Option<Obtained>,
        relay: Relay<'_>,
    ) -> Result<Result<Value, RpcError>, Refusal> {
        let srv = self
            .server(server)
            .ok_or_else(|| unreachable(server, "not connected"))?;
        let late = || Refusal::UpstreamTimeout {
            detail: format!("MCP server {server} did not answer in time"),
        };
        let peer = match &srv.conn {
            Conn::Http(h) => {
                let sent = h.rpc(
                    server,
                    &relay.owner,
                    method,
                    params,
                    credential,
                    Some(&relay),
                );
                return tokio::time::timeout(timeout, sent)
                    .await
                    .map_err(|_| late())?;
            }
            Conn::Stdio(slot) => {
                let mut rx = slot.subscribe();
                match tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await {
                    Ok(Ok(p)) => p.clone(),
                    _ => None,
                }
                .ok_or_else(|| unreachable(server, "the process is not running"))?
            }
        };
        let _in_flight = InFlight::enter(&srv, relay.origin);
        enum Failed {
            Service(rmcp::ServiceError),
            Refused(Refusal),
        }
        let bad = |e: serde_json::Error| Failed::Refused(unreachable(server, e));
        let input_required = || {
            Err(
                json!({"code": -32603, "message": "the server asked for input or a task, which Callgate does not relay"}),
            )
        };
        let sent = async {
            Ok::<_, Failed>(match method {
                "tools/call" => match peer
                    .call_tool_once(serde_json::from_value(params).map_err(bad)?)
                    .await
                    .map_err(Failed::Service)?
                {
                    CallToolResponse::Complete(r) => Ok(serde_json::to_value(r).map_err(bad)?),
                    _ => input_required(),
                },
                "resources/read" => match peer
                    .read_resource_once(serde_json::from_value(params).map_err(bad)?)
                    .await
                    .map_err(Failed::Service)?
                {
                    ReadResourceResponse::Complete(r) => Ok(serde_json::to_value(r).map_err(bad)?),
                    _ => input_required(),
                },
                "prompts/get" => match peer
                    .get_prompt_once(serde_json::from_value(params).map_err(bad)?)
                    .await
                    .map_err(Failed::Service)?
                {
                    GetPromptResponse::Complete(r) => Ok(serde_json::to_value(r).map_err(bad)?),
                    _ => input_required(),
                },
                other => {
                    return Err(Failed::Refused(unreachable(
                        server,
                        format!("{other} is not relayed"),
                    )));
                }
            })
        };
        match tokio::time::timeout(timeout, sent).await {
            Err(_) => Err(late()),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(Failed::Refused(r))) => Err(r),
            Ok(Err(Failed::Service(rmcp::ServiceError::McpError(e)))) => {
                Ok(Err(json!({"code": e.code.0, "message": e.message})))
            }
            Ok(Err(Failed::Service(e))) => Err(unreachable(server, e)),
        }
    }
}

/// Whether a stdio server declared the capability a list request needs.
fn supports(peer: &Peer<RoleClient>, method: &str) -> bool {
    let Some(info) = peer.peer_info() else {
        return false;
    };
    if method.starts_with("resources/") {
        info.capabilities.resources.is_some()
    } else {
        info.capabilities.prompts.is_some()
    }
}

fn to_values<T: serde::Serialize>(
    items: Result<Vec<T>, rmcp::ServiceError>,
) -> Result<Vec<Value>, rmcp::ServiceError> {
    Ok(items?
        .iter()
        .filter_map(|i| serde_json::to_value(i).ok())
        .collect())
}

/// An upstream MCP result as the pipeline's upstream response (size-capped).
pub(crate) fn answer(
    rt: &Runtime,
    call: &Call,
    status: http::StatusCode,
    body: &Value,
) -> Result<UpstreamResponse, Refusal> {
    let body = serde_json::to_vec(body).map_err(|e| Refusal::Internal {
        detail: e.to_string(),
    })?;
    if body.len() > rt.config.limits.max_response_bytes {
        return Err(Refusal::UpstreamUnreachable {
            detail: format!(
                "the result of {} is larger than {} bytes",
                call.function.name, rt.config.limits.max_response_bytes
            ),
        });
    }
    let mut headers = http::HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(TOOL_RESULT_TYPE),
    );
    Ok(UpstreamResponse {
        status,
        headers,
        body: body.into(),
    })
}

/// Lists the tools of every MCP server in the config at `config_path` and records them in the
/// pins, before the runtime is loaded: policies may name the tools of a server Callgate has
/// not met before. A server that cannot be reached within `timeout` is reported and skipped
/// (its tools stay as pinned; it is retried once the gateway runs).
pub async fn discover(
    config_path: &Path,
    vars: &crate::runtime::Vars,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(config_path)
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let cfg = callgate_core::config::Config::parse(&text, &|n| vars(n))
        .map_err(|e| format!("{}: {}", config_path.display(), e.message))?;
    let base = crate::runtime::base_dir(config_path).to_path_buf();
    let pins_path = base.join(&cfg.mcp.pins);
    let mut problems = Vec::new();
    for (name, srv) in &cfg.mcp.servers {
        let listed = tokio::time::timeout(timeout, async {
            match &srv.url {
                Some(url) => {
                    // Listing needs no caller: a server-wide secret is sent (minted and OAuth
                    // credentials are only obtained once the gateway runs).
                    let credential = listing_secret(srv, &base, vars);
                    HttpMcp::new(url, srv, &base)?
                        .list_tools(name, credential)
                        .await
                }
                None => {
                    let (running, _changed) = launch(name, srv, &base, Weak::new()).await?;
                    let tools = running
                        .peer()
                        .list_all_tools()
                        .await
                        .map_err(|e| e.to_string())?;
                    let _ = running.cancel().await;
                    Ok(tools
                        .iter()
                        .filter_map(|t| serde_json::to_value(t).ok())
                        .collect())
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
        match listed {
            Ok(tools) => {
                let seen = super::pins::update(&pins_path, |f| {
                    super::pins::observe(f, name, &tool_defs(&tools))
                })?;
                for t in &seen.blocked {
                    problems.push(format!(
                        "mcp server {name:?}: tool {t:?} changed its definition and is blocked \
                         until approved (callgate tools diff)"
                    ));
                }
            }
            Err(e) => problems.push(format!("mcp server {name:?}: {e}")),
        }
    }
    Ok(problems)
}

/// A server's configured secret as a header, for listing its tools before the runtime exists.
fn listing_secret(
    srv: &McpServerConfig,
    base: &Path,
    vars: &crate::runtime::Vars,
) -> Option<Obtained> {
    let callgate_core::config::CredentialConfig::Secret {
        env,
        file,
        header: Some(h),
        prefix,
        ..
    } = srv.credential.as_ref()?
    else {
        return None;
    };
    let mut errors = Vec::new();
    let secret = crate::runtime::read_secret(env, file, "secret", base, vars, &mut errors)?;
    let name = HeaderName::try_from(h.as_str()).ok()?;
    let mut value = HeaderValue::from_bytes(&[prefix.as_bytes(), &secret].concat()).ok()?;
    value.set_sensitive(true);
    Some(Obtained {
        id: "secret".into(),
        header: Some((name, value)),
        query: None,
    })
}

/// A server's tools as pinning sees them.
fn tool_defs(tools: &[Value]) -> Vec<ToolDef> {
    tools
        .iter()
        .filter_map(|t| {
            Some(ToolDef {
                name: t.get("name")?.as_str()?.to_string(),
                description: t
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                input_schema: t
                    .get("inputSchema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
            })
        })
        .collect()
}

/// Records `tools` of `server` in the pins and says what changed.
fn record(shared: &Shared, server: &str, tools: &[Value]) {
    let Some(pins) = shared.mcp.pins() else {
        return;
    };
    match pins.observe(server, &tool_defs(tools)) {
        Ok(seen) => {
            for t in &seen.pinned {
                tracing::info!(server, tool = %t, "MCP tool pinned on first use");
            }
            for t in &seen.blocked {
                tracing::warn!(server, tool = %t, "MCP tool definition changed: blocked until an administrator approves it (callgate tools diff)");
            }
            for t in &seen.restored {
                tracing::info!(server, tool = %t, "MCP tool is back to its approved definition");
            }
        }
        Err(e) => tracing::error!(server, error = %e, "MCP tool pins could not be written"),
    }
}

/// Whose upstream session a call runs in: the person and agent its credential names (as
/// minted tokens and token exchange do).
fn session_owner(rt: &Runtime, call: &Call) -> String {
    let r = crate::approvals::requester_of(&call.principal, &rt.config.approvals);
    format!("{}\0{}", r.subject, r.actor.as_deref().unwrap_or(""))
}

/// Lists an HTTP server's tools until it answers, then again on change and every minute.
async fn keep_listed(weak: Weak<Shared>, server: Arc<Server>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let Conn::Http(h) = &server.conn else { return };
        let credential = {
            let rt = shared.reloader.current();
            shared.credentials.for_listing(&rt, &server.name)
        };
        let ok = match h.list_tools(&server.name, credential).await {
            Ok(tools) => {
                record(&shared, &server.name, &tools);
                true
            }
            Err(e) => {
                tracing::warn!(server = %server.name, error = %e, "MCP server tools could not be listed");
                false
            }
        };
        drop(shared);
        let wait = if ok {
            backoff = Duration::from_millis(500);
            REFRESH
        } else {
            backoff = (backoff * 2).min(Duration::from_secs(30));
            backoff
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = server.refresh.notified() => {}
        }
    }
}

/// Callgate as an MCP client of a stdio server: relays the server's requests of the agent
/// (when policy allows them) and notices when its tools change.
struct ClientSide {
    changed: mpsc::UnboundedSender<()>,
    server: String,
    /// The gateway (none while discovering tools before it runs: every request is refused).
    shared: Weak<Shared>,
}

impl ClientSide {
    /// One request of the server, for the call in progress on it.
    async fn relay<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        params: Option<Value>,
    ) -> Result<T, ErrorData> {
        let answer = match self.shared.upgrade() {
            None => super::relay::outside_call(&self.server, method),
            Some(shared) => {
                let origin = shared
                    .mcp
                    .server(&self.server)
                    .map(|s| s.sole_in_flight())
                    .unwrap_or(Ok(None));
                match origin {
                    Ok(origin) => {
                        super::relay::server_request(
                            &shared,
                            &self.server,
                            origin.as_ref(),
                            method,
                            params,
                        )
                        .await
                    }
                    Err(calls) => {
                        tracing::warn!(server = %self.server, method, calls, "an upstream MCP server's request was refused: several calls are in progress");
                        Err(json!({"code": -32603, "message": format!(
                            "Callgate cannot tell which of the {calls} calls in progress {method} belongs to (stdio does not say)"
                        )}))
                    }
                }
            }
        };
        match answer {
            Ok(v) => serde_json::from_value(v).map_err(|e| {
                ErrorData::internal_error(format!("the agent's answer is not readable: {e}"), None)
            }),
            Err(e) => Err(serde_json::from_value(e)
                .unwrap_or_else(|_| ErrorData::internal_error("refused", None))),
        }
    }
}

#[allow(deprecated)]
impl rmcp::ClientHandler for ClientSide {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            serde_json::from_value(super::relay::upstream_capabilities())
                .expect("static capabilities"),
            Implementation::new("callgate", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.changed.send(());
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        self.relay("sampling/createMessage", serde_json::to_value(params).ok())
            .await
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        self.relay("elicitation/create", serde_json::to_value(params).ok())
            .await
    }

    async fn list_roots(
        &self,
        _context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        self.relay("roots/list", None).await
    }
}

/// Launches a stdio server and keeps it running.
async fn supervise(
    weak: Weak<Shared>,
    server: Arc<Server>,
    cfg: McpServerConfig,
    base: std::path::PathBuf,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = Instant::now();
        match launch(&server.name, &cfg, &base, weak.clone()).await {
            Ok((running, mut changed)) => {
                tracing::info!(server = %server.name, "MCP server started");
                let peer = running.peer().clone();
                if let Some(shared) = weak.upgrade() {
                    list_stdio(&shared, &server.name, &peer).await;
                }
                if let Conn::Stdio(slot) = &server.conn {
                    slot.send_replace(Some(peer.clone()));
                }
                let mut waiting = Box::pin(running.waiting());
                loop {
                    tokio::select! {
                        _ = &mut waiting => break,
                        Some(()) = changed.recv() => {}
                        _ = tokio::time::sleep(REFRESH) => {}
                        _ = server.refresh.notified() => {}
                    }
                    let Some(shared) = weak.upgrade() else { return };
                    list_stdio(&shared, &server.name, &peer).await;
                }
                if let Conn::Stdio(slot) = &server.conn {
                    slot.send_replace(None);
                }
                tracing::warn!(server = %server.name, "MCP server exited; restarting it");
            }
            Err(e) => {
                tracing::error!(server = %server.name, error = %e, "MCP server could not be started");
            }
        }
        if weak.strong_count() == 0 {
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(500);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

type Running = rmcp::service::RunningService<RoleClient, ClientSide>;

async fn launch(
    name: &str,
    cfg: &McpServerConfig,
    base: &Path,
    shared: Weak<Shared>,
) -> Result<(Running, mpsc::UnboundedReceiver<()>), String> {
    let (program, args) = cfg.command.split_first().ok_or("no command configured")?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).current_dir(base).env_clear();
    for keep in ["PATH", "HOME", "LANG"] {
        if let Ok(v) = std::env::var(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.envs(&cfg.env);
    let (transport, _stderr) = rmcp::transport::TokioChildProcess::builder(cmd)
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let running = ClientSide {
        changed: tx,
        server: name.to_string(),
        shared,
    }
    .serve(transport)
    .await
    .map_err(|e| format!("initialize: {e}"))?;
    Ok((running, rx))
}

async fn list_stdio(shared: &Shared, name: &str, peer: &Peer<RoleClient>) {
    match peer.list_all_tools().await {
        Ok(tools) => {
            let tools: Vec<Value> = tools
                .iter()
                .filter_map(|t| serde_json::to_value(t).ok())
                .collect();
            record(shared, name, &tools);
        }
        Err(e) => {
            tracing::warn!(server = %name, error = %e, "MCP server tools could not be listed")
        }
    }
}

/// Upstream sessions kept per server; past this many, the least recently used is forgotten.
const MAX_SESSIONS: usize = 1024;

/// A streamable HTTP MCP server, spoken to with Callgate's own HTTP client.
struct HttpMcp {
    client: HttpClient,
    url: http::Uri,
    /// One session per identity the calls' credentials speak for (see [`session_owner`]): a
    /// server that binds its sessions to a user, as MCP asks servers to, never sees one
    /// person's call in another's session. Listing uses Callgate's own (`""`).
    /// Each owner's slot is locked on its own while its handshake runs, so one person's slow
    /// `initialize` holds up nobody else.
    sessions: std::sync::Mutex<HashMap<String, (SessionSlot, Instant)>>,
    next_id: AtomicU64,
    max_bytes: usize,
}

/// One owner's session, once its handshake is done.
type SessionSlot = Arc<tokio::sync::Mutex<Option<Session>>>;

#[derive(Clone)]
struct Session {
    id: Option<HeaderValue>,
    version: HeaderValue,
}

/// A JSON-RPC error object from the server.
type RpcError = Value;

impl HttpMcp {
    fn new(url: &str, cfg: &McpServerConfig, base: &Path) -> Result<HttpMcp, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(format!("{url} is not an http(s) URL"));
        }
        let ca = cfg.ca_file.as_ref().map(|c| base.join(c));
        let client = crate::http_client::build_client(ca.as_deref(), Duration::from_secs(5))?;
        Ok(HttpMcp {
            client,
            url: uri,
            sessions: std::sync::Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            max_bytes: 16 << 20,
        })
    }

    async fn list_tools(
        &self,
        server: &str,
        credential: Option<Obtained>,
    ) -> Result<Vec<Value>, String> {
        self.list_all(server, "tools/list", "tools", credential)
            .await
    }

    /// Every page of a list request: the items under `key`. A server that does not know the
    /// method (JSON-RPC −32601) lists nothing.
    async fn list_all(
        &self,
        server: &str,
        method: &str,
        key: &str,
        credential: Option<Obtained>,
    ) -> Result<Vec<Value>, String> {
        let auth = credential.and_then(|c| c.header);
        let mut tools = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let params = match &cursor {
                Some(c) => json!({"cursor": c}),
                None => json!({}),
            };
            let page = match self
                .rpc_with(server, "", method, params, auth.clone(), None)
                .await
                .map_err(|r| r.detail())?
            {
                Ok(page) => page,
                Err(e) if e["code"] == -32601 && method != "tools/list" => break,
                Err(e) => return Err(format!("{method}: {e}")),
            };
            if let Some(t) = page.get(key).and_then(Value::as_array) {
                tools.extend(t.iter().cloned());
            }
            cursor = page
                .get("nextCursor")
                .and_then(Value::as_str)
                .map(str::to_string);
            if cursor.is_none() {
                break;
            }
        }
        Ok(tools)
    }

    /// One request: the result, or the server's JSON-RPC error. Establishes the session first
    /// and once more if the server forgot it.
    async fn rpc(
        &self,
        server: &str,
        owner: &str,
        method: &str,
        params: Value,
        credential: Option<Obtained>,
        relay: Option<&Relay<'_>>,
    ) -> Result<Result<Value, RpcError>, Refusal> {
        self.rpc_with(
            server,
            owner,
            method,
            params,
            credential.and_then(|c| c.header),
            relay,
        )
        .await
    }

    async fn rpc_with(
        &self,
        server: &str,
        owner: &str,
        method: &str,
        params: Value,
        auth: Option<(HeaderName, HeaderValue)>,
        relay: Option<&Relay<'_>>,
    ) -> Result<Result<Value, RpcError>, Refusal> {
        for attempt in 0..2 {
            let session = self.session(server, owner, auth.as_ref()).await?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
            match self
                .post(server, &msg, Some(&session), auth.as_ref())
                .await?
            {
                Posted::SessionGone if attempt == 0 => {
                    self.sessions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(owner);
                }
                Posted::SessionGone => return Err(unreachable(server, "the session was lost")),
                Posted::Answer(body, ctype) => {
                    return self
                        .read_answer(server, id, body, &ctype, &session, auth.as_ref(), relay)
                        .await;
                }
                Posted::Accepted => return Err(unreachable(server, "no answer to a request")),
            }
        }
        Err(unreachable(server, "the session was lost"))
    }

    /// `owner`'s session, after the `initialize` handshake (with `owner`'s credential) if
    /// there is none.
    async fn session(
        &self,
        server: &str,
        owner: &str,
        auth: Option<&(HeaderName, HeaderValue)>,
    ) -> Result<Session, Refusal> {
        let slot = {
            let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((slot, used)) = map.get_mut(owner) {
                *used = Instant::now();
                slot.clone()
            } else {
                if map.len() >= MAX_SESSIONS
                    && let Some(oldest) = map
                        .iter()
                        .min_by_key(|(_, (_, used))| *used)
                        .map(|(k, _)| k.clone())
                {
                    map.remove(&oldest);
                }
                let slot = SessionSlot::default();
                map.insert(owner.to_string(), (slot.clone(), Instant::now()));
                slot
            }
        };
        let mut guard = slot.lock().await;
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let init = json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": UPSTREAM_VERSION,
                "capabilities": super::relay::upstream_capabilities(),
                "clientInfo": {"name": "callgate", "version": env!("CARGO_PKG_VERSION")}
            }
        });
        let pre = Session {
            id: None,
            version: HeaderValue::from_static(UPSTREAM_VERSION),
        };
        let (body, ctype, sid) = match self.post_raw(server, &init, None, auth).await? {
            (Posted::Answer(b, c), sid) => (b, c, sid),
            _ => return Err(unreachable(server, "no answer to initialize")),
        };
        let result = self
            .read_answer(server, 0, body, &ctype, &pre, auth, None)
            .await?
            .map_err(|e| unreachable(server, format!("initialize refused: {e}")))?;
        let version = result
            .get("protocolVersion")
            .and_then(Value::as_str)
            .and_then(|v| HeaderValue::from_str(v).ok())
            .ok_or_else(|| unreachable(server, "initialize named no protocol version"))?;
        let session = Session { id: sid, version };
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        self.post(server, &note, Some(&session), auth).await?;
        *guard = Some(session.clone());
        Ok(session)
    }

    async fn post(
        &self,
        server: &str,
        msg: &Value,
        session: Option<&Session>,
        auth: Option<&(HeaderName, HeaderValue)>,
    ) -> Result<Posted, Refusal> {
        Ok(self.post_raw(server, msg, session, auth).await?.0)
    }

    async fn post_raw(
        &self,
        server: &str,
        msg: &Value,
        session: Option<&Session>,
        auth: Option<&(HeaderName, HeaderValue)>,
    ) -> Result<(Posted, Option<HeaderValue>), Refusal> {
        let mut req = http::Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, text/event-stream");
        if let Some(s) = session {
            req = req.header("mcp-protocol-version", s.version.clone());
            if let Some(id) = &s.id {
                req = req.header("mcp-session-id", id.clone());
            }
        }
        if let Some((name, value)) = auth {
            req = req.header(name, value.clone());
        }
        let req = req
            .body(Full::new(Bytes::from(msg.to_string())))
            .map_err(|e| unreachable(server, e))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| unreachable(server, e))?;
        let status = resp.status();
        let sid = resp.headers().get("mcp-session-id").cloned();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if status == http::StatusCode::NOT_FOUND && session.is_some_and(|s| s.id.is_some()) {
            return Ok((Posted::SessionGone, sid));
        }
        if status == http::StatusCode::ACCEPTED {
            return Ok((Posted::Accepted, sid));
        }
        if !status.is_success() {
            return Err(unreachable(server, format!("HTTP {}", status.as_u16())));
        }
        Ok((Posted::Answer(resp.into_body(), ctype), sid))
    }

    /// Reads the answer to request `id` from a JSON body or an SSE stream. Requests the server
    /// sends on the stream are decided and relayed with `relay` (refused without one).
    #[allow(clippy::too_many_arguments)]
    async fn read_answer(
        &self,
        server: &str,
        id: u64,
        body: hyper::body::Incoming,
        ctype: &str,
        session: &Session,
        auth: Option<&(HeaderName, HeaderValue)>,
        relay: Option<&Relay<'_>>,
    ) -> Result<Result<Value, RpcError>, Refusal> {
        // The whole answer is bounded, SSE stream or JSON body.
        let body = http_body_util::Limited::new(body, self.max_bytes);
        if ctype.starts_with("text/event-stream") {
            let body = body.map_err(AnswerError);
            let mut events = std::pin::pin!(sse_stream::SseStream::new(body));
            while let Some(msg) = next_message(&mut events, server).await? {
                if let Some(answer) = self.handle(server, id, msg, session, auth, relay).await? {
                    return Ok(answer);
                }
            }
            return Err(unreachable(server, "the stream ended without an answer"));
        }
        let buf = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(unreachable(server, "the answer is too large"));
            }
            Err(e) => return Err(unreachable(server, e)),
        };
        let msg = callgate_core::json::parse_strict(&buf)
            .map_err(|e| unreachable(server, format!("the answer is not JSON: {e}")))?;
        self.handle(server, id, msg, session, auth, relay)
            .await?
            .ok_or_else(|| unreachable(server, "the answer does not answer the request"))
    }

    /// One message from the server: the answer to `id`, or a request it makes of the agent
    /// (decided and relayed, then answered), or a notification (ignored).
    async fn handle(
        &self,
        server: &str,
        id: u64,
        msg: Value,
        session: &Session,
        auth: Option<&(HeaderName, HeaderValue)>,
        relay: Option<&Relay<'_>>,
    ) -> Result<Option<Result<Value, RpcError>>, Refusal> {
        if let Some(method) = msg.get("method").and_then(Value::as_str) {
            if let Some(req_id) = msg.get("id") {
                let params = msg.get("params").cloned();
                let answer = match relay {
                    Some(r) => {
                        super::relay::server_request(
                            r.shared,
                            server,
                            Some(&r.origin),
                            method,
                            params,
                        )
                        .await
                    }
                    None => super::relay::outside_call(server, method),
                };
                let reply = match answer {
                    Ok(result) => json!({"jsonrpc": "2.0", "id": req_id, "result": result}),
                    Err(error) => json!({"jsonrpc": "2.0", "id": req_id, "error": error}),
                };
                if let Err(e) = self.post(server, &reply, Some(session), auth).await {
                    tracing::warn!(server, method, error = %e.detail(), "the answer to an MCP server's request was not delivered");
                }
            }
            return Ok(None);
        }
        if msg.get("id").and_then(Value::as_u64) != Some(id) {
            return Ok(None);
        }
        if let Some(e) = msg.get("error") {
            return Ok(Some(Err(e.clone())));
        }
        Ok(Some(Ok(msg.get("result").cloned().unwrap_or(Value::Null))))
    }
}

enum Posted {
    Answer(hyper::body::Incoming, String),
    Accepted,
    SessionGone,
}

/// A bounded answer body's error, as the SSE parser takes it (a sized error type).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct AnswerError(Box<dyn std::error::Error + Send + Sync>);

/// The next JSON message of an SSE answer (`sse-stream` parses the events: LF, CRLF or bare CR
/// line ends, `id:` and `retry:` fields); events without data or without JSON are skipped.
async fn next_message<S>(
    events: &mut std::pin::Pin<&mut S>,
    server: &str,
) -> Result<Option<Value>, Refusal>
where
    S: futures_util::Stream<Item = Result<sse_stream::Sse, sse_stream::Error>>,
{
    use futures_util::StreamExt;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| match e {
            sse_stream::Error::Body(b)
                if b.downcast_ref::<AnswerError>()
                    .is_some_and(|a| a.0.is::<http_body_util::LengthLimitError>()) =>
            {
                unreachable(server, "the answer is too large")
            }
            e => unreachable(server, format!("the event stream is malformed: {e}")),
        })?;
        let Some(data) = event.data else { continue };
        if let Ok(msg) = callgate_core::json::parse_strict(data.as_bytes()) {
            return Ok(Some(msg));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::{AnswerError, next_message};
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use serde_json::json;

    async fn messages(
        stream: &'static [u8],
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, String> {
        let body = http_body_util::Limited::new(
            http_body_util::Full::new(Bytes::from_static(stream)),
            limit,
        )
        .map_err(AnswerError);
        let mut events = std::pin::pin!(sse_stream::SseStream::new(body));
        let mut out = Vec::new();
        while let Some(m) = next_message(&mut events, "s")
            .await
            .map_err(|e| e.detail())?
        {
            out.push(m);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn sse_answers_are_read_whatever_the_line_ends_and_fields() {
        let stream = b"retry: 3000\n\nid: 1\nevent: message\ndata: {\"a\":1}\n\n: comment\r\ndata: {\"b\":\r\ndata: 2}\r\n\r\nid: 7\rdata: {\"c\":3}\r\rdata: not json\n\n";
        let got = messages(stream, 1 << 20).await.unwrap();
        assert_eq!(got, [json!({"a": 1}), json!({"b": 2}), json!({"c": 3})]);
        let err = messages(stream, 20).await.unwrap_err();
        assert!(err.contains("too large"), "{err}");
    }
}
