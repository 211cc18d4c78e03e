//! Streaming masking against the tree: for any input, `mask_json_bytes` refuses exactly what
//! strict parsing refuses, and otherwise writes exactly what parsing, `Profile::mask_json` and
//! compact serialization produce.
#![no_main]

use callgate_masking::strategy::hash_key;
use callgate_masking::{Profile, Rule, RuleSpec};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn profile() -> &'static Profile {
    static P: OnceLock<Profile> = OnceLock::new();
    P.get_or_init(|| {
        let r = |path: Option<&str>, keys: &[&str], detect: &[&str], strategy: &str| {
            Rule::compile(&RuleSpec::of(path, keys, detect, strategy)).unwrap()
        };
        Profile {
            rules: vec![
                r(Some("$..password_hash"), &[], &[], "drop"),
                r(Some("$[*].ssn"), &[], &[], "partial"),
                r(Some("$.a[1]"), &[], &[], "redact"),
                r(None, &["token", "secret"], &[], "redact"),
                r(
                    None,
                    &[],
                    &["card", "us_ssn", "iban", "email", "phone"],
                    "partial",
                ),
                r(None, &[], &["jwt", "aws_key", "ipv4", "ipv6"], "redact"),
            ],
            headers: vec![],
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let p = profile();
    let key = hash_key(b"fuzz-key-0123456789abcdef0123456");
    let streamed = callgate_masking::mask_json_bytes(&[p], data, &[], &key);
    match callgate_core::json::parse_strict(data) {
        Ok(mut v) => {
            p.mask_json(&mut v, &[], &key);
            assert_eq!(
                streamed.expect("strict JSON streams"),
                serde_json::to_vec(&v).unwrap()
            );
        }
        Err(_) => assert!(
            streamed.is_err(),
            "streaming accepted what strict parsing refuses"
        ),
    }
});
