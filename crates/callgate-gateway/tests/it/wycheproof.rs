//! Wycheproof JWS vectors (C2SP/wycheproof, Apache-2.0) through Callgate's verifier: every
//! invalid vector is refused, and every valid vector whose algorithm Callgate accepts verifies.

use base64::Engine;
use callgate_gateway::identity::jws::{self, VerifyKey};
use serde_json::Value;

#[test]
fn wycheproof_jws_vectors() {
    let path = crate::common::repo_root()
        .join("../shared/testdata/wycheproof/json_web_signature_test.json");
    let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let all: Vec<_> = [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ]
    .iter()
    .map(|a| jws::parse_algorithm(a).unwrap())
    .collect();
    let (mut invalid_refused, mut valid_accepted, mut valid_unsupported) = (0, 0, 0);
    let mut wrong = Vec::new();
    for group in doc["testGroups"].as_array().unwrap() {
        let keys: Vec<VerifyKey> = group
            .get("public")
            .and_then(|k| VerifyKey::from_jwk(k).ok())
            .into_iter()
            .collect();
        for t in group["tests"].as_array().unwrap() {
            let token = t["jws"].as_str().unwrap();
            let id = format!(
                "tcId {} ({})",
                t["tcId"],
                t["comment"].as_str().unwrap_or("")
            );
            let result = jws::verify(token, &keys, &all);
            match t["result"].as_str().unwrap() {
                "invalid" => match result {
                    Err(_) => invalid_refused += 1,
                    Ok(_) => wrong.push(format!("{id}: invalid vector accepted")),
                },
                "valid" | "acceptable" => {
                    let head = token.split('.').next().unwrap();
                    let header: Value = serde_json::from_slice(
                        &base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .decode(head)
                            .unwrap_or_default(),
                    )
                    .unwrap_or_default();
                    let alg = header["alg"].as_str().unwrap_or("");
                    // Callgate binds a key to the `alg` its JWK names (RFC 7517 §4.4, RFC 8725
                    // §3.1); vectors that use a key under another algorithm are refused on purpose.
                    let key_alg = group
                        .get("public")
                        .and_then(|k| k.get("alg"))
                        .and_then(Value::as_str);
                    let supported = jws::parse_algorithm(alg).is_ok()
                        && !keys.is_empty()
                        && key_alg.is_none_or(|k| k == alg);
                    match (supported, result) {
                        (true, Ok(_)) => valid_accepted += 1,
                        (true, Err(e)) => {
                            wrong.push(format!("{id}: valid {alg} vector refused: {e}"))
                        }
                        // HMAC and P-521 are not accepted by design; they must be refused.
                        (false, Ok(_)) => wrong.push(format!("{id}: unsupported {alg} accepted")),
                        (false, Err(_)) => valid_unsupported += 1,
                    }
                }
                other => panic!("unknown result {other}"),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(invalid_refused >= 355, "{invalid_refused}");
    assert!(
        valid_accepted >= 20,
        "accepted {valid_accepted}, unsupported {valid_unsupported}"
    );
}
