//! Test harness: the real gateway on loopback, a real recording upstream, a real OIDC provider
//! (npm `oidc-provider`), and plain HTTP clients. Nothing of Callgate's own is mocked.
#![allow(dead_code)]

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use callgate_gateway::runtime;
use callgate_gateway::{Gateway, http_client};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A real HTTP server that records what reaches it and echoes it back as JSON.
/// `/slow/...` answers after 3 s.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let s = seen.clone();
        let app = Router::new().fallback(move |req: Request| {
            let s = s.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let pq = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                s.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    path_and_query: pq.clone(),
                    headers: parts.headers.clone(),
                    body: body.clone(),
                });
                if pq.starts_with("/slow") {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                let body_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                axum::Json(json!({"method": parts.method.as_str(), "path": pq, "body": body_json}))
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Upstream { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }
}

/// The gateway under test, serving a config written into a temp dir.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub gateway: Gateway,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub join: Option<tokio::task::JoinHandle<()>>,
}

impl TestGateway {
    pub async fn start(config: &str, policies: &[(&str, &str)]) -> TestGateway {
        Self::start_in(tempfile::tempdir().unwrap(), config, policies).await
    }

    /// Starts in `dir`, which may already hold files the config refers to (certificates).
    pub async fn start_in(
        dir: tempfile::TempDir,
        config: &str,
        policies: &[(&str, &str)],
    ) -> TestGateway {
        std::fs::write(dir.path().join("callgate.yaml"), config).unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        for (name, text) in policies {
            std::fs::write(dir.path().join("policies").join(name), text).unwrap();
        }
        let vars = runtime::env_vars(HashMap::new());
        // As `callgate serve` does: upstream MCP servers' tools are pinned before loading.
        callgate_gateway::mcp::upstream::discover(
            &dir.path().join("callgate.yaml"),
            &vars,
            Duration::from_secs(20),
        )
        .await
        .unwrap();
        let (rt, sources) = runtime::load(&dir.path().join("callgate.yaml"), &vars, None)
            .unwrap_or_else(|e| panic!("config does not load:\n{e}"));
        let tls = rt.config.tls.as_ref().map(|t| {
            callgate_gateway::tls::server_config(
                &dir.path().join(&t.cert_file),
                &dir.path().join(&t.key_file),
            )
            .unwrap()
        });
        let gateway = Gateway::open(rt, sources, vars, &dir.path().join("callgate.yaml"), None)
            .await
            .expect("gateway opens");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let g = gateway.clone();
        let join = tokio::spawn(async move {
            callgate_gateway::server::serve(
                g,
                listener,
                tls,
                async {
                    let _ = rx.await;
                },
                Duration::from_secs(5),
            )
            .await;
        });
        TestGateway {
            addr,
            dir,
            gateway,
            shutdown: Some(tx),
            join: Some(join),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Rewrites a file the way an editor would (a new file renamed over the old one).
    pub fn edit(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        let tmp = p.with_extension("tmp-edit");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
    }

    /// Starts graceful shutdown.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits until the server has stopped (after [`Self::shutdown`]).
    pub async fn stopped(&mut self) {
        if let Some(join) = self.join.take() {
            join.await.unwrap();
        }
    }
}

/// A response as a test sees it.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an RFC 9457 problem with `status` and returns it.
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let p = self.json();
        assert_eq!(p["status"], status);
        assert!(p["title"].is_string() && p["detail"].is_string());
        assert_eq!(
            p["request_id"].as_str(),
            self.header("x-request-id"),
            "problem names the request id"
        );
        p
    }
}

pub fn client() -> http_client::HttpClient {
    http_client::build_client(None, Duration::from_secs(2)).unwrap()
}

pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client().request(req))
        .await
        .expect("timely")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    send(Method::GET, url, headers, None).await
}

pub async fn post_json(url: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut h = headers.to_vec();
    h.push(("content-type", "application/json"));
    send(Method::POST, url, &h, Some(body.as_bytes())).await
}

/// Writes raw bytes on a fresh connection and reads until the server closes it (or 3 s).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let mut closed = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => {
                closed = true;
                break;
            }
            Err(_) => break,
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// An API key and its config hash.
pub fn api_key() -> (String, String) {
    let k = callgate_gateway::identity::apikey::generate_key();
    let h = callgate_gateway::identity::apikey::hash_key(&k);
    (k, h)
}

/// The real OIDC provider (npm `oidc-provider`), installed by the test command.
pub struct Oidc {
    pub issuer: String,
    child: tokio::process::Child,
}

impl Drop for Oidc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

impl Oidc {
    pub async fn start() -> Oidc {
        let dir = repo_root().join("tests/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "the test OIDC provider is not installed: run the README's test command (it runs `npm ci` in tests/oidc)"
        );
        let mut child = tokio::process::Command::new("node")
            .arg("provider.mjs")
            .arg("0")
            .current_dir(&dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let mut out = child.stdout.take().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(20), async {
            while out.read(&mut byte).await.unwrap() == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
        })
        .await
        .expect("the OIDC provider starts");
        let v: Value = serde_json::from_slice(&line).expect("provider prints its issuer");
        Oidc {
            issuer: v["issuer"].as_str().unwrap().to_string(),
            child,
        }
    }

    /// A client_credentials access token (JWT) for `client` with resource `https://callgate.test`.
    pub async fn token(&self, client: &str) -> String {
        let body = format!(
            "grant_type=client_credentials&client_id={client}&client_secret={client}-secret&resource=https%3A%2F%2Fcallgate.test&scope=functions%3Acall"
        );
        let r = send(
            Method::POST,
            &format!("{}/token", self.issuer),
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(body.as_bytes()),
        )
        .await;
        assert_eq!(
            r.status,
            200,
            "token endpoint: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()["access_token"].as_str().unwrap().to_string()
    }
}

/// Holds an exclusive lock on the SQLite database at `db` (another writer's transaction), so
/// the gateway cannot write it until the connection runs `ROLLBACK` or is dropped.
pub async fn lock_database(db: &std::path::Path) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    other
}
