//! A labelled corpus for the detectors: hundreds of positives (the checksummed ones generated
//! with valid and deliberately broken check digits) and tricky negatives (16-digit numbers that
//! fail Luhn, order ids shaped like SSNs, hashes that look like keys, version strings, times).
//! Precision and recall per detector are printed (`cargo test -p callgate-masking --test corpus
//! -- --nocapture`) and recorded in BENCHMARKS.md; the targets are asserted.

use callgate_masking::detect::{Detector, scan};
use std::collections::BTreeMap;

/// A small deterministic generator (no randomness in tests).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + (self.next() % 10) as u8))
            .collect()
    }
}

fn luhn_digit(body: &str) -> char {
    let mut sum = 0;
    for (i, c) in body.chars().rev().enumerate() {
        let mut v = c.to_digit(10).unwrap();
        if i % 2 == 0 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    char::from_digit((10 - sum % 10) % 10, 10).unwrap()
}

fn mod97(s: &str) -> u32 {
    s.chars().fold(0, |rem, c| {
        let v = c.to_digit(36).unwrap();
        if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        }
    })
}

fn iban(cc: &str, bban: &str) -> String {
    let check = 98 - mod97(&format!("{bban}{cc}00"));
    format!("{cc}{check:02}{bban}")
}

fn group(s: &str, sizes: &[usize], sep: &str) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    for &n in sizes {
        out.push(&s[i..i + n]);
        i += n;
    }
    out.join(sep)
}

/// (text, the value in it that must be found, its detector); `None` for negatives.
fn corpus() -> Vec<(String, Option<(String, Detector)>)> {
    let mut c: Vec<(String, Option<(String, Detector)>)> = Vec::new();
    let mut pos = |v: String, d: Detector, ctx: &str| {
        c.push((ctx.replace("{}", &v), Some((v, d))));
    };
    let mut r = Lcg(42);
    let contexts = [
        "{}",
        "card: {}",
        "\"number\":\"{}\"",
        "paid with {} yesterday",
    ];
    // Payment cards: valid Luhn, real network prefixes, plain / spaced / dashed.
    for i in 0..120 {
        let (prefix, len) = [
            ("4", 16),
            ("51", 16),
            ("55", 16),
            ("2221", 16),
            ("34", 15),
            ("37", 15),
            ("6011", 16),
            ("4", 13),
        ][i % 8];
        let body = format!("{prefix}{}", r.digits(len - prefix.len() - 1));
        let n = format!("{body}{}", luhn_digit(&body));
        let shown = match (i / 8) % 3 {
            0 => n.clone(),
            1 if len == 16 => group(&n, &[4, 4, 4, 4], " "),
            2 if len == 16 => group(&n, &[4, 4, 4, 4], "-"),
            1 | 2 if len == 15 => group(&n, &[4, 6, 5], " "),
            _ => n.clone(),
        };
        pos(shown, Detector::Card, contexts[i % 4]);
    }
    // IBANs with correct check digits.
    for i in 0..100 {
        let v = match i % 4 {
            0 => iban("DE", &r.digits(18)),
            1 => iban("GB", &format!("WEST{}", r.digits(14))),
            2 => iban("FR", &format!("{}A{}", r.digits(10), r.digits(12))),
            _ => iban("NL", &format!("ABNA{}", r.digits(10))),
        };
        let shown = if i % 2 == 0 {
            v.clone()
        } else {
            v.as_bytes()
                .chunks(4)
                .map(|ch| std::str::from_utf8(ch).unwrap())
                .collect::<Vec<_>>()
                .join(" ")
        };
        pos(
            shown,
            Detector::Iban,
            ["{}", "IBAN {}", "\"iban\":\"{}\"", "send to {} today"][i % 4],
        );
    }
    // SSNs.
    for i in 0..60 {
        let area = 1 + (r.next() % 899) as u32;
        let area = if area == 666 { 667 } else { area };
        let v = format!(
            "{area:03}-{:02}-{:04}",
            1 + r.next() % 99,
            1 + r.next() % 9999
        );
        pos(
            v,
            Detector::UsSsn,
            ["{}", "ssn {}", "\"ssn\":\"{}\""][i % 3],
        );
    }
    for (v, d) in [
        ("ada@example.com", Detector::Email),
        ("grace.hopper+navy@mail.example.org", Detector::Email),
        ("first_last@sub.domain.co.uk", Detector::Email),
        ("x@a.io", Detector::Email),
        ("O'Brien@example.ie", Detector::Email),
        ("+1-202-555-0143", Detector::Phone),
        ("+442071838750", Detector::Phone),
        ("(202) 555-0182", Detector::Phone),
        ("202-555-0121", Detector::Phone),
        ("+49 30 901820", Detector::Phone),
        ("192.168.1.20", Detector::Ipv4),
        ("10.0.0.1", Detector::Ipv4),
        ("203.0.113.255", Detector::Ipv4),
        ("2001:db8::1", Detector::Ipv6),
        ("fe80::1ff:fe23:4567:890a", Detector::Ipv6),
        ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", Detector::Ipv6),
        (
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            Detector::Jwt,
        ),
        (
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIB0sFOKvKQkzuP0l5bqO7jtJrGLk3lz8LxbG4TD6rZMS\n-----END PRIVATE KEY-----",
            Detector::PrivateKey,
        ),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n-----END RSA PRIVATE KEY-----",
            Detector::PrivateKey,
        ),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n-----END OPENSSH PRIVATE KEY-----",
            Detector::PrivateKey,
        ),
        ("Bearer abcdefghijklmnop1234567890", Detector::Bearer),
        ("bearer 9f8e7d6c5b4a3f2e1d0c.b9a8", Detector::Bearer),
        ("AKIAIOSFODNN7EXAMPLE", Detector::AwsKey),
        ("ASIAY34FZKBOKMUTVV7A", Detector::AwsKey),
        ("AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI", Detector::GcpKey),
        (
            "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",
            Detector::GithubToken,
        ),
        (
            "gho_16C7e42F292c6912E7710c838347Ae178B4a",
            Detector::GithubToken,
        ),
        (
            "xoxb-2233445566-1122334455667-AbCdEfGhIjKlMnOpQrStUvWx",
            Detector::SlackToken,
        ),
        (
            "xoxp-1111111111-2222222222-333333333333-abcdef0123456789abcdef0123456789",
            Detector::SlackToken,
        ),
        (
            "xapp-1-A0123456789-1234567890123-0123456789abcdef0123456789abcdef",
            Detector::SlackToken,
        ),
        // Unsigned (`alg: none`), a PGP key block, and a key cut short.
        (
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxMjM0NTY3ODkwIn0.",
            Detector::Jwt,
        ),
        (
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF2xXq0BCAC7Gm1Q3mZqFQYtq8Jk1hQ\n-----END PGP PRIVATE KEY BLOCK-----",
            Detector::PrivateKey,
        ),
        ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", Detector::StripeKey),
        ("rk_test_51H8zXfD0n3Q2yP0abcdEFGH", Detector::StripeKey),
    ] {
        pos(v.to_string(), d, "value: {} end");
    }
    // An AWS secret access key where it is named (credentials file, environment dump).
    for ctx in [
        "aws_secret_access_key = {}",
        "AWS_SECRET_ACCESS_KEY={}",
        "\"SecretAccessKey\": \"{}\"",
    ] {
        pos(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            Detector::AwsKey,
            ctx,
        );
    }
    // A key cut short (no END line) is masked to the end of the text.
    pos(
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oFL5f3nI7lZ"
            .into(),
        Detector::PrivateKey,
        "key: {}",
    );
    // Generated emails, phone numbers and addresses in several shapes.
    let names = [
        "ada",
        "grace.hopper",
        "alan_turing",
        "k.johnson",
        "edsger",
        "linus+lists",
        "ms-dos",
        "x9",
    ];
    let domains = [
        "example.com",
        "mail.example.org",
        "corp.example.co.uk",
        "example.io",
        "sub.example.travel",
    ];
    for (i, n) in names.iter().enumerate() {
        for (j, d) in domains.iter().enumerate() {
            pos(
                format!("{n}@{d}"),
                Detector::Email,
                [
                    "{}",
                    "mailto:{}",
                    "\"email\":\"{}\"",
                    "<{}>",
                    "write to {}.",
                ][(i + j) % 5],
            );
        }
    }
    for i in 0..30 {
        let v = match i % 3 {
            0 => format!("+1-{}-555-01{:02}", 200 + r.next() % 700, r.next() % 100),
            1 => format!("({}) 555-{:04}", 200 + r.next() % 700, r.next() % 10000),
            _ => format!("+44{}", r.digits(10)),
        };
        pos(
            v,
            Detector::Phone,
            ["{}", "tel {}", "\"phone\":\"{}\""][i % 3],
        );
    }
    for i in 0..30 {
        let v = format!(
            "{}.{}.{}.{}",
            1 + r.next() % 223,
            r.next() % 256,
            r.next() % 256,
            1 + r.next() % 254
        );
        pos(
            v,
            Detector::Ipv4,
            ["{}", "from {}:443", "\"ip\":\"{}\""][i % 3],
        );
    }
    for v in [
        "::1",
        "fe80::1",
        "2001:db8:0:0:1:0:0:1",
        "2001:db8::8a2e:370:7334",
        "64:ff9b::192.0.2.33",
    ] {
        pos(v.to_string(), Detector::Ipv6, "addr {} ok");
    }
    // Negatives, each a classic false positive.
    let mut neg = |t: String| c.push((t, None));
    for i in 0..80 {
        // 16-digit numbers that fail Luhn (and a valid-Luhn number with no network prefix).
        let body = format!("4{}", r.digits(14));
        let good = luhn_digit(&body).to_digit(10).unwrap();
        neg(format!("order {body}{}", (good + 1 + (i % 9) as u32) % 10));
    }
    let no_network = format!("9{}", "12345678901234");
    neg(format!("ref {no_network}{}", luhn_digit(&no_network)));
    for i in 0..40 {
        // Order ids and references shaped like SSNs, and SSN-shaped values that are invalid.
        let v = format!("{:03}-{:02}-{:04}", 100 + i, 10 + i, 1000 + i);
        neg(format!("ORD-{v}"));
        neg(format!("{v}-A"));
        neg(format!("part {v}7"));
    }
    for t in [
        "000-12-3456",
        "666-12-3456",
        "912-34-5678",
        "123-00-4567",
        "123-45-0000",
        "build 1.2.3.4.5",
        "version 10.0.0.1.2",
        "256.1.1.1",
        "1.2.3.999",
        "01.02.03.04",
        "meeting at 12:30:45",
        "ratio 3:4:5",
        "time 10:00",
        "a::b",
        "std::io::Result",
        "sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709",
        "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "AKIA in prose is not a key",
        "AKIAshort",
        "sk_live_short",
        "ghp_tooshort",
        "xoxb-",
        "Bearer short",
        "the bearer of bad news",
        "eyJhbGciOiJIUzI1NiJ9.notjson.sig",
        "user at example dot com",
        "@handle",
        "name@localhost",
        "2026-11-21",
        "2026-11-21T09:15:00Z",
        "+1",
        "call 555-0143",
        "id 12345678",
        "DE89370400440532013001",
        "GB82WEST123456987654",
        "XX00 1234 5678 9012 3456",
        "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        "price 4111.11",
        "serial 4111-1111-1111",
        "isbn 978-3-16-148410-0",
    ] {
        neg(t.to_string());
    }
    c
}

#[test]
fn precision_and_recall_per_detector() {
    let corpus = corpus();
    assert!(corpus.len() >= 500, "{} samples", corpus.len());
    // detector → (true positives, false negatives, false positives)
    let mut stats: BTreeMap<Detector, (u32, u32, u32)> = BTreeMap::new();
    let mut misses = Vec::new();
    for (text, expected) in &corpus {
        let found = scan(text, &Detector::ALL);
        match expected {
            Some((value, d)) => {
                let hit = found
                    .iter()
                    .any(|f| f.detector == *d && &text[f.range.clone()] == value);
                let e = stats.entry(*d).or_default();
                if hit {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                    misses.push(format!("missed {d:?} in {text:?}: found {found:?}"));
                }
                for f in &found {
                    if &text[f.range.clone()] != value {
                        stats.entry(f.detector).or_default().2 += 1;
                        misses.push(format!(
                            "extra {:?} {:?} in {text:?}",
                            f.detector,
                            &text[f.range.clone()]
                        ));
                    }
                }
            }
            None => {
                for f in &found {
                    stats.entry(f.detector).or_default().2 += 1;
                    misses.push(format!(
                        "false {:?} {:?} in {text:?}",
                        f.detector,
                        &text[f.range.clone()]
                    ));
                }
            }
        }
    }
    println!("| detector | positives | recall | precision |");
    println!("|---|---|---|---|");
    let (mut tp_all, mut fp_all) = (0, 0);
    for (d, (tp, fneg, fp)) in &stats {
        let recall = f64::from(*tp) / f64::from(tp + fneg).max(1.0);
        let precision = f64::from(*tp) / f64::from(tp + fp).max(1.0);
        println!(
            "| `{}` | {} | {recall:.3} | {precision:.3} |",
            d.name(),
            tp + fneg
        );
        tp_all += tp;
        fp_all += fp;
        if matches!(d, Detector::Card | Detector::Iban) {
            assert!(recall >= 0.99, "{d:?} recall {recall}: {misses:#?}");
        }
    }
    let precision = f64::from(tp_all) / f64::from(tp_all + fp_all);
    println!("| all | {} samples | | {precision:.3} |", corpus.len());
    for m in &misses {
        println!("{m}");
    }
    assert!(
        precision >= 0.95,
        "overall precision {precision}: {misses:#?}"
    );
}

proptest::proptest! {
    /// Any text: the scan never panics, and findings are in order, disjoint, on char boundaries.
    #[test]
    fn scanning_any_text_is_safe(text in "(?s).{0,200}", digits in "[0-9 .:@-]{0,60}") {
        for t in [text.as_str(), digits.as_str()] {
            let found = scan(t, &Detector::ALL);
            let mut end = 0;
            for f in &found {
                proptest::prop_assert!(f.range.start >= end);
                proptest::prop_assert!(t.is_char_boundary(f.range.start) && t.is_char_boundary(f.range.end));
                end = f.range.end;
            }
        }
    }
}
