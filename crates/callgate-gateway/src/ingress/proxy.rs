//! The transparent HTTP proxy: a client that called an upstream directly points at Callgate
//! instead and changes nothing else. The request's method and normalized path select the
//! declared function; a request matching none is refused and never forwarded.

use axum::body::Body;
use callgate_core::model::Ingress;
use http::{Request, Response};
use std::net::SocketAddr;

use crate::Shared;
use crate::pipeline::{Inbound, Target};

pub async fn handle(
    shared: &Shared,
    req: Request<Body>,
    request_id: String,
    peer: Option<SocketAddr>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let inbound = Inbound {
        request_id,
        ingress: Ingress::Proxy,
        target: Target::Path,
        parts,
        body,
        source: peer.map(|p| p.ip()),
    };
    super::govern(shared, inbound).await
}
