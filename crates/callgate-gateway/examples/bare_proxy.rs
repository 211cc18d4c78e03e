//! A reverse proxy that governs nothing: the ceiling `benches/load.sh` measures Callgate
//! against. It is built on the same stack as Callgate's data path (a tokio multi-thread
//! runtime, hyper's HTTP/1 server, hyper-util's pooled client) and does only what any
//! proxy must: read the request, collect its body (Callgate parses every body, so it
//! collects it too), send it to the upstream over a pooled connection, and relay the
//! answer. No authentication, policy, schema, audit or masking.
//!
//!     cargo run --release -p callgate-gateway --example bare_proxy -- LISTEN UPSTREAM
//!     e.g. ... -- 127.0.0.1:18182 http://127.0.0.1:18181

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;

type Upstream = Client<HttpConnector, Full<Bytes>>;

async fn forward(
    client: Arc<(Upstream, String)>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (upstream, base) = &*client;
    let (mut parts, body) = req.into_parts();
    let failed = |status| {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = status;
        Ok(r)
    };
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return failed(StatusCode::BAD_REQUEST);
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{base}{path}").parse::<Uri>() else {
        return failed(StatusCode::BAD_REQUEST);
    };
    parts.uri = uri;
    parts.headers.remove(hyper::header::HOST);
    let Ok(resp) = upstream
        .request(Request::from_parts(parts, Full::new(body)))
        .await
    else {
        return failed(StatusCode::BAD_GATEWAY);
    };
    let (parts, body) = resp.into_parts();
    match body.collect().await {
        Ok(b) => Ok(Response::from_parts(parts, Full::new(b.to_bytes()))),
        Err(_) => failed(StatusCode::BAD_GATEWAY),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(base)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_proxy LISTEN UPSTREAM_URL");
        std::process::exit(2);
    };
    let upstream: Upstream = Client::builder(TokioExecutor::new()).build_http();
    let client = Arc::new((upstream, base.trim_end_matches('/').to_string()));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(client.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
