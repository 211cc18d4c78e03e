//! Content detectors: find sensitive values in text.
//!
//! Each detector is a regular expression that proposes candidates, then a validator that
//! accepts only real ones:
//!
//! | detector | candidates | validation |
//! |---|---|---|
//! | `email` | `local@domain.tld` | a dotted domain with a 2–24 letter TLD |
//! | `phone` | `+` and 8–15 digits, or NANP `(202) 555-0123` / `202-555-0123` | digit count; not part of a longer number |
//! | `card` | 13–19 digits, optionally grouped by one kind of separator | Luhn, a known network prefix |
//! | `iban` | country code, 2 check digits, 11–30 alphanumerics | ISO 7064 mod 97 = 1, the country's length and BBAN format (the SWIFT registry, by `iban_validate`) |
//! | `us_ssn` | `AAA-GG-SSSS` | area not 000/666/9xx, group not 00, serial not 0000, not inside a longer id |
//! | `ipv4`, `ipv6` | dotted quads; hex groups with colons | each octet ≤ 255, not in a version string; `Ipv6Addr` parses |
//! | `jwt` | `eyJ…​.eyJ…​.sig` | header and payload decode as JSON objects |
//! | `private_key` | `-----BEGIN … PRIVATE KEY-----` … `END` | the armor |
//! | `bearer` | `Bearer <token>` | 16+ token characters |
//! | `aws_key`, `gcp_key`, `github_token`, `slack_token`, `stripe_key` | the vendors' documented prefixes and lengths | exact shape |

use regex::Regex;
use std::ops::Range;
use std::sync::LazyLock;

/// A kind of sensitive value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Detector {
    Email,
    Phone,
    Card,
    Iban,
    UsSsn,
    Ipv4,
    Ipv6,
    Jwt,
    PrivateKey,
    Bearer,
    AwsKey,
    GcpKey,
    GithubToken,
    SlackToken,
    StripeKey,
}

impl Detector {
    pub const ALL: [Detector; 15] = [
        Detector::Email,
        Detector::Phone,
        Detector::Card,
        Detector::Iban,
        Detector::UsSsn,
        Detector::Ipv4,
        Detector::Ipv6,
        Detector::Jwt,
        Detector::PrivateKey,
        Detector::Bearer,
        Detector::AwsKey,
        Detector::GcpKey,
        Detector::GithubToken,
        Detector::SlackToken,
        Detector::StripeKey,
    ];

    /// The name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Detector::Email => "email",
            Detector::Phone => "phone",
            Detector::Card => "card",
            Detector::Iban => "iban",
            Detector::UsSsn => "us_ssn",
            Detector::Ipv4 => "ipv4",
            Detector::Ipv6 => "ipv6",
            Detector::Jwt => "jwt",
            Detector::PrivateKey => "private_key",
            Detector::Bearer => "bearer",
            Detector::AwsKey => "aws_key",
            Detector::GcpKey => "gcp_key",
            Detector::GithubToken => "github_token",
            Detector::SlackToken => "slack_token",
            Detector::StripeKey => "stripe_key",
        }
    }

    pub fn from_name(name: &str) -> Option<Detector> {
        Detector::ALL.into_iter().find(|d| d.name() == name)
    }

    fn regex(self) -> &'static Regex {
        macro_rules! re {
            ($s:expr) => {{
                static R: LazyLock<Regex> = LazyLock::new(|| Regex::new($s).expect("valid"));
                &R
            }};
        }
        match self {
            Detector::Email => re!(
                r"(?i)[a-z0-9][a-z0-9._%+'-]{0,63}@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}"
            ),
            Detector::Phone => re!(
                r"\+[1-9](?:[ .-]?[0-9]){7,14}|\([0-9]{3}\)[ .-]?[0-9]{3}[ .-][0-9]{4}|(?-u:\b)[0-9]{3}[.-][0-9]{3}[.-][0-9]{4}"
            ),
            Detector::Card => re!(r"[0-9](?:[ -]?[0-9]){12,18}"),
            Detector::Iban => re!(r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?-u:\b)"),
            Detector::UsSsn => re!(r"[0-9]{3}-[0-9]{2}-[0-9]{4}"),
            Detector::Ipv4 => re!(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"),
            Detector::Ipv6 => re!(
                r"(?i)[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?:\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})?(?:%[0-9a-z]+)?"
            ),
            // An unsigned token (`alg: none`) ends at its second dot.
            Detector::Jwt => {
                re!(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.(?:[A-Za-z0-9_-]{10,})?")
            }
            // PEM, OpenSSH and PGP armor; a block cut short (no END line) to the end of text.
            Detector::PrivateKey => re!(
                r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[\s\S]*)"
            ),
            Detector::Bearer => re!(r"(?i)(?-u:\b)bearer[ \t]+[A-Za-z0-9._~+/=-]{16,}"),
            // An access key id by its prefix; a secret access key (40 base64 characters, no
            // prefix of its own) only where it is named, as in credentials files and
            // environment dumps — the secret itself is what is masked.
            Detector::AwsKey => re!(
                r#"(?-u:\b)(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}(?-u:\b)|(?i:aws_?secret_?access_?key|secret_?access_?key)["']?[ \t]*[:=][ \t]*["']?[A-Za-z0-9/+]{40}"#
            ),
            Detector::GcpKey => re!(r"(?-u:\b)AIza[0-9A-Za-z_-]{35}"),
            Detector::GithubToken => {
                re!(
                    r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})(?-u:\b)"
                )
            }
            Detector::SlackToken => re!(
                r"(?-u:\b)(?:xox[abposr]-[0-9A-Za-z]{1,}-[0-9A-Za-z-]{8,}|xapp-[0-9]-[0-9A-Za-z]{6,}-[0-9]{6,}-[0-9a-f]{16,})"
            ),
            Detector::StripeKey => {
                re!(r"(?-u:\b)(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,99}(?-u:\b)")
            }
        }
    }

    /// Whether the candidate `m` found in `text` is the real thing.
    fn accept(self, text: &str, m: Range<usize>) -> bool {
        let s = &text[m.clone()];
        let before = text[..m.start].chars().next_back();
        let after = text[m.end..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        let digitish = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
        match self {
            Detector::Email => !word(before) && before != Some('.') && !word(after),
            Detector::Phone => {
                let digits = s.bytes().filter(u8::is_ascii_digit).count();
                !digitish(before)
                    && !digitish(after)
                    && !word(before)
                    && before != Some('-')
                    && after != Some('-')
                    && (8..=15).contains(&digits)
            }
            Detector::Card => {
                let seps: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_digit()).collect();
                let digits: Vec<u8> = s
                    .bytes()
                    .filter(u8::is_ascii_digit)
                    .map(|b| b - b'0')
                    .collect();
                !digitish(before)
                    && !digitish(after)
                    && !word(before)
                    && !word(after)
                    && seps.windows(2).all(|w| w[0] == w[1])
                    && (13..=19).contains(&digits.len())
                    && luhn(&digits)
                    && card_prefix(&digits)
            }
            Detector::Iban => iban_valid(s),
            Detector::UsSsn => {
                let d: Vec<u32> = s.split('-').map(|p| p.parse().unwrap_or(0)).collect();
                let inside_id = before
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    || after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                !inside_id
                    && d.len() == 3
                    && d[0] != 0
                    && d[0] != 666
                    && d[0] < 900
                    && d[1] != 0
                    && d[2] != 0
            }
            Detector::Ipv4 => {
                // Not one part of a longer dotted number (a version string).
                let continues = after == Some('.')
                    && text[m.end + 1..].starts_with(|c: char| c.is_ascii_digit());
                !digitish(before)
                    && !digitish(after)
                    && before != Some('.')
                    && !continues
                    && !word(before)
                    && s.split('.').all(|o| {
                        o.parse::<u16>().is_ok_and(|n| n <= 255)
                            && (o.len() == 1 || !o.starts_with('0'))
                    })
            }
            Detector::Ipv6 => {
                let addr = s.split('%').next().unwrap_or(s);
                // A colon before it continues an address unless it follows a word that is no
                // hex group (`peer:2001:db8::1`, a key and its value).
                let separator = before == Some(':')
                    && text[..m.start - 1]
                        .chars()
                        .next_back()
                        .is_some_and(|c| c.is_alphabetic() && !c.is_ascii_hexdigit());
                !word(before)
                    && (before != Some(':') || separator)
                    && !word(after)
                    && after != Some(':')
                    && addr.contains(':')
                    && addr.matches(':').count() >= 2
                    && addr.parse::<std::net::Ipv6Addr>().is_ok()
                    // Plain times and ratios ("12:30:45") are not addresses, nor are
                    // identifiers like "a::b".
                    && (addr.contains("::") || addr.matches(':').count() == 7)
                    && addr.bytes().any(|b| b.is_ascii_digit())
            }
            Detector::Jwt => {
                let mut parts = s.split('.');
                let is_obj = |p: Option<&str>| {
                    p.and_then(b64url_decode)
                        .is_some_and(|b| b.first() == Some(&b'{') && b.last() == Some(&b'}'))
                };
                !word(before) && is_obj(parts.next()) && is_obj(parts.next())
            }
            // A secret access key is exactly 40 characters: not part of a longer run.
            Detector::AwsKey => {
                s.len() == 20
                    || !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '/' || c == '+')
            }
            Detector::PrivateKey
            | Detector::Bearer
            | Detector::GcpKey
            | Detector::GithubToken
            | Detector::SlackToken
            | Detector::StripeKey => true,
        }
    }

    /// A cheap necessary condition, checked before the regular expression runs: most values
    /// (names, ids, prose) are ruled out by a byte count or a substring search.
    pub fn might_match(self, text: &str, h: &Hints) -> bool {
        match self {
            Detector::Email => h.at,
            Detector::Phone => h.digits >= 8,
            Detector::Card => h.digits >= 13,
            Detector::Iban => h.digits >= 2 && h.upper >= 2 && text.len() >= 15,
            Detector::UsSsn => h.digits >= 9 && h.dash,
            Detector::Ipv4 => h.digits >= 4 && h.dot,
            Detector::Ipv6 => h.colon,
            // The length and character gates are what each regex needs at the least, so the
            // substring searches run on few strings.
            Detector::Jwt => h.dot && text.len() >= 26 && text.contains("eyJ"),
            Detector::PrivateKey => h.dash && text.len() >= 32 && text.contains("PRIVATE KEY"),
            Detector::Bearer => {
                // `bearer`, a blank and 16 token characters (letters or digits).
                h.space && h.upper + h.lower >= 6 && text.len() >= 23 && {
                    // Only where a `b` or `B` starts: most text has few.
                    let l = text.as_bytes();
                    (0..l.len().saturating_sub(5)).any(|i| {
                        l[i] | 0x20 == b'b' && l[i + 1..i + 6].eq_ignore_ascii_case(b"earer")
                    })
                }
            }
            Detector::AwsKey => h.upper >= 4 && text.len() >= 20,
            Detector::GcpKey => h.upper >= 2 && text.len() >= 39 && text.contains("AIza"),
            Detector::GithubToken => {
                h.underscore >= 1
                    && text.len() >= 40
                    && (text.contains("gh") || text.contains("github_pat_"))
            }
            Detector::SlackToken => {
                h.dash && text.len() >= 15 && (text.contains("xox") || text.contains("xapp-"))
            }
            Detector::StripeKey => {
                h.underscore >= 2
                    && text.len() >= 24
                    && (text.contains("_live_") || text.contains("_test_"))
            }
        }
    }

    /// Every accepted match of this detector in `text`.
    pub fn find(self, text: &str) -> Vec<Range<usize>> {
        if !self.might_match(text, &Hints::of(text)) {
            return Vec::new();
        }
        let mut out = Vec::new();
        self.find_unchecked(text, &mut |r| out.push(r));
        out
    }

    /// Every accepted match, each handed to `found` in order, without the quick check.
    fn find_unchecked(self, text: &str, found: &mut impl FnMut(Range<usize>)) {
        let re = self.regex();
        let mut at = 0;
        while at <= text.len() {
            let Some(m) = re.find_at(text, at) else { break };
            let r = m.range();
            at = r.end.max(r.start + 1);
            if self.accept(text, r.clone()) {
                // A secret found by the name before it: the secret alone.
                found(if self == Detector::AwsKey && r.len() > 40 {
                    r.end - 40..r.end
                } else {
                    r
                });
                continue;
            }
            // A greedy match can take in what follows the value (a card's expiry or CVV, the
            // next word after an IBAN) and so fail validation: the longest shorter match that
            // validates is the value.
            if matches!(self, Detector::Card | Detector::Iban)
                && let Some(end) = (r.start + 1..r.end).rev().find(|&end| {
                    // Only where a group ends (a separator follows): a run of digits is not
                    // tried at every length.
                    text[end..].starts_with([' ', '-'])
                        && re
                            .find(&text[r.start..end])
                            .is_some_and(|m| m.start() == 0 && m.end() == end - r.start)
                        && self.accept(text, r.start..end)
                })
            {
                found(r.start..end);
                at = end;
                continue;
            }
            // An address the match began one character early for (`peer:2001:db8::1` read
            // from its colon) is looked for again from the next character.
            if self == Detector::Ipv6 {
                at = r.start + text[r.start..].chars().next().map_or(1, char::len_utf8);
            }
        }
    }
}

/// A detected value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub detector: Detector,
    pub range: Range<usize>,
}

/// Byte counts every detector's quick check uses, computed once per text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hints {
    digits: usize,
    upper: usize,
    lower: usize,
    at: bool,
    dash: bool,
    dot: bool,
    colon: bool,
    underscore: usize,
    /// A space or a tab.
    space: bool,
}

/// For each byte: 1 in the 16-bit lane of each count it adds to (digits, upper, lower,
/// underscore, lowest lane first).
static COUNTS: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = (c.is_ascii_digit() as u64)
            | (c.is_ascii_uppercase() as u64) << 16
            | (c.is_ascii_lowercase() as u64) << 32
            | ((c == b'_') as u64) << 48;
        b += 1;
    }
    t
};

/// For each byte: its bit among `@ - . :` and blank (space or tab).
static FLAGS: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'@' as usize] = 1;
    t[b'-' as usize] = 2;
    t[b'.' as usize] = 4;
    t[b':' as usize] = 8;
    t[b' ' as usize] = 16;
    t[b'\t' as usize] = 16;
    t
};

impl Hints {
    pub fn of(text: &str) -> Hints {
        if text.len() < 64 {
            return Hints::of_short(text.as_bytes());
        }
        // Independent, branch-free counters vectorize; a histogram indexed by each byte's
        // class does not (each increment waits on the last one through memory). Byte-wide
        // counters over chunks of at most 255 bytes keep sixteen bytes to a vector step.
        let mut h = Hints {
            digits: 0,
            upper: 0,
            lower: 0,
            at: false,
            dash: false,
            dot: false,
            colon: false,
            underscore: 0,
            space: false,
        };
        for chunk in text.as_bytes().chunks(255) {
            let (mut digits, mut upper, mut lower) = (0u8, 0u8, 0u8);
            let (mut at, mut dash, mut dot, mut colon) = (0u8, 0u8, 0u8, 0u8);
            let (mut underscore, mut space) = (0u8, 0u8);
            for &b in chunk {
                digits += u8::from(b.wrapping_sub(b'0') < 10);
                upper += u8::from(b.wrapping_sub(b'A') < 26);
                lower += u8::from(b.wrapping_sub(b'a') < 26);
                at += u8::from(b == b'@');
                dash += u8::from(b == b'-');
                dot += u8::from(b == b'.');
                colon += u8::from(b == b':');
                underscore += u8::from(b == b'_');
                space += u8::from(b == b' ' || b == b'\t');
            }
            h.digits += usize::from(digits);
            h.upper += usize::from(upper);
            h.lower += usize::from(lower);
            h.at |= at > 0;
            h.dash |= dash > 0;
            h.dot |= dot > 0;
            h.colon |= colon > 0;
            h.underscore += usize::from(underscore);
            h.space |= space > 0;
        }
        h
    }

    /// A short text (most values), where a vector step's setup and sums would cost more than
    /// the bytes: one table lookup per byte adds to four counts packed in one register (each
    /// below 64, so no lane carries into the next) and sets the flags.
    fn of_short(b: &[u8]) -> Hints {
        let (mut counts, mut flags) = (0u64, 0u8);
        for &c in b {
            counts += COUNTS[usize::from(c)];
            flags |= FLAGS[usize::from(c)];
        }
        let lane = |i: u32| (counts >> (16 * i) & 0xFFFF) as usize;
        Hints {
            digits: lane(0),
            upper: lane(1),
            lower: lane(2),
            underscore: lane(3),
            at: flags & 1 != 0,
            dash: flags & 2 != 0,
            dot: flags & 4 != 0,
            colon: flags & 8 != 0,
            space: flags & 16 != 0,
        }
    }
}

/// Runs `detectors` over `text`; overlapping findings keep the earliest (then longest) one.
pub fn scan(text: &str, detectors: &[Detector]) -> Vec<Finding> {
    scan_with(text, detectors, &Hints::of(text))
}

/// [`scan`] with the text's hints already counted.
pub(crate) fn scan_with(text: &str, detectors: &[Detector], hints: &Hints) -> Vec<Finding> {
    let mut all: Vec<Finding> = Vec::new();
    for &d in detectors {
        if d.might_match(text, hints) {
            d.find_unchecked(text, &mut |range| all.push(Finding { detector: d, range }));
        }
    }
    if all.len() <= 1 {
        return all;
    }
    all.sort_by(|a, b| {
        a.range
            .start
            .cmp(&b.range.start)
            .then(b.range.end.cmp(&a.range.end))
    });
    let mut out: Vec<Finding> = Vec::new();
    for f in all {
        if out.last().is_none_or(|l| f.range.start >= l.range.end) {
            out.push(f);
        }
    }
    out
}

/// The Luhn check over decimal digits.
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// Issuer prefixes of the major networks (Visa, Mastercard, Amex, Discover, JCB, Diners,
/// UnionPay, Maestro).
fn card_prefix(d: &[u8]) -> bool {
    let n = |k: usize| d[..k].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    let len = d.len();
    match d[0] {
        4 => matches!(len, 13 | 16 | 19),
        5 => (51..=55).contains(&n(2)) && len == 16 || matches!(n(2), 50 | 56..=58) && len >= 12,
        2 => (2221..=2720).contains(&n(4)) && len == 16,
        3 => {
            matches!(n(2), 34 | 37) && len == 15
                || (3528..=3589).contains(&n(4)) && len >= 16
                || matches!(n(2), 36 | 38 | 39)
                || (300..=305).contains(&n(3))
        }
        6 => {
            n(4) == 6011
                || n(2) == 65
                || (644..=649).contains(&n(3))
                || n(2) == 62
                || matches!(n(2), 63 | 67)
        }
        _ => false,
    }
}

/// ISO 13616 as the `iban_validate` crate keeps the SWIFT registry: a country in the registry,
/// its length and BBAN format, and ISO 7064 mod 97-10 equal to 1.
pub fn iban_valid(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| *c != ' ').collect();
    compact.len() >= 15 && compact.parse::<iban::Iban>().is_ok()
}

fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefilters_let_every_shape_through() {
        // The quick checks must never rule out a real finding, wherever it sits in the text.
        let token = "abcdefghijklmnopqrstuvwxyz012345";
        let cases: &[(Detector, String)] = &[
            (Detector::Bearer, format!("Authorization: Bearer {token}")),
            (Detector::Bearer, format!("auth=BEARER\t{token}; next")),
            (Detector::Bearer, format!("bearer {token}")),
            // A token of digits: the quick check counts `bearer`'s letters, not the token's.
            (
                Detector::Bearer,
                "Bearer 0123456789abcdef0123456789abcdef".into(),
            ),
            (Detector::Bearer, "Bearer 1234567890123456".into()),
            (
                Detector::StripeKey,
                "key sk_live_4eC39HqLyjWDarjtT1zdp7dc here".into(),
            ),
            (
                Detector::StripeKey,
                "rk_test_4eC39HqLyjWDarjtT1zdp7dc".into(),
            ),
            (
                Detector::GithubToken,
                "token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 end".into(),
            ),
            (
                Detector::Jwt,
                "x eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlMTIz".into(),
            ),
            (
                Detector::SlackToken,
                "xoxb-123456789012-abcdefghijkl".into(),
            ),
            (
                Detector::GcpKey,
                "AIzaSyA-1234567890abcdefghijklmnopqrstu".into(),
            ),
        ];
        for (d, text) in cases {
            assert!(
                d.might_match(text, &Hints::of(text)),
                "{} ruled out {text:?}",
                d.name()
            );
            assert_eq!(d.find(text).len(), 1, "{} in {text:?}", d.name());
        }
        // Counts cross the 255-byte chunks.
        let long = "1".repeat(600) + "@";
        let h = Hints::of(&long);
        assert_eq!(h.digits, 600);
        assert!(h.at && !h.dash);
    }

    /// The counts byte by byte, as the quick checks mean them.
    fn hints_by_byte(text: &str) -> Hints {
        let b = text.as_bytes();
        let n = |f: fn(&u8) -> bool| b.iter().filter(|c| f(c)).count();
        Hints {
            digits: n(u8::is_ascii_digit),
            upper: n(u8::is_ascii_uppercase),
            lower: n(u8::is_ascii_lowercase),
            at: b.contains(&b'@'),
            dash: b.contains(&b'-'),
            dot: b.contains(&b'.'),
            colon: b.contains(&b':'),
            underscore: n(|c| *c == b'_'),
            space: b.contains(&b' ') || b.contains(&b'\t'),
        }
    }

    proptest::proptest! {
        /// The counts (by table below 64 bytes, vectorized above) are what a byte-by-byte
        /// pass gives, for every length and for bytes outside ASCII (whose low seven bits may
        /// look like a digit or a letter).
        #[test]
        fn hints_count_every_byte(
            text in "[0-9A-Za-z@._:\\- \t\u{80}-\u{10FFFF}]{0,600}",
        ) {
            proptest::prop_assert_eq!(Hints::of(&text), hints_by_byte(&text));
        }
    }

    #[test]
    fn hints_of_bytes_with_the_high_bit_set() {
        // U+00B0 is C2 B0: B0 has the low seven bits of '0'; U+00C1 is C3 81, 81 those of
        // SOH; U+00E0 is C3 A0, A0 those of a space.
        for text in [
            "\u{b0}\u{b0}\u{b0}",
            "\u{c1}\u{e0}",
            &"\u{b0}".repeat(40),
            "a\u{e0}1",
        ] {
            assert_eq!(Hints::of(text), hints_by_byte(text), "{text:?}");
        }
    }

    /// A greedy match that takes in what follows the value, and so fails validation, still
    /// finds the value inside it.
    #[test]
    fn a_rejected_match_does_not_hide_the_value_in_it() {
        let cases: &[(Detector, &str, &str)] = &[
            (
                Detector::Card,
                "card 4111 1111 1111 1111 05/27",
                "4111 1111 1111 1111",
            ),
            (Detector::Card, "4111111111111111 123", "4111111111111111"),
            (
                Detector::Iban,
                "to DE89370400440532013000 BIC COBADEFFXXX",
                "DE89370400440532013000",
            ),
            (
                Detector::Iban,
                "GB82 WEST 1234 5698 7654 32 EUR",
                "GB82 WEST 1234 5698 7654 32",
            ),
            (Detector::Ipv6, "peer:2001:db8::1", "2001:db8::1"),
        ];
        for (d, text, want) in cases {
            let found: Vec<&str> = d.find(text).into_iter().map(|r| &text[r]).collect();
            assert_eq!(found, [*want], "{} in {text:?}", d.name());
        }
        // A secret access key ending in `/` or `+`, at the end of the text or a line, is the
        // whole 40 characters; one inside a longer run is none.
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEK+/";
        for text in [
            format!("aws_secret_access_key = {secret}"),
            format!("aws_secret_access_key = \"{secret}\"\nnext = 1"),
        ] {
            let found: Vec<&str> = Detector::AwsKey
                .find(&text)
                .into_iter()
                .map(|r| &text[r])
                .collect();
            assert_eq!(found, [secret], "{text:?}");
        }
        assert!(
            Detector::AwsKey
                .find(&format!("secret_access_key={secret}A"))
                .is_empty()
        );
        // Numbers that are no card stay unmasked (a 13-digit millisecond timestamp).
        assert!(Detector::Card.find("at 1763769600000 ms").is_empty());
    }

    /// An IBAN for `cc` with `bban` (check digits computed), as a bank would print it.
    fn iban_for(cc: &str, bban: &str) -> String {
        let digits: String = format!("{bban}{cc}00")
            .chars()
            .map(|c| match c {
                '0'..='9' => c.to_string(),
                _ => (c as u32 - 'A' as u32 + 10).to_string(),
            })
            .collect();
        let rem = digits
            .bytes()
            .fold(0u32, |r, d| (r * 10 + u32::from(d - b'0')) % 97);
        format!("{cc}{:02}{bban}", 98 - rem)
    }

    /// The countries that joined the registry after the hand-kept table was written: every one
    /// is found (in print and electronic form) and validated, and a wrong check digit is not.
    #[test]
    fn ibans_of_every_registry_country_are_found() {
        let samples = [
            ("AL", "21211009000000000235698741"[..24].to_string()),
            ("BI", "10000100010000332045181".into()),
            ("BY", "NBRB3600900000002Z00AB00".into()),
            ("DJ", "10002010010409943020008".into()),
            ("FK", "SC123456789012".into()),
            ("IQ", "NBIQ850123456789012".into()),
            ("LC", "HEMM000100010012001200023015".into()),
            ("LY", "002048000020100120361".into()),
            ("MN", "1234123456789123".into()),
            ("NI", "BAPR00000013000003558124".into()),
            ("OM", "0180000001299123456".into()),
            ("RU", "04452560040702810412345678901".into()),
            ("SC", "SSCB11010000000000001497USD".into()),
            ("SD", "29010501234001".into()),
            ("SO", "1000001001000100141".into()),
            ("ST", "000100010051845310146".into()),
            ("SV", "CENR00000000000000700025".into()),
            ("TL", "0080012345678910157".into()),
            ("VA", "059001123000012345".into()),
            ("YE", "CBYE0001018861234567891234".into()),
        ];
        for (cc, bban) in samples {
            let iban = iban_for(cc, &bban);
            assert!(iban_valid(&iban), "{iban}");
            let printed: String = iban
                .as_bytes()
                .chunks(4)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join(" ");
            for form in [&iban, &printed] {
                let text = format!("pay to {form} today");
                let found: Vec<&str> = Detector::Iban
                    .find(&text)
                    .into_iter()
                    .map(|r| &text[r])
                    .collect();
                assert_eq!(found, [form.as_str()], "{cc}: {text:?}");
            }
            let mut wrong = iban.clone().into_bytes();
            wrong[2] = if wrong[2] == b'9' { b'0' } else { wrong[2] + 1 };
            assert!(!iban_valid(std::str::from_utf8(&wrong).unwrap()), "{cc}");
        }
    }

    #[test]
    fn checksums() {
        assert!(luhn(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]));
        assert!(!luhn(&[4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]));
        assert!(iban_valid("GB82 WEST 1234 5698 7654 32"));
        assert!(iban_valid("DE89370400440532013000"));
        assert!(!iban_valid("DE89370400440532013001"));
        assert!(!iban_valid("GB82WEST123456987654"));
    }
}
