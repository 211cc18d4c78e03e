//! Outbound HTTP: one pooled hyper client per upstream (and per identity provider), HTTP/1.1
//! and HTTP/2 (ALPN), TLS through rustls with the system roots or a configured CA bundle.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The rustls provider used everywhere in Callgate (ring: small and fast to build).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file; an empty file is an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", path.display()));
    }
    Ok(certs)
}

/// Trust roots: the CA bundle when given, else the system store.
pub fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for c in read_certs(path).map_err(|e| format!("CA bundle {e}"))? {
                roots
                    .add(c)
                    .map_err(|e| format!("CA bundle {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                // A malformed system certificate is skipped rather than failing startup.
                let _ = roots.add(c);
            }
        }
    }
    Ok(roots)
}

/// How long a pooled connection stays unused before it is closed, unless configured.
pub const POOL_IDLE: Duration = Duration::from_secs(90);

/// A pooled client trusting `ca_file` (or the system roots).
pub fn build_client(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
) -> Result<HttpClient, String> {
    build_pooled(ca_file, connect_timeout, POOL_IDLE)
}

/// A pooled client whose unused connections close after `idle` (the pool has a timer: without
/// one hyper-util never applies the idle timeout).
pub fn build_pooled(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
    idle: Duration,
) -> Result<HttpClient, String> {
    let tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(root_store(ca_file)?)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(idle)
        .build(connector))
}

/// GETs a JSON document (discovery, JWKS), bounded in size and time.
pub async fn get_json(
    client: &HttpClient,
    url: &str,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let req = http::Request::get(url)
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("{url}: {e}"))?;
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| format!("{url}: timed out"))?
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let body = tokio::time::timeout(timeout, Limited::new(resp.into_body(), 1 << 20).collect())
        .await
        .map_err(|_| format!("{url}: timed out reading the body"))?
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))
}
