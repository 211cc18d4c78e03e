//! Masking strategies: what a selected value becomes.

use crate::detect::Detector;
use ring::hmac;

/// The text a redacted value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// What to do with a sensitive value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Replace with `"[REDACTED]"`.
    Redact,
    /// Keep the last `keep` letters and digits, star the others, keep separators:
    /// `123-45-6789` → `***-**-6789`. An email keeps its first character and its domain:
    /// `ada@example.com` → `a**@example.com`.
    Partial { keep: usize },
    /// A keyed hash (`hmac:` and 16 hex digits of HMAC-SHA256): the same value always gives
    /// the same token under one key, so records can still be joined, but it cannot be reversed.
    Hash,
    /// Remove the field (in text, where nothing can be removed, redact).
    Drop,
}

/// Applies `strategy` to `value`. `key` is the keyed-hash secret. Returns `None` for a dropped
/// field.
pub fn apply(strategy: Strategy, value: &str, key: &hmac::Key) -> Option<String> {
    Some(match strategy {
        Strategy::Redact => REDACTED.to_string(),
        Strategy::Drop => return None,
        Strategy::Hash => {
            let tag = hmac::sign(key, value.as_bytes());
            let hex: String = tag.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("hmac:{hex}")
        }
        Strategy::Partial { keep } => partial(value, keep),
    })
}

/// Redaction for text, where a value cannot be dropped.
pub fn apply_in_text(strategy: Strategy, value: &str, key: &hmac::Key) -> String {
    apply(strategy, value, key).unwrap_or_else(|| REDACTED.to_string())
}

/// [`apply_in_text`] for a value `detector` found in text: an email the email detector found
/// is known to be one whole address, so `partial` does not look for it again.
pub(crate) fn apply_to_finding(
    strategy: Strategy,
    value: &str,
    detector: Detector,
    key: &hmac::Key,
) -> String {
    match strategy {
        Strategy::Partial { keep } => partial_as(value, keep, detector == Detector::Email),
        _ => apply_in_text(strategy, value, key),
    }
}

fn partial(value: &str, keep: usize) -> String {
    partial_as(value, keep, false)
}

/// `email`: the value is already known to be one whole email address.
fn partial_as(value: &str, keep: usize, email: bool) -> String {
    // An email address (the whole value, as the detector reads one) keeps its first letter
    // and its domain; anything else with an `@` in it (a password, say) is masked as text.
    if let Some((local, domain)) = value.split_once('@')
        && !local.is_empty()
        && (email
            || Detector::Email.find(value).as_slice() == std::slice::from_ref(&(0..value.len())))
    {
        let n = local.chars().count();
        // The first letter is kept only when there is more to hide.
        let first = local.chars().next().filter(|_| n > 1).unwrap_or('*');
        let mut out = String::with_capacity(value.len());
        out.push(first);
        out.extend(std::iter::repeat_n('*', n - 1));
        out.push('@');
        out.push_str(domain);
        return out;
    }
    // At most half the letters and digits are kept, whatever `keep` says: a short value is
    // never shown whole.
    if value.is_ascii() {
        // Byte by byte (most values): the same result without decoding characters.
        let b = value.as_bytes();
        let total = b.iter().filter(|c| c.is_ascii_alphanumeric()).count();
        let star_until = total - keep.min(total / 2);
        let mut seen = 0;
        let out: Vec<u8> = b
            .iter()
            .map(|&c| {
                if c.is_ascii_alphanumeric() {
                    seen += 1;
                    if seen <= star_until { b'*' } else { c }
                } else {
                    c
                }
            })
            .collect();
        return String::from_utf8(out).unwrap_or_default();
    }
    let total = value.chars().filter(|c| c.is_alphanumeric()).count();
    let star_until = total - keep.min(total / 2);
    let mut seen = 0;
    value
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                seen += 1;
                if seen <= star_until { '*' } else { c }
            } else {
                c
            }
        })
        .collect()
}

/// A keyed-hash key from secret bytes.
pub fn hash_key(secret: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies() {
        let k = hash_key(b"k");
        assert_eq!(apply(Strategy::Redact, "x", &k).unwrap(), "[REDACTED]");
        assert_eq!(apply(Strategy::Drop, "x", &k), None);
        assert_eq!(apply_in_text(Strategy::Drop, "x", &k), "[REDACTED]");
        assert_eq!(
            apply(Strategy::Partial { keep: 4 }, "123-45-6789", &k).unwrap(),
            "***-**-6789"
        );
        // A value no longer than twice what is kept shows at most half of itself.
        let p = |v: &str| apply(Strategy::Partial { keep: 4 }, v, &k).unwrap();
        assert_eq!(p("1234"), "**34");
        assert_eq!(p("12345678"), "****5678");
        assert_eq!(p("p@$$w0rd"), "*@$$**rd");
        // An email address keeps its domain, and its first letter when there is more.
        assert_eq!(p("ada@example.com"), "a**@example.com");
        assert_eq!(p("p@ss.word"), "*@ss.word");
        // Anything else with an `@` in it is masked as text.
        assert_eq!(p("p@ssw0rd!"), "*@***0rd!");
        // Letters outside ASCII count as letters.
        assert_eq!(p("Zoë 12345"), "*** *2345");
        assert_eq!(
            apply(Strategy::Partial { keep: 4 }, "4111 1111 1111 1111", &k).unwrap(),
            "**** **** **** 1111"
        );
        assert_eq!(
            apply(Strategy::Partial { keep: 4 }, "ada@example.com", &k).unwrap(),
            "a**@example.com"
        );
        assert_eq!(
            apply(Strategy::Partial { keep: 9 }, "ab", &k).unwrap(),
            "*b",
            "never shown whole"
        );
        let a = apply(Strategy::Hash, "ada@example.com", &k).unwrap();
        assert_eq!(a, apply(Strategy::Hash, "ada@example.com", &k).unwrap());
        assert_ne!(a, apply(Strategy::Hash, "bob@example.com", &k).unwrap());
        assert_ne!(
            a,
            apply(Strategy::Hash, "ada@example.com", &hash_key(b"other")).unwrap()
        );
        assert!(a.starts_with("hmac:") && a.len() == 21);
    }
}
