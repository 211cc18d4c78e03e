//! Masking a JSON body in one pass over its bytes, without building the document tree.
//!
//! [`mask_json_bytes`] reads the body with serde_json's strict tokenizer (RFC 8259, UTF-8,
//! no lone surrogates, nesting ≤ 128, nothing after the value) and, like
//! `callgate_core::json::parse_strict`, refuses duplicate keys; it writes the masked document
//! as it goes. The output is byte for byte what parsing, [`Profile::mask_json`] and compact
//! serialization produce (a property test holds the two to it), at a fraction of the cost:
//! only values a rule selects as a whole are ever built as [`Value`]s.
//!
//! JSONPath rules are matched while walking, for the paths that can be decided from a
//! value's location alone: names, indexes, wildcards and descendant segments
//! (`$.user.ssn`, `$[*].ssn`, `$..password`, `$.list[1]`, `$['a b']`). A profile with
//! another path (filters, slices, negative indexes) is masked through the tree instead; so is
//! one whose `hash` rule could cover a value a path rule masked first (the hash covers the
//! masked value, which only the tree has).

use callgate_core::json::{JsonError, StrictSeed};
use ring::hmac;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt::{self, Write as _};

use crate::profile::{Profile, Rule, Select, mask_number, mask_string, mask_whole};
use crate::strategy::{REDACTED, Strategy};

/// One segment of a streamable JSONPath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seg {
    /// A descendant segment (`..`): matches at any depth below.
    desc: bool,
    sel: Sel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Sel {
    Name(String),
    Index(usize),
    Wild,
}

/// A location step while walking.
enum Tok<'a> {
    Name(&'a str),
    Index(usize),
}

impl Sel {
    fn matches(&self, t: &Tok<'_>) -> bool {
        match (self, t) {
            (Sel::Wild, _) => true,
            (Sel::Name(n), Tok::Name(k)) => n == k,
            (Sel::Index(i), Tok::Index(j)) => i == j,
            _ => false,
        }
    }
}

/// The segments of `path` when it can be matched while streaming (at most 63 segments), else
/// `None`.
pub(crate) fn streamable_path(path: &str) -> Option<Vec<Seg>> {
    let b = path.as_bytes();
    if b.first() != Some(&b'$') {
        return None;
    }
    let mut i = 1;
    let mut segs = Vec::new();
    let name_start = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c >= 0x80;
    let name_char = |c: u8| name_start(c) || c.is_ascii_digit();
    while i < b.len() {
        let desc = b[i..].starts_with(b"..");
        let sel = if desc || b[i] == b'.' {
            i += if desc { 2 } else { 1 };
            match b.get(i) {
                Some(b'*') => {
                    i += 1;
                    Sel::Wild
                }
                Some(b'[') if desc => {
                    let (sel, next) = bracket(b, i)?;
                    i = next;
                    sel
                }
                Some(&c) if name_start(c) => {
                    let start = i;
                    while i < b.len() && name_char(b[i]) {
                        i += 1;
                    }
                    Sel::Name(path[start..i].to_string())
                }
                _ => return None,
            }
        } else if b[i] == b'[' {
            let (sel, next) = bracket(b, i)?;
            i = next;
            sel
        } else {
            return None;
        };
        segs.push(Seg { desc, sel });
    }
    (segs.len() < 64).then_some(segs)
}

/// A bracketed selector at `b[i] == '['`: `[*]`, `[n]`, `['name']` or `["name"]` (no escapes,
/// no spaces, one selector). The selector and the index after `]`.
fn bracket(b: &[u8], i: usize) -> Option<(Sel, usize)> {
    let close = i + b[i..].iter().position(|&c| c == b']')?;
    let inner = &b[i + 1..close];
    let sel = match inner {
        b"*" => Sel::Wild,
        [q @ (b'\'' | b'"'), mid @ .., last] if last == q && !mid.contains(&b'\\') => {
            if mid.contains(q) {
                return None;
            }
            Sel::Name(std::str::from_utf8(mid).ok()?.to_string())
        }
        [b'0'] => Sel::Index(0),
        [b'1'..=b'9', rest @ ..] if rest.iter().all(u8::is_ascii_digit) && inner.len() < 16 => {
            Sel::Index(std::str::from_utf8(inner).ok()?.parse().ok()?)
        }
        _ => return None,
    };
    Some((sel, close + 1))
}

/// A profile's rules for one caller, ready to stream.
struct Plan<'p> {
    /// Path rules in order: their segments and strategy.
    paths: Vec<(&'p [Seg], Strategy)>,
    /// Key and detector rules in order.
    rest: Vec<&'p Rule>,
}

impl Profile {
    /// Whether [`mask_json_bytes`] masks for a caller in `groups` while streaming (else it
    /// goes through the tree).
    pub fn streams(&self, groups: &[String]) -> bool {
        self.plan(groups).is_some()
    }

    fn plan(&self, groups: &[String]) -> Option<Plan<'_>> {
        let rules: Vec<&Rule> = self.rules.iter().filter(|r| r.applies_to(groups)).collect();
        let mut paths = Vec::new();
        let mut rest = Vec::new();
        for r in &rules {
            match &r.select {
                Select::Path(_) => paths.push((r.stream_path.as_deref()?, r.strategy)),
                _ => rest.push(*r),
            }
        }
        // A hash over a value that holds a path-masked value hashes the masked form; only the
        // tree has it.
        let hashes = rules
            .iter()
            .any(|r| r.strategy == Strategy::Hash && !matches!(r.select, Select::Detect(_)));
        if hashes && !paths.is_empty() {
            return None;
        }
        Some(Plan { paths, rest })
    }
}

/// Masks the JSON document `body` with `profiles` in turn for a caller in `groups`: the
/// masked document, compact. An error if `body` is not strict JSON (as
/// `callgate_core::json::parse_strict` would say).
pub fn mask_json_bytes(
    profiles: &[&Profile],
    body: &[u8],
    groups: &[String],
    key: &hmac::Key,
) -> Result<Vec<u8>, JsonError> {
    let plans: Option<Vec<Plan<'_>>> = profiles.iter().map(|p| p.plan(groups)).collect();
    let Some(plans) = plans else {
        let mut doc = callgate_core::json::parse_strict(body)?;
        for p in profiles {
            p.mask_json(&mut doc, groups, key);
        }
        return serde_json::to_vec(&doc).map_err(|e| JsonError(e.to_string()));
    };
    let mut current: Cow<'_, [u8]> = Cow::Borrowed(body);
    if plans.is_empty() {
        // Still one strict read: the caller relies on the body being JSON.
        return stream(
            &Plan {
                paths: vec![],
                rest: vec![],
            },
            &current,
            key,
        );
    }
    for plan in &plans {
        current = Cow::Owned(stream(plan, &current, key)?);
    }
    Ok(current.into_owned())
}

fn stream(plan: &Plan<'_>, body: &[u8], key: &hmac::Key) -> Result<Vec<u8>, JsonError> {
    let mut ctx = Ctx {
        out: Vec::with_capacity(body.len() + body.len() / 8),
        plan,
        key,
        states: vec![1; plan.paths.len()],
        number: String::new(),
        keys: Vec::new(),
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let err = |e: serde_json::Error| JsonError(e.to_string());
    match ctx.matched(0) {
        Some(strategy) => {
            let v = StrictSeed.deserialize(&mut de).map_err(err)?;
            // The whole document dropped leaves `null`, as the tree does.
            let x = mask_whole(&v, strategy, key).unwrap_or(Value::Null);
            write_value(&mut ctx.out, &x);
        }
        None => Node {
            ctx: &mut ctx,
            at: 0,
        }
        .deserialize(&mut de)
        .map_err(err)?,
    }
    de.end().map_err(err)?;
    Ok(ctx.out)
}

/// The walk's state: the output, and for each path rule which of its segments each location
/// on the current path has reached (a bit set per location, stacked).
struct Ctx<'a> {
    out: Vec<u8>,
    plan: &'a Plan<'a>,
    key: &'a hmac::Key,
    states: Vec<u64>,
    /// A number's text, reused from number to number.
    number: String,
    /// The keys seen so far in each object being read, outermost first (a stack shared by
    /// all depths, so objects do not allocate their own).
    keys: Vec<Cow<'a, str>>,
}

impl Ctx<'_> {
    /// Pushes the states of the child `t` of the location at `at`; returns its offset.
    fn child(&mut self, at: usize, t: &Tok<'_>) -> usize {
        let n = self.plan.paths.len();
        let child = self.states.len();
        for r in 0..n {
            let s = self.states[at + r];
            let segs = self.plan.paths[r].0;
            let mut next = 0u64;
            let mut bits = s;
            while bits != 0 {
                let i = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if let Some(seg) = segs.get(i) {
                    if seg.desc {
                        next |= 1 << i;
                    }
                    if seg.sel.matches(t) {
                        next |= 1 << (i + 1);
                    }
                }
            }
            self.states.push(next);
        }
        child
    }

    fn pop(&mut self, at: usize) {
        self.states.truncate(at);
    }

    /// The strategy of the first path rule that selects the location at `at`.
    fn matched(&self, at: usize) -> Option<Strategy> {
        self.plan
            .paths
            .iter()
            .enumerate()
            .find(|(r, (segs, _))| self.states[at + r] & (1 << segs.len()) != 0)
            .map(|(_, (_, s))| *s)
    }

    /// The strategy of the first key rule that selects member `k`.
    fn by_key(&self, k: &str) -> Option<Strategy> {
        self.plan
            .rest
            .iter()
            .find(|r| r.selects_key(k))
            .map(|r| r.strategy)
    }

    fn comma(&mut self, first: &mut bool) {
        if !*first {
            self.out.push(b',');
        }
        *first = false;
    }
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(out, v);
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(out, s);
}

/// Writes a string the tokenizer borrowed from the body. serde_json borrows only a string
/// with no escape sequence in the input, so it holds no `"`, `\` or control character (strict
/// JSON forbids them raw) and serializes as itself between quotes: no escaping pass needed.
fn write_borrowed_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// Writes an object key: borrowed ones as they are, the rest escaped.
#[expect(
    clippy::ptr_arg,
    reason = "whether the key was borrowed decides how it is written"
)]
fn write_key(out: &mut Vec<u8>, k: &Cow<'_, str>) {
    match k {
        Cow::Borrowed(b) => write_borrowed_str(out, b),
        Cow::Owned(o) => write_str(out, o),
    }
}

/// A value at a location no path or key rule selects as a whole: written as it is read.
struct Node<'c, 'a> {
    ctx: &'c mut Ctx<'a>,
    at: usize,
}

impl<'de> DeserializeSeed<'de> for Node<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.ctx
            .out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.ctx.out.extend_from_slice(b"null");
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.number(serde_json::Number::from(v));
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.number(serde_json::Number::from(v));
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        let n = serde_json::Number::from_f64(v).ok_or_else(|| E::custom("number out of range"))?;
        self.number(n);
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        match mask_string(v, &self.ctx.plan.rest, self.ctx.key) {
            Some(m) => write_str(&mut self.ctx.out, &m),
            None => write_str(&mut self.ctx.out, v),
        }
        Ok(())
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<(), E> {
        match mask_string(v, &self.ctx.plan.rest, self.ctx.key) {
            Some(m) => write_str(&mut self.ctx.out, &m),
            None => write_borrowed_str(&mut self.ctx.out, v),
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let ctx = self.ctx;
        ctx.out.push(b'[');
        let mut first = true;
        let mut i = 0;
        loop {
            let child = ctx.child(self.at, &Tok::Index(i));
            let more = match ctx.matched(child) {
                Some(strategy) => match seq.next_element_seed(StrictSeed)? {
                    Some(v) => {
                        ctx.comma(&mut first);
                        // Dropping from an array would shift indexes; redacted instead.
                        let x = mask_whole(&v, strategy, ctx.key)
                            .unwrap_or_else(|| Value::String(REDACTED.into()));
                        write_value(&mut ctx.out, &x);
                        true
                    }
                    None => false,
                },
                None => {
                    // The comma goes before the element, and only if there is one.
                    let mark = ctx.out.len();
                    ctx.comma(&mut first);
                    let node = Node { ctx, at: child };
                    match seq.next_element_seed(node)? {
                        Some(()) => true,
                        None => {
                            ctx.out.truncate(mark);
                            false
                        }
                    }
                }
            };
            ctx.pop(child);
            if !more {
                break;
            }
            i += 1;
        }
        ctx.out.push(b']');
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let ctx = self.ctx;
        ctx.out.push(b'{');
        let mut first = true;
        // This object's keys: on the shared stack from `base`, or in a set once there are
        // many.
        let base = ctx.keys.len();
        let mut many: Option<std::collections::HashSet<Cow<'de, str>>> = None;
        while let Some(k) = map.next_key_seed(KeySeed)? {
            let dup = match &many {
                Some(set) => set.contains(&k),
                None => ctx.keys[base..].contains(&k),
            };
            if dup {
                return Err(de::Error::custom(format!("duplicate object key {k:?}")));
            }
            let child = ctx.child(self.at, &Tok::Name(&k));
            match ctx.matched(child).or_else(|| ctx.by_key(&k)) {
                Some(strategy) => {
                    let v = map.next_value_seed(StrictSeed)?;
                    if let Some(x) = mask_whole(&v, strategy, ctx.key) {
                        ctx.comma(&mut first);
                        write_key(&mut ctx.out, &k);
                        ctx.out.push(b':');
                        write_value(&mut ctx.out, &x);
                    }
                }
                None => {
                    ctx.comma(&mut first);
                    write_key(&mut ctx.out, &k);
                    ctx.out.push(b':');
                    map.next_value_seed(Node {
                        ctx: &mut *ctx,
                        at: child,
                    })?;
                }
            }
            ctx.pop(child);
            match &mut many {
                Some(set) => {
                    set.insert(k);
                }
                None => {
                    ctx.keys.push(k);
                    if ctx.keys.len() - base > 16 {
                        many = Some(ctx.keys.drain(base..).collect());
                    }
                }
            }
        }
        ctx.keys.truncate(base);
        ctx.out.push(b'}');
        Ok(())
    }
}

impl Node<'_, '_> {
    fn number(self, n: serde_json::Number) {
        // `Number`'s text is exactly how serde_json serializes it (itoa, ryu), so it is
        // formatted once, for the detectors and for the output.
        let ctx = self.ctx;
        let mut text = std::mem::take(&mut ctx.number);
        text.clear();
        let _ = write!(text, "{n}");
        match mask_number(&text, &ctx.plan.rest, ctx.key) {
            Some(m) => write_str(&mut ctx.out, &m),
            None => ctx.out.extend_from_slice(text.as_bytes()),
        }
        ctx.number = text;
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_paths_are_streamable_and_others_are_not() {
        let name = |n: &str, desc| Seg {
            desc,
            sel: Sel::Name(n.into()),
        };
        assert_eq!(streamable_path("$"), Some(vec![]));
        assert_eq!(
            streamable_path("$.user.ssn"),
            Some(vec![name("user", false), name("ssn", false)])
        );
        assert_eq!(
            streamable_path("$[*].ssn"),
            Some(vec![
                Seg {
                    desc: false,
                    sel: Sel::Wild
                },
                name("ssn", false)
            ])
        );
        assert_eq!(
            streamable_path("$..password_hash"),
            Some(vec![name("password_hash", true)])
        );
        assert_eq!(
            streamable_path("$['a b'][10]..[*]"),
            Some(vec![
                name("a b", false),
                Seg {
                    desc: false,
                    sel: Sel::Index(10)
                },
                Seg {
                    desc: true,
                    sel: Sel::Wild
                }
            ])
        );
        for other in [
            "$[?@.a]",
            "$[1:2]",
            "$[-1]",
            "$[ 1 ]",
            "$['a\\'b']",
            "$[01]",
            "$.a,b",
            "x",
            "$..",
            "$[0,1]",
        ] {
            assert_eq!(streamable_path(other), None, "{other}");
        }
    }
}
