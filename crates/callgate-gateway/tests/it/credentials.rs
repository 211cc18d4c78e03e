//! Just-in-time upstream credentials, end to end: the upstream receives a credential Callgate
//! made for the call — a token it minted, a configured secret, or an OAuth token from the real
//! `oidc-provider` — and never the caller's own.

use crate::common::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::collections::HashMap;

const POLICY: &str = r#"
@id("ops")
permit (principal in Callgate::Group::"ops", action in Callgate::Action::"call", resource);
"#;

fn keys() -> (HashMap<&'static str, String>, String) {
    let mut keys = HashMap::new();
    let mut yaml = String::new();
    for (who, groups) in [
        ("bob", "[ops]"),
        ("agent", "[ops]"),
        ("carol", "[approvers]"),
        ("erin", "[auditors]"),
    ] {
        let (k, h) = api_key();
        keys.insert(who, k);
        yaml.push_str(&format!(
            "    - {{id: {who}, hash: \"{h}\", subject: {who}, groups: {groups}}}\n"
        ));
    }
    (keys, yaml)
}

/// Verifies `token` against the gateway's JWKS as an upstream would.
async fn verify(gw: &TestGateway, token: &str, audience: &str) -> Value {
    let jwks = get(&gw.url("/.well-known/jwks.json"), &[]).await;
    assert_eq!(
        jwks.header("content-type"),
        Some("application/jwk-set+json")
    );
    let jwks = jwks.json();
    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("the signing key is published");
    assert_eq!(jwk["kty"], "OKP");
    let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
    let key = DecodingKey::from_ed_der(&x);
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&[audience]);
    v.set_issuer(&["callgate"]);
    v.leeway = 0;
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .expect("the minted token verifies")
        .claims
}

fn bearer(seen: &Seen) -> String {
    seen.headers
        .get("authorization")
        .expect("the upstream got a credential")
        .to_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn minted_tokens_name_the_person_the_agent_the_function_and_the_approval() {
    let up = Upstream::start().await;
    let (keys, key_yaml) = keys();
    let config = format!(
        r#"
identity:
  api_keys:
{key_yaml}
upstreams:
  up:
    url: "{}"
    credential: {{type: minted, audience: "https://up.example", ttl_secs: 30}}
policies: [policies]
approvals:
  delegations: {{agent: bob}}
functions:
  - name: items.get
    upstream: up
    route: GET /items/{{id}}
  - name: items.wipe
    upstream: up
    route: POST /items/wipe
    approval: approvers
  - name: items.peek
    upstream: up
    route: GET /peek
    credential: {{type: minted, audience: "https://up.example", ttl_secs: 1}}
"#,
        up.url()
    );
    let gw = TestGateway::start(&config, &[("p.cedar", POLICY)]).await;
    let h = |who: &str| ("x-api-key", keys[who].clone());
    let call = |who: &'static str| {
        let (url, (k, v)) = (gw.url("/items/7"), h(who));
        async move { get(&url, &[(k, &v)]).await }
    };
    let r = call("bob").await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert!(
        seen.headers.get("x-api-key").is_none(),
        "the caller's key never travels"
    );
    let token = bearer(&seen);
    let claims = verify(&gw, &token, "https://up.example").await;
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["scope"], "call:items.get");
    assert_eq!(claims["request_id"], r.header("x-request-id").unwrap());
    let life = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(life, 30);
    assert!(claims.get("act").is_none());
    // A token for another audience does not verify.
    let jwks = get(&gw.url("/.well-known/jwks.json"), &[]).await.json();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    let x = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&["https://other.example"]);
    assert!(jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_ed_der(&x), &v).is_err());

    // Every call gets its own token.
    call("bob").await;
    let again = verify(&gw, &bearer(&up.last()), "https://up.example").await;
    assert_ne!(again["jti"], claims["jti"]);

    // An agent acting for bob: sub is bob, act names the agent.
    call("agent").await;
    let c = verify(&gw, &bearer(&up.last()), "https://up.example").await;
    assert_eq!(c["sub"], "bob");
    assert_eq!(c["act"]["sub"], "agent");

    // An approved call's token carries the approval id and the approved digest.
    let (k, v) = h("bob");
    let held = post_json(&gw.url("/items/wipe"), &[(k, &v)], "{}").await;
    assert_eq!(held.status, 202);
    let held = held.json();
    let id = held["id"].as_str().unwrap();
    let (k, v) = h("carol");
    post_json(
        &gw.url(&format!("/v1/approvals/{id}/approve")),
        &[(k, &v)],
        "",
    )
    .await;
    let (k, v) = h("bob");
    let done = get(
        &gw.url(&format!("/v1/calls/{id}")),
        &[(k, &v), ("prefer", "wait=10")],
    )
    .await
    .json();
    assert_eq!(done["state"], "succeeded");
    let c = verify(&gw, &bearer(&up.last()), "https://up.example").await;
    assert_eq!(c["approval_id"], id);
    assert_eq!(c["call_digest"], held["digest"]);
    assert_eq!(c["scope"], "call:items.wipe");

    // The audit record names the credential by its jti, never the token.
    let (k, v) = h("erin");
    let story = get(
        &gw.url(&format!(
            "/v1/audit/calls/{}",
            r.header("x-request-id").unwrap()
        )),
        &[(k, &v)],
    )
    .await;
    let text = String::from_utf8_lossy(&story.body).to_string();
    assert!(
        text.contains(&format!(
            "\"credential_id\":\"minted:{}\"",
            claims["jti"].as_str().unwrap()
        )),
        "{text}"
    );
    assert!(!text.contains(&token));

    // The demo upstream's verifier (what an upstream does): a token works once, a replay is
    // refused, and so is an expired one.
    let verifier = callgate_gateway::demo::bank_ops::TokenVerifier::new(
        gw.url("/.well-known/jwks.json"),
        "callgate".into(),
        "https://up.example".into(),
    );
    call("bob").await;
    let fresh = bearer(&up.last());
    assert!(verifier.verify(&fresh).await.is_ok());
    let replay = verifier.verify(&fresh).await.unwrap_err();
    assert!(replay.contains("already used"), "{replay}");
    let (k, v) = h("bob");
    get(&gw.url("/peek"), &[(k, &v)]).await;
    let short = bearer(&up.last());
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let expired = verifier.verify(&short).await.unwrap_err();
    assert!(expired.contains("xpired"), "{expired}");
    assert!(verifier.verify("not.a.jwt").await.is_err());

    // A key no longer published stops verifying once the verifier's key set is old: a JWKS
    // that first publishes Callgate's keys, then none.
    let published = std::sync::Arc::new(std::sync::Mutex::new(
        get(&gw.url("/.well-known/jwks.json"), &[]).await.json(),
    ));
    let p = published.clone();
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let p = p.clone();
            async move { axum::Json(p.lock().unwrap().clone()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let verifier = callgate_gateway::demo::bank_ops::TokenVerifier::new(
        jwks,
        "callgate".into(),
        "https://up.example".into(),
    )
    .keys_max_age(std::time::Duration::from_secs(1));
    call("bob").await;
    assert!(verifier.verify(&bearer(&up.last())).await.is_ok());
    *published.lock().unwrap() = serde_json::json!({"keys": []});
    call("bob").await;
    let in_time = bearer(&up.last());
    assert!(verifier.verify(&in_time).await.is_ok(), "within its age");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    call("bob").await;
    let late = verifier.verify(&bearer(&up.last())).await.unwrap_err();
    assert!(late.contains("unknown signing key"), "{late}");
}

#[tokio::test]
async fn injected_secrets_reach_the_upstream_only() {
    let up = Upstream::start().await;
    let (keys, key_yaml) = keys();
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cr3t-upstream-key-0123456789";
    std::fs::write(dir.path().join("up.secret"), format!("{secret}\n")).unwrap();
    let config = format!(
        r#"
identity:
  api_keys:
{key_yaml}
upstreams:
  up: {{url: "{}"}}
policies: [policies]
functions:
  - name: items.get
    upstream: up
    route: GET /items/{{id}}
    credential: {{type: secret, file: up.secret, header: Authorization, prefix: "Token "}}
  - name: items.search
    upstream: up
    route: GET /search
    arguments: {{type: object, properties: {{q: {{type: string}}}}}}
    credential: {{type: secret, file: up.secret, query: api_key}}
"#,
        up.url()
    );
    let gw = TestGateway::start_in(dir, &config, &[("p.cedar", POLICY)]).await;
    let k = keys["bob"].clone();
    let r = get(&gw.url("/items/1"), &[("x-api-key", &k)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().headers.get("authorization").unwrap(),
        &format!("Token {secret}")
    );
    assert!(!String::from_utf8_lossy(&r.body).contains(secret));
    let id = r.header("x-request-id").unwrap().to_string();
    // The audit log names the credential, never the secret: nothing of it in the database.
    let ek = keys["erin"].clone();
    let story = get(
        &gw.url(&format!("/v1/audit/calls/{id}")),
        &[("x-api-key", &ek)],
    )
    .await;
    let text = String::from_utf8_lossy(&story.body).to_string();
    assert!(
        text.contains("\"credential_id\":\"secret:items.get\""),
        "{text}"
    );
    for f in ["callgate-data/audit.db", "callgate-data/audit.db-wal"] {
        let bytes = std::fs::read(gw.path(f)).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{f} holds the secret"
        );
    }
    // In a query parameter instead.
    let r = get(&gw.url("/search?q=x"), &[("x-api-key", &k)]).await;
    assert_eq!(r.status, 200);
    let pq = up.last().path_and_query;
    assert!(pq.starts_with("/search?q=x&api_key="), "{pq}");
    assert!(pq.ends_with(secret), "{pq}");
    // A caller's own value for that parameter would reach the upstream next to the secret
    // (and many frameworks read the first one): refused, nothing forwarded.
    let seen = up.count();
    for path in ["/search?q=x&api_key=MINE", "/search?api_key=MINE&q=x"] {
        let r = get(&gw.url(path), &[("x-api-key", &k)]).await;
        let p = r.problem(422);
        assert_eq!(p["errors"][0]["pointer"], "/api_key", "{p}");
        assert!(!r.text().contains(secret));
    }
    assert_eq!(up.count(), seen, "nothing forwarded");
    // Arguments that re-encode past the URI limit (each `!` becomes `%21`): refused before
    // anything is recorded as forwarded, and the URL (with the secret) is in no answer.
    let long = "!".repeat(22_000);
    let r = get(&gw.url(&format!("/search?q={long}")), &[("x-api-key", &k)]).await;
    let p = r.problem(422);
    assert!(
        p["detail"].as_str().unwrap().contains("upstream URL"),
        "{p}"
    );
    assert!(!r.text().contains(secret) && !r.text().contains("!!!"));
    assert_eq!(up.count(), seen, "nothing forwarded");
}

#[tokio::test]
async fn oauth_tokens_come_from_the_authorization_server_and_are_cached() {
    let oidc = Oidc::start().await;
    let up = Upstream::start().await;
    let (keys, key_yaml) = keys();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client.secret"), "billing-bot-secret").unwrap();
    std::fs::write(dir.path().join("wrong.secret"), "not-the-secret").unwrap();
    let config = format!(
        r#"
identity:
  api_keys:
{key_yaml}
upstreams:
  up: {{url: "{up}"}}
policies: [policies]
functions:
  - name: items.get
    upstream: up
    route: GET /items/{{id}}
    credential:
      {{type: oauth, token_url: "{iss}/token", client_id: billing-bot, client_secret_file: client.secret, client_auth: post, resource: "https://callgate.test", scope: "functions:call"}}
  - name: items.list
    upstream: up
    route: GET /items
    credential:
      {{type: oauth, token_url: "{iss}/token", client_id: billing-bot, client_secret_file: wrong.secret, client_auth: post, resource: "https://callgate.test"}}
"#,
        up = up.url(),
        iss = oidc.issuer
    );
    let gw = TestGateway::start_in(dir, &config, &[("p.cedar", POLICY)]).await;
    let k = keys["bob"].clone();
    assert_eq!(gw_get(&gw, "/items/1", &k).await, 200);
    let first = bearer(&up.last());
    // A JWT from the authorization server, for the upstream's resource.
    let payload: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(first.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["iss"], oidc.issuer.as_str());
    assert_eq!(payload["client_id"], "billing-bot");
    assert_eq!(gw_get(&gw, "/items/2", &k).await, 200);
    assert_eq!(
        bearer(&up.last()),
        first,
        "cached until shortly before it expires"
    );
    // A client the server refuses: 503, nothing forwarded, the caller's credential not either.
    let before = up.count();
    let r = get(&gw.url("/items"), &[("x-api-key", &k)]).await;
    let p = r.problem(503);
    assert!(p["detail"].as_str().unwrap().contains("credential"), "{p}");
    assert_eq!(up.count(), before);
}

async fn gw_get(gw: &TestGateway, path: &str, key: &str) -> u16 {
    get(&gw.url(path), &[("x-api-key", key)])
        .await
        .status
        .as_u16()
}

/// An RFC 8693 token-exchange endpoint (an authorization server stand-in): it verifies the
/// subject token against Callgate's JWKS, as a real server configured to trust Callgate would,
/// and issues a token naming the person and the agent.
async fn exchange_server(
    l: tokio::net::TcpListener,
    jwks: String,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let audience = format!("http://{}/token", l.local_addr().unwrap());
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = Arc::new(AtomicUsize::new(0));
    let verifier = Arc::new(callgate_gateway::demo::bank_ops::TokenVerifier::new(
        jwks,
        "callgate".into(),
        audience,
    ));
    let (h, v) = (hits.clone(), verifier.clone());
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move |body: String| {
            let (h, v) = (h.clone(), v.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let form: HashMap<String, String> = form_urlencoded::parse(body.as_bytes())
                    .into_owned()
                    .collect();
                if form.get("grant_type").map(String::as_str)
                    != Some("urn:ietf:params:oauth:grant-type:token-exchange")
                    || form.get("client_id").map(String::as_str) != Some("callgate")
                    || form.get("client_secret").map(String::as_str) != Some("exchange-secret")
                {
                    return (http::StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({"error": "invalid_request"})));
                }
                match v.verify(form.get("subject_token").map(String::as_str).unwrap_or("")).await {
                    Ok(c) => {
                        let who = format!(
                            "{}{}",
                            c["sub"].as_str().unwrap_or(""),
                            c["act"]["sub"].as_str().map(|a| format!("+{a}")).unwrap_or_default()
                        );
                        (
                            http::StatusCode::OK,
                            axum::Json(serde_json::json!({"access_token": format!("exchanged-for-{who}"), "token_type": "Bearer", "expires_in": 300})),
                        )
                    }
                    Err(e) => (http::StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({"error": "invalid_grant", "error_description": e}))),
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    hits
}

#[tokio::test]
async fn token_exchange_gets_a_token_per_person_and_agent() {
    let up = Upstream::start().await;
    let (keys, key_yaml) = keys();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ex.secret"), "exchange-secret").unwrap();
    // The server's address goes into the config; it learns the gateway's JWKS address once the
    // gateway runs.
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_url = format!("http://{}/token", server.local_addr().unwrap());
    let config = format!(
        r#"
identity:
  api_keys:
{key_yaml}
upstreams:
  up: {{url: "{}"}}
policies: [policies]
approvals:
  delegations: {{agent: bob}}
functions:
  - name: items.get
    upstream: up
    route: GET /items/{{id}}
    credential: {{type: oauth, token_url: "{token_url}", client_id: callgate, client_secret_file: ex.secret, client_auth: post, token_exchange: true}}
  - name: items.list
    upstream: up
    route: GET /items
    credential: {{type: oauth, token_url: "{token_url}", client_id: callgate, client_secret_file: ex.secret, client_auth: post, token_exchange: true, resource: "https://reports.test"}}
"#,
        up.url()
    );
    let gw = TestGateway::start_in(dir, &config, &[("p.cedar", POLICY)]).await;
    let hits = exchange_server(server, gw.url("/.well-known/jwks.json")).await;
    let get_as = |who: &'static str| {
        let (url, k) = (gw.url("/items/1"), keys[who].clone());
        async move { get(&url, &[("x-api-key", &k)]).await.status }
    };
    assert_eq!(get_as("bob").await, 200);
    assert_eq!(bearer(&up.last()), "exchanged-for-bob");
    assert_eq!(get_as("bob").await, 200);
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "cached per person"
    );
    // The agent acting for bob gets its own exchanged token, naming both.
    assert_eq!(get_as("agent").await, 200);
    assert_eq!(bearer(&up.last()), "exchanged-for-bob+agent");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Same server and client, another resource: bob's token for items.get is not reused for
    // a function whose token is meant for someone else.
    let r = get(&gw.url("/items"), &[("x-api-key", &keys["bob"])]).await;
    assert_eq!(r.status, 200);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 3);
}
