//! The demo's development identity provider, served by the gateway at `/demo/idp`.
//!
//! It publishes OIDC discovery and a JWKS and mints EdDSA-signed access tokens for the demo
//! users. Those tokens are verified exactly like a real IdP's: the gateway fetches this
//! discovery document and JWKS over HTTP and applies the same checks. Never enabled outside
//! `callgate demo`.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Response, StatusCode, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;

use crate::Shared;
use crate::identity::oidc::now_secs;

/// Demo users and their groups. `ci-bot` authenticates with an API key instead.
pub const USERS: &[(&str, &[&str])] = &[
    ("alice", &["support"]),
    ("bob", &["billing-ops"]),
    ("carol", &["finance-approvers"]),
    ("dave", &["finance-approvers"]),
    ("erin", &["auditors"]),
];

pub const AUDIENCE: &str = "callgate";

pub struct DemoIdp {
    pub issuer: String,
    kid: String,
    public_x: String,
    signing: EncodingKey,
    ci_key: String,
}

impl DemoIdp {
    /// `pkcs8` is the Ed25519 key kept in the data dir; `ci_key` the demo API key.
    pub fn new(issuer: String, pkcs8: &[u8], ci_key: String) -> Result<DemoIdp, String> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| format!("demo IdP key: {e}"))?;
        let public_x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(pair.public_key().as_ref())[..12]);
        Ok(DemoIdp {
            issuer,
            kid,
            public_x,
            signing: EncodingKey::from_ed_der(pkcs8),
            ci_key,
        })
    }

    /// A new Ed25519 key in PKCS#8.
    pub fn generate_key() -> Vec<u8> {
        Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .expect("system RNG")
            .as_ref()
            .to_vec()
    }

    pub fn jwks(&self) -> Value {
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": self.public_x, "kid": self.kid, "use": "sig", "alg": "EdDSA"}]})
    }

    /// A credential for a demo user: a signed access token, or the API key for `ci-bot`.
    /// With `actor`, the token is an agent's acting for the user (an RFC 8693 `act` claim).
    pub fn credential(&self, user: &str, actor: Option<&str>) -> Option<Value> {
        if user == "ci-bot" {
            if actor.is_some() {
                return None;
            }
            return Some(
                json!({"access_token": self.ci_key, "token_type": "Bearer", "kind": "api_key"}),
            );
        }
        let groups = USERS.iter().find(|(u, _)| *u == user)?.1;
        let now = now_secs();
        let mut claims = json!({
            "iss": self.issuer,
            "sub": user,
            "aud": AUDIENCE,
            "groups": groups,
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "jti": uuid::Uuid::now_v7().to_string(),
            "client_id": "callgate-demo",
        });
        if let Some(a) = actor {
            let ok = !a.is_empty()
                && a.len() <= 64
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                return None;
            }
            claims["act"] = json!({"sub": a});
        }
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".into());
        let token = jsonwebtoken::encode(&header, &claims, &self.signing).ok()?;
        Some(
            json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600, "kind": "jwt"}),
        )
    }
}

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/demo/idp/.well-known/openid-configuration", get(discovery))
        .route("/demo/idp/jwks.json", get(jwks))
        .route("/demo/idp/token", post(token))
}

fn json(status: StatusCode, v: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(v.to_string()))
        .expect("static headers are valid")
}

fn idp(shared: &Shared) -> &DemoIdp {
    shared
        .demo
        .as_ref()
        .expect("routes exist only in demo mode")
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Response<Body> {
    let i = idp(&shared);
    json(
        StatusCode::OK,
        json!({
            "issuer": i.issuer,
            "jwks_uri": format!("{}/jwks.json", i.issuer),
            "token_endpoint": format!("{}/token", i.issuer),
            "id_token_signing_alg_values_supported": ["EdDSA"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
        }),
    )
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response<Body> {
    json(StatusCode::OK, idp(&shared).jwks())
}

/// `POST /demo/idp/token` with `{"user": "alice"}` or the form `username=alice`.
async fn token(State(shared): State<Arc<Shared>>, req: Request) -> Response<Body> {
    let bytes = match axum::body::to_bytes(req.into_body(), 4096).await {
        Ok(b) => b,
        Err(_) => return json(StatusCode::BAD_REQUEST, json!({"error": "invalid_request"})),
    };
    let body = serde_json::from_slice::<Value>(&bytes).ok();
    let actor = body
        .as_ref()
        .and_then(|v| v.get("act").and_then(Value::as_str).map(str::to_string));
    let user = body
        .as_ref()
        .and_then(|v| v.get("user").and_then(Value::as_str).map(str::to_string))
        .or_else(|| {
            form_urlencoded::parse(&bytes)
                .find(|(k, _)| k == "username")
                .map(|(_, v)| v.into_owned())
        });
    match user
        .as_deref()
        .and_then(|u| idp(&shared).credential(u, actor.as_deref()))
    {
        Some(v) => json(StatusCode::OK, v),
        None => json(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_request", "error_description": "unknown demo user (alice, bob, carol, dave, erin, ci-bot), or an invalid act"}),
        ),
    }
}
