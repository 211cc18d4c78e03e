//! Strict JSON: the one parser every argument body goes through.
//!
//! Arguments are parsed once and the same [`serde_json::Value`] is what policy, audit and the
//! upstream see (the upstream body is re-serialized from it). On top of `serde_json`'s RFC 8259
//! parser (invalid UTF-8, lone surrogates, trailing garbage and nesting deeper than 128 are
//! already errors) this refuses duplicate object keys, which different parsers resolve
//! differently and so could make Callgate and the upstream read different arguments.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// Why a body is not acceptable JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JsonError(pub String);

/// Parses `bytes` as exactly one JSON value, refusing duplicate keys anywhere in it.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue::deserialize_from(&mut de).map_err(|e| JsonError(e.to_string()))?;
    de.end().map_err(|e| JsonError(e.to_string()))?;
    Ok(value)
}

/// Parses `bytes` as a JSON object (the shape of a function's arguments).
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    match parse_strict(bytes)? {
        Value::Object(map) => Ok(map),
        other => Err(JsonError(format!(
            "expected a JSON object, found {}",
            kind_of(&other)
        ))),
    }
}

/// A short name for a JSON value's type, for error messages.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

struct StrictValue;

impl StrictValue {
    fn deserialize_from<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

/// Deserializes one strict JSON value (duplicate keys refused) out of a larger document, for
/// code that walks the document itself (streaming masking).
pub struct StrictSeed;
use StrictSeed as Seed;

impl<'de> de::DeserializeSeed<'de> for StrictSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize_from(d)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Seed)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate object key {key:?}")));
            }
            let v = map.next_value_seed(Seed)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_duplicate_keys_at_any_depth() {
        assert!(parse_strict(br#"{"a":1,"a":1}"#).is_err());
        assert!(parse_strict(br#"{"x":{"a":1,"b":{"c":1,"c":2}}}"#).is_err());
        assert!(parse_strict(br#"[{"a":1},{"a":2}]"#).is_ok());
    }

    #[test]
    fn refuses_trailing_garbage_and_bad_text() {
        assert!(parse_strict(br#"{"a":1} x"#).is_err());
        assert!(parse_strict(b"{\"a\":\"\xff\"}").is_err());
        assert!(parse_strict(br#"{"a":"\ud800"}"#).is_err());
        assert!(parse_strict(b"{\"a\":1}\n  ").is_ok());
    }

    #[test]
    fn objects_only_for_arguments() {
        assert!(parse_object(b"[1]").is_err());
        assert_eq!(parse_object(br#"{"k":"v"}"#).unwrap()["k"], "v");
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes never panic the parser.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_strict(&bytes);
        }

        /// Whatever is accepted re-serializes to text that parses to the same value: what
        /// policy saw is exactly what the upstream will read.
        #[test]
        fn accepted_values_round_trip(text in r#"\{("[a-c]{1,2}":(-?[0-9]{1,5}|"[^"\\]{0,4}"|true|null|\[[0-9,]{0,6}\]),?){0,4}\}"#) {
            if let Ok(v) = parse_strict(text.as_bytes()) {
                let again = parse_strict(&serde_json::to_vec(&v).unwrap()).unwrap();
                prop_assert_eq!(again, v);
            }
        }
    }
}
