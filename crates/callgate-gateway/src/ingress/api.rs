//! The API surface (axum): the invoke API, the per-caller catalog, operations endpoints, the
//! auditors' API ([`super::audit_api`]) and, in demo mode, the demo identity provider.

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::routing::{get, post};
use axum::{Extension, Router};
use callgate_core::model::Ingress;
use callgate_core::refusal::Refusal;
use http::{HeaderMap, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use callgate_core::registry::openai_name;

use crate::pipeline::{Inbound, Target};
use crate::{Peer, RequestId, Shared, problem};

/// The API routes. `body_limit` bounds the bodies handlers read whole (approvals, grants).
pub fn router(shared: Arc<Shared>, body_limit: usize) -> Router {
    let mut r = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/functions", get(catalog))
        .route("/v1/functions/{name}/invoke", post(invoke))
        .route("/.well-known/jwks.json", get(jwks))
        .merge(super::audit_api::routes())
        .merge(super::approvals_api::routes());
    if shared.reloader.peek().config.mcp.enabled {
        r = r.merge(crate::mcp::edge::routes(shared.clone()));
    }
    if shared.demo.is_some() {
        r = r.merge(crate::demo::idp::routes());
    }
    // Bodies the API reads whole have the proxy's limit, not axum's.
    r.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(shared)
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(v.to_string()))
        .expect("static headers are valid")
}

async fn not_found(Extension(id): Extension<RequestId>, req: Request) -> Response<Body> {
    problem::response(
        &Refusal::UnknownFunction {
            detail: format!("nothing is served at {}", req.uri().path()),
        },
        &id.0,
    )
}

async fn method_not_allowed(Extension(id): Extension<RequestId>, req: Request) -> Response<Body> {
    problem::response(
        &Refusal::MethodNotAllowed {
            detail: format!("{} is not allowed here", req.method()),
        },
        &id.0,
    )
}

async fn healthz() -> Response<Body> {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response<Body> {
    if shared.draining.load(Ordering::Relaxed) {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "draining"}),
        );
    }
    if !shared.audit.healthy() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "audit-unavailable"}),
        );
    }
    let rt = shared.reloader.peek();
    json_response(
        StatusCode::OK,
        &json!({"status": "ready", "functions": rt.registry.len(), "policies": rt.engine.len(), "policy_hash": rt.policy_hash}),
    )
}

/// The public keys of Callgate's minted upstream tokens, for upstreams to verify them.
async fn jwks(State(shared): State<Arc<Shared>>) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/jwk-set+json")
        .header(header::CACHE_CONTROL, "max-age=300")
        .body(Body::from(shared.credentials.jwks().to_string()))
        .expect("static headers are valid")
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response<Body> {
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(Body::from(shared.metrics.encode()))
        .expect("static headers are valid")
}

#[derive(Deserialize)]
struct CatalogQuery {
    #[serde(default)]
    format: Option<String>,
}

/// `GET /v1/functions`: only the functions the caller could be allowed to call.
async fn catalog(
    State(shared): State<Arc<Shared>>,
    Extension(id): Extension<RequestId>,
    query: Result<Query<CatalogQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response<Body> {
    let rt = shared.reloader.current();
    let principal = match rt.auth.authenticate(&headers).await {
        Ok(p) => p,
        Err(r) => return problem::response(&r, &id.0),
    };
    let format = match query {
        Ok(Query(q)) => q.format,
        Err(e) => return problem::response(&Refusal::bad_request(e.body_text()), &id.0),
    };
    let empty_schema = json!({"type": "object", "properties": {}});
    // As `tools/list` does: an upstream tool whose definition changed is not offered until it
    // is approved, and a group a grant gives the caller for a function counts for it.
    let visible = rt
        .registry
        .iter()
        .filter(|f| f.backend.is_callable())
        .filter(|f| match &f.backend {
            callgate_core::Backend::McpTool { server, tool } => {
                !shared.mcp.is_blocked(server, tool)
            }
            _ => true,
        })
        .filter(|f| {
            let (p, _) = shared.approvals.grants.apply(principal.clone(), &f.name);
            rt.engine.could_allow(&p, f)
        });
    let body = match format.as_deref() {
        None | Some("callgate") => json!({
            "functions": visible.map(|f| json!({
                "name": f.name,
                "description": f.description,
                "risk": f.risk,
                "method": f.route.method.as_str(),
                "path": f.route.template(),
                "arguments": f.schema.clone().unwrap_or_else(|| empty_schema.clone()),
                "invoke": format!("/v1/functions/{}/invoke", f.name),
            })).collect::<Vec<_>>()
        }),
        Some("openai") => Value::Array(
            visible
                .map(|f| {
                    json!({
                        "type": "function",
                        "function": {
                            "name": openai_name(&f.name),
                            "description": f.description,
                            "parameters": f.schema.clone().unwrap_or_else(|| empty_schema.clone()),
                        }
                    })
                })
                .collect(),
        ),
        Some(other) => {
            return problem::response(
                &Refusal::bad_request(format!("unknown format {other:?} (callgate, openai)")),
                &id.0,
            );
        }
    };
    json_response(StatusCode::OK, &body)
}

/// `POST /v1/functions/{name}/invoke` with `{"arguments": {...}}`.
async fn invoke(
    State(shared): State<Arc<Shared>>,
    Extension(id): Extension<RequestId>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
    req: Request,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let inbound = Inbound {
        request_id: id.0,
        ingress: Ingress::Invoke,
        target: Target::Name(name),
        parts,
        body,
        source: peer.0.map(|p| p.ip()),
    };
    super::govern(&shared, inbound).await
}
