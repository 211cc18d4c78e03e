//! The MCP gateway with real MCP SDK peers: the official TypeScript and Python SDKs as
//! clients through `/mcp`, and as upstream servers (Python over stdio, TypeScript over
//! streamable HTTP) behind Callgate. The test command installs both SDKs
//! (`tests/mcp/package.json`, `pip install mcp` into `target/mcp-venv`).

use crate::common::*;
use callgate_gateway::demo;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

fn mcp_dir() -> PathBuf {
    repo_root().join("tests/mcp")
}

fn python() -> PathBuf {
    repo_root().join("target/mcp-venv/bin/python")
}

/// Runs the TypeScript SDK client: one JSON line per step, then the session line.
async fn ts_client(url: &str, token: &str, steps: Value) -> Vec<Value> {
    let out = tokio::process::Command::new("node")
        .arg(mcp_dir().join("client.mjs"))
        .arg(url)
        .arg(token)
        .arg(steps.to_string())
        .output()
        .await
        .expect("node runs (installed by the test command)");
    lines(&out)
}

/// Runs the Python SDK client in `mode` ("auto": 2026-07-28 via server/discover; "legacy").
async fn py_client(url: &str, token: &str, mode: &str, steps: Value) -> Vec<Value> {
    let out = tokio::process::Command::new(python())
        .arg(mcp_dir().join("client.py"))
        .arg(url)
        .arg(token)
        .arg(mode)
        .arg(steps.to_string())
        .output()
        .await
        .expect("the MCP Python SDK is installed in target/mcp-venv by the test command");
    lines(&out)
}

fn lines(out: &std::process::Output) -> Vec<Value> {
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        !v.is_empty(),
        "the client printed nothing; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    v
}

fn tool_names(list: &Value) -> Vec<String> {
    assert_eq!(list["ok"], true, "{list}");
    let mut names: Vec<String> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

struct Demo {
    base: String,
    dir: tempfile::TempDir,
}

async fn start_demo() -> Demo {
    let dir = tempfile::tempdir().unwrap();
    let d = demo::start("127.0.0.1:0", dir.path()).await.unwrap();
    let base = format!("http://{}", d.addr);
    tokio::spawn(d.serve(std::future::pending()));
    Demo { base, dir }
}

impl Demo {
    fn url(&self, p: &str) -> String {
        format!("{}{p}", self.base)
    }
    fn mcp(&self) -> String {
        self.url("/mcp")
    }
    async fn token(&self, user: &str) -> String {
        let r = post_json(
            &self.url("/demo/idp/token"),
            &[],
            &format!(r#"{{"user":"{user}"}}"#),
        )
        .await;
        assert_eq!(r.status, 200);
        r.json()["access_token"].as_str().unwrap().to_string()
    }
}

/// The issue's acceptance, with the TypeScript SDK as the agent's client.
#[tokio::test]
async fn demo_acceptance_with_the_typescript_sdk() {
    let d = start_demo().await;
    let alice = d.token("alice").await;
    let out = ts_client(
        &d.mcp(),
        &alice,
        json!([
            {"op": "list"},
            {"op": "call", "name": "users.get", "arguments": {"id": "u_1"}},
            {"op": "call", "name": "billing.reset_account", "arguments": {"account_id": "acct_1"}},
            {"op": "call", "name": "no.such_tool", "arguments": {}},
        ]),
    )
    .await;
    // alice sees exactly the tools she could be allowed to call.
    assert_eq!(tool_names(&out[0]), ["files.read", "users.get"]);
    // A masked profile: partial SSN and card, email partially masked, token and hash redacted.
    let profile = &out[1]["result"]["structuredContent"];
    assert_eq!(out[1]["result"]["isError"], false, "{}", out[1]);
    assert_eq!(profile["ssn"], "***-**-6781");
    assert_eq!(profile["card_number"], "**** **** **** 1111");
    assert_eq!(profile["password_hash"], "[REDACTED]");
    assert_eq!(profile["api_token"], "[REDACTED]");
    assert_ne!(profile["email"], "ada@example.com");
    let text = out[1]["result"]["content"][0]["text"].as_str().unwrap();
    assert!(!text.contains("078-05-") && !text.contains("4111 1111 1111 1111"), "{text}");
    // Refused, as a result the agent can read, naming no policy.
    let refused = &out[2]["result"];
    assert_eq!(refused["isError"], true);
    let msg = refused["content"][0]["text"].as_str().unwrap();
    assert!(msg.contains("Forbidden") && msg.contains("billing.reset_account"), "{msg}");
    assert!(!msg.contains("permit") && !msg.contains("billing-reset"), "{msg}");
    // An unknown tool is a protocol error (invalid params).
    assert_eq!(out[3]["ok"], false);
    assert_eq!(out[3]["code"], -32602);
    let session = out.last().unwrap();
    assert_eq!(session["protocol"], "2025-11-25");
    assert!(session["session"].is_string());

    // bob: the reset comes back pending; carol approves; it runs; bob sees the result.
    let bob = d.token("bob").await;
    let out = ts_client(
        &d.mcp(),
        &bob,
        json!([
            {"op": "list"},
            {"op": "call", "name": "billing.reset_account", "arguments": {"account_id": "acct_9"}},
        ]),
    )
    .await;
    assert!(tool_names(&out[0]).contains(&"callgate.call_status".to_string()));
    let pending = &out[1]["result"];
    assert_eq!(pending["isError"], false, "{pending}");
    assert_eq!(pending["structuredContent"]["status"], "pending_approval");
    let id = pending["structuredContent"]["call_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(pending["content"][0]["text"].as_str().unwrap().contains(&id));
    // bob may not approve his own call, through any door.
    let own = post_json(
        &d.url(&format!("/v1/approvals/{id}/approve")),
        &[("authorization", &format!("Bearer {bob}"))],
        "{}",
    )
    .await;
    assert!(own.status == 403 || own.status == 404, "{}", own.status);
    let status = ts_client(
        &d.mcp(),
        &bob,
        json!([{"op": "call", "name": "callgate.call_status", "arguments": {"call_id": id}}]),
    )
    .await;
    assert_eq!(status[0]["result"]["structuredContent"]["state"], "pending");
    let carol = d.token("carol").await;
    let r = post_json(
        &d.url(&format!("/v1/approvals/{id}/approve")),
        &[("authorization", &format!("Bearer {carol}"))],
        "{}",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut done = Value::Null;
    for _ in 0..50 {
        let status = ts_client(
            &d.mcp(),
            &bob,
            json!([{"op": "call", "name": "callgate.call_status", "arguments": {"call_id": id}}]),
        )
        .await;
        if status[0]["result"]["structuredContent"]["status"] == "reset" {
            done = status[0]["result"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(done["structuredContent"]["account_id"], "acct_9", "{done}");
    // Someone else's call is not theirs to follow.
    let out = ts_client(
        &d.mcp(),
        &alice,
        json!([{"op": "call", "name": "callgate.call_status", "arguments": {"call_id": id}}]),
    )
    .await;
    assert_eq!(out[0]["result"]["isError"], true);
}

/// The Python SDK negotiates 2026-07-28 (server/discover, per-request metadata and the
/// standard headers) and, in legacy mode, the initialize handshake.
#[tokio::test]
async fn demo_with_the_python_sdk_modern_and_legacy() {
    let d = start_demo().await;
    let alice = d.token("alice").await;
    let steps = json!([
        {"op": "list"},
        {"op": "call", "name": "users.get", "arguments": {"id": "u_2"}},
        {"op": "call", "name": "files.read", "arguments": {"path": "/etc/passwd"}},
        {"op": "call", "name": "users.get", "arguments": {"id": "not-a-user-id"}},
    ]);
    for (mode, version) in [("auto", "2026-07-28"), ("legacy", "2025-11-25")] {
        let out = py_client(&d.mcp(), &alice, mode, steps.clone()).await;
        assert_eq!(out.last().unwrap()["protocol"], version, "{out:?}");
        assert_eq!(tool_names(&out[0]), ["files.read", "users.get"], "{mode}");
        let profile = &out[1]["result"]["structuredContent"];
        assert!(
            profile["ssn"].as_str().unwrap().starts_with("***-**-"),
            "{mode}: {profile}"
        );
        // Per-argument policy: a path outside /srv/reports/ is refused.
        assert_eq!(out[2]["result"]["isError"], true, "{mode}: {}", out[2]);
        // Arguments are validated against the schema before policy sees them.
        assert_eq!(out[3]["result"]["isError"], true, "{mode}: {}", out[3]);
        let detail = out[3]["result"]["structuredContent"]["error"]["status"].clone();
        assert_eq!(detail, 422, "{mode}: {}", out[3]);
    }
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;

fn mcp_headers<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![("accept", "application/json, text/event-stream")];
    h.extend_from_slice(extra);
    h
}

/// The HTTP edge: RFC 9728 challenge and metadata, audience, Origin, session binding, header
/// and body agreement, strict JSON.
#[tokio::test]
async fn the_mcp_edge_refuses_what_it_must() {
    let d = start_demo().await;
    let (alice, bob) = (d.token("alice").await, d.token("bob").await);
    let (a, b) = (format!("Bearer {alice}"), format!("Bearer {bob}"));

    // Unauthenticated: 401 pointing at the protected-resource metadata.
    let r = post_json(&d.mcp(), &mcp_headers(&[]), INIT).await;
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap().to_string();
    let meta_url = d.url("/.well-known/oauth-protected-resource/mcp");
    assert_eq!(challenge, format!("Bearer resource_metadata=\"{meta_url}\""));
    let meta = get(&meta_url, &[]).await.json();
    assert_eq!(meta["resource"], d.mcp());
    assert_eq!(meta["authorization_servers"][0], d.url("/demo/idp"));
    // A bad token: the same challenge plus invalid_token.
    let r = post_json(&d.mcp(), &mcp_headers(&[("authorization", "Bearer x.y.z")]), INIT).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().contains("invalid_token"));

    // A browser page from another origin is refused.
    let r = post_json(
        &d.mcp(),
        &mcp_headers(&[("authorization", &a), ("origin", "http://evil.example")]),
        INIT,
    )
    .await;
    assert_eq!(r.status, 403);

    // Strict JSON: duplicate keys are a parse error, before any MCP code reads them.
    let r = post_json(
        &d.mcp(),
        &mcp_headers(&[("authorization", &a)]),
        r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32700);

    // Session binding: alice's session is refused to bob, and still alice's.
    let r = post_json(&d.mcp(), &mcp_headers(&[("authorization", &a)]), INIT).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sid = r.header("mcp-session-id").unwrap().to_string();
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let with = |auth: &str| {
        vec![
            ("accept", "application/json, text/event-stream"),
            ("authorization", auth),
            ("mcp-session-id", sid.as_str()),
            ("mcp-protocol-version", "2025-06-18"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<Vec<_>>()
    };
    let hb = with(&b);
    let hb: Vec<(&str, &str)> = hb.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = post_json(&d.mcp(), &hb, list).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("another principal"));
    let ha = with(&a);
    let ha: Vec<(&str, &str)> = ha.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = post_json(&d.mcp(), &ha, list).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("users.get") && !r.text().contains("billing.reset_account"));

    // 2026-07-28: Mcp-Method / Mcp-Name must match the body (-32020).
    let call = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"users.get","arguments":{"id":"u_1"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"raw","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    for (method, name) in [("tools/list", "users.get"), ("tools/call", "files.read")] {
        let r = post_json(
            &d.mcp(),
            &mcp_headers(&[
                ("authorization", &a),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", method),
                ("mcp-name", name),
            ]),
            call,
        )
        .await;
        assert_eq!(r.status, 400, "{method} {name}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], -32020, "{}", r.text());
    }
    let r = post_json(
        &d.mcp(),
        &mcp_headers(&[
            ("authorization", &a),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "users.get"),
        ]),
        call,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("***-**-6781"), "{}", r.text());

    // A token for another audience is refused at /mcp even from a trusted issuer.
    let cfg_path = d.dir.path().join("callgate.yaml");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    // (The MCP section's audiences, indented two spaces; the issuer's stay as they are.)
    let edited = cfg.replace(
        "\n  audiences: [callgate]\n",
        "\n  audiences: [https://callgate.example/mcp]\n",
    );
    assert_ne!(cfg, edited, "the demo config names its MCP audience");
    let tmp = cfg_path.with_extension("tmp");
    std::fs::write(&tmp, edited).unwrap();
    std::fs::rename(&tmp, &cfg_path).unwrap();
    let r = post_json(&d.mcp(), &mcp_headers(&[("authorization", &a)]), INIT).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let challenge = r.header("www-authenticate").unwrap();
    assert!(challenge.contains("audience"), "{challenge}");
    // The same token still works where its audience is accepted.
    let r = get(&d.url("/users/u_1"), &[("authorization", &a)]).await;
    assert_eq!(r.status, 200);
}
