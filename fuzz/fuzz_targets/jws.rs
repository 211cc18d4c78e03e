//! Compact JWS as callers present them: header checks and verification against a JWKS never
//! panic, and nothing verifies without a signature by the key.
#![no_main]

use callgate_gateway::identity::jws;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn keys() -> &'static Vec<jws::VerifyKey> {
    static K: OnceLock<Vec<jws::VerifyKey>> = OnceLock::new();
    K.get_or_init(|| {
        let jwks = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "k1",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "EC", "crv": "P-256", "kid": "k2",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]});
        jws::keys_from_jwks(&jwks).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = jws::header(token);
    let all = ["EdDSA", "ES256", "RS256", "PS256"].map(|a| jws::parse_algorithm(a).unwrap());
    assert!(jws::verify(token, keys(), &all).is_err());
});
