//! The demo's acceptance rules, against `callgate demo` as it runs (demo upstream, demo IdP
//! tokens verified over OIDC discovery + JWKS, written config and policies).

use crate::common::*;
use callgate_gateway::demo;
use serde_json::Value;

/// `callgate demo` running on loopback in its own data dir (also used by the MCP tests).
pub struct Demo {
    base: String,
    upstream: String,
    pub dir: tempfile::TempDir,
}

pub async fn start() -> Demo {
    let dir = tempfile::tempdir().unwrap();
    let d = demo::start("127.0.0.1:0", dir.path()).await.unwrap();
    let base = format!("http://{}", d.addr);
    let upstream = format!("http://{}", d.upstream_addr);
    tokio::spawn(d.serve(std::future::pending()));
    Demo {
        base,
        upstream,
        dir,
    }
}

impl Demo {
    pub fn url(&self, p: &str) -> String {
        format!("{}{p}", self.base)
    }
    pub async fn token(&self, user: &str) -> String {
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

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test]
async fn demo_acceptance() {
    let d = start().await;
    let (alice, bob, ci) = (
        d.token("alice").await,
        d.token("bob").await,
        d.token("ci-bot").await,
    );
    assert!(ci.starts_with("cgk_"), "ci-bot gets an API key");
    let a = bearer(&alice);
    let b = bearer(&bob);
    get(&d.url("/users/u_1"), &[]).await.problem(401);
    let r = get(&d.url("/users/u_1"), &[("authorization", &a)]).await;
    assert_eq!(r.status, 200);
    let u = r.json();
    assert_eq!(u["id"], "u_1");
    // alice (support) sees masked personal data; nobody sees the token or the password hash.
    assert_eq!(u["ssn"], "***-**-6781");
    assert_eq!(u["card_number"], "**** **** **** 1111");
    assert_eq!(u["email"], "u****@example.com");
    assert_eq!(u["api_token"], "[REDACTED]");
    assert_eq!(u["password_hash"], "[REDACTED]");
    assert_eq!(u["name"], "Ada Lovelace");
    // bob (billing-ops) is cleared for email, and only for email.
    let u = get(&d.url("/users/u_1"), &[("authorization", &b)])
        .await
        .json();
    assert_eq!(u["email"], "user1@example.com");
    assert_eq!(u["ssn"], "***-**-6781");
    assert_eq!(u["password_hash"], "[REDACTED]");
    // Around Callgate, bank-ops refuses: it only takes tokens Callgate minted for it — not
    // even alice's own valid token.
    let direct = format!("{}/users/u_1", d.upstream);
    assert_eq!(get(&direct, &[]).await.status, 401);
    assert_eq!(get(&direct, &[("authorization", &a)]).await.status, 401);
    let reset = |t: &str, acct: &str| {
        let (url, h, body) = (
            d.url("/billing/reset"),
            bearer(t),
            format!(r#"{{"account_id":"{acct}"}}"#),
        );
        async move { post_json(&url, &[("authorization", &h)], &body).await }
    };
    reset(&alice, "acct_1").await.problem(403);
    // A reset needs a finance approver: held, not forwarded (the approval flow: approvals.rs).
    assert_eq!(reset(&bob, "acct_1").await.status, 202);
    reset(&bob, "other_1").await.problem(403);
    let adjust = |delta: i64| {
        let (url, key, body) = (
            d.url("/quota/adjust"),
            ci.clone(),
            format!(r#"{{"account_id":"acct_1","delta":{delta}}}"#),
        );
        async move { post_json(&url, &[("x-api-key", &key)], &body).await }
    };
    assert_eq!(adjust(50).await.status, 200);
    adjust(5000).await.problem(403);
    // Denied calls don't count against the limit: 9 more allowed, then the 11th allowed call is 429.
    for _ in 0..9 {
        assert_eq!(adjust(50).await.status, 200);
    }
    adjust(50).await.problem(429);
    post_json(
        &d.url("/billing/reset"),
        &[("authorization", &b)],
        r#"{"account_id":"acct_1","account_id":"acct_2"}"#,
    )
    .await
    .problem(400);
    // The naive demo upstream would serve /etc/passwd; Callgate never lets the request through.
    let r = get(
        &d.url("/files?path=/srv/reports/../../etc/passwd"),
        &[("authorization", &a)],
    )
    .await;
    r.problem(403);
    assert!(!String::from_utf8_lossy(&r.body).contains("root:"));
    let r = get(
        &d.url("/files?path=/srv/reports/q3.csv"),
        &[("authorization", &a)],
    )
    .await;
    assert_eq!(r.status, 200);
    let cat = get(&d.url("/v1/functions"), &[("authorization", &a)])
        .await
        .json();
    let names: Vec<&str> = cat["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["users.get", "files.read"]);
    // Bob's tools for a model, OpenAI style.
    let tools: Value = get(
        &d.url("/v1/functions?format=openai"),
        &[("authorization", &b)],
    )
    .await
    .json();
    assert_eq!(tools.as_array().unwrap().len(), 3);
    // Everyone else is denied by default.
    let erin = bearer(&d.token("erin").await);
    get(&d.url("/users/u_1"), &[("authorization", &erin)])
        .await
        .problem(403);
    let cat = get(&d.url("/v1/functions"), &[("authorization", &erin)])
        .await
        .json();
    assert_eq!(cat["functions"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn demo_writes_its_files_and_keeps_edits() {
    let dir = tempfile::tempdir().unwrap();
    let d = demo::start("127.0.0.1:0", dir.path()).await.unwrap();
    for f in [
        "callgate.yaml",
        "policies/demo.cedar",
        "cases.yaml",
        "idp-ed25519.pk8",
        "ci-bot.key",
        "callgate-data/audit.db",
        "callgate-data/audit.key",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    // A stopped demo releases its audit log for the next one.
    d.gateway.shared.audit.shutdown("test").await;
    drop(d);
    std::fs::write(
        dir.path().join("policies/demo.cedar"),
        "forbid(principal, action, resource);",
    )
    .unwrap();
    let d = demo::start("127.0.0.1:0", dir.path()).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("policies/demo.cedar")).unwrap(),
        "forbid(principal, action, resource);"
    );
    assert!(d.banner().contains("callgate demo token alice"));
}

/// A call held before the demo stops runs once approved after it starts again (bank-ops keeps
/// its address, written into the config as a plain URL), even when the gateway itself listens
/// elsewhere the second time; the config holds no `${...}`, so it loads as `callgate check`
/// reads it.
#[tokio::test]
async fn an_approval_survives_a_restart_of_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let start_in = |dir: std::path::PathBuf| async move {
        let d = demo::start("127.0.0.1:0", &dir).await.unwrap();
        let base = format!("http://{}", d.addr);
        let upstream = d.upstream_addr;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let join = tokio::spawn(d.serve(async {
            let _ = rx.await;
        }));
        (base, upstream, tx, join)
    };
    let token = |base: String, user: &'static str| async move {
        let r = post_json(
            &format!("{base}/demo/idp/token"),
            &[],
            &format!(r#"{{"user":"{user}"}}"#),
        )
        .await;
        bearer(r.json()["access_token"].as_str().unwrap())
    };
    let (base, upstream, stop, join) = start_in(dir.path().to_path_buf()).await;
    let bob = token(base.clone(), "bob").await;
    let r = post_json(
        &format!("{base}/billing/reset"),
        &[("authorization", &bob), ("callgate-reason", "ticket 7")],
        r#"{"account_id":"acct_1"}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r
        .header("location")
        .and_then(|l| l.strip_prefix("/v1/calls/"))
        .expect("the held call's location")
        .to_string();
    stop.send(()).unwrap();
    join.await.unwrap();

    let (base2, upstream2, _stop, _join) = start_in(dir.path().to_path_buf()).await;
    assert_ne!(base, base2, "the gateway listens elsewhere");
    assert_eq!(upstream, upstream2, "bank-ops keeps its address");
    let text = std::fs::read_to_string(dir.path().join("callgate.yaml")).unwrap();
    assert!(!text.contains("${"), "{text}");
    assert!(
        text.contains(&format!("{base2}/demo/idp")),
        "the issuer follows the gateway"
    );
    callgate_gateway::runtime::load(
        &dir.path().join("callgate.yaml"),
        &callgate_gateway::runtime::env_vars(Default::default()),
        None,
    )
    .expect("the demo's config loads without the demo's variables");

    let carol = token(base2.clone(), "carol").await;
    let r = post_json(
        &format!("{base2}/v1/approvals/{id}/approve"),
        &[("authorization", &carol)],
        "{}",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let bob = token(base2.clone(), "bob").await;
    let r = get(
        &format!("{base2}/v1/calls/{id}"),
        &[("authorization", &bob), ("prefer", "wait=10")],
    )
    .await;
    assert_eq!(r.json()["state"], "succeeded", "{}", r.text());
}
