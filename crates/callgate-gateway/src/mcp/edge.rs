//! The HTTP edge of `/mcp`, in front of the MCP SDK's streamable HTTP transport.
//!
//! Every request passes these checks, in this order, before any MCP code parses it:
//! 1. **Origin** — a request with an `Origin` header (a browser) must come from an origin
//!    listed in `mcp.allowed_origins` (403 otherwise): DNS-rebinding protection.
//! 2. **Authentication** — the same identity sources as every ingress. Without a valid
//!    credential: 401 with `WWW-Authenticate: Bearer resource_metadata="…"` pointing at the
//!    RFC 9728 metadata, so an MCP client can find the authorization server.
//! 3. **Audience** — a token must name Callgate's MCP resource (or `mcp.audiences`) as its
//!    audience; a token minted for another service is refused even from a trusted issuer.
//! 4. **Session binding** — an `Mcp-Session-Id` is bound to the principal that created it
//!    (identity source, subject and acting agent); the same id presented by anyone else is
//!    refused (403), so a leaked session id is useless.
//!    A session idle for [`SESSION_IDLE`] is closed and its binding forgotten; at most
//!    [`MAX_SESSIONS`] are open at once (an `initialize` beyond that is refused with 503).
//! 5. **Strict JSON** — a POST body is parsed once with Callgate's strict parser (duplicate
//!    keys, lone surrogates, excessive depth refused: JSON-RPC −32700); the SDK then reads the
//!    same bytes, so policy and upstream see the value this check saw.

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::routing::{any, get};
use callgate_core::refusal::Refusal;
use callgate_core::{AuthMethod, Principal};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, SessionConfig};
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::server::CallgateMcp;
use super::{McpCaller, PATH};
use crate::audit::RefusedRequest;
use crate::{Peer, RequestId, Shared, problem};

const SESSION_ID: &str = "mcp-session-id";
/// A session with no request for this long is closed (the SDK's own idle limit, made explicit
/// so Callgate forgets the binding at the same time).
pub const SESSION_IDLE: Duration = SessionConfig::DEFAULT_KEEP_ALIVE;
/// Open sessions at most; a client that needs a new one beyond this gets 503 and retries.
pub const MAX_SESSIONS: usize = 10_000;
/// How often bindings are swept for idle sessions.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Where the protected-resource metadata of `/mcp` is served (RFC 9728 §3.1).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource/mcp";

type Service = StreamableHttpService<CallgateMcp, LocalSessionManager>;

/// The `/mcp` edge: the SDK's transport plus Callgate's session bindings.
pub struct Edge {
    shared: Arc<Shared>,
    service: Service,
    /// The SDK's sessions, closed here when idle.
    manager: Arc<LocalSessionManager>,
    /// `Mcp-Session-Id` → the principal that created the session, and when it was last used.
    sessions: Mutex<Bindings>,
}

struct Bindings {
    by_id: HashMap<String, Binding>,
    last_sweep: Instant,
}

struct Binding {
    owner: String,
    last_seen: Instant,
}

impl Bindings {
    /// Forgets sessions idle for [`SESSION_IDLE`] and returns their ids, to be closed.
    fn sweep(&mut self, now: Instant) -> Vec<String> {
        self.last_sweep = now;
        let idle: Vec<String> = self
            .by_id
            .iter()
            .filter(|(_, b)| now.duration_since(b.last_seen) >= SESSION_IDLE)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &idle {
            self.by_id.remove(id);
        }
        idle
    }
}

/// `/mcp` and its protected-resource metadata.
pub fn routes(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    let factory_shared = shared.clone();
    let config = StreamableHttpServerConfig::default()
        // Callgate authenticates every request and checks Origin itself (above), with its own
        // errors; the SDK's localhost-only Host allowlist would refuse real deployments.
        .disable_allowed_hosts()
        .disable_allowed_origins()
        .with_json_response(true);
    let mut manager = LocalSessionManager::default();
    manager.session_config.keep_alive = Some(SESSION_IDLE);
    let manager = Arc::new(manager);
    let service = StreamableHttpService::new(
        move || Ok(CallgateMcp::new(factory_shared.clone())),
        manager.clone(),
        config,
    );
    let edge = Arc::new(Edge {
        shared,
        service,
        manager,
        sessions: Mutex::new(Bindings {
            by_id: HashMap::new(),
            last_sweep: Instant::now(),
        }),
    });
    Router::new()
        .route(
            PATH,
            any(move |req: Request| {
                let edge = edge.clone();
                async move { edge.handle(req).await }
            }),
        )
        .route("/.well-known/oauth-protected-resource", get(metadata))
        .route(METADATA_PATH, get(metadata))
}

/// This gateway as the request addressed it: `https://host[:port]`.
pub fn base_url(shared: &Shared, headers: &HeaderMap, uri: &http::Uri) -> String {
    let rt = shared.reloader.peek();
    let scheme = if rt.config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_else(|| rt.config.listen.clone());
    format!("{scheme}://{host}")
}

/// The canonical URI of the MCP endpoint (RFC 9728 `resource`).
fn resource(shared: &Shared, base: &str) -> String {
    let rt = shared.reloader.peek();
    rt.config
        .mcp
        .resource
        .clone()
        .unwrap_or_else(|| format!("{base}{PATH}"))
}

/// `GET /.well-known/oauth-protected-resource[/mcp]`: RFC 9728 metadata for `/mcp`.
async fn metadata(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    req: Request,
) -> Response<Body> {
    let base = base_url(&shared, req.headers(), req.uri());
    let rt = shared.reloader.peek();
    let servers: Vec<String> = if rt.config.mcp.authorization_servers.is_empty() {
        rt.config
            .identity
            .issuers
            .iter()
            .map(|i| i.issuer.clone())
            .collect()
    } else {
        rt.config.mcp.authorization_servers.clone()
    };
    let body = json!({
        "resource": resource(&shared, &base),
        "authorization_servers": servers,
        "bearer_methods_supported": ["header"],
        "resource_name": "Callgate",
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "max-age=300")
        .body(Body::from(body.to_string()))
        .expect("static headers are valid")
}

/// A JSON-RPC error as the whole HTTP answer.
pub fn jsonrpc_error(status: StatusCode, id: Value, code: i64, message: &str) -> Response<Body> {
    let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("static headers are valid")
}

/// Sessions belong to a caller through one identity source: the person and, when a token
/// is delegated, the agent acting for them (another agent of the same person holding the
/// session id is someone else).
fn principal_key(p: &Principal) -> String {
    let actor = p.actor.as_deref().unwrap_or("");
    match &p.auth {
        AuthMethod::Oidc { issuer } => format!("oidc {issuer} {} act {actor}", p.subject),
        AuthMethod::ApiKey { key_id } => format!("key {key_id} {} act {actor}", p.subject),
    }
}

impl Edge {
    async fn handle(&self, req: Request) -> Response<Body> {
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let source = req
            .extensions()
            .get::<Peer>()
            .and_then(|p| p.0)
            .map(|a| a.ip());
        let base = base_url(&self.shared, req.headers(), req.uri());
        let refused = |subject: Option<String>, refusal: &Refusal| {
            self.shared.audit.refused(
                RefusedRequest {
                    request_id: &request_id,
                    ingress: callgate_core::Ingress::Mcp,
                    source,
                    session: None,
                    subject,
                    function: None,
                },
                refusal,
            );
        };

        // 1. Origin
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            let rt = self.shared.reloader.peek();
            // Only listed origins: a same-origin check on Host would pass a DNS-rebound page.
            let allowed = rt
                .config
                .mcp
                .allowed_origins
                .iter()
                .any(|o| o.trim_end_matches('/') == origin);
            if !allowed {
                let r = Refusal::Forbidden {
                    detail: format!("origin {origin:?} may not call /mcp"),
                };
                refused(None, &r);
                return jsonrpc_error(
                    StatusCode::FORBIDDEN,
                    Value::Null,
                    -32600,
                    "Forbidden: this Origin may not call Callgate's MCP endpoint",
                );
            }
        }

        // 2. authentication
        let rt = self.shared.reloader.current();
        let principal = match rt.auth.authenticate(req.headers()).await {
            Ok(p) => p,
            Err(r) => {
                refused(None, &r);
                return self.challenge(&r, &base, &request_id);
            }
        };

        // 3. audience: a token must have been issued for this MCP server.
        if let AuthMethod::Oidc { .. } = principal.auth {
            let accepted = if rt.config.mcp.audiences.is_empty() {
                vec![resource(&self.shared, &base)]
            } else {
                rt.config.mcp.audiences.clone()
            };
            if !principal.audiences.iter().any(|a| accepted.contains(a)) {
                let r = Refusal::Unauthenticated {
                    detail: "the token's audience is not this MCP server".into(),
                };
                refused(Some(principal.subject.clone()), &r);
                return self.challenge(&r, &base, &request_id);
            }
        }

        // 4. session binding
        let key = principal_key(&principal);
        let session = req
            .headers()
            .get(SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (owned_by_other, full) = {
            let now = Instant::now();
            let mut bindings = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if now.duration_since(bindings.last_sweep) >= SWEEP_EVERY {
                for id in bindings.sweep(now) {
                    self.close(id);
                }
            }
            let owned_by_other = match session.as_ref().and_then(|sid| bindings.by_id.get_mut(sid))
            {
                Some(b) if b.owner != key => true,
                Some(b) => {
                    b.last_seen = now;
                    false
                }
                None => false,
            };
            (owned_by_other, bindings.by_id.len() >= MAX_SESSIONS)
        };
        if owned_by_other {
            let r = Refusal::Forbidden {
                detail: "an MCP session id presented by a principal other than its owner".into(),
            };
            refused(Some(principal.subject.clone()), &r);
            tracing::warn!(request_id = %request_id, subject = %principal.subject, "MCP session presented by another principal");
            return jsonrpc_error(
                StatusCode::FORBIDDEN,
                Value::Null,
                -32600,
                "Forbidden: this MCP session belongs to another principal",
            );
        }

        // 5. strict JSON
        let method = req.method().clone();
        let (mut parts, body) = req.into_parts();
        let body = if method == Method::POST {
            let limit = rt.config.limits.max_body_bytes;
            let bytes = match Limited::new(body, limit).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) if crate::request_body::is_timeout(&*e) => {
                    let mut resp = jsonrpc_error(
                        StatusCode::REQUEST_TIMEOUT,
                        Value::Null,
                        -32600,
                        "the request body did not arrive in time",
                    );
                    resp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                    return resp;
                }
                Err(e) if !e.is::<http_body_util::LengthLimitError>() => {
                    return jsonrpc_error(
                        StatusCode::BAD_REQUEST,
                        Value::Null,
                        -32600,
                        "the request body could not be read",
                    );
                }
                Err(_) => {
                    return jsonrpc_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        Value::Null,
                        -32600,
                        &format!("the request body is larger than {limit} bytes"),
                    );
                }
            };
            let parsed = match callgate_core::json::parse_strict(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    return jsonrpc_error(
                        StatusCode::BAD_REQUEST,
                        Value::Null,
                        -32700,
                        &format!("Parse error: {e}"),
                    );
                }
            };
            // Only `initialize` opens a session; stateless (2026-07-28) requests open none.
            if session.is_none() && full && parsed.get("method") == Some(&json!("initialize")) {
                tracing::warn!(request_id = %request_id, "MCP session limit reached");
                return jsonrpc_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    parsed.get("id").cloned().unwrap_or(Value::Null),
                    -32603,
                    "Callgate has too many open MCP sessions; retry later",
                );
            }
            Body::from(bytes)
        } else {
            body
        };
        parts.extensions.insert(McpCaller {
            principal: principal.clone(),
            request_id: request_id.clone(),
            source,
            headers: parts.headers.clone(),
            base_url: base,
        });
        let req = Request::from_parts(parts, body);
        use tower::ServiceExt;
        let resp = match self.service.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let (parts, body) = resp.into_parts();
        let resp = Response::from_parts(parts, Body::new(body));
        // A new session belongs to whoever created it; a deleted one is forgotten.
        let mut bindings = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if session.is_none()
            && let Some(sid) = resp.headers().get(SESSION_ID).and_then(|v| v.to_str().ok())
        {
            bindings.by_id.insert(
                sid.to_string(),
                Binding {
                    owner: key,
                    last_seen: Instant::now(),
                },
            );
        } else if method == Method::DELETE
            && resp.status().is_success()
            && let Some(sid) = &session
        {
            bindings.by_id.remove(sid);
            drop(bindings);
            // The SDKs take 200, 204 or 405 for a session's end (the Python SDK warns at every
            // close on the transport's 202).
            if resp.status() == StatusCode::ACCEPTED {
                let (mut parts, _) = resp.into_parts();
                parts.status = StatusCode::NO_CONTENT;
                parts.headers.remove(header::CONTENT_LENGTH);
                parts.headers.remove(header::CONTENT_TYPE);
                return Response::from_parts(parts, Body::empty());
            }
            return resp;
        }
        drop(bindings);
        resp
    }

    /// Closes an idle session in the SDK (its worker may have stopped already).
    fn close(&self, id: String) {
        let manager = self.manager.clone();
        tokio::spawn(async move {
            let _ = manager.close_session(&id.into()).await;
        });
    }

    /// 401 with the RFC 9728 challenge (or the identity failure's own status, e.g. 503).
    fn challenge(&self, r: &Refusal, base: &str, request_id: &str) -> Response<Body> {
        let mut resp = problem::response(r, request_id);
        if resp.status() == StatusCode::UNAUTHORIZED {
            let mut challenge = format!("Bearer resource_metadata=\"{base}{METADATA_PATH}\"");
            if let Refusal::Unauthenticated { detail } = r
                && let Some(p) = problem::invalid_token_params(detail)
            {
                challenge.push_str(", ");
                challenge.push_str(&p);
            }
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_sessions_are_swept_and_used_ones_kept() {
        let start = Instant::now();
        let mut b = Bindings {
            by_id: HashMap::new(),
            last_sweep: start,
        };
        for id in ["old", "fresh"] {
            b.by_id.insert(
                id.into(),
                Binding {
                    owner: "key k alice".into(),
                    last_seen: start,
                },
            );
        }
        b.by_id.get_mut("fresh").unwrap().last_seen = start + SESSION_IDLE - Duration::from_secs(1);
        let now = start + SESSION_IDLE;
        assert_eq!(b.sweep(now), vec!["old".to_string()]);
        assert!(b.by_id.contains_key("fresh"));
        assert_eq!(b.last_sweep, now);
        assert!(b.sweep(now).is_empty());
    }
}
