//! Compact JWS verification against a set of JWKs, with every RFC 8725 pitfall closed:
//! the algorithm is pinned by configuration (never taken on trust from the token), `none` and
//! HMAC are never accepted, keys embedded in or pointed to by the token (`jwk`, `jku`, `x5u`,
//! `x5c`) are never used, unknown `crit` extensions are refused, and a key is used only for the
//! algorithm family, curve and purpose it declares.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use std::str::FromStr;

/// A verification key from a JWKS.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    pub alg: Option<Algorithm>,
    pub family: KeyFamily,
    key: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// Algorithms Callgate can verify. Symmetric algorithms are deliberately absent: a gateway
/// that accepts HS256 can be fooled with the issuer's public key used as an HMAC secret.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg = Algorithm::from_str(name).map_err(|_| format!("unknown algorithm {name:?}"))?;
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512
        | Algorithm::ES256
        | Algorithm::ES384
        | Algorithm::EdDSA => Ok(alg),
        _ => Err(format!(
            "algorithm {name} is not accepted (asymmetric algorithms only)"
        )),
    }
}

fn family_of(alg: Algorithm) -> KeyFamily {
    match alg {
        Algorithm::ES256 => KeyFamily::P256,
        Algorithm::ES384 => KeyFamily::P384,
        Algorithm::EdDSA => KeyFamily::Ed25519,
        _ => KeyFamily::Rsa,
    }
}

fn str_field<'a>(jwk: &'a Value, name: &str) -> Result<&'a str, String> {
    jwk.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("JWK without {name}"))
}

impl VerifyKey {
    /// Accepts a JWK for signature verification, or says why not.
    pub fn from_jwk(jwk: &Value) -> Result<VerifyKey, String> {
        if let Some(u) = jwk.get("use")
            && u != "sig"
        {
            return Err("JWK is not for signatures (use)".into());
        }
        if let Some(ops) = jwk.get("key_ops") {
            let ok = ops
                .as_array()
                .is_some_and(|a| a.iter().any(|o| o == "verify"));
            if !ok {
                return Err("JWK key_ops does not include verify".into());
            }
        }
        let alg = match jwk.get("alg") {
            None => None,
            Some(a) => Some(parse_algorithm(
                a.as_str().ok_or("JWK alg is not a string")?,
            )?),
        };
        let kty = str_field(jwk, "kty")?;
        let (family, key) = match kty {
            "RSA" => {
                let n = str_field(jwk, "n")?;
                let bits = URL_SAFE_NO_PAD
                    .decode(n)
                    .map_err(|_| "JWK n is not base64url")?
                    .iter()
                    .skip_while(|b| **b == 0)
                    .count()
                    * 8;
                if bits < 2048 {
                    return Err(format!(
                        "RSA key of {bits} bits is too short (2048 minimum)"
                    ));
                }
                let key = DecodingKey::from_rsa_components(n, str_field(jwk, "e")?)
                    .map_err(|e| e.to_string())?;
                (KeyFamily::Rsa, key)
            }
            "EC" => {
                let family = match str_field(jwk, "crv")? {
                    "P-256" => KeyFamily::P256,
                    "P-384" => KeyFamily::P384,
                    other => return Err(format!("unsupported curve {other}")),
                };
                let key =
                    DecodingKey::from_ec_components(str_field(jwk, "x")?, str_field(jwk, "y")?)
                        .map_err(|e| e.to_string())?;
                (family, key)
            }
            "OKP" => {
                if str_field(jwk, "crv")? != "Ed25519" {
                    return Err("unsupported OKP curve".into());
                }
                let key = DecodingKey::from_ed_components(str_field(jwk, "x")?)
                    .map_err(|e| e.to_string())?;
                (KeyFamily::Ed25519, key)
            }
            other => return Err(format!("key type {other} cannot verify signatures here")),
        };
        if let Some(a) = alg
            && family_of(a) != family
        {
            return Err("JWK alg does not fit its key type".into());
        }
        let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_string);
        Ok(VerifyKey {
            kid,
            alg,
            family,
            key,
        })
    }

    fn fits(&self, alg: Algorithm) -> bool {
        self.family == family_of(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// Parses a JWKS document, keeping the keys usable for verification.
pub fn keys_from_jwks(doc: &Value) -> Result<Vec<VerifyKey>, String> {
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("JWKS without a keys array")?;
    Ok(keys
        .iter()
        .filter_map(|k| VerifyKey::from_jwk(k).ok())
        .collect())
}

/// What verification established about a token before its claims are checked.
#[derive(Debug)]
pub struct Verified {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub payload: Vec<u8>,
}

/// Why a token was refused (never echoed with the token itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("token header field {0:?} is not accepted")]
    ForbiddenHeader(String),
    #[error("no key with kid {0:?}")]
    UnknownKey(String),
    #[error("no key fits the token")]
    NoKey,
    #[error("bad signature")]
    BadSignature,
}

fn b64(part: &str) -> Result<Vec<u8>, JwsError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwsError::Malformed("segment is not unpadded base64url".into()))
}

/// The header of a compact JWS, checked for fields Callgate never honours.
pub fn header(token: &str) -> Result<(Algorithm, Option<String>), JwsError> {
    let mut parts = token.split('.');
    let head = parts.next().unwrap_or_default();
    let header: Value = serde_json::from_slice(&b64(head)?)
        .map_err(|_| JwsError::Malformed("header is not JSON".into()))?;
    let obj = header
        .as_object()
        .ok_or_else(|| JwsError::Malformed("header is not an object".into()))?;
    for forbidden in ["jwk", "jku", "x5u", "x5c", "crit", "b64", "enc", "zip"] {
        if obj.contains_key(forbidden) {
            return Err(JwsError::ForbiddenHeader(forbidden.into()));
        }
    }
    let alg_name = obj
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| JwsError::Malformed("no alg".into()))?;
    let alg = parse_algorithm(alg_name).map_err(|_| JwsError::Algorithm(alg_name.to_string()))?;
    let kid = match obj.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwsError::Malformed("kid is not a string".into())),
    };
    Ok((alg, kid))
}

/// Looks up the key for `kid`: `Err(UnknownKey)` tells the caller a JWKS refresh may help.
fn candidates<'a>(
    keys: &'a [VerifyKey],
    alg: Algorithm,
    kid: Option<&str>,
) -> Result<Vec<&'a VerifyKey>, JwsError> {
    let fitting: Vec<&VerifyKey> = match kid {
        Some(kid) => {
            let named: Vec<&VerifyKey> = keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect();
            if named.is_empty() {
                return Err(JwsError::UnknownKey(kid.to_string()));
            }
            named.into_iter().filter(|k| k.fits(alg)).collect()
        }
        None => keys.iter().filter(|k| k.fits(alg)).collect(),
    };
    if fitting.is_empty() {
        Err(JwsError::NoKey)
    } else {
        Ok(fitting)
    }
}

/// Verifies a compact JWS with one of `keys`, accepting only `allowed` algorithms.
pub fn verify(
    token: &str,
    keys: &[VerifyKey],
    allowed: &[Algorithm],
) -> Result<Verified, JwsError> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(JwsError::Malformed(
            "a compact JWS has three segments".into(),
        ));
    }
    let (alg, kid) = header(token)?;
    if !allowed.contains(&alg) {
        return Err(JwsError::Algorithm(format!("{alg:?}")));
    }
    let payload = b64(parts[1])?;
    // The signature segment must itself be canonical base64url.
    b64(parts[2])?;
    let message = &token[..parts[0].len() + 1 + parts[1].len()];
    for key in candidates(keys, alg, kid.as_deref())? {
        if jsonwebtoken::crypto::verify(parts[2], message.as_bytes(), &key.key, alg)
            .unwrap_or(false)
        {
            return Ok(Verified { alg, kid, payload });
        }
    }
    Err(JwsError::BadSignature)
}
