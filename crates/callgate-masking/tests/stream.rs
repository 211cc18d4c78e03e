//! Streaming masking ([`callgate_masking::mask_json_bytes`]) against the tree: for any
//! document and any profile, the bytes are exactly what strict parsing, `Profile::mask_json`
//! and compact serialization give; and a body is refused exactly when strict parsing refuses
//! it (JSONTestSuite).

use callgate_masking::strategy::hash_key;
use callgate_masking::{Profile, Rule, RuleSpec, mask_json_bytes};
use proptest::prelude::*;
use serde_json::{Map, Value};
use std::path::PathBuf;

const KEYS: &[&str] = &[
    "id",
    "email",
    "ssn",
    "user",
    "password_hash",
    "api_token",
    "list",
    "notes",
    "a",
    "b",
    "Secret",
    "card",
];

const TEXTS: &[&str] = &[
    "plain text",
    "ada@example.com",
    "mail ada@example.com now",
    "123-45-6789",
    "4111 1111 1111 1111",
    "card 4111111111111111 and ssn 123-45-6789",
    "sk_live_51Habcdefghijklmnopqrstuvwx",
    "",
    "quote \" and \\ backslash \u{e9}",
    "GB82 WEST 1234 5698 7654 32",
];

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            Just(Value::from(4111111111111111u64)),
            Just(Value::from(123456789u64)),
            (-1.0e6f64..1.0e6).prop_map(Value::from),
        ],
        prop::sample::select(TEXTS).prop_map(|t| Value::String(t.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                let mut m = Map::new();
                for (k, v) in kv {
                    m.insert(k.to_string(), v);
                }
                Value::Object(m)
            }),
        ]
    })
}

/// Paths the streaming walk matches itself, and some it leaves to the tree.
const PATHS: &[&str] = &[
    "$",
    "$.ssn",
    "$.user.ssn",
    "$[*].ssn",
    "$..password_hash",
    "$..*",
    "$.list[1]",
    "$['a'].b",
    "$..[0]",
    "$.*",
    "$[?@.id]",
    "$.list[-1]",
];

fn rule() -> impl Strategy<Value = RuleSpec> {
    let strategy = prop::sample::select(&["redact", "partial", "hash", "drop"][..]);
    let cleared = any::<bool>().prop_map(|c| if c { vec!["ops"] } else { vec![] });
    let select = prop_oneof![
        prop::sample::select(PATHS).prop_map(|p| (Some(p.to_string()), vec![], vec![])),
        prop::sample::subsequence(vec!["token", "secret", "password", "user", "card"], 1..3)
            .prop_map(|k| (None, k.iter().map(|s| s.to_string()).collect(), vec![])),
        prop::sample::subsequence(vec!["email", "us_ssn", "card", "iban", "stripe_key"], 1..3)
            .prop_map(|d| (None, vec![], d.iter().map(|s| s.to_string()).collect())),
    ];
    (select, strategy, cleared).prop_map(|((path, keys, detect), strategy, cleared)| RuleSpec {
        path,
        keys,
        detect,
        strategy: strategy.into(),
        keep: 4,
        cleared: cleared.iter().map(|s| s.to_string()).collect(),
    })
}

fn profile(specs: &[RuleSpec]) -> Profile {
    Profile {
        rules: specs.iter().map(|s| Rule::compile(s).unwrap()).collect(),
        headers: vec![],
    }
}

/// The tree's answer: strict parse, mask, compact serialization.
fn tree(profiles: &[&Profile], body: &[u8], groups: &[String]) -> Option<Vec<u8>> {
    let key = hash_key(b"k");
    let mut doc = callgate_core::json::parse_strict(body).ok()?;
    for p in profiles {
        p.mask_json(&mut doc, groups, &key);
    }
    Some(serde_json::to_vec(&doc).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn streaming_gives_the_trees_bytes(
        doc in value(),
        specs in prop::collection::vec(rule(), 0..5),
        more in prop::collection::vec(rule(), 0..3),
        pretty in any::<bool>(),
        ops in any::<bool>(),
    ) {
        let body = if pretty { serde_json::to_vec_pretty(&doc) } else { serde_json::to_vec(&doc) }.unwrap();
        let groups: Vec<String> = if ops { vec!["ops".into()] } else { vec![] };
        let (p, q) = (profile(&specs), profile(&more));
        let key = hash_key(b"k");
        for profiles in [vec![&p], vec![&p, &q]] {
            let streamed = mask_json_bytes(&profiles, &body, &groups, &key).unwrap();
            let expected = tree(&profiles, &body, &groups).unwrap();
            prop_assert_eq!(
                String::from_utf8_lossy(&streamed),
                String::from_utf8_lossy(&expected),
                "{:?} then {:?}",
                specs,
                more
            );
        }
    }
}

/// The streaming walk is the one taken for the profiles gateways use most.
#[test]
fn common_profiles_stream() {
    let spec = RuleSpec::of;
    let p = profile(&[
        spec(None, &["password", "token"], &[], "redact"),
        spec(Some("$[*].ssn"), &[], &[], "partial"),
        spec(None, &[], &["email", "card"], "partial"),
        spec(None, &[], &["jwt"], "hash"),
    ]);
    assert!(p.streams(&[]));
    let filtered = profile(&[spec(Some("$[?@.id]"), &[], &[], "redact")]);
    assert!(!filtered.streams(&[]));
    let hashed = profile(&[
        spec(Some("$.user.ssn"), &[], &[], "partial"),
        spec(None, &["user"], &[], "hash"),
    ]);
    assert!(!hashed.streams(&[]));
}

fn suite() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testdata/JSONTestSuite/test_parsing");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| {
            let p = e.ok()?.path();
            Some((
                p.file_name()?.to_string_lossy().into_owned(),
                std::fs::read(&p).ok()?,
            ))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn json_test_suite_is_accepted_and_refused_as_strict_parsing_does() {
    let p = profile(&[
        RuleSpec {
            keys: vec!["a".into()],
            strategy: "redact".into(),
            ..Default::default()
        },
        RuleSpec {
            path: Some("$..*".into()),
            strategy: "partial".into(),
            keep: 2,
            ..Default::default()
        },
    ]);
    let none = Profile::default();
    let key = hash_key(b"k");
    let cases = suite();
    assert!(cases.len() > 300, "{} cases", cases.len());
    for (name, body) in &cases {
        for prof in [&p, &none] {
            let streamed = mask_json_bytes(&[prof], body, &[], &key).ok();
            let expected = tree(&[prof], body, &[]);
            assert_eq!(streamed, expected, "{name}");
        }
    }
}
