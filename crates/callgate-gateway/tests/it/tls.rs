//! TLS on both sides: the listener (HTTP/2 and HTTP/1.1 by ALPN, certificate reload) and
//! upstreams (a configured CA bundle; untrusted certificates refused).

use crate::common::*;
use axum::Router;
use callgate_gateway::http_client;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca() -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "Callgate test CA");
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// A leaf for localhost/127.0.0.1, as (cert PEM, key PEM).
fn leaf(ca: &Ca, cn: &str) -> (String, String) {
    let mut p =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A leaf valid only from `from` to `until` (year, month, day), as (cert PEM, key PEM).
fn leaf_valid(ca: &Ca, cn: &str, from: (i32, u8, u8), until: (i32, u8, u8)) -> (String, String) {
    let mut p =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    p.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// A TLS upstream recording the HTTP version of each request.
async fn tls_upstream(
    cert: &str,
    key: &str,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<http::Version>>>) {
    let versions: Arc<Mutex<Vec<http::Version>>> = Arc::default();
    let v = versions.clone();
    let app = Router::new().fallback(move |req: axum::extract::Request| {
        let v = v.clone();
        async move {
            v.lock().unwrap().push(req.version());
            axum::Json(serde_json::json!({"ok": true}))
        }
    });
    (serve_tls(cert, key, app).await, versions)
}

/// Serves `app` over TLS with `cert`/`key` on an ephemeral loopback port.
async fn serve_tls(cert: &str, key: &str, app: Router) -> std::net::SocketAddr {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "c.pem", cert);
    write(dir.path(), "k.pem", key);
    let cfg =
        callgate_gateway::tls::server_config(&dir.path().join("c.pem"), &dir.path().join("k.pem"))
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _keep = dir;
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

fn config(upstream: &str, ca_line: &str, key_hash: &str, tls: &str) -> String {
    format!(
        r#"
{tls}
identity:
  api_keys: [{{id: k, hash: "{key_hash}", subject: sam, groups: [ops]}}]
upstreams:
  up:
    url: "{upstream}"
{ca_line}
policies: [policies]
functions:
  - {{name: items.get, upstream: up, route: "GET /items/{{id}}"}}
"#
    )
}

const POLICY: &str = r#"permit (principal in Callgate::Group::"ops", action in Callgate::Action::"call", resource);"#;

#[tokio::test]
async fn upstreams_over_tls_with_a_ca_bundle_and_http2() {
    let ca = ca();
    let (cert, key) = leaf(&ca, "upstream");
    let (addr, versions) = tls_upstream(&cert, &key).await;
    let (api_key, hash) = api_key();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ca.pem", &ca.pem);
    let url = format!("https://localhost:{}", addr.port());
    let gw = TestGateway::start_in(
        dir,
        &config(&url, "    ca_file: ca.pem", &hash, ""),
        &[("p.cedar", POLICY)],
    )
    .await;
    let r = get(&gw.url("/items/1"), &[("x-api-key", &api_key)]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        versions.lock().unwrap().as_slice(),
        &[http::Version::HTTP_2],
        "HTTP/2 negotiated by ALPN"
    );
    // Without the CA bundle the upstream's certificate is not trusted: 502, nothing sent.
    let gw = TestGateway::start(&config(&url, "", &hash, ""), &[("p.cedar", POLICY)]).await;
    get(&gw.url("/items/1"), &[("x-api-key", &api_key)])
        .await
        .problem(502);
    assert_eq!(versions.lock().unwrap().len(), 1);
}

async fn handshake(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> (Vec<u8>, Option<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ca.pem", ca_pem);
    let roots = http_client::root_store(Some(&dir.path().join("ca.pem"))).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(http_client::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = conn
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (_, c) = tls.get_ref();
    let leaf: &CertificateDer = &c.peer_certificates().unwrap()[0];
    (leaf.to_vec(), c.alpn_protocol().map(|p| p.to_vec()))
}

/// A gateway serving TLS with the leaf `(cert, key)`, its upstream, and an API key it accepts.
async fn tls_gateway((cert, key): (String, String)) -> (TestGateway, Upstream, String) {
    let up = Upstream::start().await;
    let (api_key, hash) = api_key();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "cert.pem", &cert);
    write(dir.path(), "key.pem", &key);
    let tls = "tls: {cert_file: cert.pem, key_file: key.pem}";
    let gw = TestGateway::start_in(
        dir,
        &config(&up.url(), "", &hash, tls),
        &[("p.cedar", POLICY)],
    )
    .await;
    (gw, up, api_key)
}

#[tokio::test]
async fn the_listener_serves_tls_and_reloads_its_certificate() {
    let ca = ca();
    let (gw, _up, api_key) = tls_gateway(leaf(&ca, "gateway-1")).await;
    // Both protocols by ALPN.
    let (first, alpn) = handshake(gw.addr, &ca.pem, &[b"h2", b"http/1.1"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (_, alpn) = handshake(gw.addr, &ca.pem, &[b"http/1.1"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    // A full call over TLS through a client that trusts the CA.
    let ca_dir = tempfile::tempdir().unwrap();
    write(ca_dir.path(), "ca.pem", &ca.pem);
    let client =
        http_client::build_client(Some(&ca_dir.path().join("ca.pem")), Duration::from_secs(2))
            .unwrap();
    let req = http::Request::get(format!("https://localhost:{}/items/1", gw.addr.port()))
        .header("x-api-key", &api_key)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let _ = resp.into_body().collect().await;
    // Renew the certificate on disk: the next handshake serves the new one, no restart.
    let (cert2, key2) = leaf(&ca, "gateway-2");
    write(gw.dir.path(), "key.pem", &key2);
    write(gw.dir.path(), "cert.pem", &cert2);
    let (second, _) = handshake(gw.addr, &ca.pem, &[b"http/1.1"]).await;
    assert_ne!(first, second);
    // A broken renewal keeps the last good certificate.
    write(gw.dir.path(), "cert.pem", "not a certificate");
    let (third, _) = handshake(gw.addr, &ca.pem, &[b"http/1.1"]).await;
    assert_eq!(second, third);
    // A renewal caught half done (the new certificate beside the old key), then finished by
    // rewriting the key in place within one tick of the clock — same length, same mtime: the
    // failed reload is tried again a little later, and the new pair is served.
    let (cert3, key3) = leaf(&ca, "gateway-3");
    write(gw.dir.path(), "cert.pem", &cert3);
    let (fourth, _) = handshake(gw.addr, &ca.pem, &[b"http/1.1"]).await;
    assert_eq!(
        second, fourth,
        "a certificate without its key is not served"
    );
    let key_path = gw.dir.path().join("key.pem");
    let mtime = std::fs::metadata(&key_path).unwrap().modified().unwrap();
    assert_eq!(key3.len(), key2.len());
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&key_path)
            .unwrap();
        f.write_all(key3.as_bytes()).unwrap();
        f.set_modified(mtime).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (fifth, _) = handshake(gw.addr, &ca.pem, &[b"http/1.1"]).await;
    assert_ne!(fifth, second, "the finished renewal is served");
}

#[tokio::test]
async fn a_certificate_outside_its_validity_period_is_not_served() {
    let ca = ca();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    // Callgate does not start with an expired or a not yet valid certificate.
    for (from, until, says) in [
        (
            (2020, 1, 1),
            (2021, 1, 1),
            "expired at 2021-01-01T00:00:00.000Z",
        ),
        (
            (2990, 1, 1),
            (2999, 1, 1),
            "not valid before 2990-01-01T00:00:00.000Z",
        ),
    ] {
        let (c, k) = leaf_valid(&ca, "gateway", from, until);
        write(dir.path(), "cert.pem", &c);
        write(dir.path(), "key.pem", &k);
        let err = callgate_gateway::tls::server_config(&cert, &key).unwrap_err();
        assert!(err.contains(says), "{err}");
    }
    // A renewal to an expired certificate keeps the one being served.
    let (gw, _up, _) = tls_gateway(leaf(&ca, "gateway-1")).await;
    let (first, _) = handshake(gw.addr, &ca.pem, &[b"http/1.1"]).await;
    let (old_cert, old_key) = leaf_valid(&ca, "gateway-old", (2020, 1, 1), (2021, 1, 1));
    write(gw.dir.path(), "key.pem", &old_key);
    write(gw.dir.path(), "cert.pem", &old_cert);
    let (second, _) = handshake(gw.addr, &ca.pem, &[b"http/1.1"]).await;
    assert_eq!(first, second, "the expired renewal is not served");
}

#[tokio::test]
async fn oauth_token_endpoints_over_tls_with_their_own_ca_bundle() {
    let ca = ca();
    let (cert, key) = leaf(&ca, "authorization server");
    let asked: Arc<Mutex<usize>> = Arc::default();
    let a = asked.clone();
    let token_server = Router::new().route(
        "/token",
        axum::routing::post(move || {
            let a = a.clone();
            async move {
                *a.lock().unwrap() += 1;
                axum::Json(serde_json::json!({
                    "access_token": "tok-from-the-private-ca-server",
                    "token_type": "Bearer",
                    "expires_in": 300
                }))
            }
        }),
    );
    let addr = serve_tls(&cert, &key, token_server).await;
    let up = Upstream::start().await;
    let (api_key, hash) = api_key();
    let config = |ca_line: &str| {
        format!(
            r#"
identity:
  api_keys: [{{id: k, hash: "{hash}", subject: sam, groups: [ops]}}]
upstreams:
  up: {{url: "{up}"}}
policies: [policies]
functions:
  - name: items.get
    upstream: up
    route: "GET /items/{{id}}"
    credential: {{type: oauth, token_url: "https://localhost:{port}/token", client_id: c, client_secret_file: c.secret{ca_line}}}
"#,
            up = up.url(),
            port = addr.port()
        )
    };
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ca.pem", &ca.pem);
    write(dir.path(), "c.secret", "client-secret");
    let gw = TestGateway::start_in(dir, &config(", ca_file: ca.pem"), &[("p.cedar", POLICY)]).await;
    let r = get(&gw.url("/items/1"), &[("x-api-key", &api_key)]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        up.last().headers["authorization"],
        "Bearer tok-from-the-private-ca-server"
    );
    assert_eq!(*asked.lock().unwrap(), 1);
    // Without the bundle the server's certificate is not trusted: 503, nothing forwarded.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "c.secret", "client-secret");
    let gw = TestGateway::start_in(dir, &config(""), &[("p.cedar", POLICY)]).await;
    get(&gw.url("/items/1"), &[("x-api-key", &api_key)])
        .await
        .problem(503);
    assert_eq!(up.count(), 1);
    assert_eq!(*asked.lock().unwrap(), 1, "no TLS session was established");
    // A bundle that is not there is a configuration error, not a call-time surprise.
    std::fs::write(gw.path("callgate.yaml"), config(", ca_file: missing.pem")).unwrap();
    let vars = callgate_gateway::runtime::env_vars(Default::default());
    let Err(e) = callgate_gateway::runtime::load(&gw.path("callgate.yaml"), &vars, None) else {
        panic!("a missing CA bundle was accepted");
    };
    assert!(e.to_string().contains("oauth.ca_file"), "{e}");
}
