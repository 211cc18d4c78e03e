//! RFC 8785 (JSON Canonicalization Scheme) encoding: the bytes audit records are hashed as,
//! approval digests are taken over, and tool definitions are pinned by.
//!
//! Every audited call encodes its records on the hot path, so these are direct writers: one
//! over a `serde_json::Value` ([`value_to_vec`]) and one that is a `serde` serializer
//! ([`to_vec`]), which encodes a record straight from its Rust types instead of first copying
//! it into a `Value` tree (every string and argument cloned, every object a map). Both sort
//! object members by their UTF-16 code units (RFC 8785 §3.2.3), escape strings exactly as
//! serde_json's compact form does (which is what RFC 8785 §3.2.2.2 prescribes) and write
//! numbers as IEEE 754 doubles in ECMAScript form (§3.2.2.3, via `ryu-js`). Property tests
//! check the first byte for byte against the `serde_json_canonicalizer` crate and the second
//! against the first.

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

/// The canonical encoding of any serializable value: the same bytes as
/// `value_to_vec(&serde_json::to_value(value)?)`, without building the `Value`. (Where
/// `serde_json` would turn a non-finite float into `null` or accept a float map key, this
/// refuses: JSON has neither.)
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(512);
    value.serialize(ser::Canon { out: &mut out })?;
    Ok(out)
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

/// Whether `s` holds a byte JSON must escape. Checked 32 bytes at a time without branching
/// inside a chunk, which the compiler turns into vector compares (arguments and bodies are
/// often kilobytes long).
fn needs_escape(s: &[u8]) -> bool {
    let special = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\');
    let mut chunks = s.chunks_exact(32);
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |acc, &b| acc | special(b)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| special(b))
}

fn string(out: &mut Vec<u8>, s: &str) {
    // Most strings need no escape at all: copy them between quotes.
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // serde_json's compact escaping is RFC 8785's: `"` `\` and U+0000..U+001F only, with the
    // two-character forms for \b \t \n \f \r and lowercase \u00xx otherwise.
    serde_json::to_writer(&mut *out, s).expect("writing a string to a Vec cannot fail");
}

/// Largest magnitude below which every integer is exact as a double and printed in full.
const EXACT: u64 = 1 << 53;

fn number(out: &mut Vec<u8>, n: &Number) -> Result<(), CanonicalError> {
    if let Some(u) = n.as_u64() {
        return unsigned(out, u);
    }
    if let Some(i) = n.as_i64() {
        return signed(out, i);
    }
    double(out, n.as_f64().ok_or(CanonicalError::NotFinite)?)
}

fn unsigned(out: &mut Vec<u8>, u: u64) -> Result<(), CanonicalError> {
    if u <= EXACT {
        let mut buf = itoa::Buffer::new();
        out.extend_from_slice(buf.format(u).as_bytes());
        return Ok(());
    }
    double(out, u as f64)
}

fn signed(out: &mut Vec<u8>, i: i64) -> Result<(), CanonicalError> {
    if i.unsigned_abs() <= EXACT {
        let mut buf = itoa::Buffer::new();
        out.extend_from_slice(buf.format(i).as_bytes());
        return Ok(());
    }
    double(out, i as f64)
}

fn double(out: &mut Vec<u8>, f: f64) -> Result<(), CanonicalError> {
    if !f.is_finite() {
        return Err(CanonicalError::NotFinite);
    }
    let mut buf = ryu_js::Buffer::new();
    out.extend_from_slice(buf.format_finite(f).as_bytes());
    Ok(())
}

impl serde::ser::Error for CanonicalError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        CanonicalError::NotJson(msg.to_string())
    }
}

/// The `serde` serializer behind [`to_vec`]. It maps Rust data to JSON exactly as
/// `serde_json::to_value` does (`None` and unit as `null`, bytes as an array of numbers, enum
/// variants externally tagged unless the type says otherwise, map keys that are integers,
/// booleans or characters as strings), then writes the canonical form.
///
/// An object's members are written, in the order they come, into the output after the point
/// where the object starts; at its end they are sorted and the object is rewritten in place.
/// A repeated key keeps its last value, as a `Value` map would.
mod ser {
    use super::{CanonicalError, double, signed, string, unsigned, utf16_order};
    use serde::ser::{self, Serialize};
    use std::borrow::Cow;

    type Result<T = ()> = std::result::Result<T, CanonicalError>;

    pub struct Canon<'a> {
        pub out: &'a mut Vec<u8>,
    }

    impl<'a> ser::Serializer for Canon<'a> {
        type Ok = ();
        type Error = CanonicalError;
        type SerializeSeq = Seq<'a>;
        type SerializeTuple = Seq<'a>;
        type SerializeTupleStruct = Seq<'a>;
        type SerializeTupleVariant = Seq<'a>;
        type SerializeMap = Obj<'a>;
        type SerializeStruct = Obj<'a>;
        type SerializeStructVariant = Obj<'a>;

        fn serialize_bool(self, v: bool) -> Result {
            self.out
                .extend_from_slice(if v { b"true" } else { b"false" });
            Ok(())
        }
        fn serialize_i8(self, v: i8) -> Result {
            signed(self.out, v.into())
        }
        fn serialize_i16(self, v: i16) -> Result {
            signed(self.out, v.into())
        }
        fn serialize_i32(self, v: i32) -> Result {
            signed(self.out, v.into())
        }
        fn serialize_i64(self, v: i64) -> Result {
            signed(self.out, v)
        }
        fn serialize_i128(self, v: i128) -> Result {
            let v = i64::try_from(v)
                .map_err(|_| CanonicalError::NotJson("number out of range".into()))?;
            signed(self.out, v)
        }
        fn serialize_u8(self, v: u8) -> Result {
            unsigned(self.out, v.into())
        }
        fn serialize_u16(self, v: u16) -> Result {
            unsigned(self.out, v.into())
        }
        fn serialize_u32(self, v: u32) -> Result {
            unsigned(self.out, v.into())
        }
        fn serialize_u64(self, v: u64) -> Result {
            unsigned(self.out, v)
        }
        fn serialize_u128(self, v: u128) -> Result {
            let v = u64::try_from(v)
                .map_err(|_| CanonicalError::NotJson("number out of range".into()))?;
            unsigned(self.out, v)
        }
        fn serialize_f32(self, v: f32) -> Result {
            double(self.out, v.into())
        }
        fn serialize_f64(self, v: f64) -> Result {
            double(self.out, v)
        }
        fn serialize_char(self, v: char) -> Result {
            string(self.out, v.encode_utf8(&mut [0; 4]));
            Ok(())
        }
        fn serialize_str(self, v: &str) -> Result {
            string(self.out, v);
            Ok(())
        }
        fn serialize_bytes(self, v: &[u8]) -> Result {
            self.out.push(b'[');
            for (i, b) in v.iter().enumerate() {
                if i > 0 {
                    self.out.push(b',');
                }
                unsigned(self.out, (*b).into())?;
            }
            self.out.push(b']');
            Ok(())
        }
        fn serialize_none(self) -> Result {
            self.serialize_unit()
        }
        fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result {
            value.serialize(self)
        }
        fn serialize_unit(self) -> Result {
            self.out.extend_from_slice(b"null");
            Ok(())
        }
        fn serialize_unit_struct(self, _: &'static str) -> Result {
            self.serialize_unit()
        }
        fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result {
            self.serialize_str(variant)
        }
        fn serialize_newtype_struct<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            value: &T,
        ) -> Result {
            value.serialize(self)
        }
        fn serialize_newtype_variant<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
            value: &T,
        ) -> Result {
            // `{"variant":value}`: one member, already in order.
            self.out.push(b'{');
            string(self.out, variant);
            self.out.push(b':');
            value.serialize(Canon {
                out: &mut *self.out,
            })?;
            self.out.push(b'}');
            Ok(())
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Seq<'a>> {
            self.out.push(b'[');
            Ok(Seq {
                out: self.out,
                first: true,
                wrapped: false,
            })
        }
        fn serialize_tuple(self, len: usize) -> Result<Seq<'a>> {
            self.serialize_seq(Some(len))
        }
        fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Seq<'a>> {
            self.serialize_seq(Some(len))
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
            _: usize,
        ) -> Result<Seq<'a>> {
            self.out.push(b'{');
            string(self.out, variant);
            self.out.extend_from_slice(b":[");
            Ok(Seq {
                out: self.out,
                first: true,
                wrapped: true,
            })
        }
        fn serialize_map(self, len: Option<usize>) -> Result<Obj<'a>> {
            Ok(Obj::new(self.out, len.unwrap_or(0), false))
        }
        fn serialize_struct(self, _: &'static str, len: usize) -> Result<Obj<'a>> {
            Ok(Obj::new(self.out, len, false))
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
            len: usize,
        ) -> Result<Obj<'a>> {
            self.out.push(b'{');
            string(self.out, variant);
            self.out.push(b':');
            Ok(Obj::new(self.out, len, true))
        }
    }

    /// An array (or, `wrapped`, a tuple variant's `{"variant":[...]}`).
    pub struct Seq<'a> {
        out: &'a mut Vec<u8>,
        first: bool,
        wrapped: bool,
    }

    impl Seq<'_> {
        fn item<T: ?Sized + Serialize>(&mut self, value: &T) -> Result {
            if !self.first {
                self.out.push(b',');
            }
            self.first = false;
            value.serialize(Canon {
                out: &mut *self.out,
            })
        }
        fn finish(self) -> Result {
            self.out.push(b']');
            if self.wrapped {
                self.out.push(b'}');
            }
            Ok(())
        }
    }

    /// serde's four sequence traits differ only in their names: each adds an item, then ends.
    macro_rules! seq_impl {
        ($($trait:ident :: $add:ident),*) => {$(
            impl ser::$trait for Seq<'_> {
                type Ok = ();
                type Error = CanonicalError;
                fn $add<T: ?Sized + Serialize>(&mut self, value: &T) -> Result {
                    self.item(value)
                }
                fn end(self) -> Result {
                    self.finish()
                }
            }
        )*};
    }
    seq_impl!(
        SerializeSeq::serialize_element,
        SerializeTuple::serialize_element,
        SerializeTupleStruct::serialize_field,
        SerializeTupleVariant::serialize_field
    );

    /// One member written so far: its key and where its value's bytes lie in the output.
    struct Member {
        key: Cow<'static, str>,
        value: std::ops::Range<usize>,
    }

    /// An object (or, `wrapped`, a struct variant's `{"variant":{...}}`).
    pub struct Obj<'a> {
        out: &'a mut Vec<u8>,
        start: usize,
        members: Vec<Member>,
        key: Option<String>,
        wrapped: bool,
    }

    impl<'a> Obj<'a> {
        fn new(out: &'a mut Vec<u8>, len: usize, wrapped: bool) -> Obj<'a> {
            let start = out.len();
            Obj {
                out,
                start,
                members: Vec::with_capacity(len),
                key: None,
                wrapped,
            }
        }

        fn member<T: ?Sized + Serialize>(&mut self, key: Cow<'static, str>, value: &T) -> Result {
            let from = self.out.len();
            value.serialize(Canon {
                out: &mut *self.out,
            })?;
            self.members.push(Member {
                key,
                value: from..self.out.len(),
            });
            Ok(())
        }

        fn finish(mut self) -> Result {
            // Stable, so a repeated key's occurrences stay in order and the last one is kept.
            self.members.sort_by(|a, b| utf16_order(&a.key, &b.key));
            let values = self.out.split_off(self.start);
            let out = &mut *self.out;
            out.reserve(values.len() + self.members.len() * 16 + 2);
            out.push(b'{');
            let mut first = true;
            for (i, m) in self.members.iter().enumerate() {
                if self
                    .members
                    .get(i + 1)
                    .is_some_and(|next| next.key == m.key)
                {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                string(out, &m.key);
                out.push(b':');
                out.extend_from_slice(
                    &values[m.value.start - self.start..m.value.end - self.start],
                );
            }
            out.push(b'}');
            if self.wrapped {
                out.push(b'}');
            }
            Ok(())
        }
    }

    impl ser::SerializeMap for Obj<'_> {
        type Ok = ();
        type Error = CanonicalError;
        fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result {
            self.key = Some(key.serialize(KeyName)?);
            Ok(())
        }
        fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result {
            let key = self
                .key
                .take()
                .ok_or_else(|| CanonicalError::NotJson("a map value without a key".into()))?;
            self.member(Cow::Owned(key), value)
        }
        fn end(self) -> Result {
            self.finish()
        }
    }

    /// A struct's fields and a struct variant's are members with `'static` names.
    macro_rules! struct_impl {
        ($($trait:ident),*) => {$(
            impl ser::$trait for Obj<'_> {
                type Ok = ();
                type Error = CanonicalError;
                fn serialize_field<T: ?Sized + Serialize>(
                    &mut self,
                    key: &'static str,
                    value: &T,
                ) -> Result {
                    self.member(Cow::Borrowed(key), value)
                }
                fn end(self) -> Result {
                    self.finish()
                }
            }
        )*};
    }
    struct_impl!(SerializeStruct, SerializeStructVariant);

    /// A map key as JSON has it: a string. Integers, booleans and characters become their
    /// text, as in `serde_json`; anything else is refused.
    struct KeyName;

    fn not_a_key() -> CanonicalError {
        CanonicalError::NotJson("key must be a string".into())
    }

    /// Keys that JSON writes as their text.
    macro_rules! key_as_text {
        ($($method:ident : $ty:ty),*) => {$(
            fn $method(self, v: $ty) -> Result<String> {
                Ok(v.to_string())
            }
        )*};
    }

    impl ser::Serializer for KeyName {
        type Ok = String;
        type Error = CanonicalError;
        type SerializeSeq = ser::Impossible<String, CanonicalError>;
        type SerializeTuple = ser::Impossible<String, CanonicalError>;
        type SerializeTupleStruct = ser::Impossible<String, CanonicalError>;
        type SerializeTupleVariant = ser::Impossible<String, CanonicalError>;
        type SerializeMap = ser::Impossible<String, CanonicalError>;
        type SerializeStruct = ser::Impossible<String, CanonicalError>;
        type SerializeStructVariant = ser::Impossible<String, CanonicalError>;

        key_as_text!(
            serialize_bool: bool,
            serialize_i8: i8,
            serialize_i16: i16,
            serialize_i32: i32,
            serialize_i64: i64,
            serialize_i128: i128,
            serialize_u8: u8,
            serialize_u16: u16,
            serialize_u32: u32,
            serialize_u64: u64,
            serialize_u128: u128,
            serialize_char: char
        );
        fn serialize_f32(self, _: f32) -> Result<String> {
            Err(not_a_key())
        }
        fn serialize_f64(self, _: f64) -> Result<String> {
            Err(not_a_key())
        }
        fn serialize_str(self, v: &str) -> Result<String> {
            Ok(v.to_string())
        }
        fn serialize_bytes(self, _: &[u8]) -> Result<String> {
            Err(not_a_key())
        }
        fn serialize_none(self) -> Result<String> {
            Err(not_a_key())
        }
        fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<String> {
            Err(not_a_key())
        }
        fn serialize_unit(self) -> Result<String> {
            Err(not_a_key())
        }
        fn serialize_unit_struct(self, _: &'static str) -> Result<String> {
            Err(not_a_key())
        }
        fn serialize_unit_variant(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
        ) -> Result<String> {
            Ok(variant.to_string())
        }
        fn serialize_newtype_struct<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            value: &T,
        ) -> Result<String> {
            value.serialize(self)
        }
        fn serialize_newtype_variant<T: ?Sized + Serialize>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<String> {
            Err(not_a_key())
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq> {
            Err(not_a_key())
        }
        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple> {
            Err(not_a_key())
        }
        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleStruct> {
            Err(not_a_key())
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant> {
            Err(not_a_key())
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap> {
            Err(not_a_key())
        }
        fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct> {
            Err(not_a_key())
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant> {
            Err(not_a_key())
        }
    }
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

        #[test]
        fn the_serializer_writes_what_the_value_writer_writes(v in arb_json()) {
            let direct = to_vec(&v).unwrap();
            let via_value = value_to_vec(&v).unwrap();
            prop_assert_eq!(String::from_utf8(direct).unwrap(), String::from_utf8(via_value).unwrap());
        }
    }

    /// The old definition of [`to_vec`]: through a `Value`.
    fn via_value<T: Serialize>(x: &T) -> String {
        String::from_utf8(value_to_vec(&serde_json::to_value(x).unwrap()).unwrap()).unwrap()
    }

    fn direct<T: Serialize>(x: &T) -> String {
        String::from_utf8(to_vec(x).unwrap()).unwrap()
    }

    #[test]
    fn the_serializer_maps_rust_types_as_serde_json_does() {
        use std::collections::BTreeMap;

        #[derive(Serialize)]
        enum Shape {
            Unit,
            New(u8),
            Tuple(i32, String),
            Struct { z: bool, a: Option<u8> },
        }

        #[derive(Serialize)]
        struct Inner {
            zeta: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            skipped: Option<u8>,
            alpha: (u8, char),
        }

        #[derive(Serialize)]
        #[serde(tag = "kind")]
        enum Tagged {
            #[serde(rename = "b.kind")]
            B(Inner),
        }

        #[derive(Serialize)]
        struct Outer {
            z_last: Vec<Shape>,
            big: u64,
            neg_big: i64,
            small: i32,
            float: f64,
            none: Option<String>,
            unit: (),
            bytes: serde_bytes_like::Bytes,
            int_keys: BTreeMap<i32, &'static str>,
            bool_keys: BTreeMap<bool, u8>,
            escapes: &'static str,
            tagged: Tagged,
            #[serde(flatten)]
            flat: BTreeMap<&'static str, u8>,
            nested: Value,
            a_first: Inner,
        }

        mod serde_bytes_like {
            pub struct Bytes(pub Vec<u8>);
            impl serde::Serialize for Bytes {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        let inner = || Inner {
            zeta: "z",
            skipped: None,
            alpha: (7, '\u{1f600}'),
        };
        let x = Outer {
            z_last: vec![
                Shape::Unit,
                Shape::New(1),
                Shape::Tuple(-2, "t".into()),
                Shape::Struct { z: true, a: None },
            ],
            big: (1 << 53) + 1,
            neg_big: -(1 << 60),
            small: -3,
            float: 0.1,
            none: None,
            unit: (),
            bytes: serde_bytes_like::Bytes(vec![0, 255]),
            int_keys: [(10, "ten"), (-1, "minus one"), (2, "two")].into(),
            bool_keys: [(true, 1), (false, 0)].into(),
            escapes: "quote \" backslash \\ newline \n nul \u{0} del \u{7f} \u{2028}",
            tagged: Tagged::B(inner()),
            flat: [("flat_b", 2), ("flat_a", 1)].into(),
            nested: json!({"b": [1, {"d": null, "c": 1e30}], "\u{e000}": 1, "\u{1f600}": 2}),
            a_first: inner(),
        };
        assert_eq!(direct(&x), via_value(&x));
        // The result is canonical by the independent implementation too.
        let reparsed: Value = serde_json::from_str(&direct(&x)).unwrap();
        assert_eq!(
            direct(&x).into_bytes(),
            serde_json_canonicalizer::to_vec(&reparsed).unwrap()
        );
    }

    #[test]
    fn strings_are_escaped_wherever_the_special_byte_sits() {
        for len in [0, 1, 31, 32, 33, 64, 100] {
            for at in 0..len {
                for special in ['"', '\\', '\n', '\u{0}', '\u{1f}', '\u{7f}', '\u{e9}'] {
                    let mut text: String = "x".repeat(len);
                    text.replace_range(at..at + 1, &special.to_string());
                    let mut out = Vec::new();
                    string(&mut out, &text);
                    assert_eq!(
                        String::from_utf8(out).unwrap(),
                        serde_json::to_string(&text).unwrap(),
                        "{len} {at} {special:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        struct Twice;
        impl Serialize for Twice {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("b", &1)?;
                m.serialize_entry("a", &2)?;
                m.serialize_entry("b", &3)?;
                m.end()
            }
        }
        assert_eq!(direct(&Twice), r#"{"a":2,"b":3}"#);
        assert_eq!(direct(&Twice), via_value(&Twice));
    }

    #[test]
    fn what_json_cannot_hold_is_refused() {
        assert_eq!(to_vec(&f64::NAN), Err(CanonicalError::NotFinite));
        assert_eq!(to_vec(&f64::INFINITY), Err(CanonicalError::NotFinite));
        #[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
        struct K(Vec<u8>);
        let bad: std::collections::BTreeMap<K, u8> = [(K(vec![1]), 1)].into();
        assert!(matches!(to_vec(&bad), Err(CanonicalError::NotJson(_))));
        assert!(to_vec(&u128::MAX).is_err());
    }
}
