//! Encoding audit records on the hot path: a `call` record with a 1 KiB argument and a
//! `call.response` record with a 1 KiB JSON body, as `benches/load.sh` sends them.
//!
//! `canonical` is what the gateway does ([`Event::encode`]: the RFC 8785 serializer). The
//! baselines, measured in the same run: `via_value` is the previous encoder (the event copied
//! into a `serde_json::Value`, then written canonically) and `serde_json` is plain, unsorted
//! `serde_json::to_vec`, the least any JSON encoding of the event costs.

use callgate_audit::canonical::value_to_vec;
use callgate_audit::record::{
    CallEvent, Caller, DecisionRecord, Event, ForwardRecord, ResponseEvent,
};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use std::hint::black_box;

fn call() -> Event {
    let pad = "x".repeat(990);
    Event::Call(Box::new(CallEvent {
        time_ms: 1_790_000_000_000,
        request_id: "019a0000-0000-7000-8000-000000000001".into(),
        session: None,
        caller: Caller {
            subject: "bench".into(),
            groups: vec!["billing-ops".into()],
            auth_method: "api_key".into(),
            issuer: None,
            key_id: Some("bench".into()),
            token_id: None,
            actor: None,
        },
        source: Some("127.0.0.1".into()),
        ingress: "http".into(),
        function: "quota.adjust".into(),
        arguments: json!({"account_id": format!("acct_{pad}"), "delta": 5})
            .as_object()
            .unwrap()
            .clone(),
        decision: DecisionRecord {
            effect: "allow".into(),
            policies: vec!["policy0".into()],
            reason: "permitted by policy0".into(),
            obligations: None,
        },
        forward: Some(ForwardRecord {
            upstream: "http://127.0.0.1:18181".into(),
            credential_id: None,
        }),
    }))
}

fn response() -> Event {
    let pad = "x".repeat(990);
    Event::Response(ResponseEvent {
        time_ms: 1_790_000_000_001,
        request_id: "019a0000-0000-7000-8000-000000000001".into(),
        session: None,
        function: "quota.adjust".into(),
        status: 200,
        latency_us: 812,
        body: Some(
            json!({"account_id": format!("acct_{pad}"), "delta": 5, "balance": 105, "ok": true}),
        ),
        body_base64: None,
        body_sha256: Some("ab".repeat(32)),
        error: None,
    })
}

fn bench(c: &mut Criterion) {
    for (name, event) in [("call", call()), ("response", response())] {
        let mut g = c.benchmark_group(format!("encode_{name}"));
        g.bench_function("canonical", |b| {
            b.iter(|| black_box(&event).encode().unwrap())
        });
        g.bench_function("via_value", |b| {
            b.iter(|| value_to_vec(&serde_json::to_value(black_box(&event)).unwrap()).unwrap())
        });
        g.bench_function("serde_json", |b| {
            b.iter(|| serde_json::to_vec(black_box(&event)).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
