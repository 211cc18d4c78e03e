//! Callgate's IO side: the gateway process.
//!
//! This crate owns everything that touches the network or the file system: listeners and TLS
//! ([`server`], [`tls`]), identity with JWKS fetching ([`identity`]), the governed pipeline
//! ([`pipeline`]) and the ingresses that feed it ([`ingress`]), upstream forwarding
//! ([`upstream`], [`http_client`]), rate limits ([`ratelimit`]), metrics ([`metrics`]), hot
//! reload ([`runtime`]), approvals ([`approvals`]), credentials ([`credentials`]), masking
//! ([`masking`]), the MCP ingress and upstream MCP servers ([`mcp`]) and the
//! self-contained demo ([`demo`]). Decisions themselves are made by the pure crates
//! `callgate-core` and `callgate-policy`.
#![forbid(unsafe_code)]

pub mod anonymous;
pub mod approvals;
pub mod audit;
pub mod config_errors;
pub mod credentials;
pub mod demo;
pub mod framing;
pub mod http_client;
pub mod identity;
pub mod ingress;
pub mod masking;
pub mod mcp;
pub mod metrics;
pub mod pipeline;
pub mod problem;
pub mod ratelimit;
pub mod request_body;
pub mod runtime;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod watch;

use axum::body::Body;
use http::{HeaderValue, Request, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

pub use runtime::{Reloader, Runtime};

/// State shared by every request of one gateway process.
pub struct Shared {
    pub reloader: Reloader,
    pub metrics: metrics::Metrics,
    pub limits: ratelimit::RateLimits,
    /// The audit log: every call's record is durable before it is forwarded.
    pub audit: Arc<audit::Audit>,
    /// Held calls, reviews and grants.
    pub approvals: approvals::Approvals,
    /// Just-in-time upstream credentials and the keys that mint them.
    pub credentials: credentials::Credentials,
    /// Connections to upstream MCP servers.
    pub mcp: mcp::upstream::Upstreams,
    /// The demo identity provider, when running `callgate demo`.
    pub demo: Option<demo::idp::DemoIdp>,
    /// Set when shutdown starts: `/readyz` turns 503 so load balancers stop sending traffic.
    pub draining: AtomicBool,
}

impl Shared {
    pub fn new(
        reloader: Reloader,
        audit: Arc<audit::Audit>,
        approvals: approvals::Approvals,
        credentials: credentials::Credentials,
    ) -> Shared {
        let a = audit.clone();
        reloader.on_reload(move |rt| a.reloaded(rt));
        let mut metrics = metrics::Metrics::default();
        let (stats, healthy) = audit.log().stats_handle();
        metrics.register_audit(stats, healthy);
        Shared {
            reloader,
            metrics,
            limits: Default::default(),
            audit,
            approvals,
            credentials,
            mcp: Default::default(),
            demo: None,
            draining: AtomicBool::new(false),
        }
    }
}

/// The request id every response carries and every log line, audit record and approval uses.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The peer address of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<SocketAddr>);

/// A gateway: shared state plus the API router. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub shared: Arc<Shared>,
    api: axum::Router,
    /// The body limit the API router enforces (read when it was built), for its 413s.
    api_body_limit: usize,
}

impl Gateway {
    pub fn new(shared: Shared) -> Gateway {
        let shared = Arc::new(shared);
        let api_body_limit = shared.reloader.peek().config.limits.max_body_bytes;
        let api = ingress::api::router(shared.clone(), api_body_limit);
        Gateway {
            shared,
            api,
            api_body_limit,
        }
    }

    /// Opens the audit log and the approvals store for a loaded runtime, builds the gateway,
    /// and resumes held calls (recovering interrupted executions, executing approved ones,
    /// expiring what ran out) with the expiry sweeper running.
    pub async fn open(
        rt: Runtime,
        sources: runtime::Sources,
        vars: runtime::Vars,
        config_path: &std::path::Path,
        demo: Option<demo::idp::DemoIdp>,
    ) -> Result<Gateway, String> {
        let audit = audit::Audit::open(&rt, config_path)
            .await
            .map_err(|e| format!("audit log: {e}"))?;
        let approvals = approvals::Approvals::open(&rt, config_path)
            .await
            .map_err(|e| format!("approvals store: {e}"))?;
        let credentials = credentials::Credentials::open(&rt.config.credentials, config_path)
            .map_err(|e| format!("credentials: {e}"))?;
        let mut shared = Shared::new(
            Reloader::new(rt, sources, vars),
            audit,
            approvals,
            credentials,
        );
        shared.demo = demo;
        let base = runtime::base_dir(config_path).to_path_buf();
        let pins = base.join(&shared.reloader.peek().config.mcp.pins);
        shared.mcp = mcp::upstream::Upstreams::new(&pins);
        let gateway = Gateway::new(shared);
        mcp::upstream::Upstreams::start(&gateway.shared, &base);
        approvals::Approvals::resume(&gateway.shared)
            .await
            .map_err(|e| format!("approvals: {e}"))?;
        approvals::Approvals::start_sweeper(&gateway.shared);
        let weak = Arc::downgrade(&gateway.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                shared.credentials.rotate_if_due();
            }
        });
        Ok(gateway)
    }

    /// Handles one request from any listener.
    pub async fn handle(&self, req: Request<Body>, peer: Option<SocketAddr>) -> Response<Body> {
        let request_id = uuid::Uuid::now_v7().to_string();
        let mut resp = if let Err(refusal) = ingress::check_framing(&req) {
            problem::response(&refusal, &request_id)
        } else if ingress::is_api_path(req.uri().path()) {
            let mut req = req;
            req.extensions_mut().insert(RequestId(request_id.clone()));
            req.extensions_mut().insert(Peer(peer));
            use tower::ServiceExt;
            let resp = match self.api.clone().oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            problem::from_rejection(resp, &request_id, self.api_body_limit).await
        } else {
            ingress::proxy::handle(&self.shared, req, request_id.clone(), peer).await
        };
        if !resp.headers().contains_key(problem::REQUEST_ID)
            && let Ok(v) = HeaderValue::from_str(&request_id)
        {
            resp.headers_mut().insert(problem::REQUEST_ID, v);
        }
        resp
    }
}
