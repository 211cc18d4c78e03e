//! Service-account API keys: looked up by the SHA-256 of the presented key; the key itself is
//! never stored or logged.

use callgate_core::config::ApiKeyConfig;
use callgate_core::model::{AuthMethod, Principal};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// Every Callgate API key starts with this, so a key is recognizable in a bearer header and by
/// secret scanners.
pub const PREFIX: &str = "cgk_";

pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], Arc<Principal>>,
}

fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    let hex = s
        .strip_prefix("sha256:")
        .ok_or("API key hashes look like sha256:<64 hex digits>")?;
    if hex.len() != 64 {
        return Err("API key hashes look like sha256:<64 hex digits>".into());
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).map_err(|_| "bad hex")?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| "API key hash is not hex")?;
    }
    Ok(out)
}

/// `sha256:<hex>` of a key, as written in config.
pub fn hash_key(key: &str) -> String {
    let d = Sha256::digest(key.as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// A new random key with the Callgate prefix.
pub fn generate_key() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("system RNG");
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

impl ApiKeys {
    pub fn new(cfg: &[ApiKeyConfig]) -> Result<ApiKeys, String> {
        let mut by_hash = HashMap::new();
        for k in cfg {
            let h = parse_hash(&k.hash).map_err(|e| format!("api key {:?}: {e}", k.id))?;
            let p = Principal {
                subject: k.subject.clone(),
                groups: k.groups.clone(),
                auth: AuthMethod::ApiKey {
                    key_id: k.id.clone(),
                },
                token_id: None,
                actor: None,
                expires_at: None,
                session: None,
                audiences: Vec::new(),
            };
            if by_hash.insert(h, Arc::new(p)).is_some() {
                return Err(format!(
                    "api key {:?}: the same key is configured twice",
                    k.id
                ));
            }
        }
        Ok(ApiKeys { by_hash })
    }

    pub fn lookup(&self, key: &str) -> Option<&Arc<Principal>> {
        let d: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_hash.get(&d)
    }
}
