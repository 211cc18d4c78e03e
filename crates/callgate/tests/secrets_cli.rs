//! Secrets never reach the logs: a real `callgate serve` process at debug level forwards calls
//! with an injected secret and with minted tokens, refuses a wrong key, and its whole output
//! is searched for the caller's key, the upstream secret and every token the upstream received.
//! Every file it wrote is owner-only.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

#[tokio::test]
async fn no_secret_appears_in_the_gateway_output() {
    // An upstream that remembers the credentials it was given.
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let g = g.clone();
        async move {
            for h in ["authorization", "x-upstream-key"] {
                if let Some(v) = req.headers().get(h) {
                    g.lock().unwrap().push(v.to_str().unwrap().to_string());
                }
            }
            axum::Json(serde_json::json!({"ok": true}))
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let key = callgate_gateway::identity::apikey::generate_key();
    let hash = callgate_gateway::identity::apikey::hash_key(&key);
    let secret = "upstream-secret-7f3a9c2e1b";
    std::fs::write(dir.path().join("up.secret"), secret).unwrap();
    let cfg = format!(
        r#"listen: 127.0.0.1:0
logging: {{format: json, level: debug}}
identity:
  api_keys:
    - {{id: ops, hash: "{hash}", subject: olivia, groups: [ops]}}
upstreams:
  up: {{url: "http://{up}"}}
policies: [policies]
functions:
  - name: a.get
    upstream: up
    route: GET /a
    credential: {{type: secret, file: up.secret, header: X-Upstream-Key}}
  - name: b.get
    upstream: up
    route: GET /b
    credential: {{type: minted, audience: up}}
"#
    );
    let path = dir.path().join("callgate.yaml");
    std::fs::write(&path, cfg).unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/p.cedar"),
        "permit (principal in Callgate::Group::\"ops\", action in Callgate::Action::\"call\", resource);",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut log = String::new();
    let addr = loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "serve exited: {log}");
        log.push_str(&line);
        if let Some(a) = line
            .split("callgate listening on http://")
            .nth(1)
            .and_then(|r| r.split('"').next())
        {
            break a.to_string();
        }
    };
    let client =
        callgate_gateway::http_client::build_client(None, std::time::Duration::from_secs(2))
            .unwrap();
    let call = |path: &str, k: &str| {
        let req = http::Request::get(format!("http://{addr}{path}"))
            .header("x-api-key", k)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        client.request(req)
    };
    for p in ["/a", "/b", "/b"] {
        assert_eq!(call(p, &key).await.unwrap().status(), 200);
    }
    assert_eq!(call("/a", "cgk_wrong").await.unwrap().status(), 401);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    out.read_to_string(&mut log).unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.contains("a.get") || log.contains("call forwarded"),
        "the calls were logged: {log}"
    );
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 3);
    let mut secrets = vec![key.clone(), secret.to_string()];
    secrets.extend(
        got.iter()
            .map(|v| v.trim_start_matches("Bearer ").to_string()),
    );
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "a secret reached the logs: {s}");
    }
    // Every file and directory the gateway made (stores, their -wal and -shm, lock files,
    // keys) is its owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let ours = ["callgate.yaml", "up.secret", "policies", "p.cedar"];
    let mut made = 0;
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            }
            if ours.contains(&e.file_name().to_str().unwrap()) {
                continue;
            }
            made += 1;
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", e.path().display());
        }
    }
    assert!(
        made >= 4,
        "the stores were written under the config's directory"
    );
}
