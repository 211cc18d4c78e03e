//! The digest an approval binds to.
//!
//! A held call is stored as one JSON document — function, canonical arguments, the caller
//! (human subject and acting agent) and the upstream target — and its digest is the hex
//! SHA-256 of that document's RFC 8785 canonical form. Reviewers approve the digest; before
//! executing, Callgate recomputes it from what it is about to send and refuses on a mismatch,
//! so a stored payload edited after approval is never executed.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Hex SHA-256 of the canonical (RFC 8785) form of `payload`.
pub fn digest(payload: &Value) -> Result<String, String> {
    let canonical = callgate_audit::canonical::value_to_vec(payload).map_err(|e| e.to_string())?;
    Ok(Sha256::digest(&canonical)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Whether `payload` still has the digest `expected`.
pub fn matches(payload: &Value, expected: &str) -> bool {
    digest(payload).is_ok_and(|d| d == expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_whitespace_do_not_matter_but_values_do() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[1,2],"x":"s"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "a": {"x":"s","y":[1,2]}, "b": 1 }"#).unwrap();
        assert_eq!(digest(&a).unwrap(), digest(&b).unwrap());
        let c = json!({"a": {"x": "s", "y": [2, 1]}, "b": 1});
        assert_ne!(digest(&a).unwrap(), digest(&c).unwrap());
        assert!(matches(&a, &digest(&b).unwrap()));
        assert!(!matches(&c, &digest(&b).unwrap()));
        assert_eq!(digest(&a).unwrap().len(), 64);
    }
}
