//! Masking throughput on one core: a 1 MiB JSON response (customer records with emails, SSNs,
//! cards, tokens and free text) masked with a typical profile, against the baseline of only
//! parsing and re-serializing the same document (what any JSON-aware proxy pays): through the
//! tree (parse, mask, serialize), streaming (bytes to masked bytes, what the gateway does),
//! and the tree's masking step alone.

use callgate_masking::strategy::hash_key;
use callgate_masking::{Profile, Rule, RuleSpec};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};

fn doc() -> Vec<u8> {
    let record = |i: u64| {
        json!({
            "id": format!("u_{i}"),
            "name": "Ada Lovelace",
            "email": format!("user{i}@example.com"),
            "ssn": format!("123-45-{:04}", 1000 + i % 9000),
            "card_number": "4111 1111 1111 1111",
            "api_token": "sk_live_demoxxxxxxxxxxxxxxxxxxxxx",
            "address": {"street": "1 Infinite Loop", "city": "Cupertino", "zip": "95014"},
            "notes": "customer called about invoice 48213; prefers email; account in good standing",
            "balance": 1234.5,
            "tags": ["gold", "newsletter"],
        })
    };
    let one = serde_json::to_vec(&record(0)).unwrap().len() + 1;
    let n = (1 << 20) / one as u64 + 1;
    serde_json::to_vec(&Value::Array((0..n).map(record).collect())).unwrap()
}

fn profile() -> Profile {
    let r = |path: Option<&str>, keys: &[&str], detect: &[&str], strategy: &str| {
        Rule::compile(&RuleSpec::of(path, keys, detect, strategy)).unwrap()
    };
    Profile {
        rules: vec![
            r(
                None,
                &["password", "secret", "token", "api_key"],
                &[],
                "redact",
            ),
            r(Some("$[*].ssn"), &[], &[], "partial"),
            r(None, &[], &["card", "us_ssn", "iban"], "partial"),
            r(None, &[], &["email"], "partial"),
            r(
                None,
                &[],
                &["jwt", "private_key", "bearer", "aws_key", "stripe_key"],
                "redact",
            ),
        ],
        headers: vec![],
    }
}

fn bench(c: &mut Criterion) {
    let body = doc();
    let p = profile();
    let key = hash_key(b"bench-key-0123456789abcdef0123456");
    let mut g = c.benchmark_group("mask_1MiB_json");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.sample_size(20);
    g.bench_function("baseline: parse and serialize", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_slice(&body).unwrap();
            serde_json::to_vec(&v).unwrap()
        })
    });
    g.bench_function("parse, mask, serialize", |b| {
        b.iter(|| {
            let mut v: Value = serde_json::from_slice(&body).unwrap();
            p.mask_json(&mut v, &[], &key);
            serde_json::to_vec(&v).unwrap()
        })
    });
    assert!(p.streams(&[]), "the benchmark's profile streams");
    assert_eq!(
        callgate_masking::mask_json_bytes(&[&p], &body, &[], &key).unwrap(),
        {
            let mut v: Value = serde_json::from_slice(&body).unwrap();
            p.mask_json(&mut v, &[], &key);
            serde_json::to_vec(&v).unwrap()
        }
    );
    g.bench_function("streaming: bytes to masked bytes", |b| {
        b.iter(|| callgate_masking::mask_json_bytes(&[&p], &body, &[], &key).unwrap())
    });
    g.bench_function("mask only (parsed document)", |b| {
        b.iter_batched(
            || serde_json::from_slice::<Value>(&body).unwrap(),
            |mut v| {
                p.mask_json(&mut v, &[], &key);
                v
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
