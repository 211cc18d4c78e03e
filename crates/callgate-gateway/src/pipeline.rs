//! The governed call path. Every ingress hands a request to [`run`], which takes it through
//! the phases in this order:
//!
//! 1. **authenticate** — who is calling ([`crate::identity`]); before anything else, so an
//!    anonymous caller learns nothing about which functions exist.
//! 2. **resolve function** — by name (invoke API) or by method + normalized path (proxy).
//! 3. **validate arguments** — the body is read (bounded), parsed once strictly, and checked
//!    against the function's schema. The result is the [`Call`] every later phase sees.
//! 4. **authorize** — the Cedar decision ([`callgate_policy`]); a deny stops here.
//! 5. **rate-limit** — after authorization, so denied calls do not eat a caller's quota.
//! 6. **approval** — [`crate::approvals`]: a call whose function or permitting policy requires
//!    approval is stored exactly as it will run and held (202); a different person approves it
//!    and Callgate executes the stored request once. Break-glass lets listed groups proceed,
//!    flagged, leaving a review item to acknowledge.
//! 7. **credential** — [`crate::credentials`]: the just-in-time upstream credential is
//!    obtained (minted, a configured secret, or an OAuth token); the caller's own credential
//!    was never copied. It comes before the audit phase so the record can name it.
//! 8. **audit** — [`crate::audit`]: the call's record is durable before anything is forwarded
//!    (a deny is recorded durably too, at phase 4); responses are recorded after phase 10.
//! 9. **forward** — [`crate::upstream`], with the credential attached.
//! 10. **mask** — [`crate::masking`], on the response before anyone (the caller, the audit
//!     record, a waiting requester) sees it.
//! 11. **respond** — status, headers and body back to the ingress, which maps refusals once.

use bytes::Bytes;
use callgate_core::args::{self, HttpArgs};
use callgate_core::model::{CallMeta, Ingress};
use callgate_core::refusal::Refusal;
use callgate_core::registry::Resolved;
use callgate_core::route::normalize_path;
use callgate_core::{Backend, Call, FunctionDef, Principal};
use callgate_policy::Decision;
use http::request::Parts;
use http_body_util::{BodyExt, Limited};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::Shared;
use crate::identity::oidc::now_secs;
use crate::mcp::relay::Agent;
use crate::runtime::Runtime;
use crate::upstream;
use crate::upstream::UpstreamResponse;
use callgate_approvals::Requirement;
use callgate_store::approvals::Held;

/// How the pipeline ended when nothing refused the call.
pub enum Outcome {
    /// Forwarded; the upstream's (masked) answer.
    Forwarded(UpstreamResponse),
    /// Held for approval.
    Held(Box<Held>),
}

/// The header a caller gives a reason for a call in.
pub const REASON_HEADER: &str = "callgate-reason";
/// The header that invokes break-glass, with its reason as the value.
pub const BREAK_GLASS_HEADER: &str = "callgate-break-glass";

/// Which function a request addresses, as the ingress knows it.
pub enum Target {
    /// Resolve by method and path (transparent proxy).
    Path,
    /// Resolve by name or OpenAI-safe alias (invoke API).
    Name(String),
}

/// A request as an ingress hands it over.
pub struct Inbound {
    pub request_id: String,
    pub ingress: Ingress,
    pub target: Target,
    pub parts: Parts,
    pub body: axum::body::Body,
    pub source: Option<IpAddr>,
}

/// What the pipeline learned, for metrics and logs, whatever the outcome.
#[derive(Default)]
pub struct Trace {
    pub function: Option<String>,
    pub subject: Option<String>,
    pub session: Option<String>,
    pub decision: Option<Decision>,
    /// Whether the audit log already has this call's own record (so a refusal is not
    /// recorded twice).
    pub recorded: bool,
    /// The call was held for approval.
    pub held: bool,
}

impl Trace {
    /// The decision label for metrics.
    pub fn decision_label(&self) -> &'static str {
        match &self.decision {
            Some(_) if self.held => "held",
            Some(d) if d.allowed() => "allow",
            Some(_) => "deny",
            None => "none",
        }
    }
}

/// A resolved function and the path parameters its route captured.
type FunctionMatch = (Arc<FunctionDef>, Vec<(String, String)>);

/// Phase 2 for the proxy and the invoke API.
fn resolve(rt: &Runtime, target: &Target, parts: &Parts) -> Result<FunctionMatch, Refusal> {
    match target {
        Target::Name(name) => {
            // MCP resource, prompt and server requests exist only at /mcp.
            let f = rt
                .registry
                .get_or_alias(name)
                .filter(|f| f.backend.is_callable())
                .ok_or_else(|| Refusal::UnknownFunction {
                    detail: format!("no function named {name:?}"),
                })?;
            Ok((f.clone(), vec![]))
        }
        Target::Path => {
            let segs = normalize_path(parts.uri.path()).map_err(Refusal::bad_request)?;
            match rt.registry.resolve(&parts.method, &segs) {
                Resolved::Found(f, params) => Ok((f.clone(), params)),
                Resolved::WrongMethod => Err(Refusal::MethodNotAllowed {
                    detail: format!("{} is not declared for this path", parts.method),
                }),
                Resolved::NotFound => Err(Refusal::UnknownFunction {
                    detail: format!(
                        "no declared function matches {} {}",
                        parts.method,
                        parts.uri.path()
                    ),
                }),
            }
        }
    }
}

/// Reads the body, refusing more than `limit` bytes (413).
async fn read_body(parts: &Parts, body: axum::body::Body, limit: usize) -> Result<Bytes, Refusal> {
    if let Some(len) = parts.headers.get(http::header::CONTENT_LENGTH) {
        let len: usize = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Refusal::bad_request("invalid Content-Length"))?;
        if len > limit {
            return Err(Refusal::PayloadTooLarge { limit });
        }
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(Refusal::PayloadTooLarge { limit })
        }
        Err(e) if crate::request_body::is_timeout(&*e) => Err(Refusal::RequestTimeout {
            detail: e.to_string(),
        }),
        Err(e) => Err(Refusal::bad_request(format!(
            "the request body could not be read: {e}"
        ))),
    }
}

/// The header a caller uses to group its calls into a session.
pub const SESSION_HEADER: &str = "callgate-session";

/// The call's session: the `Callgate-Session` header if sent (1–128 visible ASCII
/// characters), else the token's session claim.
fn session(parts: &Parts, principal: &Principal) -> Result<Option<String>, Refusal> {
    session_from(&parts.headers, principal)
}

fn session_from(
    headers: &http::HeaderMap,
    principal: &Principal,
) -> Result<Option<String>, Refusal> {
    match headers.get(SESSION_HEADER) {
        Some(v) => {
            let s = v.to_str().ok().filter(|s| {
                (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
            });
            s.map(|s| Some(s.to_string())).ok_or_else(|| {
                Refusal::bad_request("Callgate-Session must be 1 to 128 visible ASCII characters")
            })
        }
        None => Ok(principal.session.clone()),
    }
}

/// A text header Callgate reads itself (reason, break-glass), checked as a reason.
fn reason_header(headers: &http::HeaderMap, name: &str) -> Result<Option<String>, Refusal> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => {
            let s = v.to_str().map_err(|_| {
                Refusal::bad_request(format!(
                    "{name} must be visible ASCII; give a non-ASCII reason in the invoke body"
                ))
            })?;
            args::check_reason(s)?;
            Ok(Some(s.to_string()))
        }
    }
}

/// Phases 2–3: builds the normalized call.
async fn build_call(
    shared: &Shared,
    rt: &Runtime,
    inbound: Inbound,
    principal: Arc<Principal>,
    trace: &mut Trace,
) -> Result<Call, Refusal> {
    let (function, path_params) = resolve(rt, &inbound.target, &inbound.parts)?;
    trace.function = Some(function.name.clone());
    let body = read_body(
        &inbound.parts,
        inbound.body,
        rt.config.limits.max_body_bytes,
    )
    .await?;
    // Arguments are read from the bytes as sent; a coded body (gzip, say) is refused rather
    // than guessed at, so Callgate and the upstream cannot read two different things.
    if let Some(coding) = inbound
        .parts
        .headers
        .get(http::header::CONTENT_ENCODING)
        .filter(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
    {
        return Err(Refusal::bad_request(format!(
            "request bodies are read as sent: Content-Encoding {:?} is not accepted",
            String::from_utf8_lossy(coding.as_bytes())
        )));
    }
    let content_type = inbound
        .parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let mut reason = reason_header(&inbound.parts.headers, REASON_HEADER)?;
    let break_glass = reason_header(&inbound.parts.headers, BREAK_GLASS_HEADER)?;
    let arguments = match inbound.ingress {
        Ingress::Invoke | Ingress::Mcp => {
            let (arguments, r) = args::from_invoke_request(content_type, &body)?;
            if let Some(r) = r {
                args::check_reason(&r)?;
                reason = Some(r);
            }
            arguments
        }
        Ingress::Proxy => args::from_http(
            &function,
            HttpArgs {
                path_params,
                query: inbound.parts.uri.query(),
                content_type,
                body: &body,
            },
        )?,
    };
    args::validate(&function, &arguments)?;
    let session = session(&inbound.parts, &principal)?;
    // Active grants add groups for policy (and only for policy).
    let (principal, granted) = shared.approvals.grants.apply(principal, &function.name);
    let forward_headers = match inbound.ingress {
        Ingress::Proxy => upstream::forwardable(&inbound.parts.headers, &function.forward_headers),
        Ingress::Invoke | Ingress::Mcp => Default::default(),
    };
    Ok(Call {
        request_id: inbound.request_id,
        principal,
        function,
        arguments,
        meta: CallMeta {
            ingress: inbound.ingress,
            source: inbound.source,
            received_at: now_secs(),
            session,
            reason,
            break_glass,
            granted,
            approved: None,
            forward_headers,
        },
    })
}

/// Which audit record makes a call's forwarding durable.
pub(crate) enum Record {
    /// A call allowed now: its `call` record, with the decision and the forward.
    Direct,
    /// A held call executed after approval: `call.forward` with the approved digest and the
    /// approvers.
    Approved {
        digest: String,
        approved_by: Vec<callgate_audit::record::Approver>,
    },
}

/// How an execution failed.
pub(crate) enum Failure {
    /// Before its forward record was durable: nothing was sent upstream.
    NotForwarded(Refusal),
    /// After: the upstream may have seen it.
    Upstream(Refusal),
}

/// Phases 7–10 for an allowed (or approved) call: obtain the credential, make the forward
/// record naming it durable, forward, mask.
pub(crate) async fn execute(
    shared: &Shared,
    rt: &Runtime,
    call: &Call,
    decision: &Decision,
    record: Record,
    agent: Option<&Agent>,
) -> Result<UpstreamResponse, Failure> {
    use Failure::{NotForwarded, Upstream};
    // A tool whose server changed its definition is blocked until an administrator approves
    // the new one; checked here so an approved call meets the same rule.
    if let Backend::McpTool { server, tool } = &call.function.backend
        && shared.mcp.is_blocked(server, tool)
    {
        return Err(NotForwarded(Refusal::Unavailable {
            detail: format!(
                "{} is blocked: its MCP server changed the tool's definition, and an \
                 administrator must approve the new one first",
                call.function.name
            ),
        }));
    }
    // 7. credential: obtained before the record so the record can name it (never hold it).
    let credential = shared
        .credentials
        .obtain(rt, call)
        .await
        .map_err(NotForwarded)?;
    let credential_id = credential.as_ref().map(|c| c.id.clone());
    // The upstream request is built before the record too: one that cannot be built (a URL
    // over the URI limit) is refused, not recorded as forwarded and then failed.
    let shape = match call.function.backend {
        Backend::Http => {
            let mut shape =
                args::upstream_shape(&call.function, &call.arguments).map_err(NotForwarded)?;
            let uri = upstream_uri(call, &mut shape, credential.as_ref()).map_err(NotForwarded)?;
            Some((shape, uri))
        }
        Backend::McpTool { .. } | Backend::McpMethod { .. } | Backend::McpServerRequest { .. } => {
            None
        }
    };
    // 8. audit: durable before the upstream sees anything; if it cannot be written the call is
    // refused (503).
    match record {
        Record::Direct => shared
            .audit
            .call(
                call,
                decision,
                "allow",
                Some(&call.function.upstream),
                credential_id,
                rt.masking.audit_arguments(call, decision),
            )
            .await
            .map_err(NotForwarded)?,
        Record::Approved {
            digest,
            approved_by,
        } => shared
            .audit
            .forward(call, &digest, approved_by, credential_id)
            .await
            .map_err(NotForwarded)?,
    }
    // 9. forward, with the credential attached: an HTTP request, or a request to an upstream
    // MCP server; a server's own request goes to the agent's client instead.
    let mut response = match (&call.function.backend, shape) {
        (Backend::McpTool { server, tool }, _) => shared
            .mcp
            .call_tool(shared, rt, server, tool, call, credential, agent)
            .await
            .map_err(Upstream)?,
        (Backend::McpMethod { server, method }, _) => shared
            .mcp
            .call_method(shared, rt, server, method, call, credential, agent)
            .await
            .map_err(Upstream)?,
        (Backend::McpServerRequest { method, .. }, _) => {
            crate::mcp::relay::to_agent(rt, call, decision, method, agent)
                .await
                .map_err(Upstream)?
        }
        (Backend::Http, shape) => forward_http(rt, call, shape, credential)
            .await
            .map_err(Upstream)?,
    };
    // 10. mask
    rt.masking
        .mask(call, decision, &mut response)
        .map_err(Upstream)?;
    Ok(response)
}

/// The upstream URL of an HTTP call: the base URL, the shape's path and query, and a
/// credential sent as a query parameter (appended to `shape`).
fn upstream_uri(
    call: &Call,
    shape: &mut args::UpstreamShape,
    credential: Option<&crate::credentials::Obtained>,
) -> Result<http::Uri, Refusal> {
    if let Some((name, value)) = credential.and_then(|c| c.query.as_ref()) {
        let sep = if shape.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        let pair: String = form_urlencoded::Serializer::new(String::new())
            .append_pair(name, value)
            .finish();
        shape.path_and_query.push(sep);
        shape.path_and_query.push_str(&pair);
    }
    let url = format!("{}{}", call.function.upstream_url, shape.path_and_query);
    let len = url.len();
    // The URL holds argument values and perhaps the credential: never in the error.
    url.parse().map_err(|_| {
        Refusal::invalid_argument(
            "",
            format!(
                "the arguments make an upstream URL of {len} bytes, which cannot be sent \
                 (URLs are limited to 65,534 bytes)"
            ),
        )
    })
}

/// Phase 9 for an HTTP function.
async fn forward_http(
    rt: &Runtime,
    call: &Call,
    prepared: Option<(args::UpstreamShape, http::Uri)>,
    credential: Option<crate::credentials::Obtained>,
) -> Result<UpstreamResponse, Refusal> {
    let (shape, uri) = prepared.ok_or_else(|| Refusal::Internal {
        detail: format!("{} has no HTTP route", call.function.name),
    })?;
    let client = rt
        .upstreams
        .get(&call.function.upstream)
        .ok_or_else(|| Refusal::Internal {
            detail: format!("no client for upstream {}", call.function.upstream),
        })?;
    let mut headers = call.meta.forward_headers.clone();
    if let Some((name, value)) = credential.and_then(|c| c.header) {
        headers.insert(name, value);
    }
    upstream::forward(
        client,
        call,
        shape,
        uri,
        headers,
        rt.config.limits.max_response_bytes,
    )
    .await
}

/// Runs the whole pipeline for one request.
pub async fn run(
    shared: &Shared,
    rt: &Runtime,
    inbound: Inbound,
    trace: &mut Trace,
) -> Result<Outcome, Refusal> {
    // 1. authenticate
    let principal = rt.auth.authenticate(&inbound.parts.headers).await?;
    trace.subject = Some(principal.subject.clone());
    // 2–3. resolve function, validate arguments
    let call = build_call(shared, rt, inbound, principal, trace).await?;
    run_call(shared, rt, call, trace).await
}

/// A tool call as the MCP ingress hands it over: the caller is already authenticated (once
/// per HTTP request, at the `/mcp` edge) and the arguments were parsed, strictly, from the
/// JSON-RPC body.
pub struct ToolCall<'a> {
    pub request_id: String,
    pub principal: Arc<Principal>,
    pub name: &'a str,
    pub arguments: serde_json::Value,
    pub headers: &'a http::HeaderMap,
    /// A reason from the request's `_meta`, if the agent gave one there.
    pub reason: Option<String>,
    /// A break-glass reason from the request's `_meta`, if the agent gave one there.
    pub break_glass: Option<String>,
    pub source: Option<IpAddr>,
    /// `name` is an MCP request's function (`crm:resources/read`), not a tool.
    pub method: bool,
    /// The agent's MCP client, which answers what an upstream server asks during the call.
    pub agent: Option<&'a Agent>,
}

/// Phases 2–3 for an MCP `tools/call` (or `resources/read`, `prompts/get`): the function by
/// name, its arguments validated. Then the same phases 4–11 as every other ingress.
pub async fn run_tool_call(
    shared: &Shared,
    rt: &Runtime,
    tc: ToolCall<'_>,
    trace: &mut Trace,
) -> Result<Outcome, Refusal> {
    trace.subject = Some(tc.principal.subject.clone());
    let function = rt
        .registry
        .get(tc.name)
        .filter(|f| match f.backend {
            Backend::Http => rt.config.mcp.expose_functions && !tc.method,
            Backend::McpTool { .. } => !tc.method,
            Backend::McpMethod { .. } => tc.method,
            Backend::McpServerRequest { .. } => false,
        })
        .ok_or_else(|| Refusal::UnknownFunction {
            detail: format!("no tool named {:?}", tc.name),
        })?
        .clone();
    trace.function = Some(function.name.clone());
    let arguments = match tc.arguments {
        serde_json::Value::Object(m) => m,
        serde_json::Value::Null => Default::default(),
        other => {
            return Err(Refusal::bad_request(format!(
                "tool arguments must be an object, not {}",
                callgate_core::json::kind_of(&other)
            )));
        }
    };
    let mut reason = reason_header(tc.headers, REASON_HEADER)?;
    if let Some(r) = tc.reason {
        args::check_reason(&r)?;
        reason = Some(r);
    }
    // Break-glass is asked for as over HTTP (the header on the MCP request) or in `_meta`, and
    // refused the same way to a caller the function does not allow it.
    let mut break_glass = reason_header(tc.headers, BREAK_GLASS_HEADER)?;
    if let Some(b) = tc.break_glass {
        args::check_reason(&b)?;
        break_glass = Some(b);
    }
    args::validate(&function, &arguments)?;
    let session = session_from(tc.headers, &tc.principal)?;
    let (principal, granted) = shared.approvals.grants.apply(tc.principal, &function.name);
    let call = Call {
        request_id: tc.request_id,
        principal,
        function,
        arguments,
        meta: CallMeta {
            ingress: Ingress::Mcp,
            source: tc.source,
            received_at: now_secs(),
            session,
            reason,
            break_glass,
            granted,
            approved: None,
            forward_headers: Default::default(),
        },
    };
    run_call_via(shared, rt, call, trace, tc.agent).await
}

/// Phases 4–11 for a normalized call, whichever ingress built it.
pub async fn run_call(
    shared: &Shared,
    rt: &Runtime,
    call: Call,
    trace: &mut Trace,
) -> Result<Outcome, Refusal> {
    run_call_via(shared, rt, call, trace, None).await
}

/// [`run_call`] for a call an agent's MCP client waits on: what an upstream MCP server asks
/// during the call is relayed to `agent` (when policy allows it).
pub fn run_call_via<'a>(
    shared: &'a Shared,
    rt: &'a Runtime,
    call: Call,
    trace: &'a mut Trace,
    agent: Option<&'a Agent>,
) -> std::pin::Pin<Box<dyn Future<Output = Result<Outcome, Refusal>> + Send + 'a>> {
    // Boxed: a server's request during a call runs the pipeline again from inside phase 9.
    Box::pin(run_call_inner(shared, rt, call, trace, agent))
}

async fn run_call_inner(
    shared: &Shared,
    rt: &Runtime,
    call: Call,
    trace: &mut Trace,
    agent: Option<&Agent>,
) -> Result<Outcome, Refusal> {
    trace.session = call.meta.session.clone();
    // 4. authorize
    let decision = rt.engine.decide(&call)?;
    let allowed = decision.allowed();
    let reason = decision.reason();
    trace.decision = Some(decision);
    let decision = trace.decision.as_ref().expect("just set");
    if !allowed {
        // A deny is recorded, durably, before the caller hears of it.
        shared
            .audit
            .call(
                &call,
                decision,
                "deny",
                None,
                None,
                rt.masking.audit_arguments(&call, decision),
            )
            .await?;
        trace.recorded = true;
        tracing::info!(request_id = %call.request_id, subject = %call.principal.subject, function = %call.function.name, reason = %reason, "call denied");
        return Err(Refusal::Forbidden {
            detail: format!(
                "{} may not call {} with these arguments",
                call.principal.subject, call.function.name
            ),
        });
    }
    // 5. rate-limit
    shared.limits.check(
        &rt.config.rate_limits,
        &call,
        decision.obligations.rate_limit,
    )?;
    // 6. approval
    let requirement = Requirement::merge_all(
        call.function
            .approval
            .iter()
            .chain(decision.obligations.approval.iter()),
    );
    if let Some(requirement) = requirement {
        if let Backend::McpServerRequest { .. } = call.function.backend {
            return Err(Refusal::Forbidden {
                detail: format!(
                    "{} requires approval ({requirement}), and a server's request during a \
                     call cannot wait for one",
                    call.function.name
                ),
            });
        }
        match &call.meta.break_glass {
            None => {
                let held = crate::approvals::hold(shared, rt, &call, decision, requirement).await?;
                trace.recorded = true;
                trace.held = true;
                return Ok(Outcome::Held(Box::new(held)));
            }
            Some(why) => {
                crate::approvals::break_glass(shared, rt, &call, decision, requirement, why)
                    .await?;
            }
        }
    }
    // 7–10. Once the forward record is durable, the call's record says how it ended.
    let started = Instant::now();
    let response = match execute(shared, rt, &call, decision, Record::Direct, agent).await {
        Ok(r) => r,
        Err(Failure::NotForwarded(refusal)) => return Err(refusal),
        Err(Failure::Upstream(refusal)) => {
            trace.recorded = true;
            shared
                .audit
                .upstream_failed(&call, &refusal, started.elapsed());
            return Err(refusal);
        }
    };
    trace.recorded = true;
    shared.audit.response(&call, &response, started.elapsed());
    tracing::info!(
        request_id = %call.request_id,
        subject = %call.principal.subject,
        function = %call.function.name,
        reason = %reason,
        status = response.status.as_u16(),
        upstream_ms = started.elapsed().as_millis() as u64,
        "call forwarded"
    );
    // 11. respond
    Ok(Outcome::Forwarded(response))
}
