//! Durable audit records per second through the group-commit writer on the real SQLite store
//! (WAL, `synchronous=FULL`): many concurrent callers each wait until their record is fsynced,
//! as the gateway does before forwarding. The baseline is the same store with one caller at a
//! time (one fsync per record), measured in the same run.

use std::time::{Duration, Instant};

use callgate_audit::note::Signer;
use callgate_audit::record::{CallEvent, Caller, DecisionRecord, Event, ForwardRecord, StartEvent};
use callgate_store::{AuditLog, LogOptions, SqliteStore};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const ORIGIN: &str = "bench.callgate/audit";

fn call(i: u64) -> Event {
    Event::Call(Box::new(CallEvent {
        time_ms: callgate_store::log::now_ms(),
        request_id: format!("019a0000-0000-7000-8000-{i:012}"),
        session: None,
        caller: Caller {
            subject: "alice".into(),
            groups: vec!["support".into()],
            auth_method: "oidc".into(),
            issuer: Some("https://idp.example".into()),
            key_id: None,
            token_id: Some(format!("jti-{i}")),
            actor: None,
        },
        source: Some("127.0.0.1".into()),
        ingress: "invoke".into(),
        function: "payments.refund".into(),
        arguments:
            serde_json::json!({"account": "acct_123", "amount": 4200, "reason": "duplicate charge"})
                .as_object()
                .unwrap()
                .clone(),
        decision: DecisionRecord {
            effect: "allow".into(),
            policies: vec!["support-refunds".into()],
            reason: "permitted".into(),
            obligations: None,
        },
        forward: Some(ForwardRecord {
            upstream: "payments".into(),
            credential_id: None,
        }),
    }))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::from_seed(ORIGIN, [1; 32]).unwrap();
    let key = signer.verifier().to_string();
    let log = rt.block_on(async {
        let store = SqliteStore::open(&dir.path().join("audit.db"), Duration::from_secs(5))
            .await
            .unwrap();
        AuditLog::open(
            store,
            signer,
            LogOptions {
                origin: ORIGIN.into(),
                anchor: None,
            },
            StartEvent {
                time_ms: 0,
                version: "bench".into(),
                config_sha256: String::new(),
                policy_sha256: String::new(),
                key,
            },
        )
        .await
        .unwrap()
    });
    let mut g = c.benchmark_group("audit_append_durable");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    for callers in [1u64, 256, 1024] {
        g.bench_function(format!("{callers}_concurrent_callers"), |b| {
            b.iter_custom(|iters| {
                let log = log.clone();
                rt.block_on(async move {
                    let per = iters.div_ceil(callers);
                    let started = Instant::now();
                    let mut tasks = Vec::new();
                    for t in 0..callers {
                        let log = log.clone();
                        tasks.push(tokio::spawn(async move {
                            for i in 0..per {
                                let e = call(t * per + i).encode().unwrap();
                                log.append(vec![e]).await.unwrap();
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                    started
                        .elapsed()
                        .mul_f64(iters as f64 / (per * callers) as f64)
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
