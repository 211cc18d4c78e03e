//! Authentication latency for a repeat caller: a verified OIDC token served from the token
//! cache, and an API key lookup (SHA-256 of the key) as the baseline in the same run.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use callgate_core::config::{ApiKeyConfig, IdentityConfig, IssuerConfig};
use callgate_gateway::identity::{Authenticator, apikey};
use criterion::{Criterion, criterion_group, criterion_main};
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Polls a future that is expected to complete without waiting (the cached path).
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the cached path should not wait"),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": B64.encode(pair.public_key().as_ref()), "kid": "k"}]});
    let verify_keys =
        vec![callgate_gateway::identity::jws::VerifyKey::from_jwk(&jwks["keys"][0]).unwrap()];
    let algs = vec![callgate_gateway::identity::jws::parse_algorithm("EdDSA").unwrap()];
    let jwks_url = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", l.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || async move { axum::Json(jwks) }),
        );
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        url
    });
    let key = apikey::generate_key();
    let cfg = IdentityConfig {
        issuers: vec![IssuerConfig {
            issuer: "https://issuer.bench".into(),
            audiences: vec!["callgate".into()],
            algorithms: vec!["EdDSA".into()],
            jwks_uri: Some(jwks_url),
            groups_claim: "groups".into(),
            scopes_as_groups: false,
            subject_claim: "sub".into(),
            subject_prefix: String::new(),
            clock_skew_secs: 30,
            max_token_lifetime_secs: 86_400,
            jwks_refresh_interval_secs: 30,
            jwks_max_age_secs: 600,
            ca_file: None,
        }],
        api_keys: vec![ApiKeyConfig {
            id: "k".into(),
            hash: apikey::hash_key(&key),
            subject: "ci".into(),
            groups: vec!["ci".into()],
        }],
    };
    let auth = rt.block_on(async { Authenticator::new(&cfg).unwrap() });
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"iss": "https://issuer.bench", "aud": "callgate", "sub": "sam", "exp": exp, "groups": ["a", "b"], "jti": "x"});
    let msg = format!(
        "{}.{}",
        B64.encode(r#"{"alg":"EdDSA","kid":"k"}"#),
        B64.encode(claims.to_string())
    );
    let token = format!("{msg}.{}", B64.encode(pair.sign(msg.as_bytes()).as_ref()));
    let mut jwt_headers = http::HeaderMap::new();
    jwt_headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut key_headers = http::HeaderMap::new();
    key_headers.insert("x-api-key", key.parse().unwrap());
    // First use verifies the signature (fetching the JWKS); later uses hit the cache.
    rt.block_on(auth.authenticate(&jwt_headers)).unwrap();

    let mut g = c.benchmark_group("authenticate");
    g.bench_function("baseline_api_key", |b| {
        b.iter(|| now(auth.authenticate(black_box(&key_headers))).unwrap())
    });
    g.bench_function("oidc_token_cached", |b| {
        b.iter(|| now(auth.authenticate(black_box(&jwt_headers))).unwrap())
    });
    g.bench_function("oidc_signature_verify_uncached", |b| {
        b.iter(|| {
            callgate_gateway::identity::jws::verify(black_box(&token), &verify_keys, &algs).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
