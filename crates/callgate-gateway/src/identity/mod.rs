//! Phase 1, authenticate: who is calling.
//!
//! A caller presents exactly one credential: `Authorization: Bearer <token>` (an OIDC access
//! token, or an API key recognizable by its `cgk_` prefix) or `X-API-Key: <key>`. The
//! credential is consumed here and never travels further: the forwarded request is built
//! without it, and only the resulting [`Principal`] goes on.

pub mod apikey;
pub mod jws;
pub mod oidc;

use base64::Engine;
use callgate_core::config::IdentityConfig;
use callgate_core::model::Principal;
use callgate_core::refusal::Refusal;
use http::HeaderMap;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use oidc::{IssuerVerifier, now_secs, unauthenticated};

/// Verified tokens kept until they expire, so a repeat caller costs a hash lookup.
const TOKEN_CACHE_MAX: usize = 100_000;

pub struct Authenticator {
    issuers: Vec<IssuerVerifier>,
    api_keys: apikey::ApiKeys,
    cache: RwLock<HashMap<Box<str>, Arc<Principal>>>,
}

/// The credential a request carries.
enum Credential<'a> {
    Bearer(&'a str),
    ApiKey(&'a str),
}

fn credential(headers: &HeaderMap) -> Result<Credential<'_>, Refusal> {
    let mut auth = headers.get_all(http::header::AUTHORIZATION).iter();
    let mut keys = headers.get_all("x-api-key").iter();
    let (a, a2) = (auth.next(), auth.next());
    let (k, k2) = (keys.next(), keys.next());
    if a2.is_some() || k2.is_some() || (a.is_some() && k.is_some()) {
        return Err(unauthenticated("present exactly one credential"));
    }
    if let Some(v) = a {
        let v = v
            .to_str()
            .map_err(|_| unauthenticated("malformed Authorization header"))?;
        let (scheme, token) = v
            .split_once(' ')
            .ok_or_else(|| unauthenticated("malformed Authorization header"))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(unauthenticated("use the Bearer scheme"));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(unauthenticated("empty bearer token"));
        }
        return Ok(Credential::Bearer(token));
    }
    if let Some(v) = k {
        let v = v
            .to_str()
            .map_err(|_| unauthenticated("malformed X-API-Key header"))?;
        return Ok(Credential::ApiKey(v.trim()));
    }
    Err(unauthenticated(
        "no credential: send Authorization: Bearer <token> or X-API-Key",
    ))
}

impl Authenticator {
    pub fn new(cfg: &IdentityConfig) -> Result<Authenticator, String> {
        let mut issuers = Vec::new();
        for i in &cfg.issuers {
            if issuers
                .iter()
                .any(|v: &IssuerVerifier| v.cfg.issuer == i.issuer)
            {
                return Err(format!("issuer {} is configured twice", i.issuer));
            }
            issuers.push(IssuerVerifier::new(i.clone())?);
        }
        // Callers of two issuers must not share names by default: the same `sub` at each would
        // be one principal to policy, rate limits and segregation of duties.
        if cfg.issuers.len() > 1 && cfg.issuers.iter().any(|i| i.subject_prefix.is_empty()) {
            return Err(format!(
                "{} issuers are configured and not every one has a subject_prefix: give each \
                 its own (for example \"main:\" and \"partner:\"), or the same one where \
                 two issuers share their users",
                cfg.issuers.len()
            ));
        }
        Ok(Authenticator {
            issuers,
            api_keys: apikey::ApiKeys::new(&cfg.api_keys)?,
            cache: RwLock::default(),
        })
    }

    /// Authenticates a request from its headers.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Principal>, Refusal> {
        match credential(headers)? {
            Credential::ApiKey(key) => self.api_key(key),
            Credential::Bearer(t) if t.starts_with(apikey::PREFIX) => self.api_key(t),
            Credential::Bearer(token) => self.token(token).await,
        }
    }

    fn api_key(&self, key: &str) -> Result<Arc<Principal>, Refusal> {
        self.api_keys
            .lookup(key)
            .cloned()
            .ok_or_else(|| unauthenticated("unknown API key"))
    }

    /// Verifies an OIDC access token (cached until it expires).
    pub async fn token(&self, token: &str) -> Result<Arc<Principal>, Refusal> {
        if let Some(p) = self.cached(token) {
            return Ok(p);
        }
        let issuer = self.issuer_of(token)?;
        let principal = Arc::new(issuer.authenticate(token).await?);
        self.remember(token, principal.clone());
        Ok(principal)
    }

    fn cached(&self, token: &str) -> Option<Arc<Principal>> {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        let p = cache.get(token)?;
        (p.expires_at.unwrap_or(0) > now_secs()).then(|| p.clone())
    }

    fn remember(&self, token: &str, p: Arc<Principal>) {
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= TOKEN_CACHE_MAX {
            let now = now_secs();
            cache.retain(|_, p| p.expires_at.unwrap_or(0) > now);
            if cache.len() >= TOKEN_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(token.into(), p);
    }

    /// Picks the configured issuer named by the (not yet verified) `iss` claim; the claim is
    /// checked again after the signature is verified with that issuer's keys.
    fn issuer_of(&self, token: &str) -> Result<&IssuerVerifier, Refusal> {
        let payload = token
            .split('.')
            .nth(1)
            .ok_or_else(|| unauthenticated("malformed token"))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| unauthenticated("malformed token"))?;
        let claims: Value =
            serde_json::from_slice(&bytes).map_err(|_| unauthenticated("malformed token"))?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.issuers
            .iter()
            .find(|i| i.cfg.issuer == iss)
            .ok_or_else(|| unauthenticated("the token's issuer is not trusted"))
    }
}
