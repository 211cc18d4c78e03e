//! "bank-ops": the demo's built-in upstream. A deliberately naive service — it trusts its
//! input, resolves `..` in file paths and would serve `/etc/passwd` — so the demo shows what
//! Callgate keeps away from it.
//!
//! In the demo it accepts only tokens Callgate minted for it ([`TokenVerifier`]): it checks
//! them against Callgate's `/.well-known/jwks.json` the way any upstream would, and refuses
//! requests without one, so calling it directly, around Callgate, fails.

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The upstream; with a verifier, every request needs a valid token minted for it.
pub fn router(verifier: Option<Arc<TokenVerifier>>) -> Router {
    let r = Router::new()
        .route("/users/{id}", get(user))
        .route("/billing/reset", post(reset))
        .route("/quota/adjust", post(quota))
        .route("/files", get(file));
    match verifier {
        Some(v) => r.layer(axum::middleware::from_fn_with_state(v, require_token)),
        None => r,
    }
}

/// Verifies Callgate-minted tokens as an upstream does: signature by a key from Callgate's
/// JWKS (fetched again for an unknown `kid`), `iss`, `aud`, `exp`/`nbf`, a `call:` scope, and
/// each `jti` used once.
pub struct TokenVerifier {
    pub jwks_url: String,
    pub issuer: String,
    pub audience: String,
    keys: Mutex<(HashMap<String, DecodingKey>, Option<Instant>)>,
    /// How long a fetched key set is trusted before it is fetched again.
    max_age: Duration,
    seen: Mutex<HashMap<String, u64>>,
    client: crate::http_client::HttpClient,
}

impl TokenVerifier {
    pub fn new(jwks_url: String, issuer: String, audience: String) -> TokenVerifier {
        TokenVerifier {
            jwks_url,
            issuer,
            audience,
            keys: Mutex::default(),
            max_age: Duration::from_secs(60),
            seen: Mutex::default(),
            client: crate::http_client::build_client(None, Duration::from_secs(2))
                .expect("a plain HTTP client builds"),
        }
    }

    /// Trusts a fetched key set for `max_age` (default a minute).
    pub fn keys_max_age(mut self, max_age: Duration) -> TokenVerifier {
        self.max_age = max_age;
        self
    }

    async fn key(&self, kid: &str) -> Option<DecodingKey> {
        {
            let k = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            // Keys are trusted for `max_age` after they were last published: a key Callgate
            // withdrew (its rotation overlap over) stops verifying without a restart.
            let cached = k.0.get(kid).cloned();
            if cached.is_some() && k.1.is_some_and(|t| t.elapsed() < self.max_age) {
                return cached;
            }
            // An unknown kid (or an old set) refetches, at most once a second.
            if k.1.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return cached;
            }
        }
        let req = http::Request::get(&self.jwks_url)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .ok()?;
        let resp = self.client.request(req).await.ok()?;
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .ok()?
            .to_bytes();
        let jwks: Value = serde_json::from_slice(&body).ok()?;
        // The published set replaces the cached one: what is no longer published is no
        // longer trusted.
        let mut published = HashMap::new();
        for j in jwks["keys"].as_array()? {
            if let (Some(id), Some(x)) = (j["kid"].as_str(), j["x"].as_str())
                && let Ok(key) = DecodingKey::from_ed_components(x)
            {
                published.insert(id.to_string(), key);
            }
        }
        let mut k = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        *k = (published, Some(Instant::now()));
        k.0.get(kid).cloned()
    }

    /// The token's claims, or why it is refused.
    pub async fn verify(&self, token: &str) -> Result<Value, String> {
        let kid = jsonwebtoken::decode_header(token)
            .map_err(|e| format!("not a JWT: {e}"))?
            .kid
            .ok_or("the token names no key")?;
        let key = self.key(&kid).await.ok_or("unknown signing key")?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        v.leeway = 0;
        let claims = jsonwebtoken::decode::<Value>(token, &key, &v)
            .map_err(|e| format!("invalid token: {e}"))?
            .claims;
        if !claims["scope"]
            .as_str()
            .is_some_and(|s| s.starts_with("call:"))
        {
            return Err("the token has no call scope".into());
        }
        let jti = claims["jti"].as_str().ok_or("the token has no jti")?;
        let exp = claims["exp"].as_u64().unwrap_or(0);
        let now = crate::identity::oidc::now_secs();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|_, e| *e + 10 >= now);
        if seen.insert(jti.to_string(), exp).is_some() {
            return Err("the token was already used".into());
        }
        Ok(claims)
    }
}

async fn require_token(
    State(v): State<Arc<TokenVerifier>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_string);
    let refused = |why: String| {
        (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "unauthorized", "detail": why})),
        )
            .into_response()
    };
    match token {
        None => refused("bank-ops only serves calls that come through Callgate".into()),
        Some(t) => match v.verify(&t).await {
            Ok(_) => next.run(req).await,
            Err(why) => refused(why),
        },
    }
}

async fn user(Path(id): Path<String>) -> (StatusCode, Json<Value>) {
    let n: usize = match id.strip_prefix("u_").and_then(|n| n.parse().ok()) {
        Some(n) if (1..=5).contains(&n) => n,
        _ => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "no such user", "id": id})),
            );
        }
    };
    let names = [
        "Ada Lovelace",
        "Grace Hopper",
        "Alan Turing",
        "Katherine Johnson",
        "Edsger Dijkstra",
    ];
    (
        StatusCode::OK,
        Json(json!({
            "id": id,
            "name": names[n - 1],
            "email": format!("user{n}@example.com"),
            "phone": format!("+1-202-555-01{n:02}"),
            "ssn": format!("123-45-678{n}"),
            "card_number": "4111 1111 1111 1111",
            "api_token": format!("sk_live_demo{n}xxxxxxxxxxxxxxxxxxxx"),
            "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
            "account_id": format!("acct_{n}"),
        })),
    )
}

#[derive(Deserialize)]
struct Reset {
    account_id: String,
}

async fn reset(Json(r): Json<Reset>) -> Json<Value> {
    Json(json!({"account_id": r.account_id, "status": "reset", "balance": 0}))
}

#[derive(Deserialize)]
struct Adjust {
    account_id: String,
    delta: i64,
}

async fn quota(Json(a): Json<Adjust>) -> Json<Value> {
    Json(json!({"account_id": a.account_id, "delta": a.delta, "quota": 1000 + a.delta}))
}

/// Resolves dot segments the naive way, like many real backends.
fn naive_resolve(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

async fn file(Query(q): Query<HashMap<String, String>>) -> (StatusCode, String) {
    let Some(path) = q.get("path") else {
        return (StatusCode::BAD_REQUEST, "path is required\n".into());
    };
    match naive_resolve(path).as_str() {
        "/srv/reports/q3.csv" => (StatusCode::OK, "quarter,revenue\nQ3,1200000\n".into()),
        "/srv/reports/q2.csv" => (StatusCode::OK, "quarter,revenue\nQ2,1100000\n".into()),
        "/etc/passwd" => (StatusCode::OK, "root:x:0:0:root:/root:/bin/bash\n".into()),
        _ => (StatusCode::NOT_FOUND, "no such file\n".into()),
    }
}
