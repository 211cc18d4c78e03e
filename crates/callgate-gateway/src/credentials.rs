//! Phase 7, credential: the just-in-time credential for a forwarded call. The caller's own
//! credential was consumed in phase 1 and is never forwarded ("token passthrough" is what this
//! phase exists to prevent).
//!
//! Per function (or per upstream), one of:
//! - **minted**: a JWT Callgate signs for this one call with its Ed25519 key — `iss` Callgate,
//!   `aud` the upstream's audience, `sub` the person, `act` the agent when delegated, `scope`
//!   naming the function, `exp` at most 60 s away, a unique `jti`, the request id and, for an
//!   approved call, the approval id and the approved digest. The public keys are served at
//!   `/.well-known/jwks.json`; keys rotate, the previous one staying published for an overlap.
//! - **secret**: a static secret (environment variable or file, read at load) in a header or a
//!   query parameter.
//! - **oauth**: a token from an authorization server (client credentials, or RFC 8693 token
//!   exchange with a minted subject token), cached until shortly before it expires.
//!
//! The credential is obtained *before* the audit phase so the call's record can name it (by
//! id: `minted:<jti>`, `secret:<function>`, `oauth:<client>:<token hash>`), never its value.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use callgate_core::Call;
use callgate_core::config::{ClientAuth, CredentialConfig, CredentialsConfig};
use callgate_core::refusal::Refusal;
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::http_client::HttpClient;
use crate::identity::oidc::now_secs;
use crate::runtime::Runtime;

/// A credential ready to attach.
pub struct Obtained {
    /// What the audit record names: never the credential itself.
    pub id: String,
    pub header: Option<(HeaderName, HeaderValue)>,
    pub query: Option<(String, String)>,
}

/// One signing key.
struct MintKey {
    kid: String,
    created: u64,
    public_x: String,
    encoding: EncodingKey,
}

/// Where a function's secret is kept: per function, or per MCP server for its tools.
fn secret_key(f: &callgate_core::FunctionDef) -> &str {
    match f.backend {
        callgate_core::Backend::Http => &f.name,
        callgate_core::Backend::McpTool { .. }
        | callgate_core::Backend::McpMethod { .. }
        | callgate_core::Backend::McpServerRequest { .. } => &f.upstream,
    }
}

fn unavailable(detail: impl Into<String>) -> Refusal {
    Refusal::Unavailable {
        detail: detail.into(),
    }
}

/// Which keys are published at `now`: the current (newest) one, and older ones whose successor
/// was made less than `overlap` seconds ago. Returns indexes into `created` (sorted ascending).
pub fn published(created: &[u64], now: u64, overlap: u64) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, _) in created.iter().enumerate() {
        let successor = created.get(i + 1);
        match successor {
            None => out.push(i),
            Some(&next) if now.saturating_sub(next) < overlap => out.push(i),
            Some(_) => {}
        }
    }
    out
}

/// The minting keys, on disk in `key_dir` as `<created unix seconds>.pk8`.
struct Keys {
    dir: PathBuf,
    keys: Vec<MintKey>,
}

impl Keys {
    fn load(dir: &Path) -> Result<Keys, String> {
        let mut keys = Vec::new();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                let Some(created) = p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<u64>().ok())
                    .filter(|_| p.extension().is_some_and(|x| x == "pk8"))
                else {
                    continue;
                };
                let der = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                keys.push(key_from(created, &der).map_err(|e| format!("{}: {e}", p.display()))?);
            }
        }
        keys.sort_by_key(|k| k.created);
        Ok(Keys {
            dir: dir.to_path_buf(),
            keys,
        })
    }

    /// Makes a new current key (written 0600 before use).
    fn rotate(&mut self, now: u64) -> Result<(), String> {
        let der = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .map_err(|_| "cannot generate a signing key".to_string())?;
        let created = now.max(self.keys.last().map_or(0, |k| k.created + 1));
        let path = self.dir.join(format!("{created}.pk8"));
        crate::audit::write_private(&path, der.as_ref())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        self.keys.push(key_from(created, der.as_ref())?);
        tracing::info!(kid = %self.keys.last().map(|k| k.kid.as_str()).unwrap_or(""), "new token-minting key");
        Ok(())
    }
}

impl Keys {
    /// Deletes the keys no longer published (their successor is older than `overlap`): no
    /// token they signed is still alive, and nothing verifies with them any more, so their
    /// private halves are not kept on disk.
    fn retire(&mut self, now: u64, overlap: u64) {
        let created: Vec<u64> = self.keys.iter().map(|k| k.created).collect();
        let keep = published(&created, now, overlap);
        if keep.len() == self.keys.len() {
            return;
        }
        let mut i = 0;
        self.keys.retain(|k| {
            let kept = keep.contains(&i);
            i += 1;
            if !kept {
                let path = self.dir.join(format!("{}.pk8", k.created));
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::info!(kid = %k.kid, "retired token-minting key deleted"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(kid = %k.kid, path = %path.display(), error = %e, "cannot delete a retired token-minting key"),
                }
            }
            kept
        });
    }
}

fn key_from(created: u64, der: &[u8]) -> Result<MintKey, String> {
    let pair =
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| format!("signing key: {e}"))?;
    let public = pair.public_key().as_ref();
    Ok(MintKey {
        kid: URL_SAFE_NO_PAD.encode(&Sha256::digest(public)[..12]),
        created,
        public_x: URL_SAFE_NO_PAD.encode(public),
        encoding: EncodingKey::from_ed_der(der),
    })
}

/// Where and how to ask for an OAuth token.
struct OauthClient<'a> {
    token_url: &'a str,
    client_id: &'a str,
    scope: &'a Option<String>,
    resource: &'a Option<String>,
    exchange: bool,
    /// `client_secret_post` rather than Basic.
    post: bool,
}

/// Cached OAuth tokens above which expired ones are swept out before another is added.
const OAUTH_CACHE_SWEEP: usize = 1024;

/// A cached OAuth token.
struct Cached {
    token: String,
    until: Instant,
}

/// The gateway's credential phase.
pub struct Credentials {
    issuer: String,
    rotate_after: u64,
    overlap: u64,
    keys: RwLock<Keys>,
    oauth: Mutex<HashMap<String, Cached>>,
    client: HttpClient,
}

impl Credentials {
    /// Loads (or creates) the minting keys named by the config at `config_path`.
    pub fn open(cfg: &CredentialsConfig, config_path: &Path) -> Result<Credentials, String> {
        let base = crate::runtime::base_dir(config_path);
        let mut keys = Keys::load(&base.join(&cfg.key_dir))?;
        let rotate_after = cfg.rotate_after_hours.max(1) * 3600;
        let now = now_secs();
        if keys
            .keys
            .last()
            .is_none_or(|k| now.saturating_sub(k.created) >= rotate_after)
        {
            keys.rotate(now)?;
        }
        keys.retire(now, cfg.overlap_secs);
        Ok(Credentials {
            issuer: cfg.issuer.clone(),
            rotate_after,
            overlap: cfg.overlap_secs,
            keys: RwLock::new(keys),
            oauth: Mutex::default(),
            client: crate::http_client::build_client(None, Duration::from_secs(5))?,
        })
    }

    /// Rotates the signing key if it is due (called from a timer).
    pub fn rotate_if_due(&self) {
        let now = now_secs();
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if keys
            .keys
            .last()
            .is_none_or(|k| now.saturating_sub(k.created) >= self.rotate_after)
            && let Err(e) = keys.rotate(now)
        {
            tracing::error!(error = %e, "rotating the token-minting key failed; the current key stays");
        }
        keys.retire(now, self.overlap);
    }

    /// `/.well-known/jwks.json`: the current key and those still in their overlap.
    pub fn jwks(&self) -> Value {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let created: Vec<u64> = keys.keys.iter().map(|k| k.created).collect();
        let list: Vec<Value> = published(&created, now_secs(), self.overlap)
            .into_iter()
            .map(|i| {
                let k = &keys.keys[i];
                json!({"kty": "OKP", "crv": "Ed25519", "x": k.public_x, "kid": k.kid, "alg": "EdDSA", "use": "sig"})
            })
            .collect();
        json!({ "keys": list })
    }

    /// Signs `claims` with the current key.
    fn sign(&self, claims: &Value) -> Result<String, Refusal> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let k = keys
            .keys
            .last()
            .ok_or_else(|| unavailable("no token-minting key"))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(k.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &k.encoding).map_err(|e| Refusal::Internal {
            detail: format!("minting a token: {e}"),
        })
    }

    /// A token for `call` to `audience`, valid `ttl` seconds. Returns (jti, token).
    pub fn mint(
        &self,
        rt: &Runtime,
        call: &Call,
        audience: &str,
        ttl: u64,
    ) -> Result<(String, String), Refusal> {
        let now = now_secs();
        let jti = uuid::Uuid::now_v7().to_string();
        let requester = crate::approvals::requester_of(&call.principal, &rt.config.approvals);
        let mut claims = json!({
            "iss": self.issuer,
            "aud": audience,
            "sub": requester.subject,
            "scope": format!("call:{}", call.function.name),
            "iat": now,
            "nbf": now,
            "exp": now + ttl.clamp(1, 60),
            "jti": jti,
            "request_id": call.request_id,
        });
        if let Some(agent) = &requester.actor {
            claims["act"] = json!({ "sub": agent });
        }
        if let Some(a) = &call.meta.approved {
            claims["approval_id"] = json!(a.id);
            claims["call_digest"] = json!(a.digest);
        }
        Ok((jti, self.sign(&claims)?))
    }

    /// Callgate's own credential for listing an MCP server's tools (no caller involved): the
    /// server's secret, or a token minted for Callgate itself (`sub` "callgate", scope
    /// `mcp:tools/list`). An OAuth credential is obtained per call, so listing goes without.
    pub fn for_listing(&self, rt: &Runtime, server: &str) -> Option<Obtained> {
        let cfg = rt.config.mcp.servers.get(server)?.credential.as_ref()?;
        match cfg {
            CredentialConfig::Minted { audience, ttl_secs } => {
                let now = now_secs();
                let jti = uuid::Uuid::now_v7().to_string();
                let claims = json!({
                    "iss": self.issuer, "aud": audience, "sub": "callgate",
                    "scope": "mcp:tools/list", "iat": now, "nbf": now,
                    "exp": now + (*ttl_secs).clamp(1, 60), "jti": jti,
                });
                let token = self.sign(&claims).ok()?;
                Some(Obtained {
                    id: format!("minted:{jti}"),
                    header: HeaderValue::from_str(&format!("Bearer {token}"))
                        .ok()
                        .map(|v| (http::header::AUTHORIZATION, v)),
                    query: None,
                })
            }
            CredentialConfig::Secret { header, prefix, .. } => {
                let secret = rt.credential_secrets.get(&format!("mcp:{server}"))?;
                let name = HeaderName::try_from(header.as_deref()?).ok()?;
                let mut v = HeaderValue::from_bytes(&[prefix.as_bytes(), secret].concat()).ok()?;
                v.set_sensitive(true);
                Some(Obtained {
                    id: format!("secret:mcp:{server}"),
                    header: Some((name, v)),
                    query: None,
                })
            }
            CredentialConfig::Oauth { .. } => None,
        }
    }

    /// Obtains the credential `call`'s function is configured with (none: nothing attached).
    pub async fn obtain(&self, rt: &Runtime, call: &Call) -> Result<Option<Obtained>, Refusal> {
        let Some(cfg) = &call.function.credential else {
            return Ok(None);
        };
        let bearer = |t: &str| {
            HeaderValue::from_str(&format!("Bearer {t}"))
                .map(|v| Some((http::header::AUTHORIZATION, v)))
                .map_err(|_| Refusal::Internal {
                    detail: "a token is not a valid header value".into(),
                })
        };
        match cfg {
            CredentialConfig::Minted { audience, ttl_secs } => {
                let (jti, token) = self.mint(rt, call, audience, *ttl_secs)?;
                Ok(Some(Obtained {
                    id: format!("minted:{jti}"),
                    header: bearer(&token)?,
                    query: None,
                }))
            }
            CredentialConfig::Secret {
                header,
                query,
                prefix,
                ..
            } => {
                let secret = rt
                    .credential_secrets
                    .get(secret_key(&call.function))
                    .ok_or_else(|| unavailable("the upstream secret is not loaded"))?;
                let text = String::from_utf8_lossy(secret);
                let header = match header {
                    Some(h) => {
                        let name =
                            HeaderName::try_from(h.as_str()).map_err(|_| Refusal::Internal {
                                detail: format!("{h:?} is not a header name"),
                            })?;
                        let mut v =
                            HeaderValue::from_str(&format!("{prefix}{text}")).map_err(|_| {
                                Refusal::Internal {
                                    detail: "the upstream secret is not a valid header value"
                                        .into(),
                                }
                            })?;
                        v.set_sensitive(true);
                        Some((name, v))
                    }
                    None => None,
                };
                Ok(Some(Obtained {
                    id: format!("secret:{}", secret_key(&call.function)),
                    header,
                    query: query.as_ref().map(|q| (q.clone(), text.into_owned())),
                }))
            }
            CredentialConfig::Oauth {
                token_url,
                client_id,
                scope,
                resource,
                token_exchange,
                client_auth,
                ..
            } => {
                let token = self
                    .oauth_token(
                        rt,
                        call,
                        OauthClient {
                            token_url,
                            client_id,
                            scope,
                            resource,
                            exchange: *token_exchange,
                            post: *client_auth == ClientAuth::Post,
                        },
                    )
                    .await?;
                let tag: String = Sha256::digest(token.as_bytes())[..6]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                Ok(Some(Obtained {
                    id: format!("oauth:{client_id}:{tag}"),
                    header: bearer(&token)?,
                    query: None,
                }))
            }
        }
    }

    /// A token from the authorization server, from the cache while it has more than 30 s (or
    /// a tenth of its life) left. Token exchange tokens are per person and agent.
    async fn oauth_token(
        &self,
        rt: &Runtime,
        call: &Call,
        c: OauthClient<'_>,
    ) -> Result<String, Refusal> {
        let OauthClient {
            token_url,
            client_id,
            scope,
            resource,
            exchange,
            post,
        } = c;
        let secret = rt
            .credential_secrets
            .get(secret_key(&call.function))
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .unwrap_or_default();
        // A cached token is reused only for exactly the request that would fetch it again:
        // the same server, client (and secret), grant, scope and resource — and for token
        // exchange, the same person and agent. A token for one upstream never reaches another.
        let requester = crate::approvals::requester_of(&call.principal, &rt.config.approvals);
        let secret_digest = URL_SAFE_NO_PAD.encode(Sha256::digest(secret.as_bytes()));
        let mut key = format!(
            "{token_url}\0{client_id}\0{secret_digest}\0{}\0{}\0{}\0{exchange}\0{post}",
            scope.as_deref().unwrap_or(""),
            u8::from(resource.is_some()),
            resource.as_deref().unwrap_or(""),
        );
        if exchange {
            key.push('\0');
            key.push_str(&requester.subject);
            key.push('\0');
            key.push_str(requester.actor.as_deref().unwrap_or(""));
        }
        if let Some(c) = self
            .oauth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .filter(|c| c.until > Instant::now())
        {
            return Ok(c.token.clone());
        }
        let subject_token = if exchange {
            // The subject token says who the call is for; the server checks Callgate's JWKS.
            Some(self.mint(rt, call, token_url, 60)?.1)
        } else {
            None
        };
        // The serializer is not Send: finish it before any await.
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            if let Some(subject_token) = &subject_token {
                form.append_pair(
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:token-exchange",
                );
                form.append_pair("subject_token", subject_token);
                form.append_pair("subject_token_type", "urn:ietf:params:oauth:token-type:jwt");
            } else {
                form.append_pair("grant_type", "client_credentials");
            }
            if let Some(s) = scope {
                form.append_pair("scope", s);
            }
            if let Some(r) = resource {
                form.append_pair("resource", r);
            }
            if post {
                form.append_pair("client_id", client_id);
                form.append_pair("client_secret", &secret);
            }
            form.finish()
        };
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            form_urlencoded::byte_serialize(client_id.as_bytes()).collect::<String>(),
            form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>()
        ));
        let mut req = http::Request::post(token_url)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json");
        if !post {
            req = req.header(http::header::AUTHORIZATION, format!("Basic {basic}"));
        }
        let req = req
            .body(Full::new(bytes::Bytes::from(form)))
            .map_err(|e| Refusal::Internal {
                detail: e.to_string(),
            })?;
        let failed = |why: String| {
            tracing::warn!(%token_url, %client_id, error = %why, "cannot obtain an upstream token");
            unavailable(format!(
                "a credential for the upstream of {} could not be obtained",
                call.function.name
            ))
        };
        // A token endpoint with its own CA bundle has its own client (built at load).
        let client = rt
            .token_clients
            .get(secret_key(&call.function))
            .unwrap_or(&self.client);
        let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
            .await
            .map_err(|_| failed("timed out".into()))?
            .map_err(|e| failed(e.to_string()))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| failed(e.to_string()))?
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(failed(format!(
                "status {}: {}",
                status.as_u16(),
                v["error"].as_str().unwrap_or("")
            )));
        }
        let token = v["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| failed("no access_token in the answer".into()))?
            .to_string();
        // At most a day: a server's absurd `expires_in` must not overflow the clock.
        let life = v["expires_in"].as_u64().unwrap_or(60).min(86_400);
        let margin = (life / 10).max(30).min(life);
        let mut cache = self.oauth.lock().unwrap_or_else(|e| e.into_inner());
        // Token exchange caches one token per person and agent: drop the expired ones now
        // and then, so the cache holds what is live rather than everyone ever seen.
        if cache.len() >= OAUTH_CACHE_SWEEP {
            let now = Instant::now();
            cache.retain(|_, c| c.until > now);
        }
        cache.insert(
            key,
            Cached {
                token: token.clone(),
                until: Instant::now() + Duration::from_secs(life - margin),
            },
        );
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_key(dir: &Path, created: u64) {
        let der = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(format!("{created}.pk8")), der.as_ref()).unwrap();
    }

    #[tokio::test]
    async fn keys_rotate_when_due_and_the_previous_one_overlaps() {
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = dir.path().join("callgate.yaml");
        let cfg = CredentialsConfig::default();
        let keys = dir.path().join(&cfg.key_dir);
        let now = now_secs();
        // A key older than rotate_after_hours: a new one is made; both are published.
        write_key(&keys, now - 25 * 3600);
        let c = Credentials::open(&cfg, &cfg_path).unwrap();
        assert_eq!(c.jwks()["keys"].as_array().unwrap().len(), 2);
        assert_eq!(std::fs::read_dir(&keys).unwrap().count(), 2);
        // Keys whose successor is older than the overlap are no longer published.
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join(&cfg.key_dir);
        write_key(&keys, now - 30 * 3600);
        write_key(&keys, now - 2 * 3600);
        let c = Credentials::open(&cfg, &dir.path().join("callgate.yaml")).unwrap();
        let jwks = c.jwks();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
        // ... and their private halves are deleted: only the current key stays on disk.
        let left: Vec<_> = std::fs::read_dir(&keys)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec![format!("{}.pk8", now - 2 * 3600)]);
        // A fresh directory gets its first key, 0600.
        let dir = tempfile::tempdir().unwrap();
        let c = Credentials::open(&cfg, &dir.path().join("callgate.yaml")).unwrap();
        assert_eq!(c.jwks()["keys"].as_array().unwrap().len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let f = std::fs::read_dir(dir.path().join(&cfg.key_dir))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn the_previous_key_stays_published_for_the_overlap() {
        // Keys made at 0, 1000, 5000; overlap 600.
        let created = [0, 1000, 5000];
        assert_eq!(published(&created, 5000, 600), vec![1, 2]);
        assert_eq!(published(&created, 5599, 600), vec![1, 2]);
        assert_eq!(published(&created, 5600, 600), vec![2]);
        assert_eq!(published(&[7], 1_000_000, 600), vec![0]);
        assert!(published(&[], 0, 600).is_empty());
    }
}
