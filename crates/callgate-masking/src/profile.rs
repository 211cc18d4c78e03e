//! Masking profiles: rules that select values and say what they become, applied to JSON
//! documents and to plain text.
//!
//! A rule selects values in one of three ways:
//! - by RFC 9535 JSONPath (`$.user.ssn`, `$..password`), via `serde_json_path`;
//! - by key name, case-insensitively, where the key *contains* a pattern (`password` also
//!   selects `password_hash`);
//! - by content, with detectors ([`crate::detect`]), inside any string (and number) value —
//!   the only kind of rule that also applies to plain-text bodies.
//!
//! A rule can clear groups: a caller in one of them sees the value unmasked. Rules apply in
//! order — JSONPath rules, then key rules, then detectors on what is left — and a value masked
//! by one rule is not looked at again.

use ring::hmac;
use serde_json::Value;
use serde_json_path::{JsonPath, PathElement};

use crate::detect::{Detector, Hints};
use crate::strategy::{self, REDACTED, Strategy};

/// How a rule selects values.
#[derive(Debug, Clone)]
pub enum Select {
    Path(JsonPath),
    /// Lower-case substrings of key names.
    Keys(Vec<String>),
    Detect(Vec<Detector>),
}

/// One rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub select: Select,
    pub strategy: Strategy,
    /// Groups that see the value unmasked.
    pub cleared: Vec<String>,
    /// A path rule's segments when it can be matched while streaming ([`crate::stream`]).
    pub(crate) stream_path: Option<Vec<crate::stream::Seg>>,
    /// A key rule's patterns, compiled once: any of them anywhere in a key, ignoring ASCII
    /// case.
    key_patterns: Option<aho_corasick::AhoCorasick>,
}

/// A compiled profile.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub rules: Vec<Rule>,
    /// Response headers removed (lower-case names).
    pub headers: Vec<String>,
}

/// A rule as written in configuration, before compiling.
#[derive(Debug, Clone, Default)]
pub struct RuleSpec {
    pub path: Option<String>,
    pub keys: Vec<String>,
    pub detect: Vec<String>,
    /// `redact`, `partial`, `hash` or `drop`.
    pub strategy: String,
    pub keep: usize,
    pub cleared: Vec<String>,
}

impl RuleSpec {
    /// A spec selecting by `path`, `keys` or `detect` (give exactly one) with `strategy`,
    /// keeping 4 characters for `partial` and clearing no group.
    pub fn of(path: Option<&str>, keys: &[&str], detect: &[&str], strategy: &str) -> RuleSpec {
        RuleSpec {
            path: path.map(str::to_string),
            keys: keys.iter().map(|s| s.to_string()).collect(),
            detect: detect.iter().map(|s| s.to_string()).collect(),
            strategy: strategy.into(),
            keep: 4,
            cleared: vec![],
        }
    }
}

impl Rule {
    /// Compiles a rule; the error says what is wrong with it.
    pub fn compile(spec: &RuleSpec) -> Result<Rule, String> {
        let select = match (&spec.path, spec.keys.is_empty(), spec.detect.is_empty()) {
            (Some(p), true, true) => Select::Path(
                JsonPath::parse(p)
                    .map_err(|e| format!("path {p:?} is not RFC 9535 JSONPath: {e}"))?,
            ),
            (None, false, true) => {
                Select::Keys(spec.keys.iter().map(|k| k.to_ascii_lowercase()).collect())
            }
            (None, true, false) => Select::Detect(
                spec.detect
                    .iter()
                    .map(|d| {
                        Detector::from_name(d).ok_or_else(|| {
                            format!(
                                "unknown detector {d:?} (known: {})",
                                Detector::ALL.map(|d| d.name()).join(", ")
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
            _ => return Err("a rule selects by exactly one of path, keys or detect".into()),
        };
        let strategy = match spec.strategy.as_str() {
            "redact" => Strategy::Redact,
            "partial" => Strategy::Partial { keep: spec.keep },
            "hash" => Strategy::Hash,
            "drop" => Strategy::Drop,
            s => {
                return Err(format!(
                    "unknown strategy {s:?} (redact, partial, hash, drop)"
                ));
            }
        };
        let key_patterns = match &select {
            Select::Keys(ks) => Some(
                aho_corasick::AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .build(ks)
                    .map_err(|e| format!("key patterns {ks:?}: {e}"))?,
            ),
            _ => None,
        };
        Ok(Rule {
            key_patterns,
            select,
            strategy,
            cleared: spec.cleared.clone(),
            stream_path: spec
                .path
                .as_deref()
                .and_then(crate::stream::streamable_path),
        })
    }

    pub(crate) fn applies_to(&self, groups: &[String]) -> bool {
        !self.cleared.iter().any(|c| groups.contains(c))
    }

    /// Whether this is a key rule that selects member `k` (its key contains one of the
    /// patterns, ignoring ASCII case).
    pub(crate) fn selects_key(&self, k: &str) -> bool {
        self.key_patterns.as_ref().is_some_and(|p| p.is_match(k))
    }
}

/// Masks one scalar `v` as a whole. `None`: drop it.
pub(crate) fn mask_whole(v: &Value, s: Strategy, key: &hmac::Key) -> Option<Value> {
    match v {
        Value::String(t) => strategy::apply(s, t, key).map(Value::String),
        Value::Number(n) => strategy::apply(s, &n.to_string(), key).map(Value::String),
        // Dropped, a null goes too: its key alone says the field exists.
        Value::Null => (s != Strategy::Drop).then_some(Value::Null),
        // A selected object, array or boolean is replaced whole (or dropped).
        _ => match s {
            Strategy::Drop => None,
            Strategy::Hash => strategy::apply(s, &v.to_string(), key).map(Value::String),
            _ => Some(Value::String(REDACTED.into())),
        },
    }
}

/// Replaces what `detectors` find inside `text`.
pub fn mask_text(
    text: &str,
    detectors: &[Detector],
    s: Strategy,
    key: &hmac::Key,
) -> Option<String> {
    mask_text_with(text, detectors, s, key, &Hints::of(text))
}

/// [`mask_text`] with the text's hints already counted.
fn mask_text_with(
    text: &str,
    detectors: &[Detector],
    s: Strategy,
    key: &hmac::Key,
    hints: &Hints,
) -> Option<String> {
    let found = crate::detect::scan_with(text, detectors, hints);
    if found.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in found {
        out.push_str(&text[at..f.range.start]);
        out.push_str(&strategy::apply_to_finding(
            s,
            &text[f.range.clone()],
            f.detector,
            key,
        ));
        at = f.range.end;
    }
    out.push_str(&text[at..]);
    Some(out)
}

/// One step of a normalized path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Tok {
    Name(String),
    Index(usize),
}

/// Applies `f` to the value at `tokens`; `f` returning `None` removes it.
fn edit_at(root: &mut Value, tokens: &[Tok], f: &mut dyn FnMut(&Value) -> Option<Value>) {
    let Some((last, parents)) = tokens.split_last() else {
        if let Some(v) = f(root) {
            *root = v;
        } else {
            *root = Value::Null;
        }
        return;
    };
    let mut cur = root;
    for t in parents {
        cur = match (cur, t) {
            (Value::Object(m), Tok::Name(n)) => match m.get_mut(n) {
                Some(v) => v,
                None => return,
            },
            (Value::Array(a), Tok::Index(i)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return,
            },
            _ => return,
        };
    }
    match (cur, last) {
        (Value::Object(m), Tok::Name(n)) => {
            if let Some(v) = m.get(n) {
                match f(v) {
                    Some(x) => {
                        m.insert(n.clone(), x);
                    }
                    None => {
                        m.shift_remove(n);
                    }
                }
            }
        }
        (Value::Array(a), Tok::Index(i)) => {
            if let Some(v) = a.get(*i) {
                // Dropping from an array would shift indexes; redact instead.
                a[*i] = f(v).unwrap_or_else(|| Value::String(REDACTED.into()));
            }
        }
        _ => {}
    }
}

impl Profile {
    /// Masks `doc` in place for a caller in `groups`.
    pub fn mask_json(&self, doc: &mut Value, groups: &[String], key: &hmac::Key) {
        // Values already masked by path are not looked at again.
        let mut done = Done::default();
        for rule in self.rules.iter().filter(|r| r.applies_to(groups)) {
            if let Select::Path(p) = &rule.select {
                let paths: Vec<Vec<Tok>> = p
                    .query_located(doc)
                    .locations()
                    .map(|l| {
                        l.iter()
                            .map(|e| match e {
                                PathElement::Name(n) => Tok::Name((*n).to_string()),
                                PathElement::Index(i) => Tok::Index(*i),
                            })
                            .collect()
                    })
                    .collect();
                for toks in paths {
                    if done.contains(&toks) {
                        continue;
                    }
                    edit_at(doc, &toks, &mut |v| mask_whole(v, rule.strategy, key));
                    done.insert(&toks);
                }
            }
        }
        let rest: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| r.applies_to(groups) && !matches!(r.select, Select::Path(_)))
            .collect();
        if !rest.is_empty() {
            let d = (!done.is_empty()).then_some(&done);
            walk(doc, d, &rest, key);
        }
    }

    /// Masks a plain-text body with the profile's detector rules.
    pub fn mask_plain(&self, text: &str, groups: &[String], key: &hmac::Key) -> String {
        let mut out = text.to_string();
        for rule in self.rules.iter().filter(|r| r.applies_to(groups)) {
            if let Select::Detect(ds) = &rule.select
                && let Some(m) = mask_text(&out, ds, rule.strategy, key)
            {
                out = m;
            }
        }
        out
    }

    /// Whether plain text can be masked faithfully for a caller in `groups`: only when every
    /// rule that applies to them is a detector rule. Key and path rules cannot be applied to
    /// text, so a profile that has them reads text as it reads broken JSON — it cannot.
    pub fn masks_text(&self, groups: &[String]) -> bool {
        self.rules
            .iter()
            .filter(|r| r.applies_to(groups))
            .all(|r| matches!(r.select, Select::Detect(_)))
    }

    /// Whether a response header must be removed.
    pub fn removes_header(&self, name: &str) -> bool {
        self.headers.iter().any(|h| h.eq_ignore_ascii_case(name))
    }
}

/// The values masked by path rules, as a tree of reference tokens, so the walk can skip them
/// with one map lookup per level instead of building pointers.
#[derive(Debug, Default)]
struct Done {
    leaf: bool,
    names: std::collections::HashMap<String, Done>,
    indexes: std::collections::HashMap<usize, Done>,
}

impl Done {
    /// The child for object key `k`; a few names are compared directly rather than hashed.
    fn name(&self, k: &str) -> Option<&Done> {
        if self.names.len() <= 4 {
            self.names
                .iter()
                .find(|(n, _)| n.as_str() == k)
                .map(|(_, d)| d)
        } else {
            self.names.get(k)
        }
    }

    fn child(&self, t: &Tok) -> Option<&Done> {
        match t {
            Tok::Name(n) => self.names.get(n),
            Tok::Index(i) => self.indexes.get(i),
        }
    }

    fn is_empty(&self) -> bool {
        !self.leaf && self.names.is_empty() && self.indexes.is_empty()
    }

    fn insert(&mut self, tokens: &[Tok]) {
        let mut d = self;
        for t in tokens {
            d = match t {
                Tok::Name(n) => d.names.entry(n.clone()).or_default(),
                Tok::Index(i) => d.indexes.entry(*i).or_default(),
            };
        }
        d.leaf = true;
    }

    fn contains(&self, tokens: &[Tok]) -> bool {
        let mut d = self;
        for t in tokens {
            if d.leaf {
                return true;
            }
            match d.child(t) {
                Some(c) => d = c,
                None => return false,
            }
        }
        d.leaf
    }
}

/// Key and detector rules over the whole document; `done` is the part of the path-masked tree
/// under `v`, if any.
fn walk(v: &mut Value, done: Option<&Done>, rules: &[&Rule], key: &hmac::Key) {
    if done.is_some_and(|d| d.leaf) {
        return;
    }
    let below = |k: &str| done.and_then(|d| d.name(k));
    match v {
        Value::Object(m) => {
            let mut dropped: Vec<String> = Vec::new();
            for (k, child) in m.iter_mut() {
                let d = below(k);
                if d.is_some_and(|d| d.leaf) {
                    continue;
                }
                let by_key = rules.iter().find(|r| r.selects_key(k));
                match by_key {
                    Some(rule) => match mask_whole(child, rule.strategy, key) {
                        Some(x) => *child = x,
                        None => dropped.push(k.clone()),
                    },
                    None => walk(child, d, rules, key),
                }
            }
            for k in dropped {
                m.shift_remove(&k);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                let d = done.and_then(|d| d.indexes.get(&i));
                walk(x, d, rules, key);
            }
        }
        Value::String(s) => {
            if let Some(m) = mask_string(s, rules, key) {
                *s = m;
            }
        }
        Value::Number(n) => {
            if let Some(m) = mask_number(&n.to_string(), rules, key) {
                *v = Value::String(m);
            }
        }
        _ => {}
    }
}

/// A string value after the detector rules among `rules`, in order; `None` if none applied.
pub(crate) fn mask_string(s: &str, rules: &[&Rule], key: &hmac::Key) -> Option<String> {
    // One pass over the bytes rules most strings out for every detector at once.
    let mut hints = Hints::of(s);
    let mut out: Option<String> = None;
    for (i, r) in rules.iter().enumerate() {
        let cur = out.as_deref().unwrap_or(s);
        // The scan runs only the detectors whose quick check passes.
        if let Select::Detect(ds) = &r.select
            && let Some(m) = mask_text_with(cur, ds, r.strategy, key, &hints)
        {
            // Counted again only for a detector rule still to come.
            if rules[i + 1..]
                .iter()
                .any(|r| matches!(r.select, Select::Detect(_)))
            {
                hints = Hints::of(&m);
            }
            out = Some(m);
        }
    }
    out
}

/// A number value, given as its JSON text, as the string the first detector rule that finds
/// something in that text makes of it; `None` if none does.
pub(crate) fn mask_number(text: &str, rules: &[&Rule], key: &hmac::Key) -> Option<String> {
    rules.iter().find_map(|r| match &r.select {
        Select::Detect(ds) => mask_text(text, ds, r.strategy, key),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(
        path: Option<&str>,
        keys: &[&str],
        detect: &[&str],
        strategy: &str,
        cleared: &[&str],
    ) -> Rule {
        Rule::compile(&RuleSpec {
            cleared: cleared.iter().map(|s| s.to_string()).collect(),
            ..RuleSpec::of(path, keys, detect, strategy)
        })
        .unwrap()
    }

    fn demo_profile() -> Profile {
        Profile {
            rules: vec![
                rule(Some("$..password_hash"), &[], &[], "drop", &[]),
                rule(Some("$.ssn"), &[], &[], "partial", &[]),
                rule(None, &["token", "secret", "password"], &[], "redact", &[]),
                rule(None, &[], &["email"], "partial", &["billing-ops"]),
                rule(None, &[], &["card", "us_ssn"], "partial", &[]),
                rule(None, &[], &["aws_key", "jwt"], "redact", &[]),
            ],
            headers: vec!["set-cookie".into()],
        }
    }

    #[test]
    fn masks_by_path_key_and_content_with_clearance() {
        let key = strategy::hash_key(b"k");
        let doc = json!({
            "id": "u_1",
            "email": "ada@example.com",
            "ssn": "123-45-6789",
            "card_number": "4111 1111 1111 1111",
            "api_token": "sk_live_xxx",
            "password_hash": "$argon2id$v=19$...",
            "notes": ["call ada@example.com re card 4111111111111111", {"aws": "key AKIAIOSFODNN7EXAMPLE here"}],
            "n": 4111111111111111u64,
        });
        let mut alice = doc.clone();
        demo_profile().mask_json(&mut alice, &["support".into()], &key);
        assert_eq!(
            alice,
            json!({
                "id": "u_1",
                "email": "a**@example.com",
                "ssn": "***-**-6789",
                "card_number": "**** **** **** 1111",
                "api_token": "[REDACTED]",
                "notes": ["call a**@example.com re card ************1111", {"aws": "key [REDACTED] here"}],
                "n": "************1111",
            })
        );
        let mut bob = doc.clone();
        demo_profile().mask_json(&mut bob, &["billing-ops".into()], &key);
        assert_eq!(
            bob["email"], "ada@example.com",
            "billing-ops is cleared for email"
        );
        assert!(bob.get("password_hash").is_none(), "nobody sees the hash");
        assert_eq!(bob["ssn"], "***-**-6789");

        // Key patterns match anywhere in a key, ignoring case, in the tree and streaming alike.
        let rules = Profile {
            rules: vec![
                Rule::compile(&RuleSpec::of(None, &["Token", "secret"], &[], "redact")).unwrap(),
            ],
            headers: vec![],
        };
        let doc =
            json!({"API_TOKEN": "a", "ClientSecret": "b", "tok": "c", "x": {"refresh_token": "d"}});
        let want = json!({"API_TOKEN": "[REDACTED]", "ClientSecret": "[REDACTED]", "tok": "c", "x": {"refresh_token": "[REDACTED]"}});
        let mut tree = doc.clone();
        rules.mask_json(&mut tree, &[], &key);
        assert_eq!(tree, want);
        let streamed =
            crate::mask_json_bytes(&[&rules], doc.to_string().as_bytes(), &[], &key).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&streamed).unwrap(), want);
    }

    #[test]
    fn plain_text_and_rule_errors() {
        let key = strategy::hash_key(b"k");
        assert_eq!(
            demo_profile().mask_plain("ssn 123-45-6789, mail ada@example.com", &[], &key),
            "ssn ***-**-6789, mail a**@example.com"
        );
        let bad = |spec: RuleSpec| Rule::compile(&spec).unwrap_err();
        assert!(
            bad(RuleSpec {
                path: Some("$[".into()),
                strategy: "redact".into(),
                ..Default::default()
            })
            .contains("JSONPath")
        );
        assert!(
            bad(RuleSpec {
                detect: vec!["ssn".into()],
                strategy: "redact".into(),
                ..Default::default()
            })
            .contains("unknown detector")
        );
        assert!(
            bad(RuleSpec {
                keys: vec!["x".into()],
                strategy: "shred".into(),
                ..Default::default()
            })
            .contains("strategy")
        );
        assert!(
            bad(RuleSpec {
                strategy: "redact".into(),
                ..Default::default()
            })
            .contains("exactly one")
        );
    }

    #[test]
    fn array_elements_and_wildcards() {
        let key = strategy::hash_key(b"k");
        let p = Profile {
            rules: vec![
                rule(Some("$.users[*].ssn"), &[], &[], "hash", &[]),
                rule(Some("$.list[1]"), &[], &[], "drop", &[]),
            ],
            headers: vec![],
        };
        let mut d = json!({"users": [{"ssn": "1"}, {"ssn": "2"}], "list": [1, 2, 3]});
        p.mask_json(&mut d, &[], &key);
        assert!(d["users"][0]["ssn"].as_str().unwrap().starts_with("hmac:"));
        assert_ne!(d["users"][0]["ssn"], d["users"][1]["ssn"]);
        assert_eq!(d["list"], json!([1, "[REDACTED]", 3]));
    }
}
