//! RFC 8785 (JSON Canonicalization Scheme) encoding: the bytes audit records are hashed as,
//! approval digests are taken over, and tool definitions are pinned by.
//!
//! Every audited call encodes its records on the hot path, so this is a direct writer over a
//! `serde_json::Value`: object members sorted by their UTF-16 code units (RFC 8785 §3.2.3)
//! without allocating sort keys, strings escaped exactly as serde_json's compact form does
//! (which is what RFC 8785 §3.2.2.2 prescribes), numbers as IEEE 754 doubles in ECMAScript
//! form (§3.2.2.3, via `ryu-js`). A property test checks it byte for byte against the
//! `serde_json_canonicalizer` crate.

use serde::Serialize;
use serde_json::{Number, Value};
use std::cmp::Ordering;
use thiserror::Error;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CanonicalError {
    #[error("the value cannot be represented as JSON: {0}")]
    NotJson(String),
    #[error("JSON has no representation for NaN or infinity")]
    NotFinite,
}

/// The canonical encoding of any serializable value.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let v = serde_json::to_value(value).map_err(|e| CanonicalError::NotJson(e.to_string()))?;
    value_to_vec(&v)
}

/// The canonical encoding of a JSON value.
pub fn value_to_vec(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write(&mut out, value)?;
    Ok(out)
}

fn write(out: &mut Vec<u8>, value: &Value) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => number(out, n)?,
        Value::String(s) => string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(out, item)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| utf16_order(a.0, b.0));
            out.push(b'{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(out, k);
                out.push(b':');
                write(out, v)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// Orders keys by UTF-16 code units. UTF-8 byte order equals code point order, which differs
/// from UTF-16 order only when a character above U+FFFF meets one in U+E000..=U+FFFF, so
/// the byte comparison decides unless both keys hold a 4-byte sequence or such a character.
fn utf16_order(a: &str, b: &str) -> Ordering {
    if a.is_ascii() || b.is_ascii() {
        return a.as_bytes().cmp(b.as_bytes());
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

fn string(out: &mut Vec<u8>, s: &str) {
    // serde_json's compact escaping is RFC 8785's: `"` `\` and U+0000..U+001F only, with the
    // two-character forms for \b \t \n \f \r and lowercase \u00xx otherwise.
    serde_json::to_writer(&mut *out, s).expect("writing a string to a Vec cannot fail");
}

/// Largest magnitude below which every integer is exact as a double and printed in full.
const EXACT: u64 = 1 << 53;

fn number(out: &mut Vec<u8>, n: &Number) -> Result<(), CanonicalError> {
    if let Some(u) = n.as_u64()
        && u <= EXACT
    {
        out.extend_from_slice(u.to_string().as_bytes());
        return Ok(());
    }
    if let Some(i) = n.as_i64()
        && i.unsigned_abs() <= EXACT
    {
        out.extend_from_slice(i.to_string().as_bytes());
        return Ok(());
    }
    let f = n.as_f64().ok_or(CanonicalError::NotFinite)?;
    if !f.is_finite() {
        return Err(CanonicalError::NotFinite);
    }
    let mut buf = ryu_js::Buffer::new();
    out.extend_from_slice(buf.format_finite(f).as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn rfc8785_examples() {
        // RFC 8785 §3.2.3 sorting example and §3.2.2 number and string examples.
        let v = json!({
            "\u{20ac}": "Euro Sign", "\r": "Carriage Return", "\u{fb33}": "Hebrew Letter Dalet With Dagesh",
            "1": "One", "\u{1f600}": "Emoji: Grinning Face", "\u{0080}": "Control", "\u{00f6}": "Latin Small Letter O With Diaeresis"
        });
        let got = String::from_utf8(value_to_vec(&v).unwrap()).unwrap();
        assert_eq!(
            got,
            "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{0080}\":\"Control\",\"\u{00f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"
        );
        let v: Value = serde_json::from_str(
            r#"{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001, -0.0, 9007199254740993],
                "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/", "literals": [null, true, false]}"#,
        )
        .unwrap();
        let got = String::from_utf8(value_to_vec(&v).unwrap()).unwrap();
        assert_eq!(
            got,
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27,0,9007199254740992],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            "[a-z]{0,3}",
            any::<String>(),
            Just("\u{1f600}".to_string()),
            Just("\u{fb33}".to_string()),
            Just("\u{e000}x".to_string()),
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn same_bytes_as_serde_json_canonicalizer(v in arb_json()) {
            let ours = value_to_vec(&v).unwrap();
            let reference = serde_json_canonicalizer::to_vec(&v).unwrap();
            prop_assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(reference).unwrap());
        }
    }
}
