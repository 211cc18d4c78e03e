//! OIDC identity against a real provider (npm `oidc-provider`) and against a JWKS server whose
//! keys the test controls, for the cases a well-behaved provider never produces.

use crate::common::*;
use axum::Router;
use axum::routing::get as route_get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const POLICY: &str = r#"
permit (principal in Callgate::Group::"billing-ops", action == Callgate::Action::"items.create", resource);
permit (principal in Callgate::Group::"support", action == Callgate::Action::"items.get", resource);
permit (principal in Callgate::Group::"functions:call", action == Callgate::Action::"items.get", resource);
"#;

fn config(up: &str, issuer_block: &str) -> String {
    format!(
        r#"
identity:
  issuers:
{issuer_block}
upstreams: {{up: {{url: "{up}"}}}}
policies: [policies]
functions:
  - {{name: items.get, upstream: up, route: "GET /items/{{id}}"}}
  - {{name: items.create, upstream: up, route: "POST /items"}}
"#
    )
}

fn issuer(iss: &str, extra: &str) -> String {
    format!(
        "    - issuer: \"{iss}\"\n      audiences: [callgate]\n      algorithms: [ES256, RS256, EdDSA]\n{extra}"
    )
}

#[tokio::test]
async fn tokens_from_a_real_oidc_provider() {
    let idp = Oidc::start().await;
    let up = Upstream::start().await;
    let gw = TestGateway::start(
        &config(&up.url(), &issuer(&idp.issuer, "")),
        &[("p.cedar", POLICY)],
    )
    .await;
    let billing = format!("Bearer {}", idp.token("billing-bot").await); // ES256
    let support = format!("Bearer {}", idp.token("support-bot").await); // RS256
    let nobody = format!("Bearer {}", idp.token("nobody-bot").await);
    assert_eq!(
        post_json(&gw.url("/items"), &[("authorization", &billing)], "{}")
            .await
            .status,
        200
    );
    assert_eq!(
        get(&gw.url("/items/1"), &[("authorization", &support)])
            .await
            .status,
        200
    );
    post_json(&gw.url("/items"), &[("authorization", &support)], "{}")
        .await
        .problem(403);
    get(&gw.url("/items/1"), &[("authorization", &nobody)])
        .await
        .problem(403);
    // The upstream never sees the caller's token.
    assert!(up.last().headers.get("authorization").is_none());
    // A tampered signature is refused.
    let mut t = billing.clone();
    let last = t.pop().unwrap();
    t.push(if last == 'A' { 'B' } else { 'A' });
    get(&gw.url("/items/1"), &[("authorization", &t)])
        .await
        .problem(401);
    // The catalog is per caller.
    let cat = get(&gw.url("/v1/functions"), &[("authorization", &billing)])
        .await
        .json();
    assert_eq!(cat["functions"][0]["name"], "items.create");
}

#[tokio::test]
async fn audience_algorithms_and_issuers_are_pinned() {
    let idp = Oidc::start().await;
    let other = Oidc::start().await;
    let up = Upstream::start().await;
    let token = format!("Bearer {}", idp.token("billing-bot").await);
    // Wrong audience.
    let block =
        issuer(&idp.issuer, "").replace("audiences: [callgate]", "audiences: [someone-else]");
    let gw = TestGateway::start(&config(&up.url(), &block), &[("p.cedar", POLICY)]).await;
    let p = post_json(&gw.url("/items"), &[("authorization", &token)], "{}")
        .await
        .problem(401);
    assert!(p["detail"].as_str().unwrap().contains("aud"), "{p}");
    // Algorithm not allowed for this issuer (the provider signs billing-bot's tokens with ES256).
    let block = issuer(&idp.issuer, "").replace("[ES256, RS256, EdDSA]", "[RS256]");
    let gw = TestGateway::start(&config(&up.url(), &block), &[("p.cedar", POLICY)]).await;
    post_json(&gw.url("/items"), &[("authorization", &token)], "{}")
        .await
        .problem(401);
    // A token from an issuer that is not configured.
    let gw = TestGateway::start(
        &config(&up.url(), &issuer(&idp.issuer, "")),
        &[("p.cedar", POLICY)],
    )
    .await;
    let foreign = format!("Bearer {}", other.token("billing-bot").await);
    let p = post_json(&gw.url("/items"), &[("authorization", &foreign)], "{}")
        .await
        .problem(401);
    assert!(p["detail"].as_str().unwrap().contains("issuer"));
    // An issuer that cannot be reached: fail closed with 503.
    let gw = TestGateway::start(
        &config(&up.url(), &issuer("http://127.0.0.1:1", "")),
        &[("p.cedar", POLICY)],
    )
    .await;
    let fake = signed(
        &Ed25519KeyPair::from_pkcs8(&key()).unwrap(),
        json!({"alg": "EdDSA"}),
        claims("http://127.0.0.1:1", json!({})),
    );
    call(&gw, &fake).await.problem(503);
    assert_eq!(up.count(), 0);
    // Several issuers: each names its callers with its own prefix, so the same `sub` at two
    // of them is never one principal. Without prefixes the configuration is refused.
    let two = format!("{}{}", issuer(&idp.issuer, ""), issuer(&other.issuer, ""));
    let cfg = callgate_core::config::Config::parse(&config(&up.url(), &two), &|_| None).unwrap();
    let err = callgate_gateway::identity::Authenticator::new(&cfg.identity)
        .err()
        .expect("two issuers without prefixes are refused");
    assert!(err.contains("subject_prefix"), "{err}");
    let two = format!(
        "{}{}",
        issuer(&idp.issuer, "      subject_prefix: \"main:\"\n"),
        issuer(&other.issuer, "      subject_prefix: \"partner:\"\n")
    );
    let policy = r#"permit (principal == Callgate::User::"partner:billing-bot", action == Callgate::Action::"items.create", resource);"#;
    let gw = TestGateway::start(&config(&up.url(), &two), &[("p.cedar", policy)]).await;
    let r = post_json(&gw.url("/items"), &[("authorization", &foreign)], "{}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    post_json(&gw.url("/items"), &[("authorization", &token)], "{}")
        .await
        .problem(403);
}

fn key() -> Vec<u8> {
    Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .unwrap()
        .as_ref()
        .to_vec()
}

fn jwk(pair: &Ed25519KeyPair, kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(pair.public_key().as_ref()), "kid": kid, "use": "sig"})
}

fn signed(pair: &Ed25519KeyPair, header: Value, claims: Value) -> String {
    let msg = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = pair.sign(msg.as_bytes());
    format!("{msg}.{}", B64.encode(sig.as_ref()))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(iss: &str, extra: Value) -> Value {
    let mut c = json!({"iss": iss, "aud": "callgate", "sub": "sam", "exp": now() + 300, "iat": now(), "groups": ["support"]});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

/// A JWKS endpoint whose keys the test swaps, counting fetches.
struct Jwks {
    url: String,
    keys: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
}

async fn jwks_server(initial: Value) -> Jwks {
    let keys = Arc::new(Mutex::new(initial));
    let hits = Arc::new(AtomicUsize::new(0));
    let (k, h) = (keys.clone(), hits.clone());
    let app = Router::new().route(
        "/jwks",
        route_get(move || {
            let (k, h) = (k.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                axum::Json(k.lock().unwrap().clone())
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    Jwks { url, keys, hits }
}

const ISS: &str = "https://issuer.test";

/// `GET /items/1` with a bearer token.
async fn call(gw: &TestGateway, token: &str) -> Resp {
    get(
        &gw.url("/items/1"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

async fn own_issuer(extra: &str) -> (Ed25519KeyPair, Jwks, TestGateway, Upstream) {
    let pair = Ed25519KeyPair::from_pkcs8(&key()).unwrap();
    let jwks = jwks_server(json!({"keys": [jwk(&pair, "k1")]})).await;
    let up = Upstream::start().await;
    let block = issuer(ISS, &format!("      jwks_uri: \"{}\"\n{extra}", jwks.url));
    let gw = TestGateway::start(&config(&up.url(), &block), &[("p.cedar", POLICY)]).await;
    (pair, jwks, gw, up)
}

#[tokio::test]
async fn claim_and_header_rules() {
    let (pair, _jwks, gw, up) = own_issuer("").await;
    let h = json!({"alg": "EdDSA", "kid": "k1"});
    assert_eq!(
        call(&gw, &signed(&pair, h.clone(), claims(ISS, json!({}))))
            .await
            .status,
        200
    );
    let refused = [
        (
            "expired",
            signed(&pair, h.clone(), claims(ISS, json!({"exp": now() - 120}))),
        ),
        (
            "no exp",
            signed(&pair, h.clone(), claims(ISS, json!({"exp": null}))),
        ),
        (
            "exp 1e300",
            signed(&pair, h.clone(), claims(ISS, json!({"exp": 1e300}))),
        ),
        (
            "exp two days ahead (over the default 24 h lifetime)",
            signed(
                &pair,
                h.clone(),
                claims(ISS, json!({"exp": now() + 2 * 86_400})),
            ),
        ),
        (
            "nbf in the future",
            signed(&pair, h.clone(), claims(ISS, json!({"nbf": now() + 600}))),
        ),
        (
            "iat in the future",
            signed(&pair, h.clone(), claims(ISS, json!({"iat": now() + 600}))),
        ),
        (
            "wrong aud",
            signed(&pair, h.clone(), claims(ISS, json!({"aud": ["other"]}))),
        ),
        (
            "no sub",
            signed(&pair, h.clone(), claims(ISS, json!({"sub": null}))),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                B64.encode(r#"{"alg":"none"}"#),
                B64.encode(claims(ISS, json!({})).to_string())
            ),
        ),
        (
            "embedded jwk",
            signed(
                &pair,
                json!({"alg": "EdDSA", "jwk": jwk(&pair, "k1")}),
                claims(ISS, json!({})),
            ),
        ),
        (
            "jku",
            signed(
                &pair,
                json!({"alg": "EdDSA", "kid": "k1", "jku": "http://127.0.0.1:1/jwks"}),
                claims(ISS, json!({})),
            ),
        ),
        (
            "x5u",
            signed(
                &pair,
                json!({"alg": "EdDSA", "kid": "k1", "x5u": "http://127.0.0.1:1/x"}),
                claims(ISS, json!({})),
            ),
        ),
        (
            "crit",
            signed(
                &pair,
                json!({"alg": "EdDSA", "kid": "k1", "crit": ["exp"]}),
                claims(ISS, json!({})),
            ),
        ),
        (
            "other key",
            signed(
                &Ed25519KeyPair::from_pkcs8(&key()).unwrap(),
                h.clone(),
                claims(ISS, json!({})),
            ),
        ),
    ];
    for (what, token) in refused {
        let r = call(&gw, &token).await;
        assert_eq!(r.status, 401, "{what} must be refused");
        r.problem(401);
    }
    // HS256 with the issuer's public key as the secret (key confusion).
    let msg = format!(
        "{}.{}",
        B64.encode(r#"{"alg":"HS256","kid":"k1"}"#),
        B64.encode(claims(ISS, json!({})).to_string())
    );
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pair.public_key().as_ref()),
        msg.as_bytes(),
    );
    call(&gw, &format!("{msg}.{}", B64.encode(mac.as_ref())))
        .await
        .problem(401);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn groups_from_nested_claims_and_scopes() {
    let (pair, _jwks, gw, _up) =
        own_issuer("      groups_claim: realm_access.roles\n      scopes_as_groups: true\n").await;
    let h = json!({"alg": "EdDSA", "kid": "k1"});
    let nested = claims(
        ISS,
        json!({"groups": null, "realm_access": {"roles": ["support"]}}),
    );
    assert_eq!(
        call(&gw, &signed(&pair, h.clone(), nested)).await.status,
        200
    );
    let scoped = claims(
        ISS,
        json!({"groups": null, "scope": "openid functions:call"}),
    );
    assert_eq!(
        call(&gw, &signed(&pair, h.clone(), scoped)).await.status,
        200
    );
    let neither = claims(ISS, json!({"groups": ["support"], "scope": "openid"}));
    call(&gw, &signed(&pair, h, neither)).await.problem(403);
}

#[tokio::test]
async fn unknown_kids_refresh_the_jwks_at_most_once_per_interval() {
    let (pair, jwks, gw, _up) = own_issuer("      jwks_refresh_interval_secs: 3600\n").await;
    let ok = signed(
        &pair,
        json!({"alg": "EdDSA", "kid": "k1"}),
        claims(ISS, json!({})),
    );
    assert_eq!(call(&gw, &ok).await.status, 200);
    assert_eq!(jwks.hits.load(Ordering::SeqCst), 1);
    for i in 0..10 {
        let t = signed(
            &pair,
            json!({"alg": "EdDSA", "kid": format!("unknown-{i}")}),
            claims(ISS, json!({})),
        );
        call(&gw, &t).await.problem(401);
    }
    assert!(
        jwks.hits.load(Ordering::SeqCst) <= 2,
        "{} fetches",
        jwks.hits.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn rotated_keys_are_picked_up() {
    let (pair, jwks, gw, _up) = own_issuer("      jwks_refresh_interval_secs: 0\n").await;
    let t1 = signed(
        &pair,
        json!({"alg": "EdDSA", "kid": "k1"}),
        claims(ISS, json!({})),
    );
    assert_eq!(call(&gw, &t1).await.status, 200);
    let new = Ed25519KeyPair::from_pkcs8(&key()).unwrap();
    *jwks.keys.lock().unwrap() = json!({"keys": [jwk(&pair, "k1"), jwk(&new, "k2")]});
    let t2 = signed(
        &new,
        json!({"alg": "EdDSA", "kid": "k2"}),
        claims(ISS, json!({"jti": "second"})),
    );
    assert_eq!(call(&gw, &t2).await.status, 200);
    // A cached verified token costs no further fetch.
    let hits = jwks.hits.load(Ordering::SeqCst);
    assert_eq!(call(&gw, &t2).await.status, 200);
    assert_eq!(jwks.hits.load(Ordering::SeqCst), hits);
}

#[tokio::test]
async fn a_withdrawn_key_stops_verifying_once_the_jwks_is_old() {
    let (pair, jwks, gw, _up) =
        own_issuer("      jwks_refresh_interval_secs: 0\n      jwks_max_age_secs: 1\n").await;
    let token = |jti: &str| {
        signed(
            &pair,
            json!({"alg": "EdDSA", "kid": "k1"}),
            claims(ISS, json!({"jti": jti})),
        )
    };
    assert_eq!(call(&gw, &token("a")).await.status, 200);
    // The issuer withdraws k1 (compromised, say) and publishes k2 only.
    let new = Ed25519KeyPair::from_pkcs8(&key()).unwrap();
    *jwks.keys.lock().unwrap() = json!({"keys": [jwk(&new, "k2")]});
    // Within the JWKS's age the cached keys are used; once it is older, it is fetched again
    // and a new token signed with k1 is refused.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    call(&gw, &token("b")).await.problem(401);
}

#[tokio::test]
async fn a_token_without_kid_from_a_rotated_key_refreshes_the_jwks() {
    let (pair, jwks, gw, _up) = own_issuer("      jwks_refresh_interval_secs: 0\n").await;
    let first = signed(
        &pair,
        json!({"alg": "EdDSA", "kid": "k1"}),
        claims(ISS, json!({})),
    );
    assert_eq!(call(&gw, &first).await.status, 200);
    let new = Ed25519KeyPair::from_pkcs8(&key()).unwrap();
    *jwks.keys.lock().unwrap() = json!({"keys": [jwk(&new, "k2")]});
    // No kid, and no cached key verifies it: the keys are looked up once more.
    let t = signed(
        &new,
        json!({"alg": "EdDSA"}),
        claims(ISS, json!({"jti": "no-kid"})),
    );
    assert_eq!(call(&gw, &t).await.status, 200);
}
