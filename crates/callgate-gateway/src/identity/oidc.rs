//! One trusted OIDC issuer: JWKS discovery and caching, and the claim checks that turn a
//! verified token into a [`Principal`].

use arc_swap::ArcSwap;
use callgate_core::config::IssuerConfig;
use callgate_core::model::{AuthMethod, Principal};
use callgate_core::refusal::Refusal;
use jsonwebtoken::Algorithm;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::jws::{self, JwsError, VerifyKey};
use crate::http_client::{self, HttpClient};

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Keys as last fetched.
#[derive(Default)]
struct KeySet {
    keys: Vec<VerifyKey>,
    fetched_at: Option<Instant>,
}

pub struct IssuerVerifier {
    pub cfg: IssuerConfig,
    algorithms: Vec<Algorithm>,
    client: HttpClient,
    keys: ArcSwap<KeySet>,
    /// Serializes refreshes; holds the time of the last attempt.
    refresh: tokio::sync::Mutex<Option<Instant>>,
}

pub fn unauthenticated(detail: impl Into<String>) -> Refusal {
    Refusal::Unauthenticated {
        detail: detail.into(),
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl IssuerVerifier {
    pub fn new(cfg: IssuerConfig) -> Result<IssuerVerifier, String> {
        let algorithms = cfg
            .algorithms
            .iter()
            .map(|a| jws::parse_algorithm(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("issuer {}: {e}", cfg.issuer))?;
        if algorithms.is_empty() {
            return Err(format!("issuer {}: no algorithms", cfg.issuer));
        }
        if cfg.audiences.is_empty() {
            return Err(format!(
                "issuer {}: at least one audience is required",
                cfg.issuer
            ));
        }
        let client = http_client::build_client(
            cfg.ca_file.as_deref().map(std::path::Path::new),
            FETCH_TIMEOUT,
        )?;
        Ok(IssuerVerifier {
            cfg,
            algorithms,
            client,
            keys: ArcSwap::from_pointee(KeySet::default()),
            refresh: tokio::sync::Mutex::new(None),
        })
    }

    async fn jwks_uri(&self) -> Result<String, String> {
        if let Some(u) = &self.cfg.jwks_uri {
            return Ok(u.clone());
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.cfg.issuer.trim_end_matches('/')
        );
        let doc = http_client::get_json(&self.client, &url, FETCH_TIMEOUT).await?;
        if doc.get("issuer").and_then(Value::as_str) != Some(self.cfg.issuer.as_str()) {
            return Err(format!("{url}: discovery names a different issuer"));
        }
        doc.get("jwks_uri")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("{url}: no jwks_uri"))
    }

    /// Refetches the JWKS, at most once per configured interval. `seen` is the fetch time of
    /// the key set the caller looked at: if another request refreshed meanwhile, that is enough.
    async fn refresh_keys(&self, seen: Option<Instant>) -> Result<(), String> {
        let mut last_attempt = self.refresh.lock().await;
        let current = self.keys.load().fetched_at;
        if current.is_some() && current != seen {
            return Ok(());
        }
        let min = Duration::from_secs(self.cfg.jwks_refresh_interval_secs);
        if current.is_some() && last_attempt.is_some_and(|t| t.elapsed() < min) {
            return Ok(());
        }
        // While the issuer has never answered, retry at most once a second rather than once
        // per request.
        if current.is_none() && last_attempt.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return Err("the last attempt failed moments ago".into());
        }
        *last_attempt = Some(Instant::now());
        let uri = self.jwks_uri().await?;
        let doc = http_client::get_json(&self.client, &uri, FETCH_TIMEOUT).await?;
        let keys = jws::keys_from_jwks(&doc)?;
        tracing::info!(issuer = %self.cfg.issuer, keys = keys.len(), "fetched JWKS");
        self.keys.store(Arc::new(KeySet {
            keys,
            fetched_at: Some(Instant::now()),
        }));
        Ok(())
    }

    /// Fetches the JWKS again once it is older than `jwks_max_age_secs`. One request does it
    /// (inline, within the refresh interval's limit); concurrent ones carry on with the keys
    /// in hand. A failed fetch keeps them.
    async fn refresh_if_old(&self) {
        let seen = self.keys.load().fetched_at;
        let max_age = Duration::from_secs(self.cfg.jwks_max_age_secs);
        if seen.is_none_or(|t| t.elapsed() < max_age) {
            return;
        }
        let Ok(last_attempt) = self.refresh.try_lock() else {
            return;
        };
        let min = Duration::from_secs(self.cfg.jwks_refresh_interval_secs);
        if last_attempt.is_some_and(|t| t.elapsed() < min) {
            return;
        }
        drop(last_attempt);
        if let Err(e) = self.refresh_keys(seen).await {
            tracing::warn!(issuer = %self.cfg.issuer, error = %e, "JWKS refresh failed; the keys in hand stay in use");
        }
    }

    /// Verifies the token's signature, fetching or refreshing keys when needed.
    async fn verify_signature(&self, token: &str) -> Result<jws::Verified, Refusal> {
        if self.keys.load().fetched_at.is_none()
            && let Err(e) = self.refresh_keys(None).await
        {
            tracing::error!(issuer = %self.cfg.issuer, error = %e, "cannot fetch JWKS");
            return Err(Refusal::IdentityUnavailable {
                detail: "the token issuer's keys could not be fetched".into(),
            });
        }
        self.refresh_if_old().await;
        let keys = self.keys.load_full();
        let first = jws::verify(token, &keys.keys, &self.algorithms);
        let result = match first {
            // A key the cache does not have — named by `kid`, or (without one) none that
            // verifies — may be a rotation at the issuer: look once more, rate-limited.
            Err(JwsError::UnknownKey(_) | JwsError::NoKey | JwsError::BadSignature) => {
                if let Err(e) = self.refresh_keys(keys.fetched_at).await {
                    tracing::warn!(issuer = %self.cfg.issuer, error = %e, "JWKS refresh failed");
                }
                jws::verify(token, &self.keys.load().keys, &self.algorithms)
            }
            other => other,
        };
        result.map_err(|e| unauthenticated(format!("the token was refused: {e}")))
    }

    /// Verifies a token from this issuer and builds the principal.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, Refusal> {
        let verified = self.verify_signature(token).await?;
        let claims: Value = serde_json::from_slice(&verified.payload)
            .map_err(|_| unauthenticated("the token's claims are not JSON"))?;
        self.check_claims(&claims, now_secs())
    }

    /// Checks the registered claims and reads subject, groups and actor.
    pub fn check_claims(&self, claims: &Value, now: u64) -> Result<Principal, Refusal> {
        /// 9999-12-31T23:59:59Z.
        const MAX_NUMERIC_DATE: u64 = 253_402_300_799;
        let skew = self.cfg.clock_skew_secs;
        // A NumericDate (RFC 7519 §2): seconds, possibly fractional, within years 1970–9999.
        let num = |name: &str| -> Result<Option<u64>, Refusal> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .or_else(|| {
                        v.as_f64()
                            .filter(|f| f.is_finite() && *f >= 0.0 && *f <= MAX_NUMERIC_DATE as f64)
                            .map(|f| f as u64)
                    })
                    .filter(|n| *n <= MAX_NUMERIC_DATE)
                    .map(Some)
                    .ok_or_else(|| {
                        unauthenticated(format!(
                            "claim {name} is not a time (seconds since 1970, before the year 10000)"
                        ))
                    }),
            }
        };
        if claims.get("iss").and_then(Value::as_str) != Some(self.cfg.issuer.as_str()) {
            return Err(unauthenticated("the token's issuer is not trusted"));
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => self.cfg.audiences.contains(a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| self.cfg.audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !aud_ok {
            return Err(unauthenticated(
                "the token is not meant for this gateway (aud)",
            ));
        }
        let exp = num("exp")?.ok_or_else(|| unauthenticated("the token has no expiry"))?;
        if now > exp.saturating_add(skew) {
            return Err(unauthenticated("the token has expired"));
        }
        let lifetime = self.cfg.max_token_lifetime_secs;
        if exp > now.saturating_add(lifetime).saturating_add(skew) {
            return Err(unauthenticated(format!(
                "the token expires further ahead than this gateway accepts ({lifetime} s)"
            )));
        }
        if num("nbf")?.is_some_and(|nbf| nbf > now.saturating_add(skew)) {
            return Err(unauthenticated("the token is not valid yet"));
        }
        if num("iat")?.is_some_and(|iat| iat > now.saturating_add(skew)) {
            return Err(unauthenticated("the token was issued in the future"));
        }
        let subject = claims
            .get(&self.cfg.subject_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                unauthenticated(format!("the token has no {} claim", self.cfg.subject_claim))
            })
            .map(|s| format!("{}{s}", self.cfg.subject_prefix))?;
        let mut groups = Vec::new();
        let mut node = Some(claims);
        for part in self.cfg.groups_claim.split('.') {
            node = node.and_then(|n| n.get(part));
        }
        collect_strings(node, &mut groups);
        if self.cfg.scopes_as_groups {
            collect_strings(claims.get("scope"), &mut groups);
        }
        groups.sort();
        groups.dedup();
        // The acting agent is named like any caller of this issuer (its subject claim, else
        // `sub`, with the issuer's prefix), so it is the same requester when it signs in itself
        // and can never review what it asked for.
        let actor = claims
            .get("act")
            .and_then(|a| a.get(&self.cfg.subject_claim).or_else(|| a.get("sub")))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| format!("{}{s}", self.cfg.subject_prefix));
        Ok(Principal {
            subject,
            groups,
            auth: AuthMethod::Oidc {
                issuer: self.cfg.issuer.clone(),
            },
            token_id: claims
                .get("jti")
                .and_then(Value::as_str)
                .map(str::to_string),
            actor,
            expires_at: Some(exp),
            session: claims
                .get("sid")
                .and_then(Value::as_str)
                .map(str::to_string),
            audiences: match claims.get("aud") {
                Some(Value::String(a)) => vec![a.clone()],
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
                _ => Vec::new(),
            },
        })
    }
}

/// Strings from a claim: an array of strings, or one space-separated string.
fn collect_strings(v: Option<&Value>, out: &mut Vec<String>) {
    match v {
        Some(Value::String(s)) => out.extend(s.split_whitespace().map(str::to_string)),
        Some(Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_str).map(str::to_string)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn verifier(subject_claim: &str, prefix: &str) -> IssuerVerifier {
        IssuerVerifier::new(IssuerConfig {
            issuer: "https://idp.test".into(),
            audiences: vec!["callgate".into()],
            algorithms: vec!["ES256".into()],
            jwks_uri: None,
            groups_claim: "groups".into(),
            scopes_as_groups: false,
            subject_claim: subject_claim.into(),
            subject_prefix: prefix.into(),
            clock_skew_secs: 30,
            max_token_lifetime_secs: 86_400,
            jwks_refresh_interval_secs: 30,
            jwks_max_age_secs: 600,
            ca_file: None,
        })
        .unwrap()
    }

    const NOW: u64 = 1_999_990_000;

    /// Times that are not times, and expiries further ahead than the configured lifetime,
    /// are refused whatever the signature.
    #[test]
    fn absurd_times_and_long_lifetimes_are_refused() {
        let v = verifier("sub", "");
        let base =
            json!({"iss": "https://idp.test", "aud": "callgate", "sub": "u", "exp": NOW + 600});
        let with = |k: &str, val: Value| {
            let mut c = base.clone();
            c[k] = val;
            c
        };
        let cases: Vec<(Value, Option<&str>)> = vec![
            (base.clone(), None),
            (with("exp", json!(NOW + 86_400)), None),
            (with("exp", json!((NOW + 600) as f64 + 0.5)), None),
            (with("exp", json!(1e300)), Some("not a time")),
            (with("exp", json!(u64::MAX)), Some("not a time")),
            (with("exp", json!(NOW + 86_400 + 31)), Some("further ahead")),
            (with("exp", json!(-5)), Some("not a time")),
            (with("exp", json!("soon")), Some("not a time")),
            (with("nbf", json!(1e300)), Some("not a time")),
            (with("iat", json!(f64::MAX)), Some("not a time")),
            (with("iat", json!(NOW - 10)), None),
        ];
        for (claims, refused) in cases {
            match (v.check_claims(&claims, NOW), refused) {
                (Ok(_), None) => {}
                (Err(e), Some(why)) => assert!(e.detail().contains(why), "{claims}: {e}"),
                (r, want) => panic!("{claims}: got {r:?}, want refusal {want:?}"),
            }
        }
    }

    /// The agent in `act` is named like a caller of the same issuer, so the requester it
    /// becomes is the one it is when it signs in itself (and may not review).
    #[test]
    fn the_acting_agent_is_named_like_the_issuers_callers() {
        let claims = |act: Value| {
            json!({"iss": "https://idp.test", "aud": "callgate", "exp": 2_000_000_000u64,
                   "sub": "u-1", "email": "alice@example.com", "act": act})
        };
        let p = verifier("sub", "main:")
            .check_claims(&claims(json!({"sub": "agent-x"})), NOW)
            .unwrap();
        assert_eq!(p.subject, "main:u-1");
        assert_eq!(p.actor.as_deref(), Some("main:agent-x"));
        // A custom subject claim: the agent's own, else its `sub`.
        let v = verifier("email", "");
        let p = v
            .check_claims(
                &claims(json!({"sub": "a-9", "email": "bot@example.com"})),
                NOW,
            )
            .unwrap();
        assert_eq!(p.subject, "alice@example.com");
        assert_eq!(p.actor.as_deref(), Some("bot@example.com"));
        let p = v.check_claims(&claims(json!({"sub": "a-9"})), NOW).unwrap();
        assert_eq!(p.actor.as_deref(), Some("a-9"));
        let p = v.check_claims(&claims(json!({"sub": ""})), NOW).unwrap();
        assert_eq!(p.actor, None);
    }
}
